"""Masked Tacotron 2 losses, the guided-attention loss and its weight schedule.

Unlike NVIDIA's loss (means over the padded batch), every term here is a mean over the valid
elements only, so the amount of padding in a batch changes nothing.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch.nn import functional as F

from commons import decoder_lengths as compute_decoder_lengths
from commons import guided_attention_matrix, sequence_mask
from hparams import HParams


class LossParts(NamedTuple):
    """Scalar tensors; `guided_attn` is the raw loss, `total` includes its weight."""
    total: torch.Tensor
    mel: torch.Tensor
    mel_postnet: torch.Tensor
    gate: torch.Tensor
    guided_attn: torch.Tensor


def guided_attention_loss(alignments: torch.Tensor, text_lengths: torch.Tensor,
                          decoder_lengths: torch.Tensor, sigma: float) -> torch.Tensor:
    """Guided-attention loss (Tachibana et al. 2017), per decoder step, batch mean.

    Per utterance `L_b = (1 / T_b) * sum_t sum_n W[t, n] * A[t, n]` over its un-padded block
    (`W` from `commons.guided_attention_matrix`); values outside the block are ignored.

    Args:
        alignments: (B, T, N) attention weights, rows summing to 1 inside each block.
        text_lengths: Long (B,) tokens N_b.
        decoder_lengths: Long (B,) decoder steps T_b (`ceil(mel_len / r)`).
        sigma: width g of the band.

    Returns:
        Scalar float32 tensor: the mean of `L_b` over the batch.
    """
    _, max_t, max_n = alignments.shape
    weights = guided_attention_matrix(text_lengths, decoder_lengths, sigma, max_t, max_n)
    per_item = (weights * alignments.float()).sum(dim=(1, 2))  # (B,)
    steps = decoder_lengths.to(per_item.device, torch.float32).clamp(min=1)
    return (per_item / steps).mean()


def guided_attention_weight(step: int, hp: HParams) -> float:
    """Weight of the guided-attention term at an optimizer step (a pure function).

    `w = guide_loss_weight * max(guide_lowbound, guide_scale * guide_decay ** step) * d(step)`
    with `d = 1` before `guide_decay_start`, then falling linearly to 0 over `guide_decay_steps`
    (reaching 0 at `guide_decay_start + guide_decay_steps`); `guide_decay_steps = 0` means no fade
    (`d = 1` always).

    Args:
        step: optimizer step, from 0.
        hp: hparams with the `guide_*` fields.

    Returns:
        The weight, >= 0.
    """
    base = hp.guide_loss_weight * max(hp.guide_lowbound, hp.guide_scale * hp.guide_decay ** step)
    if hp.guide_decay_steps <= 0 or step < hp.guide_decay_start:
        return float(base)
    fade = max(0.0, 1.0 - (step - hp.guide_decay_start) / hp.guide_decay_steps)
    return float(base * fade)


def _masked_mean(values: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Mean of `values` where `keep` (broadcastable, 0/1) is 1; 0 when nothing is kept."""
    keep = keep.expand_as(values)
    return (values * keep).sum() / keep.sum().clamp(min=1)


# hp.mel_loss -> elementwise distance of a prediction's error
_DISTANCES = {"mse": torch.square, "l1": torch.abs}


class Tacotron2Loss:
    """Mel, postnet-mel, gate and guided-attention losses over the true lengths only.

    * mel, mel_postnet: squared error (`mel_loss="mse"`) or absolute error (`"l1"`) summed over
      valid frames and channels, divided by their count (frames `t < mel_len`).
    * gate: BCE with logits (`pos_weight = gate_positive_weight`) over frames `t < mel_len`; its
      target is 1 on the last real frame only (later frames are padding and are not scored).
    * guided_attn: `guided_attention_loss` with `decoder_lengths = ceil(mel_len / r)`; computed
      at every step (it is cheap) so it can be logged when its weight is 0.

    Args:
        hp: hparams (`n_frames_per_step`, `gate_positive_weight`, `guide_sigma`, `mel_loss`).
    """

    def __init__(self, hp: HParams) -> None:
        self.distance = _DISTANCES[hp.mel_loss]
        self.n_frames_per_step = hp.n_frames_per_step
        self.gate_positive_weight = hp.gate_positive_weight
        self.guide_sigma = hp.guide_sigma

    def __call__(self, output, batch, guide_weight: float) -> LossParts:
        """Losses of a model output against its batch.

        Args:
            output: `model.Tacotron2Output` (mel and mel_postnet (B, n_mel, T), gate (B, T),
                alignments (B, ceil(T / r), N)).
            batch: `data_utils.Batch` (mel (B, n_mel, T), gate (B, T), text_lengths,
                mel_lengths).
            guide_weight: weight of the guided-attention term in `total`.

        Returns:
            `LossParts`; computed in float32 whatever the autocast dtype of the output.
        """
        mel_target = batch.mel.float()
        keep = sequence_mask(batch.mel_lengths.to(mel_target.device), mel_target.shape[2])
        keep = keep.to(torch.float32)  # (B, T)
        keep_frames = keep.unsqueeze(1)  # (B, T) -> (B, 1, T)
        mel = _masked_mean(self.distance(output.mel.float() - mel_target), keep_frames)
        mel_postnet = _masked_mean(self.distance(output.mel_postnet.float() - mel_target),
                                   keep_frames)
        pos_weight = torch.tensor(self.gate_positive_weight, device=mel_target.device)
        gate_bce = F.binary_cross_entropy_with_logits(
            output.gate.float(), batch.gate.float(), pos_weight=pos_weight, reduction="none")
        gate = _masked_mean(gate_bce, keep)
        steps = compute_decoder_lengths(batch.mel_lengths, self.n_frames_per_step)
        guided = guided_attention_loss(output.alignments, batch.text_lengths.to(steps.device),
                                       steps, self.guide_sigma)
        total = mel + mel_postnet + gate + guide_weight * guided
        return LossParts(total, mel, mel_postnet, gate, guided)
