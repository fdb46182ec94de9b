"""Tacotron 2 with NVIDIA's state_dict names and a decoder step built for speed.

The module tree and parameter names are NVIDIA's (`embedding`, `encoder.convolutions.i.0.conv`,
`decoder.attention_rnn`, `decoder.attention_layer.location_layer.location_conv`, ...), so their
published checkpoints load as they are, and each computation sits where NVIDIA has it: the
attention's energies and softmax in `Attention`, the recurrent step in `Decoder`. What differs is
how the decoder runs; the machinery lives in two modules of its own:

* `decoder_step.py`: one `Decoder.decode_step(step_input, state, memory_context)` serves
  teacher-forced training and free-running inference, on explicit state values; per-batch work
  is done once (`MemoryContext`); in teacher forcing the prenet and its share of the attention
  LSTM's input product run for all steps in one product before the loop (`Decoder.input_gates`),
  and the step weights' gradients are formed in backward as one product over all steps
  (`StepwiseWeightGrad`); LSTM cells keep their state in float32 under autocast.
* `decoder_graphs.py` (`hp.cuda_graphs`): the same step on static buffers, replayed as one CUDA
  graph per step on a GPU, with a recomputing backward.

Attention scores are masked with a finite value and normalised in float32, so bf16/fp16
autocast stays finite. Text padding is masked everywhere it could leak (encoder convolutions,
attention), and the postnet sees zeros beyond each item's length, so a padded batch gives each
item the result it gets alone.
"""
from __future__ import annotations

from math import sqrt
from typing import Callable, List, NamedTuple, Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from commons import decoder_lengths, sequence_mask
from decoder_graphs import StaticDecoderLoop
from decoder_step import (DecoderState, DropoutMasks, MemoryContext, StepHistory, StepInput,
                          StepOutput, StepwiseWeightGrad, autocast_cast, lstm_cell,
                          stop_update)
from hparams import HParams
from layers import ConvNorm, LinearNorm
from text.symbols import get_symbols

# Gate logit written into padded frames: sigmoid(1e3) = 1, "stopped" (NVIDIA's value).
PADDED_GATE_LOGIT = 1e3

__all__ = ["Tacotron2", "Tacotron2Output", "InferenceOutput", "DecoderOutput",
           "DecoderInferenceOutput", "DecoderState", "StepInput", "MemoryContext", "Decoder",
           "Encoder", "Attention", "LocationLayer", "Prenet", "Postnet", "PADDED_GATE_LOGIT"]


class Tacotron2Output(NamedTuple):
    """Teacher-forced outputs (padded frames masked when `hp.mask_padding`)."""
    mel: torch.Tensor  # (B, n_mel, T) decoder output
    mel_postnet: torch.Tensor  # (B, n_mel, T) after the postnet residual
    gate: torch.Tensor  # (B, T) stop logits
    alignments: torch.Tensor  # (B, ceil(T / r), N) attention weights per decoder step


class InferenceOutput(NamedTuple):
    """Free-running outputs, padded beyond each item's length (mel 0, gate 1e3, attention 0)."""
    mel: torch.Tensor  # (B, n_mel, T) with T = steps * r
    mel_postnet: torch.Tensor  # (B, n_mel, T)
    gate: torch.Tensor  # (B, T) stop logits
    alignments: torch.Tensor  # (B, steps, N)
    mel_lengths: torch.Tensor  # Long (B,), a multiple of r
    hit_max_steps: torch.Tensor  # Bool (B,): the gate never fired within max_decoder_steps


class DecoderOutput(NamedTuple):
    """`Decoder.forward`: teacher-forced outputs before the postnet and the padding masks."""
    mel: torch.Tensor  # (B, n_mel, T)
    gate: torch.Tensor  # (B, T) stop logits
    alignments: torch.Tensor  # (B, ceil(T / r), N)


class DecoderInferenceOutput(NamedTuple):
    """`Decoder.inference`: free-running outputs, not yet masked beyond each item's length."""
    mel: torch.Tensor  # (B, n_mel, steps r)
    gate: torch.Tensor  # (B, steps r) stop logits
    alignments: torch.Tensor  # (B, steps, N)
    steps: torch.Tensor  # Long (B,): decoder steps until the item's gate fired
    hit_max_steps: torch.Tensor  # Bool (B,): the gate never fired within max_decoder_steps


class LocationLayer(nn.Module):
    """Location features of the previous and cumulative attention (NVIDIA names)."""

    def __init__(self, attention_n_filters: int, attention_kernel_size: int,
                 attention_dim: int) -> None:
        super().__init__()
        self.location_conv = ConvNorm(2, attention_n_filters, kernel_size=attention_kernel_size,
                                      bias=False)
        self.location_dense = LinearNorm(attention_n_filters, attention_dim, bias=False,
                                         w_init_gain="tanh")

    def folded_weight(self) -> torch.Tensor:
        """The conv and the dense layer as one convolution kernel.

        Returns:
            (attention_dim, 2, kernel_size): `dense.weight @ conv.weight` over the filters.
        """
        conv = self.location_conv.conv.weight  # (F, 2, K)
        dense = self.location_dense.linear_layer.weight  # (A, F)
        # (A, F) @ (F, 2K) -> (A, 2K) -> (A, 2, K)
        return (dense @ conv.flatten(1)).view(dense.shape[0], 2, conv.shape[-1])

    def forward(self, attention_weights_cat: torch.Tensor) -> torch.Tensor:
        """The unfolded computation: (B, 2, N) -> (B, N, attention_dim)."""
        processed = self.location_conv(attention_weights_cat)  # (B, F, N)
        return self.location_dense(processed.transpose(1, 2))  # (B, F, N) -> (B, N, F) -> (B, N, A)



# The monotonic window of free-running decoding (hp.attention_window) reaches this many tokens
# back from the previous focus: a step may linger, never jump back.
WINDOW_BACK = 1


class Attention(nn.Module):
    """Location-sensitive attention (NVIDIA names): energies, mask, softmax and context.

    The per-step computation is NVIDIA's; it reads the batch's precomputed pieces (memory
    projection, text mask, the folded location kernel) from the `MemoryContext`.
    """

    def __init__(self, attention_rnn_dim: int, embedding_dim: int, attention_dim: int,
                 attention_location_n_filters: int, attention_location_kernel_size: int) -> None:
        super().__init__()
        if attention_location_kernel_size % 2 != 1:
            raise ValueError("model.py: attention_location_kernel_size must be odd, got "
                             f"{attention_location_kernel_size}")
        self.query_layer = LinearNorm(attention_rnn_dim, attention_dim, bias=False,
                                      w_init_gain="tanh")
        self.memory_layer = LinearNorm(embedding_dim, attention_dim, bias=False,
                                       w_init_gain="tanh")
        self.v = LinearNorm(attention_dim, 1, bias=False)
        self.location_layer = LocationLayer(attention_location_n_filters,
                                            attention_location_kernel_size, attention_dim)
        self.location_padding = (attention_location_kernel_size - 1) // 2

    def process_memory(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, N, E) -> (B, A, N): the memory projection, once per batch, channels first."""
        return self.memory_layer(memory).transpose(1, 2).contiguous()

    def step_weights(self) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(query weight^T (H_att, A), folded location kernel (A, 2K), v (1, A)), cast once
        per batch to the autocast dtype."""
        return (autocast_cast(self.query_layer.linear_layer.weight).t(),
                autocast_cast(self.location_layer.folded_weight()).flatten(1),
                autocast_cast(self.v.linear_layer.weight))

    def get_alignment_energies(self, query: torch.Tensor, attention_weights: torch.Tensor,
                               attention_weights_cum: torch.Tensor,
                               ctx: MemoryContext) -> torch.Tensor:
        """Unnormalised scores of one step, on the (B, A, N) grid.

        Args:
            query: (B, attention_rnn_dim) attention LSTM output.
            attention_weights: (B, N) previous step's attention.
            attention_weights_cum: (B, N) sum of all previous attentions.
            ctx: the batch's MemoryContext.

        Returns:
            (B, 1, N) energies in the score dtype (float32, or float64 in a double model).
        """
        previous = torch.stack((attention_weights, attention_weights_cum), 1)  # (B, 2, N)
        # The location convolution as one product over sliding windows: for (B, 2, N) inputs
        # and 31 taps this is several times faster than conv1d, forward and backward, on CPU.
        p = self.location_padding
        windows = F.pad(previous, (p, p)).unfold(2, 2 * p + 1, 1)  # (B, 2, N, K)
        windows = windows.transpose(1, 2).flatten(2)  # (B, N, 2, K) -> (B, N, 2K)
        location = torch.matmul(ctx.location_weight, windows.transpose(1, 2))  # (A,2K)@(B,2K,N)
        processed_query = torch.mm(query, ctx.query_weight_t).unsqueeze(2)  # (B, A) -> (B, A, 1)
        hidden = torch.tanh(location + ctx.processed_memory + processed_query)  # (B, A, N)
        return torch.matmul(ctx.v_weight, hidden).to(ctx.score_dtype)  # (1,A)@(B,A,N)->(B,1,N)

    @staticmethod
    def outside_window(attention_weights: torch.Tensor, ctx: MemoryContext) -> torch.Tensor:
        """Bool (B, 1, N): tokens outside [focus - WINDOW_BACK, focus + ctx.attention_window]
        around the previous step's focus (its argmax); the first step's focus is token 0."""
        focus = attention_weights.argmax(dim=1, keepdim=True)  # (B, 1)
        positions = torch.arange(attention_weights.shape[1], device=attention_weights.device)
        offset = positions.unsqueeze(0) - focus  # (B, N)
        return ((offset < -WINDOW_BACK) | (offset > ctx.attention_window)).unsqueeze(1)

    def forward(self, attention_hidden: torch.Tensor, attention_weights: torch.Tensor,
                attention_weights_cum: torch.Tensor,
                ctx: MemoryContext) -> Tuple[torch.Tensor, torch.Tensor]:
        """One attention step.

        Args:
            attention_hidden: (B, attention_rnn_dim) attention LSTM output (the query).
            attention_weights: (B, N) previous step's attention.
            attention_weights_cum: (B, N) sum of all previous attentions.
            ctx: the batch's MemoryContext.

        Returns:
            (context (B, E), attention weights (B, N)); padded tokens get exactly 0.
        """
        energies = self.get_alignment_energies(attention_hidden, attention_weights,
                                               attention_weights_cum, ctx)
        # finfo.min rather than -inf keeps the scores finite under bf16/fp16 autocast.
        energies = energies.masked_fill(ctx.pad_mask, ctx.mask_value)
        if ctx.attention_window:
            energies = energies.masked_fill(self.outside_window(attention_weights, ctx),
                                            ctx.mask_value)
        weights = torch.softmax(energies, dim=2)  # (B, 1, N)
        context = torch.bmm(weights, ctx.memory).squeeze(1)  # (B,1,N)@(B,N,E) -> (B,E)
        return context, weights.squeeze(1)  # (B, 1, N) -> (B, N)


class Prenet(nn.Module):
    """Two ReLU layers without bias; dropout stays on at inference (as in the paper)."""

    def __init__(self, in_dim: int, sizes: List[int], p_dropout: float) -> None:
        super().__init__()
        in_sizes = [in_dim] + sizes[:-1]
        self.layers = nn.ModuleList(
            [LinearNorm(i, o, bias=False) for i, o in zip(in_sizes, sizes)])
        self.p_dropout = p_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(..., in_dim) -> (..., sizes[-1])."""
        for linear in self.layers:
            x = F.relu(linear(x))
            if self.p_dropout > 0:  # p = 0 means identity, not an RNG call
                x = F.dropout(x, p=self.p_dropout, training=True)
        return x


class Postnet(nn.Module):
    """Five 1-D convolutions with BatchNorm predicting a residual for the decoder's mel."""

    def __init__(self, hp: HParams) -> None:
        super().__init__()
        n_mel, dim, k = hp.n_mel_channels, hp.postnet_embedding_dim, hp.postnet_kernel_size
        # NVIDIA's layout: first (n_mel -> dim), n - 2 middle (dim -> dim), last (dim -> n_mel).
        shapes = [(n_mel, dim, "tanh")]
        shapes += [(dim, dim, "tanh")] * (hp.postnet_n_convolutions - 2)
        shapes += [(dim, n_mel, "linear")]
        self.convolutions = nn.ModuleList([
            nn.Sequential(ConvNorm(i, o, kernel_size=k, w_init_gain=gain), nn.BatchNorm1d(o))
            for i, o, gain in shapes])
        self.p_dropout = hp.p_postnet_dropout

    def forward(self, x: torch.Tensor, keep: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Residual for the mel.

        Args:
            x: (B, n_mel, T) decoder mel.
            keep: optional (B, 1, T) 1.0 on valid frames; padded frames are zeroed before every
                convolution, so padding (and what an early-stopped item decodes beyond its end)
                never reaches valid frames.

        Returns:
            (B, n_mel, T).
        """
        last = len(self.convolutions) - 1
        for i, layer in enumerate(self.convolutions):
            if keep is not None:
                x = x * keep
            x = layer(x)
            if i < last:
                x = torch.tanh(x)
            x = F.dropout(x, self.p_dropout, self.training)
        return x


class Encoder(nn.Module):
    """Convolutions then a bidirectional LSTM over the text embeddings."""

    def __init__(self, hp: HParams) -> None:
        super().__init__()
        dims = [hp.symbols_embedding_dim] + [hp.encoder_embedding_dim] * hp.encoder_n_convolutions
        self.convolutions = nn.ModuleList([
            nn.Sequential(
                ConvNorm(dims[i], dims[i + 1], kernel_size=hp.encoder_kernel_size,
                         w_init_gain="relu"),
                nn.BatchNorm1d(dims[i + 1]))
            for i in range(hp.encoder_n_convolutions)])
        self.lstm = nn.LSTM(dims[-1], hp.encoder_embedding_dim // 2, 1, batch_first=True,
                            bidirectional=True)
        self.p_dropout = hp.p_encoder_dropout

    def forward(self, x: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """Encodes embedded text.

        Args:
            x: (B, symbols_embedding_dim, N) embeddings, channels first.
            text_lengths: Long (B,) true lengths, any order, on x's device or on the CPU: the
                packed LSTM wants them on the CPU, and lengths kept there (pinned, as the
                DataLoader delivers them) spare a device-to-host copy, which waits for the GPU.

        Returns:
            (B, N, encoder_embedding_dim) with zeros at padded tokens.
        """
        n_tokens = x.shape[2]
        keep = sequence_mask(text_lengths.to(x.device, non_blocking=True), n_tokens)
        keep = keep.unsqueeze(1).to(x.dtype)  # (B, 1, N)
        for layer in self.convolutions:
            # The pad symbol's embedding is not zero; zero it so an item's last tokens see what
            # they see alone (the conv's own zero padding).
            x = F.dropout(F.relu(layer(x * keep)), self.p_dropout, self.training)
        x = x.transpose(1, 2)  # (B, C, N) -> (B, N, C)
        lengths = text_lengths.cpu()  # a no-op for lengths on the CPU
        # Lengths in descending order (as the collate sorts them) need no permutation, whose
        # index pack_padded_sequence would copy to the device (a copy that waits for the GPU).
        descending = bool((lengths[:-1] >= lengths[1:]).all())
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=descending)
        outputs, _ = self.lstm(packed)
        outputs, _ = pad_packed_sequence(outputs, batch_first=True, total_length=n_tokens)
        return outputs


class Decoder(nn.Module):
    """Autoregressive attention decoder producing r mel frames and r gate logits per step."""

    def __init__(self, hp: HParams) -> None:
        super().__init__()
        self.n_mel_channels = hp.n_mel_channels
        self.n_frames_per_step = hp.n_frames_per_step
        self.attention_rnn_dim = hp.attention_rnn_dim
        self.decoder_rnn_dim = hp.decoder_rnn_dim
        self.prenet_dim = hp.prenet_dim
        self.max_decoder_steps = hp.max_decoder_steps
        self.gate_threshold = hp.gate_threshold
        self.p_attention_dropout = hp.p_attention_dropout
        self.p_decoder_dropout = hp.p_decoder_dropout
        e, r = hp.encoder_embedding_dim, hp.n_frames_per_step

        # The step input is one frame (the last of the previous group of r), as in NVIDIA at r=1.
        self.prenet = Prenet(hp.n_mel_channels, [hp.prenet_dim, hp.prenet_dim],
                             hp.p_prenet_dropout)
        self.attention_rnn = nn.LSTMCell(hp.prenet_dim + e, hp.attention_rnn_dim)
        self.attention_layer = Attention(hp.attention_rnn_dim, e, hp.attention_dim,
                                         hp.attention_location_n_filters,
                                         hp.attention_location_kernel_size)
        self.decoder_rnn = nn.LSTMCell(hp.attention_rnn_dim + e, hp.decoder_rnn_dim)
        self.linear_projection = LinearNorm(hp.decoder_rnn_dim + e, hp.n_mel_channels * r)
        self.gate_layer = LinearNorm(hp.decoder_rnn_dim + e, r, bias=True, w_init_gain="sigmoid")
        self.use_compile = hp.compile
        self._compiled_step: Optional[Callable[..., StepOutput]] = None
        # Teacher forcing forms the step weights' gradients once over all steps (see
        # `StepwiseWeightGrad`); False gives the plain per-step autograd (same values).
        self.defer_weight_grads = True
        # The loops on static buffers, replayed as CUDA graphs on a GPU (decoder_graphs.py).
        self.cuda_graphs = hp.cuda_graphs
        self.attention_window = hp.attention_window
        self._static_loop: Optional[StaticDecoderLoop] = None

    # ------------------------------------------------------------------ per-batch preparation
    def memory_context(self, memory: torch.Tensor, text_lengths: torch.Tensor,
                       defer_weight_grads: bool = False) -> MemoryContext:
        """Precomputes what every decoder step of this batch shares.

        Args:
            memory: (B, N, E) encoder outputs.
            text_lengths: Long (B,) true text lengths.
            defer_weight_grads: detach the three step weights; `forward` then forms their
                gradients with `StepwiseWeightGrad`.

        Returns:
            The batch's `MemoryContext`.
        """
        attention = self.attention_layer
        lengths = text_lengths.to(memory.device, non_blocking=True)  # CPU lengths allowed
        pad_mask = ~sequence_mask(lengths, memory.shape[1]).unsqueeze(1)
        score_dtype = torch.float64 if memory.dtype == torch.float64 else torch.float32
        rnn = self.attention_rnn
        # Context columns of W_ih next to W_hh: one product per step for [context | hidden].
        att_w = torch.cat((rnn.weight_ih[:, self.prenet_dim:], rnn.weight_hh), 1)
        dec = self.decoder_rnn
        dec_w = torch.cat((dec.weight_ih, dec.weight_hh), 1)
        out_w = torch.cat((self.linear_projection.linear_layer.weight,
                           self.gate_layer.linear_layer.weight), 0)
        out_b = torch.cat((self.linear_projection.linear_layer.bias,
                           self.gate_layer.linear_layer.bias), 0)
        live = None
        if defer_weight_grads:
            live = (att_w, dec_w, out_w)
            att_w, dec_w, out_w = att_w.detach(), dec_w.detach(), out_w.detach()
        query_weight_t, location_weight, v_weight = attention.step_weights()
        return MemoryContext(
            memory=memory,
            processed_memory=attention.process_memory(memory),
            pad_mask=pad_mask,
            mask_value=torch.finfo(score_dtype).min,
            score_dtype=score_dtype,
            attention_rnn_weight_t=autocast_cast(att_w).t(),
            query_weight_t=query_weight_t,
            location_weight=location_weight,
            v_weight=v_weight,
            decoder_rnn_weight_t=autocast_cast(dec_w).t(),
            decoder_rnn_bias=autocast_cast(dec.bias_ih + dec.bias_hh),
            output_weight_t=autocast_cast(out_w).t(),
            output_bias=autocast_cast(out_b),
            live_weights=live,
        )

    def initial_state(self, memory: torch.Tensor) -> DecoderState:
        """Zero state for a batch; memory is (B, N, E)."""
        b, n, e = memory.shape
        dtype = torch.float64 if memory.dtype == torch.float64 else torch.float32

        def zeros(*shape: int) -> torch.Tensor:
            return torch.zeros(shape, dtype=dtype, device=memory.device)

        return DecoderState(
            attention_hidden=zeros(b, self.attention_rnn_dim),
            attention_cell=zeros(b, self.attention_rnn_dim),
            decoder_hidden=zeros(b, self.decoder_rnn_dim),
            decoder_cell=zeros(b, self.decoder_rnn_dim),
            attention_weights=zeros(b, n),
            attention_weights_cum=zeros(b, n),
            attention_context=memory.new_zeros(b, e),
        )

    def input_gates(self, frames: torch.Tensor) -> torch.Tensor:
        """Prenet and its share of the attention LSTM's pre-activations, for any number of steps.

        Args:
            frames: (..., n_mel) previous frames (zeros for the first step).

        Returns:
            (..., 4 * attention_rnn_dim): `prenet(frames) W_ih[:, :prenet]^T + b_ih + b_hh`.
        """
        rnn = self.attention_rnn
        return F.linear(self.prenet(frames), rnn.weight_ih[:, :self.prenet_dim],
                        rnn.bias_ih + rnn.bias_hh)

    # ------------------------------------------------------------------ the step
    def step_input(self, frame: torch.Tensor, ctx: MemoryContext) -> StepInput:
        """The free-running `StepInput` from the previous frame (B, n_mel)."""
        return StepInput(self.input_gates(frame), ctx.decoder_rnn_bias, ctx.output_bias)

    def _dropout(self, x: torch.Tensor, p: float, mask: Optional[torch.Tensor]) -> torch.Tensor:
        if mask is not None:
            return x * mask
        if self.training and p > 0:
            return F.dropout(x, p, True)
        return x

    def decode_step(self, step_input: StepInput, state: DecoderState, ctx: MemoryContext,
                    masks: Optional[DropoutMasks] = None) -> StepOutput:
        """One decoder step, for teacher forcing and free running alike.

        Args:
            step_input: this step's `StepInput` (`step_input()` when free running).
            state: the previous `DecoderState`.
            ctx: the batch's `MemoryContext`.
            masks: dropout multipliers to use instead of drawing them (the static loop's
                recomputing backward needs the forward's); None draws as usual when training.

        Returns:
            `StepOutput`: frames (B, n_mel * r), gate logits (B, r), attention (B, N) and the
            new `DecoderState`.
        """
        masks = masks or DropoutMasks(None, None)
        # Attention LSTM; the prenet part of its input product arrives precomputed.
        x = torch.cat((state.attention_context, state.attention_hidden), 1)
        gates = torch.addmm(step_input.attention_gates, x, ctx.attention_rnn_weight_t)
        h_att, c_att = lstm_cell(gates, state.attention_cell)
        h_att = self._dropout(h_att, self.p_attention_dropout, masks.attention)

        context, weights = self.attention_layer(h_att, state.attention_weights,
                                                state.attention_weights_cum, ctx)

        # Decoder LSTM on [attention hidden | context | own hidden], one product.
        x = torch.cat((h_att, context, state.decoder_hidden), 1)
        gates = torch.addmm(step_input.decoder_bias, x, ctx.decoder_rnn_weight_t)
        h_dec, c_dec = lstm_cell(gates, state.decoder_cell)
        h_dec = self._dropout(h_dec, self.p_decoder_dropout, masks.decoder)

        # Mel projection and gate in one product, split afterwards.
        x = torch.cat((h_dec, context), 1)
        out = torch.addmm(step_input.output_bias, x, ctx.output_weight_t)
        n_out = self.n_mel_channels * self.n_frames_per_step
        new_state = DecoderState(h_att, c_att, h_dec, c_dec, weights,
                                 state.attention_weights_cum + weights, context)
        return StepOutput(out[:, :n_out], out[:, n_out:], weights, new_state)

    def step_function(self) -> Callable[..., StepOutput]:
        """`decode_step`, or its torch.compile'd version when `hp.compile`."""
        if not self.use_compile:
            return self.decode_step
        if self._compiled_step is None:
            self._compiled_step = torch.compile(self.decode_step, dynamic=True)
        return self._compiled_step

    def static_loop(self) -> StaticDecoderLoop:
        """The loops on static buffers (`hp.cuda_graphs`), created on first use."""
        if self._static_loop is None:
            self._static_loop = StaticDecoderLoop(self)
        return self._static_loop

    # ------------------------------------------------------------------ loops
    def forward(self, memory: torch.Tensor, mel: torch.Tensor,
                text_lengths: torch.Tensor) -> DecoderOutput:
        """Teacher-forced decoding.

        Args:
            memory: (B, N, E) encoder outputs.
            mel: (B, n_mel, T) target mel; step s is fed frame `s * r - 1` (zeros at s = 0).
            text_lengths: Long (B,).

        Returns:
            `DecoderOutput`: mel (B, n_mel, T), gate logits (B, T), alignments
            (B, ceil(T / r), N).
        """
        b, n_mel, t_max = mel.shape
        n_tokens = memory.shape[1]
        r = self.n_frames_per_step
        steps = decoder_lengths(t_max, r)
        frames = mel.transpose(1, 2)  # (B, n_mel, T) -> (B, T, n_mel)
        # The last frame of each group feeds the next step: (B, steps - 1, n_mel).
        previous = frames[:, r - 1::r][:, :steps - 1]
        inputs = torch.cat((frames.new_zeros(b, 1, n_mel), previous), 1)  # (B, steps, n_mel)
        if self.cuda_graphs:
            memory = self.static_loop().pad_text(memory)  # one set of graphs per batch size
        # Weight gradients of the step products are formed once over all steps when training
        # (always in the static loop, whose backward relies on it).
        defer = (self.defer_weight_grads or self.cuda_graphs) and torch.is_grad_enabled()
        ctx = self.memory_context(memory, text_lengths, defer_weight_grads=defer)
        att_terms = self.input_gates(inputs.transpose(0, 1))  # (steps, B, n_mel) -> (steps, B, 4H)
        dec_terms = ctx.decoder_rnn_bias.expand(steps, b, -1)  # (4H,) -> (steps, B, 4H)
        out_terms = ctx.output_bias.expand(steps, b, -1)
        history = None
        if ctx.live_weights is not None:
            history = StepHistory(None if self.cuda_graphs else self.initial_state(memory))
            att_w, dec_w, out_w = ctx.live_weights
            att_terms = StepwiseWeightGrad.apply(att_terms, att_w, history, 0)
            dec_terms = StepwiseWeightGrad.apply(dec_terms, dec_w, history, 1)
            out_terms = StepwiseWeightGrad.apply(out_terms, out_w, history, 2)
        if self.cuda_graphs:
            out_frames, out_gates, weights = self.static_loop().teacher_forced(
                ctx, (att_terms, dec_terms, out_terms), history)  # (steps, B, ...) each
            # (steps, B, ...) -> (B, steps, ...); text padding cut off again.
            out_frames, out_gates = out_frames.transpose(0, 1), out_gates.transpose(0, 1)
            alignments = weights.transpose(0, 1)[:, :, :n_tokens]
        else:
            out_frames, out_gates, alignments = self._eager_loop(
                ctx, att_terms, dec_terms, out_terms, history)
        # (B, steps, n_mel r) -> (B, steps r, n_mel) -> (B, n_mel, steps r)
        mel_out = out_frames.reshape(b, steps * r, n_mel).transpose(1, 2)
        gate_out = out_gates.reshape(b, steps * r)  # (B, steps, r) -> (B, steps r)
        return DecoderOutput(mel_out[:, :, :t_max], gate_out[:, :t_max], alignments)

    def _eager_loop(self, ctx: MemoryContext, att_terms: torch.Tensor, dec_terms: torch.Tensor,
                    out_terms: torch.Tensor, history: Optional[StepHistory]
                    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The teacher-forced loop step by step under autograd; (B, steps, ...) outputs."""
        state = self.initial_state(ctx.memory)
        # unbind, not terms[s]: indexing would make each step's backward write a full-size zero
        # tensor (quadratic in steps); unbind's backward stacks the step gradients once.
        step_inputs = [StepInput(*t) for t in zip(att_terms.unbind(0), dec_terms.unbind(0),
                                                  out_terms.unbind(0))]
        step = self.step_function()
        out_frames, out_gates, out_weights = [], [], []
        for step_input in step_inputs:
            frame, gate, weights, state = step(step_input, state, ctx)
            if history is not None:
                history.append(state)
            out_frames.append(frame)
            out_gates.append(gate)
            out_weights.append(weights)
        return torch.stack(out_frames, 1), torch.stack(out_gates, 1), torch.stack(out_weights, 1)

    def inference(self, memory: torch.Tensor, text_lengths: torch.Tensor
                  ) -> DecoderInferenceOutput:
        """Free-running decoding; each item stops on its own gate.

        An item stops after the first step where any of its r gate probabilities exceeds
        `gate_threshold`, or after `max_decoder_steps`. Finished items keep being computed (the
        batch stays rectangular) until all have stopped; the caller masks beyond each length.

        Args:
            memory: (B, N, E) encoder outputs.
            text_lengths: Long (B,).

        Returns:
            `DecoderInferenceOutput`: mel (B, n_mel, steps r), gate logits (B, steps r),
            alignments (B, steps, N), decoder steps Long (B,), hit_max_steps Bool (B,).
        """
        b, n_tokens = memory.shape[:2]
        n_mel, r = self.n_mel_channels, self.n_frames_per_step
        if self.cuda_graphs:
            ctx = self.memory_context(self.static_loop().pad_text(memory), text_lengths)
            ctx = ctx._replace(attention_window=self.attention_window)
            frames, gates, weights, steps_taken, finished = self.static_loop().free_running(ctx)
            # (steps, B, ...) -> (B, steps, ...); text padding cut off again.
            out_frames, out_gates = frames.transpose(0, 1), gates.transpose(0, 1)
            alignments = weights.transpose(0, 1)[:, :, :n_tokens]
        else:
            out_frames, out_gates, alignments, steps_taken, finished = self._eager_inference(
                memory, text_lengths)
        total = out_frames.shape[1]
        # (B, steps, n_mel r) -> (B, steps r, n_mel) -> (B, n_mel, steps r)
        mel_out = out_frames.reshape(b, total * r, n_mel).transpose(1, 2)
        gate_out = out_gates.reshape(b, total * r)
        return DecoderInferenceOutput(mel_out, gate_out, alignments, steps_taken, ~finished)

    def _eager_inference(self, memory: torch.Tensor, text_lengths: torch.Tensor
                         ) -> Tuple[torch.Tensor, ...]:
        """The free-running loop step by step; (B, steps, ...) outputs, steps and finished."""
        b = memory.shape[0]
        n_mel = self.n_mel_channels
        ctx = self.memory_context(memory, text_lengths)._replace(
            attention_window=self.attention_window)
        state = self.initial_state(memory)
        step = self.step_function()
        frame = memory.new_zeros(b, n_mel)  # the go frame
        steps_taken = torch.zeros(b, dtype=torch.long, device=memory.device)
        finished = torch.zeros(b, dtype=torch.bool, device=memory.device)
        out_frames, out_gates, out_weights = [], [], []
        for s in range(self.max_decoder_steps):
            frames, gate, weights, state = step(self.step_input(frame, ctx), state, ctx)
            out_frames.append(frames)
            out_gates.append(gate)
            out_weights.append(weights)
            steps_taken, finished = stop_update(gate, self.gate_threshold, s, steps_taken,
                                                finished)
            if bool(finished.all()):
                break
            frame = frames[:, -n_mel:]  # the last frame of this group feeds the next step
        steps_taken = torch.where(finished, steps_taken, len(out_frames))
        return (torch.stack(out_frames, 1), torch.stack(out_gates, 1),
                torch.stack(out_weights, 1), steps_taken, finished)


class Tacotron2(nn.Module):
    """Tacotron 2 (Shen et al. 2018) with NVIDIA's parameter names.

    Args:
        hp: the run's hparams; the alphabet size comes from `hp.symbol_set`.
    """

    def __init__(self, hp: HParams) -> None:
        super().__init__()
        self.mask_padding = hp.mask_padding
        self.n_mel_channels = hp.n_mel_channels
        self.n_frames_per_step = hp.n_frames_per_step
        n_symbols = len(get_symbols(hp.symbol_set))
        self.embedding = nn.Embedding(n_symbols, hp.symbols_embedding_dim)
        bound = sqrt(3.0) * sqrt(2.0 / (n_symbols + hp.symbols_embedding_dim))
        self.embedding.weight.data.uniform_(-bound, bound)
        self.encoder = Encoder(hp)
        self.decoder = Decoder(hp)
        self.postnet = Postnet(hp)

    def encode(self, text: torch.Tensor, text_lengths: torch.Tensor) -> torch.Tensor:
        """Long (B, N) ids -> (B, N, encoder_embedding_dim) memory."""
        embedded = self.embedding(text).transpose(1, 2)  # (B, N, C) -> (B, C, N)
        return self.encoder(embedded, text_lengths)

    def _finish(self, mel: torch.Tensor, gate: torch.Tensor,
                keep: Optional[torch.Tensor]
                ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Postnet residual and padding masks; keep is Bool (B, T) or None."""
        if keep is None:
            return mel, mel + self.postnet(mel), gate
        keep_frames = keep.unsqueeze(1)  # (B, T) -> (B, 1, T)
        mel = mel.masked_fill(~keep_frames, 0.0)
        mel_postnet = (mel + self.postnet(mel, keep_frames.to(mel.dtype))).masked_fill(
            ~keep_frames, 0.0)
        return mel, mel_postnet, gate.masked_fill(~keep, PADDED_GATE_LOGIT)

    def forward(self, text: torch.Tensor, text_lengths: torch.Tensor, mel: torch.Tensor,
                mel_lengths: torch.Tensor) -> Tacotron2Output:
        """Teacher-forced pass.

        Args:
            text: Long (B, N) symbol ids, padded with any id.
            text_lengths: Long (B,) in any order, on text's device or on the CPU (see
                `Encoder.forward`).
            mel: (B, n_mel, T) targets fed back as decoder inputs.
            mel_lengths: Long (B,) true frames.

        Returns:
            `Tacotron2Output`; with `hp.mask_padding` frames at or beyond each length are 0 in
            both mels and 1e3 in the gate.
        """
        memory = self.encode(text, text_lengths)
        decoded = self.decoder(memory, mel, text_lengths)
        keep = sequence_mask(mel_lengths, mel.shape[2]) if self.mask_padding else None
        mel_out, mel_postnet, gate = self._finish(decoded.mel, decoded.gate, keep)
        return Tacotron2Output(mel_out, mel_postnet, gate, decoded.alignments)

    def forward_batch(self, batch) -> Tacotron2Output:
        """`forward` on a `data_utils.Batch` (or anything with its fields)."""
        return self.forward(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)

    @torch.no_grad()
    def inference(self, text: torch.Tensor, text_lengths: torch.Tensor) -> InferenceOutput:
        """Free-running synthesis of a batch; call `.eval()` first for deterministic dropout.

        Args:
            text: Long (B, N) symbol ids.
            text_lengths: Long (B,), on text's device or on the CPU (see `Encoder.forward`).

        Returns:
            `InferenceOutput`, padded beyond each `mel_lengths` (mel 0, gate 1e3, attention 0).
        """
        memory = self.encode(text, text_lengths)
        decoded = self.decoder.inference(memory, text_lengths)
        mel_lengths = decoded.steps * self.n_frames_per_step
        mel, mel_postnet, gate = self._finish(decoded.mel, decoded.gate,
                                              sequence_mask(mel_lengths, decoded.mel.shape[2]))
        alignments = decoded.alignments
        step_keep = sequence_mask(decoded.steps, alignments.shape[1]).unsqueeze(2)  # (B,steps,1)
        alignments = alignments.masked_fill(~step_keep, 0.0)
        return InferenceOutput(mel, mel_postnet, gate, alignments, mel_lengths,
                               decoded.hit_max_steps)
