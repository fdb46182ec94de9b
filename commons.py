"""Small helpers shared by the model, the loss, training, inference and the diagnostics.

One implementation each: masks, decoder lengths, autocast, the guided-attention matrix. Tensors are built on
the device of the lengths passed in.
"""
from __future__ import annotations

import contextlib
from typing import Any, ContextManager, Optional

import torch


def sequence_mask(lengths: torch.Tensor, max_len: Optional[int] = None) -> torch.Tensor:
    """Marks the valid (un-padded) positions of each sequence.

    Args:
        lengths: Long (B,) true lengths.
        max_len: width of the mask; None = `lengths.max()`.

    Returns:
        Bool (B, max_len) on `lengths.device`; True where `position < length`.
    """
    if max_len is None:
        max_len = int(lengths.max().item()) if lengths.numel() else 0
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


def decoder_lengths(mel_lengths: Any, n_frames_per_step: int) -> Any:
    """Decoder steps per utterance, `ceil(mel_len / r)`: the one implementation.

    Args:
        mel_lengths: mel frames: an int, an integer ndarray or a Long tensor (any shape).
        n_frames_per_step: r, mel frames produced per decoder step.

    Returns:
        The same kind as `mel_lengths` (a tensor stays on its device).
    """
    r = int(n_frames_per_step)
    return (mel_lengths + (r - 1)) // r


def autocast_context(precision: str, device: torch.device) -> ContextManager:
    """torch.autocast on the device's type for "bf16"/"fp16"; a no-op for "fp32"."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def guided_attention_matrix(text_lengths: torch.Tensor, decoder_lengths: torch.Tensor,
                            sigma: float, max_t: int, max_n: int) -> torch.Tensor:
    """Guided-attention penalty W (Tachibana et al. 2017) on the decoder-step grid.

    `W[b, t, n] = 1 - exp(-((n / N_b - t / T_b) ** 2) / (2 * sigma ** 2))` inside each item's true
    block (`t < T_b`, `n < N_b`) and 0 outside it, so padding never adds to the loss.

    Args:
        text_lengths: Long (B,) tokens N_b per utterance.
        decoder_lengths: Long (B,) decoder steps T_b per utterance (`ceil(mel_len / r)`).
        sigma: width g of the allowed band around the diagonal.
        max_t: padded number of decoder steps (rows of the alignment).
        max_n: padded number of tokens (columns of the alignment).

    Returns:
        Float32 (B, max_t, max_n) on the device of `text_lengths`.
    """
    device = text_lengths.device
    t = torch.arange(max_t, device=device, dtype=torch.float32).view(1, max_t, 1)
    n = torch.arange(max_n, device=device, dtype=torch.float32).view(1, 1, max_n)
    # clamp(min=1): a zero length would divide by zero; its block is empty anyway.
    steps = decoder_lengths.to(device=device, dtype=torch.float32).clamp(min=1).view(-1, 1, 1)
    tokens = text_lengths.to(dtype=torch.float32).clamp(min=1).view(-1, 1, 1)
    weights = 1.0 - torch.exp(-((n / tokens - t / steps) ** 2) / (2.0 * sigma ** 2))
    inside = (t < decoder_lengths.to(device).view(-1, 1, 1)) & (n < text_lengths.view(-1, 1, 1))
    return weights * inside
