"""The decoder step's values and the tricks that make the step fast; `model.Decoder` uses them.

`model.py` keeps NVIDIA's module tree (what a reader of NVIDIA's Tacotron 2 looks for); this
module holds what differs from NVIDIA's decoder only for speed, with the reason for each trick:

* `DecoderState`, `StepInput`, `MemoryContext`, `StepOutput`: the step is a function of explicit
  values instead of attributes on `self`, so one `Decoder.decode_step` serves teacher forcing and
  free running, can be compiled, and can be replayed on static buffers (`decoder_graphs.py`).
* `MemoryContext` holds what is fixed for a batch and would otherwise be recomputed at every one
  of hundreds of steps: the memory projection, the text mask, the concatenated LSTM weights, and
  the location layer folded into one kernel.
* `StepwiseWeightGrad` + `StepHistory`: in teacher forcing each step multiplies a (B, in) input by
  the same three weights. Autograd would form each weight's gradient as one thin (K = B) product
  per step plus an accumulation; instead the step uses detached weights, and the gradient is
  formed in backward as ONE product over all steps, from the states the loop recorded.
* `autocast_cast`: autocast caches casts of leaf parameters only; the concatenated weights are
  not leaves and would be cast again at every step, so they are cast once per batch.
* `lstm_cell`: the LSTM cell written out on `nn.LSTMCell`'s parameters so that its input product
  can be split (the prenet part runs for all steps in one product before the loop), with the
  cell state kept in float32 under bf16/fp16 autocast (it accumulates over hundreds of steps).
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Tuple

import torch
from torch.autograd.function import once_differentiable


class DecoderState(NamedTuple):
    """Recurrent state between decoder steps; LSTM states float32 (float64 in a double model)."""
    attention_hidden: torch.Tensor  # (B, attention_rnn_dim)
    attention_cell: torch.Tensor  # (B, attention_rnn_dim)
    decoder_hidden: torch.Tensor  # (B, decoder_rnn_dim)
    decoder_cell: torch.Tensor  # (B, decoder_rnn_dim)
    attention_weights: torch.Tensor  # (B, N) previous step's attention
    attention_weights_cum: torch.Tensor  # (B, N) sum of all previous attentions
    attention_context: torch.Tensor  # (B, encoder_embedding_dim)


class StepInput(NamedTuple):
    """Per-step additive terms of the three products in `Decoder.decode_step`."""
    attention_gates: torch.Tensor  # (B, 4 H_att) prenet part of the attention LSTM + its biases
    decoder_bias: torch.Tensor  # (B, 4 H_dec) or (4 H_dec,): decoder LSTM biases
    output_bias: torch.Tensor  # (B, n_mel r + r) or (n_mel r + r,): projection and gate biases


class DropoutMasks(NamedTuple):
    """Given dropout multipliers (0 or 1 / (1 - p)) for one step; None = no dropout there.

    The static loop (`decoder_graphs.py`) draws them for all steps at once, and its backward
    recomputes a step with the same masks.
    """
    attention: Optional[torch.Tensor]  # (B, attention_rnn_dim)
    decoder: Optional[torch.Tensor]  # (B, decoder_rnn_dim)


class StepOutput(NamedTuple):
    """What one `Decoder.decode_step` returns."""
    frames: torch.Tensor  # (B, n_mel * r)
    gate: torch.Tensor  # (B, r) stop logits
    attention: torch.Tensor  # (B, N) this step's attention weights
    state: DecoderState  # the state after this step


class MemoryContext(NamedTuple):
    """Everything the decoder step needs that is fixed for a batch; built once per batch."""
    memory: torch.Tensor  # (B, N, E) encoder outputs
    processed_memory: torch.Tensor  # (B, A, N) memory_layer(memory), channels first
    pad_mask: torch.Tensor  # Bool (B, 1, N): True on padded tokens
    mask_value: float  # finite score for padded tokens (finfo.min of the score dtype)
    score_dtype: torch.dtype  # attention softmax and LSTM cell states: float32 or float64
    attention_rnn_weight_t: torch.Tensor  # (E + H_att, 4 H_att): [W_ih context cols | W_hh]^T
    query_weight_t: torch.Tensor  # (H_att, A)
    location_weight: torch.Tensor  # (A, 2 K): location_dense folded into location_conv, flattened
    v_weight: torch.Tensor  # (1, A)
    decoder_rnn_weight_t: torch.Tensor  # (H_att + E + H_dec, 4 H_dec): [W_ih | W_hh]^T
    decoder_rnn_bias: torch.Tensor  # (4 H_dec,) b_ih + b_hh
    output_weight_t: torch.Tensor  # (H_dec + E, n_mel r + r): [projection; gate]^T
    output_bias: torch.Tensor  # (n_mel r + r,)
    # Teacher forcing with autograd: the three weights above are detached and these are the live
    # (attention_rnn, decoder_rnn, output) weights, whose gradients `StepwiseWeightGrad` forms
    # once over all steps. None otherwise.
    live_weights: Optional[Tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    # Free-running only: tokens after the previous step's focus that the next step may attend to
    # (hp.attention_window); 0 = no window.
    attention_window: int = 0


class StepHistory:
    """Detached states of a teacher-forced loop; rebuilds the inputs of the step products.

    The inputs of the three products of step s are functions of the states:
    attention LSTM `[context_{s-1} | h_att_{s-1}]`, decoder LSTM `[h_att_s | context_s |
    h_dec_{s-1}]`, projection `[h_dec_s | context_s]` (index -1 is the zero initial state).
    The eager loop `append`s each step's state; the static loop hands over its stacked states
    with `set_stacked`.
    """

    def __init__(self, initial: Optional[DecoderState] = None) -> None:
        self.states: List[tuple] = []
        self.initial = None if initial is None else (
            initial.attention_hidden, initial.attention_context, initial.decoder_hidden)
        self._stacked: Optional[tuple] = None

    def append(self, state: DecoderState) -> None:
        # Detached: holding graph tensors here would make a reference cycle through the graph.
        self.states.append((state.attention_hidden.detach(), state.attention_context.detach(),
                            state.decoder_hidden.detach()))

    def set_stacked(self, attention_hidden: torch.Tensor, attention_context: torch.Tensor,
                    decoder_hidden: torch.Tensor) -> None:
        """All states at once, each (S + 1, B, dim) with the initial state first."""
        self._stacked = (attention_hidden.detach(), attention_context.detach(),
                         decoder_hidden.detach())

    def inputs(self, which: int, dtype: torch.dtype) -> torch.Tensor:
        """(S, B, in) inputs of product `which` (0 attention LSTM, 1 decoder LSTM, 2 output)."""
        if self._stacked is None:
            if self.initial is None:
                raise RuntimeError("decoder_step.py: StepHistory has no states; the loop that "
                                   "owns it never ran")
            # (S+1, B, dim) each, the initial state first.
            self._stacked = tuple(torch.stack([init.detach()] + [s[i] for s in self.states])
                                  for i, init in enumerate(self.initial))
        h_att, context, h_dec = (t.to(dtype) for t in self._stacked)
        if which == 0:
            return torch.cat((context[:-1], h_att[:-1]), 2)
        if which == 1:
            return torch.cat((h_att[1:], context[1:], h_dec[:-1]), 2)
        return torch.cat((h_dec[1:], context[1:]), 2)


class StepwiseWeightGrad(torch.autograd.Function):
    """Identity on a stack of per-step additive terms that also carries a weight's gradient.

    The decoder loop computes `addmm(base[s], x_s, weight.detach().t())` at each step s. The
    gradient reaching `base` is then every step's pre-activation gradient G (S, B, out), and the
    weight's gradient is one product `G.reshape(-1, out)^T @ X.reshape(-1, in)` (X from
    `StepHistory`), instead of S thin (K = B) products and S gradient accumulations.
    """

    @staticmethod
    def forward(ctx, base: torch.Tensor, weight: torch.Tensor, history: StepHistory,
                which: int) -> torch.Tensor:
        ctx.history, ctx.which, ctx.weight_dtype = history, which, weight.dtype
        return base.view_as(base)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor):
        grad_weight = None
        if ctx.needs_input_grad[1]:
            dtype = torch.float64 if ctx.weight_dtype == torch.float64 else torch.float32
            x = ctx.history.inputs(ctx.which, dtype)  # (S, B, in)
            g = grad.reshape(-1, grad.shape[-1]).to(dtype)  # (S B, out)
            grad_weight = (g.t() @ x.reshape(-1, x.shape[-1])).to(ctx.weight_dtype)
        return grad, grad_weight, None, None


def autocast_cast(t: torch.Tensor) -> torch.Tensor:
    """Casts a per-batch derived weight to the autocast dtype once, instead of once per step.

    Autocast caches casts of leaf parameters only; a weight built from them (a concatenation)
    would otherwise be cast again at every decoder step.
    """
    device_type = t.device.type
    if torch.is_autocast_enabled(device_type):
        return t.to(torch.get_autocast_dtype(device_type))
    return t


def stop_update(gate: torch.Tensor, threshold, step, steps_taken: torch.Tensor,
                finished: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """The stop rule of free-running decoding, applied after decoder step `step` (0-based).

    An item stops at the first step where any of its r gate logits has sigmoid above
    `threshold` (a float, or a 0-dim tensor on the device); its length is that step + 1.

    Args:
        gate: (B, r) gate logits of the step.
        step: the step, an int or a 0-dim Long tensor on the device (a CUDA graph's counter).
        steps_taken, finished: (B,) Long and Bool, as they were before the step.

    Returns:
        (steps_taken, finished) after the step; no host synchronisation.
    """
    stop = (torch.sigmoid(gate.float()) > threshold).any(1)
    return torch.where(stop & ~finished, step + 1, steps_taken), finished | stop


def lstm_cell(gates: torch.Tensor, cell: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """LSTM cell update from pre-activation gates in PyTorch's (i, f, g, o) order.

    Args:
        gates: (B, 4H) `x W_ih^T + h W_hh^T + b_ih + b_hh`, possibly bf16/fp16 under autocast.
        cell: (B, H) previous cell state in float32 (or float64).

    Returns:
        (hidden, cell), both (B, H) in the dtype of `cell`.
    """
    gates = gates.to(cell.dtype)  # the cell state accumulates over hundreds of steps: keep fp32
    i, f, g, o = gates.chunk(4, 1)
    cell = torch.addcmul(torch.sigmoid(f) * cell, torch.sigmoid(i), torch.tanh(g))
    hidden = torch.sigmoid(o) * torch.tanh(cell)
    return hidden, cell
