"""Decoder loops on static buffers, replayed as CUDA graphs on a GPU (`hp.cuda_graphs`).

Why: at batch 64-128 on a GPU one decoder step is ~50 small kernels forward and ~75 backward
(counted with torch.profiler on the eager step), and launching each one from Python and
autograd costs more than running it, so an eager loop of ~800 steps per batch is bound by kernel
launches, not by arithmetic. Here a step reads and writes only preallocated buffers, indexed
by a step counter that lives on the device, so every step issues the same kernels on the same
addresses: on CUDA the step is captured once as a CUDA graph per (batch size, text capacity,
mode) and every later step is one graph launch.

Teacher forcing (`_TeacherForcing`, one autograd Function around the whole loop):
  forward   step s reads state s from a stack of packed states and writes state s + 1 and the
            frames, gate logits and attention of step s; no autograd graph is recorded.
  backward  from the last step down, a second captured graph recomputes step s from its saved
            input state under autograd and back-propagates through that one step (activation
            recomputation: one extra forward step per step instead of an autograd graph over
            the whole loop). The three step weights get their gradients once over all steps
            from `decoder_step.StepwiseWeightGrad`, as in the eager loop.
  The attention and decoder LSTM dropout masks are drawn for all steps before the loop, so the
  recomputed step sees the masks the forward step saw.
Free running: one graph per step too. The host reads the stop flags every `STOP_CHECK_EVERY`
steps instead of after every step (each read is a device-to-host synchronisation) and cuts the
output where the last item stopped, so the result is the eager loop's.

Text is padded (padded tokens are masked exactly as in the eager loop) to the batch size's text
capacity: the longest text seen so far, rounded up to a multiple of `TEXT_BUCKET`. So one set of
buffers and graphs serves every batch of a size, and it is rebuilt only the few times a longer
text arrives (per-length graphs would hold step buffers of several GB each for the default
model). On a CPU the same loop runs uncaptured: tests compare it with the eager loop there,
and the `cuda` tests compare the captured graphs with the eager loop on a GPU.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Iterator, List, Optional, Protocol, Tuple

import torch
from torch.autograd.function import once_differentiable
from torch.nn import functional as F

import devices
from decoder_step import (DecoderState, DropoutMasks, MemoryContext, StepHistory, StepInput,
                          StepOutput, stop_update)

TEXT_BUCKET = 32  # text capacities are multiples of this
STEP_BUCKET = 256  # step buffers hold a multiple of this many steps (regrown when exceeded)
STOP_CHECK_EVERY = 16  # free running on CUDA: host reads the stop flags every this many steps
WARMUP_CALLS = 2  # eager calls of a step before its capture (cuBLAS workspaces, lazy init, compile)


class SteppingDecoder(Protocol):
    """What the loops use of `model.Decoder` (a Protocol, so this module never imports model)."""
    training: bool
    n_mel_channels: int
    n_frames_per_step: int
    attention_rnn_dim: int
    decoder_rnn_dim: int
    p_attention_dropout: float
    p_decoder_dropout: float
    gate_threshold: float
    max_decoder_steps: int
    use_compile: bool

    def parameters(self) -> Iterator[torch.nn.Parameter]: ...

    def step_function(self) -> Callable[..., StepOutput]: ...

    def step_input(self, frame: torch.Tensor, ctx: MemoryContext) -> StepInput: ...


def padded_text_length(n_tokens: int, bucket: int = TEXT_BUCKET) -> int:
    """`n_tokens` rounded up to a multiple of `bucket`."""
    return (n_tokens + bucket - 1) // bucket * bucket


# ---------------------------------------------------------------------------- packed state
def pack_state(state: DecoderState, dtype: torch.dtype) -> torch.Tensor:
    """The seven state tensors side by side, (B, sum of widths), in `dtype` (float32/64).

    One buffer row per step instead of seven: one read and one write per step. The context is
    bf16/fp16 under autocast; storing it in float32 is exact, and every use of the stored
    context is a concatenation with float32 tensors, which promotes it to float32 anyway.
    """
    return torch.cat([t.to(dtype) for t in state], 1)


def unpack_state(packed: torch.Tensor, sizes: List[int]) -> DecoderState:
    """Views of a packed (B, D) state; `sizes` are the seven widths in `DecoderState` order."""
    return DecoderState(*packed.split(sizes, 1))


# ---------------------------------------------------------------------------- graph replay
class StepGraph:
    """Calls `body` (which touches only static buffers) eagerly, or replays it as a CUDA graph.

    On CUDA the first `WARMUP_CALLS` calls run eagerly on a side stream (they are real steps;
    warm-up lets cuBLAS, lazy initialisation and torch.compile do their one-off work outside
    the capture); the next call captures `body` (capture records kernels without running them)
    and replays it, and every later call is one replay. Elsewhere `body` simply runs.
    """

    def __init__(self, body: Callable[[], None], device: torch.device,
                 pool: Optional[tuple], stream: Optional[Any]) -> None:
        self.body = body
        self.device = device
        self.pool = pool
        self.stream = stream
        self.graph: Optional[Any] = None
        self.calls = 0

    def __call__(self) -> None:
        if self.graph is not None:
            self.graph.replay()
            return
        if self.device.type != "cuda":
            self.body()
            return
        current = devices.current_stream(self.device)
        if self.calls < WARMUP_CALLS:
            self.stream.wait_stream(current)
            with devices.on_stream(self.stream):
                self.body()
            current.wait_stream(self.stream)
            self.calls += 1
            return
        graph = devices.new_graph()
        with devices.capture(graph, self.pool, self.stream):
            self.body()
        self.graph = graph
        graph.replay()


def _autocast_state(device_type: str) -> Tuple[bool, torch.dtype]:
    return torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)


def _autocast(device_type: str, state: Tuple[bool, torch.dtype]) -> torch.autocast:
    """Autocast as `state`, without its cast cache.

    The cache would hand a captured graph a cast made outside it (memory freed when autocast
    exits), or skip a cast in the graph that later replays need, so captures run uncached.
    """
    enabled, dtype = state
    return torch.autocast(device_type, dtype=dtype, enabled=enabled, cache_enabled=False)


def _static_copy(ctx: MemoryContext) -> MemoryContext:
    """A MemoryContext of fresh buffers shaped like `ctx` (loaded with `_load_context`)."""
    ctx = ctx._replace(live_weights=None)
    return MemoryContext(*(t.detach().clone() if torch.is_tensor(t) else t for t in ctx))


def _load_context(static: MemoryContext, ctx: MemoryContext) -> None:
    for dst, src in zip(static, ctx):
        if torch.is_tensor(dst):
            dst.copy_(src.detach())


def _out_dtype(ctx: MemoryContext) -> torch.dtype:
    """The dtype of the step's output product (frames and gates)."""
    device_type = ctx.memory.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)  # addmm runs in the autocast dtype
    return torch.promote_types(torch.promote_types(ctx.output_bias.dtype,
                                                   ctx.output_weight_t.dtype), ctx.score_dtype)


# ---------------------------------------------------------------------------- buffers
class _TeacherBuffers:
    """Static buffers and step graphs of teacher forcing for one (batch, bucket, mode) key."""

    def __init__(self, loop: "StaticDecoderLoop", ctx: MemoryContext,
                 terms: Tuple[torch.Tensor, torch.Tensor, torch.Tensor], capacity: int,
                 sizes: List[int], masks_on: Tuple[bool, bool]) -> None:
        att, dec, out = terms
        b, nb, _ = ctx.memory.shape
        device, packed = ctx.memory.device, ctx.score_dtype
        self.capacity, self.sizes, self.version = capacity, sizes, 0
        self.ctx = _static_copy(ctx)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)
        self.back_counter = torch.zeros(1, dtype=torch.long, device=device)
        self.att = att.new_zeros(capacity, *att.shape[1:])
        self.dec_bias = dec[0].detach().clone()
        self.out_bias = out[0].detach().clone()
        self.masks = tuple(torch.zeros(capacity, b, width, dtype=packed, device=device)
                           if on else None for on, width in zip(masks_on, (sizes[0], sizes[2])))
        self.stack = torch.zeros(capacity + 1, b, sum(sizes), dtype=packed, device=device)
        n_out, r = out.shape[-1] - loop.decoder.n_frames_per_step, loop.decoder.n_frames_per_step
        out_dtype = _out_dtype(ctx)
        self.frames = torch.zeros(capacity, b, n_out, dtype=out_dtype, device=device)
        self.gates = torch.zeros(capacity, b, r, dtype=out_dtype, device=device)
        self.weights = torch.zeros(capacity, b, nb, dtype=ctx.score_dtype, device=device)
        self.forward_graph = loop.step_graph(lambda: loop._teacher_step(self), device)
        self.backward_graph: Optional[StepGraph] = None
        self.grads: Optional[dict] = None  # backward buffers, allocated at the first backward

    def masks_at(self, s: torch.Tensor) -> Optional[DropoutMasks]:
        if self.masks == (None, None):
            return None
        return DropoutMasks(*(None if m is None else m.index_select(0, s).squeeze(0)
                              for m in self.masks))

    def grad_leaves(self) -> Tuple[torch.Tensor, ...]:
        """The context tensors whose gradients the backward accumulates over the steps."""
        c = self.ctx
        return c.memory, c.processed_memory, c.query_weight_t, c.location_weight, c.v_weight

    def history(self, steps: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(S + 1, B, dim) views of attention hidden, context and decoder hidden."""
        fields = self.stack[:steps + 1].split(self.sizes, 2)
        return fields[0], fields[6], fields[2]


class _FreeBuffers:
    """Static buffers and the step graph of free running for one (batch, bucket, mode) key."""

    def __init__(self, loop: "StaticDecoderLoop", ctx: MemoryContext, sizes: List[int]) -> None:
        dec = loop.decoder
        b, nb, _ = ctx.memory.shape
        device, packed = ctx.memory.device, ctx.score_dtype
        steps, r = dec.max_decoder_steps, dec.n_frames_per_step
        self.sizes = sizes
        self.ctx = _static_copy(ctx)
        self.counter = torch.zeros(1, dtype=torch.long, device=device)
        self.state = torch.zeros(b, sum(sizes), dtype=packed, device=device)
        self.frame = torch.zeros(b, dec.n_mel_channels, dtype=ctx.memory.dtype, device=device)
        self.threshold = torch.zeros((), dtype=torch.float32, device=device)
        self.finished = torch.zeros(b, dtype=torch.bool, device=device)
        self.steps_taken = torch.zeros(b, dtype=torch.long, device=device)
        out_dtype = _out_dtype(ctx)
        self.frames = torch.zeros(steps, b, dec.n_mel_channels * r, dtype=out_dtype,
                                  device=device)
        self.gates = torch.zeros(steps, b, r, dtype=out_dtype, device=device)
        self.weights = torch.zeros(steps, b, nb, dtype=ctx.score_dtype, device=device)
        self.graph = loop.step_graph(lambda: loop._free_step(self), device)


# ---------------------------------------------------------------------------- the loops
class StaticDecoderLoop:
    """Teacher-forced and free-running decoder loops on static buffers (see the module doc).

    Args:
        decoder: the `model.Decoder` whose `decode_step` the loops run.
    """

    def __init__(self, decoder: SteppingDecoder) -> None:
        self.decoder = decoder
        # Free running: steps between host reads of the stop flags; None = STOP_CHECK_EVERY on
        # CUDA, 1 elsewhere (on a CPU the read costs nothing).
        self.stop_check_every: Optional[int] = None
        self._teacher: Dict[tuple, _TeacherBuffers] = {}
        self._free: Dict[tuple, _FreeBuffers] = {}
        self._text_capacity: Dict[Tuple[torch.device, int], int] = {}
        self._last_teacher: Optional[Tuple[_TeacherBuffers, int]] = None
        self._pools: Dict[torch.device, tuple] = {}
        self._streams: Dict[torch.device, Any] = {}

    def __deepcopy__(self, memo: dict) -> "StaticDecoderLoop":
        # Buffers and captured graphs belong to one decoder and cannot be copied; a copied
        # decoder gets an empty loop of its own.
        return StaticDecoderLoop(copy.deepcopy(self.decoder, memo))

    def __getstate__(self) -> dict:
        raise TypeError("decoder_graphs.py: a StaticDecoderLoop (CUDA graphs) cannot be "
                        "pickled; save the model's state_dict instead")

    def step_graph(self, body: Callable[[], None], device: torch.device) -> StepGraph:
        """A StepGraph whose captures share this loop's memory pool on `device`.

        Sharing is safe here: no graph leaves a tensor alive after its replay (everything it
        keeps is written into buffers allocated outside the captures), and replays never
        overlap (one stream).
        """
        if device.type != "cuda":
            return StepGraph(body, device, None, None)
        if device not in self._pools:
            with devices.on_device(device):
                self._pools[device] = devices.graph_pool()
                self._streams[device] = devices.new_stream(device)
        return StepGraph(body, device, self._pools[device], self._streams[device])

    def pad_text(self, memory: torch.Tensor) -> torch.Tensor:
        """(B, N, E) encoder outputs padded with zeros to the text capacity of batch size B.

        The capacity only grows; when it does, the buffers and graphs of the narrower width
        are dropped (a pending backward keeps its own buffers alive until it has run).
        """
        b, n = memory.shape[:2]
        key = (memory.device, b)
        width = max(self._text_capacity.get(key, 0), padded_text_length(n))
        if width != self._text_capacity.get(key):
            self._text_capacity[key] = width
            for cache in (self._teacher, self._free):
                for old in [k for k in cache if k[:2] == key and k[2] < width]:
                    del cache[old]
        return F.pad(memory, (0, 0, 0, width - n)) if width > n else memory

    def _state_sizes(self, ctx: MemoryContext) -> List[int]:
        """Widths of the seven `DecoderState` tensors, in order."""
        dec, (_, n, e) = self.decoder, ctx.memory.shape
        return [dec.attention_rnn_dim, dec.attention_rnn_dim, dec.decoder_rnn_dim,
                dec.decoder_rnn_dim, n, n, e]

    def buffer_sets(self) -> List[Tuple[str, int, int]]:
        """(mode, batch size, text width) of every buffer set held (each with its graphs)."""
        return sorted([("teacher", k[1], k[2]) for k in self._teacher]
                      + [("free", k[1], k[2]) for k in self._free])

    def _key(self, ctx: MemoryContext, *extra) -> tuple:
        device = ctx.memory.device
        b, nb, e = ctx.memory.shape
        # Parameter storages: the free-running step reads the prenet's weights directly, and
        # model.to() / .half() give parameters new storage that a captured graph would not see.
        storages = tuple(p.data_ptr() for p in self.decoder.parameters())
        return (device, b, nb, e, ctx.memory.dtype, ctx.output_weight_t.dtype,
                _autocast_state(device.type), self.decoder.use_compile, storages, *extra)

    # ------------------------------------------------------------------ teacher forcing
    def teacher_forced(self, ctx: MemoryContext,
                       terms: Tuple[torch.Tensor, torch.Tensor, torch.Tensor],
                       history: Optional[StepHistory]
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Runs the teacher-forced loop.

        Args:
            ctx: the batch's MemoryContext, its memory padded by `pad_text`; with autograd
                its three step weights are detached (`live_weights` set).
            terms: (S, B, ...) attention-gate, decoder-bias and output-bias terms of every step
                (wrapped in `StepwiseWeightGrad` when `history` is given).
            history: filled with the loop's states for the weight gradients, or None.

        Returns:
            (frames (S, B, n_mel r), gate logits (S, B, r), attention (S, B, N_padded)).
        """
        return _TeacherForcing.apply(self, ctx, history, *terms, ctx.memory,
                                     ctx.processed_memory, ctx.query_weight_t,
                                     ctx.location_weight, ctx.v_weight)

    def last_dropout_masks(self) -> Optional[DropoutMasks]:
        """Copies of the (S, B, H) dropout masks of the latest teacher-forced call, if any."""
        if self._last_teacher is None:
            return None
        buf, steps = self._last_teacher
        masks = tuple(None if m is None else m[:steps].clone() for m in buf.masks)
        return None if masks == (None, None) else DropoutMasks(*masks)

    def _teacher_buffers(self, ctx: MemoryContext, terms: tuple) -> _TeacherBuffers:
        dec = self.decoder
        steps = terms[0].shape[0]
        masks_on = (dec.training and dec.p_attention_dropout > 0,
                    dec.training and dec.p_decoder_dropout > 0)
        key = self._key(ctx, "teacher", masks_on, tuple(t.dtype for t in terms))
        buf = self._teacher.get(key)
        if buf is None or buf.capacity < steps:
            capacity = (steps + STEP_BUCKET - 1) // STEP_BUCKET * STEP_BUCKET
            buf = self._teacher[key] = _TeacherBuffers(self, ctx, terms, capacity,
                                                       self._state_sizes(ctx), masks_on)
        return buf

    def _teacher_step(self, buf: _TeacherBuffers) -> None:
        """Step `buf.counter`: state s -> state s + 1 and the step's outputs, all in buffers."""
        s = buf.counter
        state = unpack_state(buf.stack.index_select(0, s).squeeze(0), buf.sizes)
        step_input = StepInput(buf.att.index_select(0, s).squeeze(0), buf.dec_bias,
                               buf.out_bias)
        out = self.decoder.step_function()(step_input, state, buf.ctx, buf.masks_at(s))
        buf.frames.index_copy_(0, s, out.frames.unsqueeze(0))
        buf.gates.index_copy_(0, s, out.gate.unsqueeze(0))
        buf.weights.index_copy_(0, s, out.attention.unsqueeze(0))
        buf.stack.index_copy_(0, s + 1, pack_state(out.state, buf.stack.dtype).unsqueeze(0))
        buf.counter.add_(1)

    def _teacher_backward_step(self, buf: _TeacherBuffers) -> None:
        """Back-propagates step `buf.back_counter` by recomputing it from its saved state."""
        s = buf.back_counter
        g = buf.grads
        with torch.enable_grad():
            packed = buf.stack.index_select(0, s).squeeze(0).requires_grad_()
            att = buf.att.index_select(0, s).squeeze(0).requires_grad_()
            dec_bias = buf.dec_bias.detach().requires_grad_()
            out_bias = buf.out_bias.detach().requires_grad_()
            leaves = tuple(t.detach().requires_grad_() for t in buf.grad_leaves())
            ctx = buf.ctx._replace(memory=leaves[0], processed_memory=leaves[1],
                                   query_weight_t=leaves[2], location_weight=leaves[3],
                                   v_weight=leaves[4])
            out = self.decoder.step_function()(StepInput(att, dec_bias, out_bias),
                                               unpack_state(packed, buf.sizes), ctx,
                                               buf.masks_at(s))
            new_packed = pack_state(out.state, packed.dtype)
            grads = torch.autograd.grad(
                (out.frames, out.gate, out.attention, new_packed),
                (att, dec_bias, out_bias, packed) + leaves,
                (g["frames"].index_select(0, s).squeeze(0),
                 g["gates"].index_select(0, s).squeeze(0),
                 g["weights"].index_select(0, s).squeeze(0), g["carry"]),
                allow_unused=True)
        for name, grad in zip(("att", "dec", "out"), grads[:3]):
            g[name].index_copy_(0, s, grad.unsqueeze(0))
        g["carry"].copy_(grads[3])
        for acc, grad in zip(g["leaves"], grads[4:]):
            if grad is not None:
                acc.add_(grad)
        buf.back_counter.sub_(1)

    def _teacher_forward(self, ctx: MemoryContext, terms: tuple) -> Tuple[_TeacherBuffers, int]:
        dec = self.decoder
        buf = self._teacher_buffers(ctx, terms)
        steps = terms[0].shape[0]
        _load_context(buf.ctx, ctx)
        buf.att[:steps].copy_(terms[0])
        buf.dec_bias.copy_(terms[1][0])
        buf.out_bias.copy_(terms[2][0])
        for mask, p in zip(buf.masks, (dec.p_attention_dropout, dec.p_decoder_dropout)):
            if mask is not None:  # F.dropout's multipliers: 0 or 1 / (1 - p)
                if p < 1:
                    mask[:steps].bernoulli_(1 - p).div_(1 - p)
                else:
                    mask[:steps].zero_()
        buf.stack[0].zero_()
        buf.counter.zero_()
        with _autocast(ctx.memory.device.type, _autocast_state(ctx.memory.device.type)):
            for _ in range(steps):
                buf.forward_graph()
        buf.version += 1
        self._last_teacher = (buf, steps)
        return buf, steps

    def _teacher_backward(self, buf: _TeacherBuffers, steps: int, d_frames: torch.Tensor,
                          d_gates: torch.Tensor, d_weights: torch.Tensor) -> Tuple:
        if buf.grads is None:
            leaves = buf.grad_leaves()
            # Reduced-precision context gradients are summed in float32 over the steps.
            buf.grads = {
                "frames": torch.zeros_like(buf.frames), "gates": torch.zeros_like(buf.gates),
                "weights": torch.zeros_like(buf.weights),
                "carry": torch.zeros_like(buf.stack[0]),
                "att": torch.zeros_like(buf.att),
                "dec": buf.dec_bias.new_zeros(buf.capacity, *buf.dec_bias.shape),
                "out": buf.out_bias.new_zeros(buf.capacity, *buf.out_bias.shape),
                "leaves": tuple(torch.zeros_like(t, dtype=torch.promote_types(
                    t.dtype, torch.float32)) for t in leaves),
            }
            buf.backward_graph = self.step_graph(lambda: self._teacher_backward_step(buf),
                                                 buf.stack.device)
        g = buf.grads
        g["frames"][:steps].copy_(d_frames)
        g["gates"][:steps].copy_(d_gates)
        g["weights"][:steps].copy_(d_weights)
        g["carry"].zero_()
        for acc in g["leaves"]:
            acc.zero_()
        buf.back_counter.fill_(steps - 1)
        for _ in range(steps):
            buf.backward_graph()
        # Copies: autograd may keep a returned tensor as a parameter's .grad, and these buffers
        # are overwritten by the next backward.
        terms = tuple(g[name][:steps].clone() for name in ("att", "dec", "out"))
        leaves = tuple(acc.to(t.dtype) if acc.dtype != t.dtype else acc.clone()
                       for acc, t in zip(g["leaves"], buf.grad_leaves()))
        return terms + leaves

    # ------------------------------------------------------------------ free running
    def free_running(self, ctx: MemoryContext) -> Tuple[torch.Tensor, ...]:
        """Decodes until every item's gate fired or `max_decoder_steps`; no autograd.

        Args:
            ctx: the batch's MemoryContext, its memory padded by `pad_text`.

        Returns:
            (frames (T, B, n_mel r), gate logits (T, B, r), attention (T, B, N_padded),
            steps Long (B,), finished Bool (B,)) as the eager `Decoder.inference` loop.
        """
        dec = self.decoder
        device = ctx.memory.device
        key = self._key(ctx, "free", dec.training, dec.max_decoder_steps)
        buf = self._free.get(key)
        if buf is None:
            buf = self._free[key] = _FreeBuffers(self, ctx, self._state_sizes(ctx))
        _load_context(buf.ctx, ctx)
        for t in (buf.counter, buf.state, buf.frame, buf.finished, buf.steps_taken):
            t.zero_()
        buf.threshold.fill_(dec.gate_threshold)  # a buffer: tests and users change it
        every = self.stop_check_every or (STOP_CHECK_EVERY if device.type == "cuda" else 1)
        done = 0
        with torch.no_grad(), _autocast(device.type, _autocast_state(device.type)):
            while done < dec.max_decoder_steps:
                buf.graph()
                done += 1
                if (done % every == 0 or done == dec.max_decoder_steps) and \
                        bool(buf.finished.all()):
                    break
        all_finished = bool(buf.finished.all())
        # Steps after the last item stopped (at most every - 1) are cut off again.
        total = int(buf.steps_taken.max()) if all_finished else done
        steps = torch.where(buf.finished, buf.steps_taken, total)
        return (buf.frames[:total].clone(), buf.gates[:total].clone(),
                buf.weights[:total].clone(), steps, buf.finished.clone())

    def _free_step(self, buf: _FreeBuffers) -> None:
        """One free-running step, its stop test and the next input frame, all in buffers."""
        dec = self.decoder
        s = buf.counter
        out = dec.step_function()(dec.step_input(buf.frame, buf.ctx),
                                  unpack_state(buf.state, buf.sizes), buf.ctx, None)
        buf.frames.index_copy_(0, s, out.frames.unsqueeze(0))
        buf.gates.index_copy_(0, s, out.gate.unsqueeze(0))
        buf.weights.index_copy_(0, s, out.attention.unsqueeze(0))
        buf.state.copy_(pack_state(out.state, buf.state.dtype))
        steps_taken, finished = stop_update(out.gate, buf.threshold, s, buf.steps_taken,
                                            buf.finished)
        buf.steps_taken.copy_(steps_taken)
        buf.finished.copy_(finished)
        buf.frame.copy_(out.frames[:, -dec.n_mel_channels:])  # the group's last frame
        buf.counter.add_(1)


class _TeacherForcing(torch.autograd.Function):
    """The teacher-forced static loop as one autograd node (see the module doc)."""

    @staticmethod
    def forward(fctx, loop: StaticDecoderLoop, ctx: MemoryContext,
                history: Optional[StepHistory], att: torch.Tensor, dec: torch.Tensor,
                out: torch.Tensor, memory: torch.Tensor, processed: torch.Tensor,
                query_weight_t: torch.Tensor, location_weight: torch.Tensor,
                v_weight: torch.Tensor):
        buf, steps = loop._teacher_forward(ctx, (att, dec, out))
        if history is not None:
            history.set_stacked(*buf.history(steps))
        fctx.loop, fctx.buf, fctx.steps, fctx.version = loop, buf, steps, buf.version
        fctx.device_type = memory.device.type
        fctx.autocast = _autocast_state(memory.device.type)
        # Copies: the buffers are overwritten by the next batch.
        return (buf.frames[:steps].clone(), buf.gates[:steps].clone(),
                buf.weights[:steps].clone())

    @staticmethod
    @once_differentiable
    def backward(fctx, d_frames: torch.Tensor, d_gates: torch.Tensor, d_weights: torch.Tensor):
        buf = fctx.buf
        if buf.version != fctx.version:
            raise RuntimeError(
                "decoder_graphs.py: another teacher-forced forward of the same shape ran on "
                "the static decoder loop before this backward and overwrote its saved states; "
                "call backward after each forward (or set cuda_graphs=false)")
        with _autocast(fctx.device_type, fctx.autocast):
            grads = fctx.loop._teacher_backward(buf, fctx.steps, d_frames, d_gates, d_weights)
        need = fctx.needs_input_grad[3:]
        return (None, None, None) + tuple(g if n else None for g, n in zip(grads, need))
