"""Alignment metrics and failure modes on generated attention maps.

The maps are built from their definition (a token per decoder step), never from a model: they
calibrate the scores that the trainer and the diagnostics report.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import alignment_metrics as am
from hparams import HParams, create_hparams

ROOT = __import__("os").path.dirname(__import__("os").path.dirname(__import__("os").path.abspath(__file__)))
SECONDS_PER_STEP = 256 / 22050  # r=1, hop 256, 22.05 kHz: 0.5 s = 43 decoder steps
GRIDS = [(300, 80), (120, 37), (57, 23), (200, 150), (91, 60)]  # (T, N), N != T


# ---------------------------------------------------------------------------- generated maps
def one_hot(tokens: np.ndarray, n_tokens: int) -> np.ndarray:
    """(T, N) map with all of row t on token tokens[t]."""
    A = np.zeros((len(tokens), n_tokens))
    A[np.arange(len(tokens)), tokens] = 1.0
    return A


def hard_diagonal(T: int, N: int) -> np.ndarray:
    return one_hot(np.minimum(np.arange(T) * N // T, N - 1), N)


def realistic_diagonal(T: int, N: int, seed: int = 0) -> np.ndarray:
    """Random per-token durations, short pauses held by the first and last tokens, and each
    row's weight spread over the neighbouring tokens (peak 0.7)."""
    rng = np.random.default_rng(seed)
    lead = int(rng.integers(1, max(2, T // 15)))
    trail = int(rng.integers(1, max(2, T // 15)))
    body = T - lead - trail
    assert body >= N, "the generator needs at least one step per token"
    weights = rng.uniform(0.4, 1.6, N)
    durations = 1 + np.floor(weights / weights.sum() * (body - N)).astype(int)
    durations[rng.permutation(N)[: body - durations.sum()]] += 1  # exact total
    tokens = np.concatenate([np.zeros(lead, int), np.repeat(np.arange(N), durations),
                             np.full(trail, N - 1)])
    A = one_hot(tokens, N)
    smooth = 0.7 * A
    smooth[:, 1:] += 0.15 * A[:, :-1]
    smooth[:, :-1] += 0.15 * A[:, 1:]
    return smooth / smooth.sum(axis=1, keepdims=True)


def uniform(T: int, N: int) -> np.ndarray:
    return np.full((T, N), 1.0 / N)


def horizontal_band(T: int, N: int, token: int) -> np.ndarray:
    return one_hot(np.full(T, token), N)


def with_hold(T: int, N: int, token: int, extra_steps: int) -> np.ndarray:
    """Hard diagonal whose `token` is held `extra_steps` more steps."""
    tokens = list(np.minimum(np.arange(T) * N // T, N - 1))
    at = tokens.index(token)
    tokens[at:at] = [token] * extra_steps
    return one_hot(np.array(tokens), N)


# ---------------------------------------------------------------------------- calibration
@pytest.mark.parametrize("T,N", GRIDS)
def test_hard_diagonal_scores_one_and_is_healthy(T, N):
    A = hard_diagonal(T, N)
    m = am.alignment_metrics(A)
    assert m["diagonal_score"] >= 0.99
    assert m["focus_score"] == pytest.approx(1.0)
    assert m["max_attention"] == pytest.approx(1.0)
    assert m["coverage"] == pytest.approx(1.0)
    assert m["monotonic_score"] == pytest.approx(1.0)
    assert m["end_reached"] is True
    assert m["entropy"] == pytest.approx(0.0)
    assert am.classify_failures(A, m, SECONDS_PER_STEP) == ["healthy"]


@pytest.mark.parametrize("T,N", GRIDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_realistic_diagonal_scores_high_and_is_healthy(T, N, seed):
    A = realistic_diagonal(T, N, seed)
    m = am.alignment_metrics(A)
    assert m["diagonal_score"] >= 0.8
    assert m["focus_score"] == pytest.approx(0.7, abs=0.1)
    assert m["coverage"] == pytest.approx(1.0)
    assert m["monotonic_score"] == pytest.approx(1.0)
    assert 0.0 < m["entropy"] < 0.5
    assert am.classify_failures(A, m, SECONDS_PER_STEP) == ["healthy"]


@pytest.mark.parametrize("T,N", GRIDS)
def test_uniform_attention_scores_zero_and_is_diffuse(T, N):
    A = uniform(T, N)
    m = am.alignment_metrics(A)
    assert m["diagonal_score"] <= 0.05
    assert m["entropy"] == pytest.approx(1.0)
    assert m["max_attention"] == pytest.approx(1.0 / N)
    # Uniform rows have no token holding them: diffuse, not stuck.
    assert am.classify_failures(A, m, SECONDS_PER_STEP) == ["diffuse"]


@pytest.mark.parametrize("T,N", GRIDS)
@pytest.mark.parametrize("where", ["first", "middle", "last_but_one"])
def test_horizontal_bands_score_zero_and_are_classified(T, N, where):
    token = {"first": 0, "middle": N // 2, "last_but_one": N - 2}[where]
    A = horizontal_band(T, N, token)
    m = am.alignment_metrics(A)
    assert m["diagonal_score"] <= 0.05
    assert m["coverage"] == pytest.approx(1.0 / N)
    modes = am.classify_failures(A, m, SECONDS_PER_STEP)
    assert "horizontal_band" in modes
    assert "stuck" not in modes  # the band explains the hold


@pytest.mark.parametrize("T,N", GRIDS)
def test_reversed_diagonal_scores_zero(T, N):
    m = am.alignment_metrics(hard_diagonal(T, N)[:, ::-1])
    assert m["diagonal_score"] <= 0.05
    assert m["end_reached"] is False
    assert m["monotonic_score"] < 1.0


def test_band_and_chance_correction_by_hand():
    # T = N = 4, b = 0.15: only the cells of the exact diagonal are in the band, so B = 1/4;
    # a map with half of each row on the diagonal has M = 1/2 -> (1/2 - 1/4) / (3/4) = 1/3.
    A = 0.5 * np.eye(4) + 0.5 * np.roll(np.eye(4), 2, axis=1)
    assert am.alignment_metrics(A)["diagonal_score"] == pytest.approx(1.0 / 3.0)
    # A wider band takes in every cell of a 2x2 grid: no information, score 0.
    assert am.alignment_metrics(np.eye(2), band=0.6)["diagonal_score"] == 0.0


def test_metric_values_by_hand():
    A = np.array([[0.9, 0.1, 0.0],
                  [0.2, 0.8, 0.0],
                  [0.0, 0.3, 0.7],
                  [0.6, 0.4, 0.0]])  # the last step jumps back to token 0
    m = am.alignment_metrics(A)
    assert m["focus_score"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)
    assert m["max_attention"] == pytest.approx(0.9)
    assert m["coverage"] == pytest.approx(1.0)  # column sums 1.7, 1.6, 0.7
    assert m["monotonic_score"] == pytest.approx(2.0 / 3.0)
    assert m["end_reached"] is False  # argmax 0 is not within the last 2 of 3 tokens
    rows = -(A * np.log(np.where(A > 0, A, 1))).sum(axis=1)
    assert m["entropy"] == pytest.approx(rows.mean() / np.log(3))


def test_single_token_text_has_zero_entropy_and_no_collapse():
    A = np.ones((20, 1))
    m = am.alignment_metrics(A)
    assert m["entropy"] == 0.0
    assert m["end_reached"] is True
    assert "collapse_to_end" not in am.classify_failures(A, m, SECONDS_PER_STEP)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (0, 4)])
def test_alignment_metrics_rejects_non_matrices(shape):
    with pytest.raises(am.DiagnosticsError, match="matrix"):
        am.alignment_metrics(np.zeros(shape))


# ---------------------------------------------------------------------------- failure modes
def test_collapse_to_end_is_recognised():
    T, N = 200, 50
    tokens = np.minimum(np.arange(T) * N // T, N - 1)
    tokens[T // 3:] = N - 1  # jumps to the last token a third of the way in
    A = one_hot(tokens, N)
    modes = am.classify_failures(A, am.alignment_metrics(A), SECONDS_PER_STEP)
    assert "collapse_to_end" in modes
    assert "stuck" not in modes


def test_skipping_is_recognised():
    T, N = 240, 60
    kept = np.r_[0:20, 35:60]  # tokens 20..34 are never attended
    tokens = kept[np.minimum(np.arange(T) * len(kept) // T, len(kept) - 1)]
    A = one_hot(tokens, N)
    m = am.alignment_metrics(A)
    assert m["coverage"] == pytest.approx(45 / 60)
    assert m["end_reached"] is True
    assert am.classify_failures(A, m, SECONDS_PER_STEP) == ["skipping"]


@pytest.mark.parametrize("extra,stuck", [(60, True), (30, False)])
def test_stuck_is_recognised_from_seconds(extra, stuck):
    # 300 steps over 60 tokens = 5 per token; + 60 steps = 65 * 11.6 ms = 0.75 s (stuck);
    # + 30 = 35 steps = 0.41 s (not).
    A = with_hold(300, 60, token=30, extra_steps=extra)
    modes = am.classify_failures(A, am.alignment_metrics(A), SECONDS_PER_STEP)
    assert ("stuck" in modes) is stuck
    # Without a time scale stuck is not judged.
    assert "stuck" not in am.classify_failures(A, None, None)


def test_classify_failures_takes_given_metrics():
    A = hard_diagonal(100, 20)
    fake = dict(am.alignment_metrics(A), max_attention=0.05)
    assert "diffuse" in am.classify_failures(A, fake, SECONDS_PER_STEP)


# ---------------------------------------------------------------------------- batches
def _pad(maps, fill_rng=None):
    max_t = max(a.shape[0] for a in maps) + 7
    max_n = max(a.shape[1] for a in maps) + 5
    if fill_rng is None:
        out = np.zeros((len(maps), max_t, max_n))
    else:  # garbage in the padding must not matter
        out = fill_rng.uniform(0, 1, (len(maps), max_t, max_n))
    for i, a in enumerate(maps):
        out[i, : a.shape[0], : a.shape[1]] = a
    return (out, np.array([a.shape[1] for a in maps]), np.array([a.shape[0] for a in maps]))


def _zoo():
    return [realistic_diagonal(300, 80), hard_diagonal(57, 23), uniform(120, 37),
            horizontal_band(91, 60, 0), horizontal_band(200, 150, 75),
            hard_diagonal(200, 150)[:, ::-1], with_hold(300, 60, 30, 60)]


@pytest.mark.parametrize("garbage", [False, True])
def test_padding_changes_nothing(garbage):
    maps = _zoo()
    padded, text_lengths, decoder_lengths = _pad(
        maps, np.random.default_rng(0) if garbage else None)
    summary = am.batch_metrics(padded, text_lengths, decoder_lengths,
                                 seconds_per_step=SECONDS_PER_STEP)
    for A, item, modes in zip(maps, summary["per_item"], summary["failure_modes"]):
        alone = am.alignment_metrics(A)
        for name in am.METRIC_NAMES:
            assert item[name] == pytest.approx(alone[name], abs=1e-9), name
        assert modes == am.classify_failures(A, alone, SECONDS_PER_STEP)
    for name in am.METRIC_NAMES:
        expected = np.mean([float(am.alignment_metrics(A)[name]) for A in maps])
        assert summary["mean"][name] == pytest.approx(expected)


def test_batch_failure_modes_and_counts():
    padded, text_lengths, decoder_lengths = _pad(_zoo())
    summary = am.batch_metrics(padded, text_lengths, decoder_lengths,
                                 seconds_per_step=SECONDS_PER_STEP)
    assert summary["n_items"] == 7
    assert summary["failure_modes"] == [["healthy"], ["healthy"], ["diffuse"],
                                        ["horizontal_band"], ["horizontal_band"], ["healthy"],
                                        ["stuck"]]
    assert summary["failure_counts"] == {"horizontal_band": 2, "diffuse": 1,
                                         "collapse_to_end": 0, "skipping": 0, "stuck": 1,
                                         "non_finite": 0}
    assert summary["healthy"] == 3  # kept apart: healthy is not a failure mode
    assert summary["per_item"][6]["hold_token"] == 30
    assert summary["per_item"][6]["longest_hold_steps"] == 65


def test_batch_metrics_reads_hparams_and_tensors():
    torch = pytest.importorskip("torch")
    maps = [with_hold(300, 60, 30, 60), hard_diagonal(57, 23)]
    padded, text_lengths, decoder_lengths = _pad(maps)
    hp = HParams()
    from_hp = am.batch_metrics(torch.tensor(padded, dtype=torch.bfloat16),
                                 torch.tensor(text_lengths), torch.tensor(decoder_lengths), hp=hp)
    assert from_hp["failure_modes"][0] == ["stuck"]
    # 65 steps at hop 256 are 0.75 s (stuck); at hop 64 they are 0.19 s.
    short = am.batch_metrics(padded, text_lengths, decoder_lengths,
                               hp=hp.replace(hop_length=64, win_length=256, filter_length=256))
    assert short["failure_modes"][0] == ["healthy"]


@pytest.mark.parametrize("text_lengths,decoder_lengths,match", [
    ([10, 0], [20, 20], "text_lengths must lie in 1..10"),
    ([10, 11], [20, 20], "text_lengths must lie in 1..10"),
    ([10, 10], [20, 21], "decoder_lengths must lie in 1..20"),
    ([10], [20, 20], r"text_lengths has shape \(1,\); expected \(2,\)"),
])
def test_batch_metrics_rejects_bad_lengths(text_lengths, decoder_lengths, match):
    with pytest.raises(am.DiagnosticsError, match=match):
        am.batch_metrics(np.zeros((2, 20, 10)), text_lengths, decoder_lengths)


def test_batch_metrics_rejects_non_batches():
    with pytest.raises(am.DiagnosticsError, match=r"\(B, T, N\)"):
        am.batch_metrics(np.zeros((20, 10)), [10], [20])


def test_batch_metrics_is_fast():
    maps = [realistic_diagonal(300, 80, seed) for seed in range(100)]
    padded = np.stack(maps)
    start = time.perf_counter()
    summary = am.batch_metrics(padded, [80] * 100, [300] * 100, seconds_per_step=SECONDS_PER_STEP)
    elapsed = time.perf_counter() - start
    print(f"batch_metrics: 100 utterances of (300, 80) in {elapsed * 1000:.0f} ms")
    assert summary["healthy"] == 100 and "healthy" not in summary["failure_counts"]


def test_empty_batch():
    summary = am.batch_metrics(np.zeros((0, 5, 4)), [], [])
    assert summary["n_items"] == 0 and summary["per_item"] == []
    assert summary["healthy"] == 0
    assert np.isnan(summary["mean"]["diagonal_score"])


@pytest.mark.parametrize("shape", [(4,), (0, 3), (2, 2, 2)])
def test_classify_failures_rejects_non_matrices(shape):
    with pytest.raises(am.DiagnosticsError, match="non-empty"):
        am.classify_failures(np.zeros(shape))


def test_near_uniform_rows_do_not_collapse_or_stick():
    A = uniform(200, 50)
    A[:, -1] += 0.01  # a slight lean to the end: the argmax is the last token everywhere
    A /= A.sum(axis=1, keepdims=True)
    assert am.classify_failures(A, am.alignment_metrics(A), SECONDS_PER_STEP) == ["diffuse"]


# ---------------------------------------------------------------------------- non-finite maps
@pytest.mark.parametrize("poison", [np.nan, np.inf])
def test_non_finite_attention_is_a_failure_never_healthy(poison):
    maps = [hard_diagonal(60, 20), hard_diagonal(60, 20)]
    maps[1] = maps[1].copy()
    maps[1][10, 3] = poison
    padded, text_lengths, decoder_lengths = _pad(maps)
    padded[0, 59:, :] = np.nan  # item 0 is cut to 59 steps: its padding may hold anything
    summary = am.batch_metrics(padded, text_lengths, [59, 60],
                               seconds_per_step=SECONDS_PER_STEP)
    assert summary["failure_modes"][1] == ["non_finite"]
    assert summary["failure_counts"]["non_finite"] == 1 and summary["healthy"] == 1
    assert summary["per_item"][1]["diagonal_score"] == 0.0
    assert np.isfinite(summary["mean"]["diagonal_score"])
    assert am.classify_failures(np.full((5, 4), np.nan)) == ["non_finite"]


# ---------------------------------------------------------------------------- free-running
def parked(read_steps: int, total: int, N: int) -> np.ndarray:
    """Reads the text on a clean diagonal in `read_steps`, then parks on the last token."""
    tokens = np.minimum(np.arange(total) * N // read_steps, N - 1)
    return one_hot(tokens, N)


def test_read_then_parked_map_is_read_and_runs_on():
    """The model read everything and never stopped: "runs_on", not "does not read"."""
    A = parked(90, 400, 30)
    scores = am.free_running_metrics(A[None], [30], [400], [True], [95],
                                     seconds_per_step=SECONDS_PER_STEP)
    assert scores["diagonal_score"] < 0.1  # the whole map: what the old figure reported
    assert scores["reading_diagonal_score"] > 0.9
    item = scores["per_item"][0]
    assert item["read_to_end"] and item["runs_on"] and not item["stopped"]
    assert 85 <= item["reading_steps"] <= 90
    assert scores["runs_on_share"] == 1.0 and scores["near_length_share"] == 0.0


def test_a_map_that_reads_and_stops_is_not_runs_on():
    A = parked(90, 96, 30)  # the gate fired a few steps after the last token
    scores = am.free_running_metrics(A[None], [30], [96], [False], [95])
    item = scores["per_item"][0]
    assert item["read_to_end"] and item["stopped"] and not item["runs_on"]
    assert item["near_length"] and scores["near_length_share"] == 1.0
    assert scores["reading_diagonal_score"] > 0.9 and scores["diagonal_score"] > 0.9


def test_a_map_that_never_reaches_the_end_is_not_runs_on():
    A = horizontal_band(400, 30, 5)
    scores = am.free_running_metrics(A[None], [30], [400], [True])
    item = scores["per_item"][0]
    assert not item["read_to_end"] and not item["runs_on"] and item["reading_steps"] == 400
    assert scores["reading_diagonal_score"] < 0.1 and scores["near_length_share"] is None


def test_alignment_metrics_imports_neither_torch_nor_matplotlib():
    import subprocess
    import sys

    code = ("import sys, alignment_metrics; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
