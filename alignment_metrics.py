"""Alignment metrics: the one implementation of every score of an attention map.

Pure NumPy (no torch, no matplotlib), so the trainer, inference, the guardrails, the diagnostics
CLI and the benchmarks all import the same code cheaply. The definitions are in
docs/alignment_metrics.md; the thresholds below are part of that contract, not hparams.

Attention maps are (decoder steps T, text tokens N), rows summing to 1; a batch is
(B, T_max, N_max) with per-item `text_lengths` and `decoder_lengths` (`ceil(mel_len / r)`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

METRIC_NAMES = ("diagonal_score", "focus_score", "max_attention", "coverage", "monotonic_score",
                "end_reached", "entropy")
# `non_finite` (NaN or inf in the map) excludes every other mode: such a map has no shape to judge.
FAILURE_MODES = ("horizontal_band", "diffuse", "collapse_to_end", "skipping", "stuck",
                 "non_finite")
# Free-running only: the text was read to its end, then the gate did not stop the decoder.
RUNS_ON = "runs_on"
HEALTHY = "healthy"
DEFAULT_BAND = 0.15

# Failure-mode thresholds (docs/alignment_metrics.md).
BAND_MAX_COVERAGE = 0.2  # horizontal_band: coverage below this ...
BAND_MIN_FOCUS = 0.5  # ... while focus is above this
DIFFUSE_MAX_ATTENTION = 0.1  # diffuse: no weight reaches this
SKIP_MAX_COVERAGE = 0.9  # skipping: reaches the end with coverage below this
STUCK_SECONDS = 0.5  # stuck: one token holds the argmax longer than this
COVERED_MASS = 0.5  # a token is covered when its column holds this much attention
HOLD_MIN_WEIGHT = 0.5  # a step is held when its max weight exceeds max(0.1, min(this, 2/N))
ROW_SUM_TOLERANCE = 0.02  # input check: |row sum - 1| allowed (bf16/fp16 softmax)
NEAR_LENGTH = 0.2  # free-running: a decoded length within 20% of the recorded one is "near"
# runs_on: after the attention reached the end of the text, the decoder went on for more than
# this share of the steps it took to read it (plus RUN_ON_SLACK steps for the last sound).
RUN_ON_SHARE = 0.25
RUN_ON_SLACK = 5
_CHUNK_ELEMENTS = 4_000_000  # items per vectorised chunk are limited to about this many cells


class DiagnosticsError(ValueError):
    """Bad input to the diagnostics: a missing, corrupt or foreign file, or a malformed matrix."""


def to_numpy(x: Any, dtype: Any = None) -> np.ndarray:
    """ndarray from an array, a list or a (possibly GPU, possibly bf16) torch tensor."""
    if hasattr(x, "detach"):
        x = x.detach()
        x = (x.float() if x.is_floating_point() else x).cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _batch_stats(alignments: np.ndarray, text_lengths: np.ndarray, decoder_lengths: np.ndarray,
                 band: float) -> Dict[str, np.ndarray]:
    """Per-item metrics and the argmax statistics the failure modes need, vectorised.

    Args:
        alignments: (B, T_max, N_max) attention, rows = decoder steps, zero-padded (whatever the
            padding holds is ignored).
        text_lengths: (B,) tokens N_b, 1 <= N_b <= N_max.
        decoder_lengths: (B,) decoder steps T_b, 1 <= T_b <= T_max.
        band: b of diagonal_score.

    Returns:
        dict of (B,) arrays: the METRIC_NAMES, `last_token_share` (steps whose argmax is the last
        token), `longest_hold` (longest run of steps on one argmax token), `hold_token`,
        `non_finite` (the block holds NaN or inf; its other figures are those of zeros) and
        `end_step` (first step whose argmax is on one of the last two tokens; T_b if none).
    """
    A = np.asarray(alignments, dtype=np.float64)
    n_items, max_t, max_n = A.shape
    T = decoder_lengths.astype(np.int64)
    N = text_lengths.astype(np.int64)
    Tf, Nf = T.astype(np.float64), N.astype(np.float64)
    t = np.arange(max_t)
    n = np.arange(max_n)
    row_valid = t[None, :] < T[:, None]  # (B, T)
    col_valid = n[None, :] < N[:, None]  # (B, N)
    valid = row_valid[:, :, None] & col_valid[:, None, :]  # (B, T, N)
    # A diverged model writes NaN/inf: such an item scores 0 and is `non_finite`, never healthy.
    finite = np.isfinite(A) | ~valid
    non_finite = ~finite.all(axis=(1, 2))
    A = np.where(valid & finite & ~non_finite[:, None, None], A, 0.0)

    # Band of the ideal diagonal, on cell centres of each item's own (T_b, N_b) grid.
    t_pos = (t[None, :] + 0.5) / Tf[:, None]  # (B, T)
    n_pos = (n[None, :] + 0.5) / Nf[:, None]  # (B, N)
    in_band = (np.abs(n_pos[:, None, :] - t_pos[:, :, None]) <= band + 1e-9) & valid
    mass = (A * in_band).sum(axis=(1, 2)) / Tf
    chance = in_band.sum(axis=(1, 2)) / (Tf * Nf)  # M of uniform attention A = 1/N
    # chance == 1 only on degenerate grids (every cell in the band): no information, score 0.
    diagonal = np.where(chance < 1.0,
                        np.clip((mass - chance) / np.maximum(1.0 - chance, 1e-12), 0.0, 1.0), 0.0)

    row_max = A.max(axis=2)  # (B, T); padded rows are 0
    focus = row_max.sum(axis=1) / Tf
    max_attention = row_max.max(axis=1)
    column_mass = A.sum(axis=1)  # (B, N)
    coverage = ((column_mass >= COVERED_MASS) & col_valid).sum(axis=1) / Nf

    argmax = np.where(valid, A, -1.0).argmax(axis=2)  # (B, T); padding never wins
    forward = (argmax[:, 1:] >= argmax[:, :-1]) & row_valid[:, 1:]  # (B, T-1)
    monotonic = np.where(T > 1, forward.sum(axis=1) / np.maximum(Tf - 1.0, 1.0), 1.0)
    last_argmax = argmax[np.arange(n_items), T - 1]
    end_reached = last_argmax >= N - 2
    at_end = (argmax >= (N - 2)[:, None]) & row_valid & (row_max > 0)
    end_step = np.where(at_end.any(axis=1), at_end.argmax(axis=1), T)

    log_a = np.log(np.where(A > 0.0, A, 1.0))  # 0 log 0 = 0
    row_entropy = -(A * log_a).sum(axis=2)  # (B, T)
    entropy = np.where(N > 1, row_entropy.sum(axis=1) / Tf / np.log(np.maximum(Nf, 2.0)), 0.0)

    # A step is held by its argmax token when the top weight stands out (> 0.1 and > twice
    # uniform): the argmax of a near-uniform row is noise, so such rows count neither for
    # collapse_to_end nor for stuck. Uniform attention is diffuse, not stuck.
    threshold = np.maximum(DIFFUSE_MAX_ATTENTION, np.minimum(HOLD_MIN_WEIGHT, 2.0 / Nf))
    held = row_valid & (row_max > threshold[:, None])  # (B, T)
    last_token_share = ((argmax == (N - 1)[:, None]) & held).sum(axis=1) / Tf

    # Longest run of steps held by one token.
    tokens = np.where(held, argmax, -1)
    starts = np.ones(tokens.shape, dtype=bool)
    starts[:, 1:] = tokens[:, 1:] != tokens[:, :-1]
    start_pos = np.flatnonzero(starts)  # every row starts a run at t = 0
    run_len = np.diff(np.append(start_pos, tokens.size))
    run_item = start_pos // max_t
    run_token = tokens.reshape(-1)[start_pos]
    keep = run_token >= 0
    run_len, run_item, run_token = run_len[keep], run_item[keep], run_token[keep]
    longest_hold = np.zeros(n_items, dtype=np.int64)
    hold_token = np.zeros(n_items, dtype=np.int64)
    if run_item.size:
        order = np.lexsort((run_len, run_item))  # by item, then by run length
        items_sorted = run_item[order]
        last_of_item = order[np.append(items_sorted[1:] != items_sorted[:-1], True)]
        longest_hold[run_item[last_of_item]] = run_len[last_of_item]
        hold_token[run_item[last_of_item]] = run_token[last_of_item]

    return {"diagonal_score": diagonal, "focus_score": focus, "max_attention": max_attention,
            "coverage": coverage, "monotonic_score": monotonic, "end_reached": end_reached,
            "entropy": entropy, "last_token_share": last_token_share,
            "longest_hold": longest_hold, "hold_token": hold_token, "non_finite": non_finite,
            "end_step": end_step}


def _mode_flags(coverage: np.ndarray, focus: np.ndarray, max_attention: np.ndarray,
                end_reached: np.ndarray, last_token_share: np.ndarray, n_tokens: np.ndarray,
                longest_hold: np.ndarray, seconds_per_step: Optional[float],
                non_finite: np.ndarray) -> Dict[str, np.ndarray]:
    """The failure-mode rules of docs/alignment_metrics.md on (B,) arrays: {mode: Bool (B,)}."""
    coverage, focus = np.asarray(coverage), np.asarray(focus)
    non_finite = np.asarray(non_finite, dtype=bool)
    flags = {
        "horizontal_band": (coverage < BAND_MAX_COVERAGE) & (focus > BAND_MIN_FOCUS),
        "diffuse": np.asarray(max_attention) < DIFFUSE_MAX_ATTENTION,
        # With one token every step is "on the last token": no collapse can be told apart.
        "collapse_to_end": (np.asarray(last_token_share) > 0.5) & (np.asarray(n_tokens) > 1),
        "skipping": (coverage < SKIP_MAX_COVERAGE) & np.asarray(end_reached, dtype=bool),
    }
    if seconds_per_step is None:
        flags["stuck"] = np.zeros(coverage.shape, dtype=bool)  # no time scale: not judged
    else:
        # A band or a collapse holds one token by definition; naming it stuck too would point
        # the report at silences instead of at the band.
        flags["stuck"] = ((np.asarray(longest_hold) * float(seconds_per_step) > STUCK_SECONDS)
                          & ~flags["horizontal_band"] & ~flags["collapse_to_end"])
    flags = {mode: flag & ~non_finite for mode, flag in flags.items()}
    flags["non_finite"] = non_finite
    return flags


def check_lengths(name: str, lengths: np.ndarray, n_items: int, limit: int) -> np.ndarray:
    if lengths.shape != (n_items,):
        raise DiagnosticsError(f"{name} has shape {lengths.shape}; expected ({n_items},)")
    if n_items and (lengths.min() < 1 or lengths.max() > limit):
        raise DiagnosticsError(f"{name} must lie in 1..{limit} (the padded size); got "
                               f"{int(lengths.min())}..{int(lengths.max())}")
    return lengths.astype(np.int64)


def batch_metrics(alignments: Any, text_lengths: Any, decoder_lengths: Any,
                  seconds_per_step: Optional[float] = None, band: Optional[float] = None,
                  hp: Any = None) -> Dict[str, Any]:
    """Metrics and failure modes of a batch of attention maps, each on its un-padded block.

    Args:
        alignments: (B, T_max, N_max) attention (ndarray or tensor), rows = decoder steps; the
            padding may hold anything.
        text_lengths: (B,) tokens per utterance.
        decoder_lengths: (B,) decoder steps per utterance, `ceil(mel_len / r)`.
        seconds_per_step: r * hop_length / sampling_rate, the time of one decoder step, for the
            `stuck` mode; None = from `hp`, or `stuck` is not judged when `hp` is None too.
        band: b of diagonal_score; None = `hp.diagonal_band`, or 0.15.
        hp: the run's hparams (optional; see above).

    Returns:
        {"mean": {metric: mean over items}, "per_item": [{metric: value, "text_length",
        "decoder_length", "longest_hold_steps", "hold_token", "end_step"}], "failure_modes":
        [[mode, ...] or ["healthy"] per item], "failure_counts": {mode: items with it},
        "healthy": items with no failure mode, "n_items": B}. `healthy` is kept apart from the
        failure counts: it is not a failure mode.
    """
    if band is None:
        band = hp.diagonal_band if hp is not None else DEFAULT_BAND
    if seconds_per_step is None and hp is not None:
        seconds_per_step = step_seconds(hp)
    A = to_numpy(alignments)
    if A.ndim != 3:
        raise DiagnosticsError(f"alignments must be (B, T, N); got shape {A.shape}")
    n_items, max_t, max_n = A.shape
    N = check_lengths("text_lengths", to_numpy(text_lengths).reshape(-1), n_items, max_n)
    T = check_lengths("decoder_lengths", to_numpy(decoder_lengths).reshape(-1), n_items, max_t)

    if n_items == 0:
        return {"mean": {k: float("nan") for k in METRIC_NAMES}, "per_item": [],
                "failure_modes": [], "failure_counts": {m: 0 for m in FAILURE_MODES},
                "healthy": 0, "n_items": 0}

    # Chunks of items keep the (B, T, N) temporaries to a few tens of MB at any size.
    per_chunk = max(1, _CHUNK_ELEMENTS // max(1, max_t * max_n))
    parts = []
    for start in range(0, n_items, per_chunk):
        stop = start + per_chunk
        t_chunk, n_chunk = int(T[start:stop].max()), int(N[start:stop].max())
        parts.append(_batch_stats(A[start:stop, :t_chunk, :n_chunk], N[start:stop],
                                  T[start:stop], band))
    stats = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    flags = _mode_flags(stats["coverage"], stats["focus_score"], stats["max_attention"],
                        stats["end_reached"], stats["last_token_share"], N,
                        stats["longest_hold"], seconds_per_step, stats["non_finite"])

    per_item, modes = [], []
    for i in range(n_items):
        item = {k: float(stats[k][i]) for k in METRIC_NAMES if k != "end_reached"}
        item["end_reached"] = bool(stats["end_reached"][i])
        item.update(text_length=int(N[i]), decoder_length=int(T[i]),
                    longest_hold_steps=int(stats["longest_hold"][i]),
                    hold_token=int(stats["hold_token"][i]),
                    end_step=int(stats["end_step"][i]))
        per_item.append(item)
        modes.append([m for m in FAILURE_MODES if flags[m][i]] or [HEALTHY])
    counts = {m: int(flags[m].sum()) for m in FAILURE_MODES}
    mean = {k: float(np.mean(stats[k].astype(np.float64))) for k in METRIC_NAMES}
    return {"mean": mean, "per_item": per_item, "failure_modes": modes, "failure_counts": counts,
            "healthy": sum(1 for m in modes if m == [HEALTHY]), "n_items": n_items}


def alignment_metrics(A: Any, band: float = DEFAULT_BAND) -> Dict[str, Any]:
    """Metrics of one attention map (docs/alignment_metrics.md).

    Args:
        A: (T, N) attention, rows = decoder steps (each summing to 1), columns = text tokens.
        band: b, half-width of the diagonal band in units of the normalised grid.

    Returns:
        {diagonal_score, focus_score, max_attention, coverage, monotonic_score, entropy: float;
        end_reached: bool}.
    """
    A = to_numpy(A)
    if A.ndim != 2 or A.size == 0:
        raise DiagnosticsError(f"an attention map must be a non-empty (T, N) matrix; got shape "
                               f"{A.shape}")
    T, N = A.shape
    item = batch_metrics(A[None], [N], [T], band=band)["per_item"][0]
    return {k: item[k] for k in METRIC_NAMES}


def classify_failures(A: Any, metrics: Optional[Dict[str, Any]] = None,
                      seconds_per_step: Optional[float] = None,
                      band: float = DEFAULT_BAND) -> List[str]:
    """Failure modes of one attention map, or ["healthy"].

    Args:
        A: (T, N) attention, rows = decoder steps.
        metrics: `alignment_metrics(A)` when already computed (coverage, focus_score,
            max_attention and end_reached are taken from it).
        seconds_per_step: r * hop_length / sampling_rate; None = `stuck` is not judged.
        band: b of diagonal_score (the failure modes themselves do not depend on it).

    Returns:
        Names from FAILURE_MODES in that order, or ["healthy"] when none applies.
    """
    A = to_numpy(A)
    if A.ndim != 2 or A.size == 0:
        raise DiagnosticsError(f"an attention map must be a non-empty (T, N) matrix; got shape "
                               f"{A.shape}")
    T, N = A.shape
    stats = _batch_stats(A[None], np.array([N]), np.array([T]), band)
    m = metrics or {k: stats[k][0] for k in METRIC_NAMES}
    flags = _mode_flags(np.array([m["coverage"]]), np.array([m["focus_score"]]),
                        np.array([m["max_attention"]]), np.array([bool(m["end_reached"])]),
                        stats["last_token_share"], np.array([N]), stats["longest_hold"],
                        seconds_per_step, stats["non_finite"])
    return [mode for mode in FAILURE_MODES if flags[mode][0]] or [HEALTHY]


def step_seconds(hp: Any) -> float:
    """Seconds of audio per decoder step: r * hop_length / sampling_rate (of an HParams)."""
    return hp.n_frames_per_step * hp.hop_length / hp.sampling_rate




def pack_alignments(maps: Sequence[np.ndarray]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Un-padded (T_i, N_i) maps -> zero-padded float32 (B, T_max, N_max), text and decoder lengths.
    """
    max_t = max(a.shape[0] for a in maps)
    max_n = max(a.shape[1] for a in maps)
    out = np.zeros((len(maps), max_t, max_n), dtype=np.float32)
    for i, a in enumerate(maps):
        out[i, : a.shape[0], : a.shape[1]] = a
    return (out, np.array([a.shape[1] for a in maps], dtype=np.int64),
            np.array([a.shape[0] for a in maps], dtype=np.int64))


def free_running_metrics(alignments: Any, text_lengths: Any, decoder_lengths: Any,
                         hit_max_steps: Any, target_decoder_lengths: Any = None,
                         seconds_per_step: Optional[float] = None,
                         band: float = DEFAULT_BAND) -> Dict[str, Any]:
    """Free-running decoding judged as two questions: was the text read, and did the gate stop?

    A model that reads the whole text on a clean diagonal and then never stops parks its
    attention on the last tokens until `max_decoder_steps`; the whole map then scores near 0,
    which reads as "does not read" when the real problem is "does not stop". So the map is cut
    where the attention first reaches the end of the text (argmax on one of the last two tokens):
    the part up to there is scored as reading, what follows is judged as stopping.

    Args:
        alignments: (B, T_max, N_max) free-running attention, rows = decoder steps.
        text_lengths: (B,) tokens.
        decoder_lengths: (B,) decoder steps actually decoded (to the gate stop, or the limit).
        hit_max_steps: (B,) bool, the gate never fired within max_decoder_steps.
        target_decoder_lengths: (B,) decoder steps of the recorded audio, for `near_length`;
            None = not judged.
        seconds_per_step, band: as in `batch_metrics`.

    Returns:
        {"whole": batch_metrics of the whole maps, "reading": batch_metrics of the maps up to
        the end of the text, "per_item": [{"reading_steps", "decoded_steps", "read_to_end",
        "stopped", "runs_on", "length_ratio" (or None), "near_length" (or None)}],
        "diagonal_score" (whole), "reading_diagonal_score", "end_reached_share", "stopped_share",
        "near_length_share" (None without targets), "runs_on_share", "n_items"}.
    """
    A = to_numpy(alignments)
    if A.ndim != 3:
        raise DiagnosticsError(f"alignments must be (B, T, N); got shape {A.shape}")
    n_items = A.shape[0]
    N = check_lengths("text_lengths", to_numpy(text_lengths).reshape(-1), n_items, A.shape[2])
    T = check_lengths("decoder_lengths", to_numpy(decoder_lengths).reshape(-1), n_items,
                      A.shape[1])
    hit = to_numpy(hit_max_steps).reshape(-1).astype(bool)
    if hit.shape != (n_items,):
        raise DiagnosticsError(f"hit_max_steps has shape {hit.shape}; expected ({n_items},)")
    whole = batch_metrics(A, N, T, seconds_per_step=seconds_per_step, band=band)
    # Reading part: up to and including the step where the attention first reaches the end.
    end_steps = np.array([item["end_step"] for item in whole["per_item"]], dtype=np.int64)
    read_to_end = end_steps < T
    reading_steps = np.where(read_to_end, end_steps + 1, T)
    reading = batch_metrics(A, N, reading_steps, seconds_per_step=seconds_per_step, band=band)
    after = T - reading_steps
    runs_on = read_to_end & (hit | (after > RUN_ON_SHARE * reading_steps + RUN_ON_SLACK))
    stopped = ~hit
    ratio = near = None
    if target_decoder_lengths is not None:
        target = to_numpy(target_decoder_lengths).reshape(-1).astype(np.float64)
        if target.shape != (n_items,):
            raise DiagnosticsError(f"target_decoder_lengths has shape {target.shape}; expected "
                                   f"({n_items},)")
        ratio = T / np.maximum(target, 1.0)
        near = stopped & (np.abs(ratio - 1.0) <= NEAR_LENGTH)
    per_item = [{"reading_steps": int(reading_steps[i]), "decoded_steps": int(T[i]),
                 "read_to_end": bool(read_to_end[i]), "stopped": bool(stopped[i]),
                 "runs_on": bool(runs_on[i]),
                 "length_ratio": None if ratio is None else round(float(ratio[i]), 3),
                 "near_length": None if near is None else bool(near[i])}
                for i in range(n_items)]
    share = (lambda flags: float(np.mean(flags)) if n_items else float("nan"))
    return {"whole": whole, "reading": reading, "per_item": per_item,
            "diagonal_score": whole["mean"]["diagonal_score"],
            "reading_diagonal_score": reading["mean"]["diagonal_score"],
            "end_reached_share": share(read_to_end), "stopped_share": share(stopped),
            "near_length_share": None if near is None else share(near),
            "runs_on_share": share(runs_on), "n_items": n_items}


@dataclass
class FreeRunningScores:
    """The free-running figures of one validation, as the trainer logs and diagnostics.jsonl
    keeps them (`free_running_metrics` has the definitions)."""
    diagonal_score: float
    reading_diagonal_score: float
    focus_score: float = float("nan")
    end_reached_share: float = float("nan")
    stopped_share: float = float("nan")
    near_length_share: Optional[float] = None
    runs_on_share: float = float("nan")
    runs_on: int = 0
    failure_counts: Dict[str, int] = field(default_factory=dict)
    items: int = 0
    length_ratio: List[Optional[float]] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "FreeRunningScores":
        """Tolerant of older trainers: the reading diagonality is the whole map's where absent."""
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        values.setdefault("diagonal_score", float("nan"))
        values.setdefault("reading_diagonal_score", values["diagonal_score"])
        return cls(**values)


    @classmethod
    def from_metrics(cls, scores: Dict[str, Any]) -> "FreeRunningScores":
        """From `free_running_metrics` output."""
        whole = scores["whole"]
        return cls(
            diagonal_score=float(scores["diagonal_score"]),
            reading_diagonal_score=float(scores["reading_diagonal_score"]),
            focus_score=float(whole["mean"]["focus_score"]),
            end_reached_share=float(scores["end_reached_share"]),
            stopped_share=float(scores["stopped_share"]),
            near_length_share=(None if scores["near_length_share"] is None
                               else float(scores["near_length_share"])),
            runs_on_share=float(scores["runs_on_share"]),
            runs_on=sum(item["runs_on"] for item in scores["per_item"]),
            failure_counts=dict(whole["failure_counts"]),
            items=int(scores["n_items"]),
            length_ratio=[item["length_ratio"] for item in scores["per_item"]])
