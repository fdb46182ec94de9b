"""A deliberately plain, NVIDIA-style teacher-forced decoder loop, for tests and benchmarks only.

It runs the SAME modules as `model.Decoder` the straightforward way: prenet per step, the inputs
concatenated into `nn.LSTMCell` calls, the location layer as conv then dense, and (optionally)
the memory projection recomputed at every step. tests/test_model.py and tests/test_cuda.py compare
it with the optimised `Decoder.decode_step` to show both compute the same function;
bench/train_throughput.py's `--loop reference` times it as the baseline.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch.nn import functional as F

from commons import decoder_lengths, sequence_mask
from decoder_step import DropoutMasks
from model import Decoder, DecoderOutput, Tacotron2, Tacotron2Output


def _dropout(x: torch.Tensor, p: float, training: bool, masks: Optional[torch.Tensor],
             step: int) -> torch.Tensor:
    """F.dropout, or the given (steps, B, H) multipliers of this step."""
    if masks is not None:
        return x * masks[step]
    return F.dropout(x, p, training)


def reference_decode(decoder: Decoder, memory: torch.Tensor, mel: torch.Tensor,
                     text_lengths: torch.Tensor, per_step_memory_projection: bool = False,
                     dropout_masks: Optional[DropoutMasks] = None) -> DecoderOutput:
    """Teacher-forced decoding, one module call at a time.

    Args:
        decoder: the model's decoder (its weights are used as they are).
        memory: (B, N, E) encoder outputs.
        mel: (B, n_mel, T) targets; step s is fed frame s * r - 1 (zeros at step 0).
        text_lengths: Long (B,).
        per_step_memory_projection: recompute `memory_layer(memory)` at every step (NVIDIA
            computes it once per batch).
        dropout_masks: (steps, B, H) multipliers for the attention and decoder LSTM dropouts
            instead of drawing them (to compare with a loop that drew its own).

    Returns:
        `DecoderOutput` (mel (B, n_mel, T), gate (B, T), alignments (B, steps, N)), as
        `Decoder.forward`.
    """
    b, n_mel, t_max = mel.shape
    r = decoder.n_frames_per_step
    steps = decoder_lengths(t_max, r)
    masks = dropout_masks or DropoutMasks(None, None)
    n_tokens = memory.shape[1]
    attention = decoder.attention_layer
    pad = ~sequence_mask(text_lengths, n_tokens)  # (B, N)

    h_att = memory.new_zeros(b, decoder.attention_rnn_dim)
    c_att = memory.new_zeros(b, decoder.attention_rnn_dim)
    h_dec = memory.new_zeros(b, decoder.decoder_rnn_dim)
    c_dec = memory.new_zeros(b, decoder.decoder_rnn_dim)
    weights = memory.new_zeros(b, n_tokens)
    weights_cum = memory.new_zeros(b, n_tokens)
    context = memory.new_zeros(b, memory.shape[2])
    processed_memory = attention.memory_layer(memory)  # (B, N, A)

    frames, gates, alignments = [], [], []
    for s in range(steps):
        previous = mel.new_zeros(b, n_mel) if s == 0 else mel[:, :, s * r - 1]
        x = decoder.prenet(previous)
        h_att, c_att = decoder.attention_rnn(torch.cat((x, context), -1), (h_att, c_att))
        h_att = _dropout(h_att, decoder.p_attention_dropout, decoder.training, masks.attention, s)

        if per_step_memory_projection:
            processed_memory = attention.memory_layer(memory)
        query = attention.query_layer(h_att.unsqueeze(1))  # (B, 1, A)
        weights_cat = torch.cat((weights.unsqueeze(1), weights_cum.unsqueeze(1)), 1)  # (B,2,N)
        location = attention.location_layer(weights_cat)  # (B, N, A)
        energies = attention.v(torch.tanh(query + location + processed_memory)).squeeze(-1)
        energies = energies.masked_fill(pad, float("-inf"))
        weights = F.softmax(energies, dim=1)  # (B, N)
        context = torch.bmm(weights.unsqueeze(1), memory).squeeze(1)  # (B, E)
        weights_cum = weights_cum + weights

        h_dec, c_dec = decoder.decoder_rnn(torch.cat((h_att, context), -1), (h_dec, c_dec))
        h_dec = _dropout(h_dec, decoder.p_decoder_dropout, decoder.training, masks.decoder, s)
        hidden_context = torch.cat((h_dec, context), dim=1)
        frames.append(decoder.linear_projection(hidden_context))
        gates.append(decoder.gate_layer(hidden_context))
        alignments.append(weights)

    # (B, steps, n_mel r) -> (B, steps r, n_mel) -> (B, n_mel, steps r)
    mel_out = torch.stack(frames, 1).view(b, steps * r, n_mel).transpose(1, 2)
    gate_out = torch.stack(gates, 1).view(b, steps * r)
    return DecoderOutput(mel_out[:, :, :t_max], gate_out[:, :t_max], torch.stack(alignments, 1))


def reference_forward(model: Tacotron2, text: torch.Tensor, text_lengths: torch.Tensor,
                      mel: torch.Tensor, mel_lengths: torch.Tensor,
                      per_step_memory_projection: bool = False,
                      dropout_masks: Optional[DropoutMasks] = None) -> Tacotron2Output:
    """`Tacotron2.forward` with the plain decoder loop in place of the optimised one."""
    memory = model.encode(text, text_lengths)
    decoded = reference_decode(model.decoder, memory, mel, text_lengths,
                               per_step_memory_projection, dropout_masks)
    keep = sequence_mask(mel_lengths, mel.shape[2]) if model.mask_padding else None
    mel_out, mel_postnet, gate = model._finish(decoded.mel, decoded.gate, keep)
    return Tacotron2Output(mel_out, mel_postnet, gate, decoded.alignments)
