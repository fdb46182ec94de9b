"""Small pure helpers shared by the model, the loss and the diagnostics.

Every helper is device-agnostic: tensors are built on the device of the lengths passed in.
"""
from __future__ import annotations

from typing import Optional

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


def decoder_lengths(mel_lengths: torch.Tensor, n_frames_per_step: int) -> torch.Tensor:
    """Decoder steps per utterance, `ceil(mel_len / r)`.

    Args:
        mel_lengths: Long (B,) mel frames.
        n_frames_per_step: r, mel frames produced per decoder step.

    Returns:
        Long (B,) on the device of `mel_lengths`.
    """
    r = int(n_frames_per_step)
    return torch.div(mel_lengths + (r - 1), r, rounding_mode="floor")


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
