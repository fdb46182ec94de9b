"""Alignment metrics, failure modes, success criteria and red flags on generated attention maps.

The maps are built from their definition (a token per decoder step), never from a model: they
calibrate the scores that the trainer and the diagnostics report.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import alignment_diagnostics as diag
from hparams import HParams, create_hparams

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
    m = diag.alignment_metrics(A)
    assert m["diagonal_score"] >= 0.99
    assert m["focus_score"] == pytest.approx(1.0)
    assert m["max_attention"] == pytest.approx(1.0)
    assert m["coverage"] == pytest.approx(1.0)
    assert m["monotonic_score"] == pytest.approx(1.0)
    assert m["end_reached"] is True
    assert m["entropy"] == pytest.approx(0.0)
    assert diag.classify_failures(A, m, SECONDS_PER_STEP) == ["healthy"]


@pytest.mark.parametrize("T,N", GRIDS)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_realistic_diagonal_scores_high_and_is_healthy(T, N, seed):
    A = realistic_diagonal(T, N, seed)
    m = diag.alignment_metrics(A)
    assert m["diagonal_score"] >= 0.8
    assert m["focus_score"] == pytest.approx(0.7, abs=0.1)
    assert m["coverage"] == pytest.approx(1.0)
    assert m["monotonic_score"] == pytest.approx(1.0)
    assert 0.0 < m["entropy"] < 0.5
    assert diag.classify_failures(A, m, SECONDS_PER_STEP) == ["healthy"]


@pytest.mark.parametrize("T,N", GRIDS)
def test_uniform_attention_scores_zero_and_is_diffuse(T, N):
    A = uniform(T, N)
    m = diag.alignment_metrics(A)
    assert m["diagonal_score"] <= 0.05
    assert m["entropy"] == pytest.approx(1.0)
    assert m["max_attention"] == pytest.approx(1.0 / N)
    # Uniform rows have no token holding them: diffuse, not stuck.
    assert diag.classify_failures(A, m, SECONDS_PER_STEP) == ["diffuse"]


@pytest.mark.parametrize("T,N", GRIDS)
@pytest.mark.parametrize("where", ["first", "middle", "last_but_one"])
def test_horizontal_bands_score_zero_and_are_classified(T, N, where):
    token = {"first": 0, "middle": N // 2, "last_but_one": N - 2}[where]
    A = horizontal_band(T, N, token)
    m = diag.alignment_metrics(A)
    assert m["diagonal_score"] <= 0.05
    assert m["coverage"] == pytest.approx(1.0 / N)
    modes = diag.classify_failures(A, m, SECONDS_PER_STEP)
    assert "horizontal_band" in modes
    assert "stuck" not in modes  # the band explains the hold


@pytest.mark.parametrize("T,N", GRIDS)
def test_reversed_diagonal_scores_zero(T, N):
    m = diag.alignment_metrics(hard_diagonal(T, N)[:, ::-1])
    assert m["diagonal_score"] <= 0.05
    assert m["end_reached"] is False
    assert m["monotonic_score"] < 1.0


def test_band_and_chance_correction_by_hand():
    # T = N = 4, b = 0.15: only the cells of the exact diagonal are in the band, so B = 1/4;
    # a map with half of each row on the diagonal has M = 1/2 -> (1/2 - 1/4) / (3/4) = 1/3.
    A = 0.5 * np.eye(4) + 0.5 * np.roll(np.eye(4), 2, axis=1)
    assert diag.alignment_metrics(A)["diagonal_score"] == pytest.approx(1.0 / 3.0)
    # A wider band takes in every cell of a 2x2 grid: no information, score 0.
    assert diag.alignment_metrics(np.eye(2), band=0.6)["diagonal_score"] == 0.0


def test_metric_values_by_hand():
    A = np.array([[0.9, 0.1, 0.0],
                  [0.2, 0.8, 0.0],
                  [0.0, 0.3, 0.7],
                  [0.6, 0.4, 0.0]])  # the last step jumps back to token 0
    m = diag.alignment_metrics(A)
    assert m["focus_score"] == pytest.approx((0.9 + 0.8 + 0.7 + 0.6) / 4)
    assert m["max_attention"] == pytest.approx(0.9)
    assert m["coverage"] == pytest.approx(1.0)  # column sums 1.7, 1.6, 0.7
    assert m["monotonic_score"] == pytest.approx(2.0 / 3.0)
    assert m["end_reached"] is False  # argmax 0 is not within the last 2 of 3 tokens
    rows = -(A * np.log(np.where(A > 0, A, 1))).sum(axis=1)
    assert m["entropy"] == pytest.approx(rows.mean() / np.log(3))


def test_single_token_text_has_zero_entropy_and_no_collapse():
    A = np.ones((20, 1))
    m = diag.alignment_metrics(A)
    assert m["entropy"] == 0.0
    assert m["end_reached"] is True
    assert "collapse_to_end" not in diag.classify_failures(A, m, SECONDS_PER_STEP)


@pytest.mark.parametrize("shape", [(5,), (2, 3, 4), (0, 4)])
def test_alignment_metrics_rejects_non_matrices(shape):
    with pytest.raises(diag.DiagnosticsError, match="matrix"):
        diag.alignment_metrics(np.zeros(shape))


# ---------------------------------------------------------------------------- failure modes
def test_collapse_to_end_is_recognised():
    T, N = 200, 50
    tokens = np.minimum(np.arange(T) * N // T, N - 1)
    tokens[T // 3:] = N - 1  # jumps to the last token a third of the way in
    A = one_hot(tokens, N)
    modes = diag.classify_failures(A, diag.alignment_metrics(A), SECONDS_PER_STEP)
    assert "collapse_to_end" in modes
    assert "stuck" not in modes


def test_skipping_is_recognised():
    T, N = 240, 60
    kept = np.r_[0:20, 35:60]  # tokens 20..34 are never attended
    tokens = kept[np.minimum(np.arange(T) * len(kept) // T, len(kept) - 1)]
    A = one_hot(tokens, N)
    m = diag.alignment_metrics(A)
    assert m["coverage"] == pytest.approx(45 / 60)
    assert m["end_reached"] is True
    assert diag.classify_failures(A, m, SECONDS_PER_STEP) == ["skipping"]


@pytest.mark.parametrize("extra,stuck", [(60, True), (30, False)])
def test_stuck_is_recognised_from_seconds(extra, stuck):
    # 300 steps over 60 tokens = 5 per token; + 60 steps = 65 * 11.6 ms = 0.75 s (stuck);
    # + 30 = 35 steps = 0.41 s (not).
    A = with_hold(300, 60, token=30, extra_steps=extra)
    modes = diag.classify_failures(A, diag.alignment_metrics(A), SECONDS_PER_STEP)
    assert ("stuck" in modes) is stuck
    # Without a time scale stuck is not judged.
    assert "stuck" not in diag.classify_failures(A, None, None)


def test_classify_failures_takes_given_metrics():
    A = hard_diagonal(100, 20)
    fake = dict(diag.alignment_metrics(A), max_attention=0.05)
    assert "diffuse" in diag.classify_failures(A, fake, SECONDS_PER_STEP)


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
    summary = diag.batch_metrics(padded, text_lengths, decoder_lengths,
                                 seconds_per_step=SECONDS_PER_STEP)
    for A, item, modes in zip(maps, summary["per_item"], summary["failure_modes"]):
        alone = diag.alignment_metrics(A)
        for name in diag.METRIC_NAMES:
            assert item[name] == pytest.approx(alone[name], abs=1e-9), name
        assert modes == diag.classify_failures(A, alone, SECONDS_PER_STEP)
    for name in diag.METRIC_NAMES:
        expected = np.mean([float(diag.alignment_metrics(A)[name]) for A in maps])
        assert summary["mean"][name] == pytest.approx(expected)


def test_batch_failure_modes_and_counts():
    padded, text_lengths, decoder_lengths = _pad(_zoo())
    summary = diag.batch_metrics(padded, text_lengths, decoder_lengths,
                                 seconds_per_step=SECONDS_PER_STEP)
    assert summary["n_items"] == 7
    assert summary["failure_modes"] == [["healthy"], ["healthy"], ["diffuse"],
                                        ["horizontal_band"], ["horizontal_band"], ["healthy"],
                                        ["stuck"]]
    assert summary["failure_counts"] == {"horizontal_band": 2, "diffuse": 1,
                                         "collapse_to_end": 0, "skipping": 0, "stuck": 1,
                                         "healthy": 3}
    assert summary["per_item"][6]["hold_token"] == 30
    assert summary["per_item"][6]["longest_hold_steps"] == 65


def test_batch_metrics_reads_hparams_and_tensors():
    torch = pytest.importorskip("torch")
    maps = [with_hold(300, 60, 30, 60), hard_diagonal(57, 23)]
    padded, text_lengths, decoder_lengths = _pad(maps)
    hp = HParams()
    from_hp = diag.batch_metrics(torch.tensor(padded, dtype=torch.bfloat16),
                                 torch.tensor(text_lengths), torch.tensor(decoder_lengths), hp=hp)
    assert from_hp["failure_modes"][0] == ["stuck"]
    # 65 steps at hop 256 are 0.75 s (stuck); at hop 64 they are 0.19 s.
    short = diag.batch_metrics(padded, text_lengths, decoder_lengths,
                               hp=hp.replace(hop_length=64, win_length=256, filter_length=256))
    assert short["failure_modes"][0] == ["healthy"]


@pytest.mark.parametrize("text_lengths,decoder_lengths,match", [
    ([10, 0], [20, 20], "text_lengths must lie in 1..10"),
    ([10, 11], [20, 20], "text_lengths must lie in 1..10"),
    ([10, 10], [20, 21], "decoder_lengths must lie in 1..20"),
    ([10], [20, 20], r"text_lengths has shape \(1,\); expected \(2,\)"),
])
def test_batch_metrics_rejects_bad_lengths(text_lengths, decoder_lengths, match):
    with pytest.raises(diag.DiagnosticsError, match=match):
        diag.batch_metrics(np.zeros((2, 20, 10)), text_lengths, decoder_lengths)


def test_batch_metrics_rejects_non_batches():
    with pytest.raises(diag.DiagnosticsError, match=r"\(B, T, N\)"):
        diag.batch_metrics(np.zeros((20, 10)), [10], [20])


def test_batch_metrics_is_fast():
    maps = [realistic_diagonal(300, 80, seed) for seed in range(100)]
    padded = np.stack(maps)
    start = time.perf_counter()
    summary = diag.batch_metrics(padded, [80] * 100, [300] * 100, seconds_per_step=SECONDS_PER_STEP)
    elapsed = time.perf_counter() - start
    print(f"batch_metrics: 100 utterances of (300, 80) in {elapsed * 1000:.0f} ms")
    assert summary["failure_counts"]["healthy"] == 100


# ---------------------------------------------------------------------------- criteria
@pytest.mark.parametrize("step,milestone,threshold,next_step,next_threshold", [
    (999, None, None, None, None),
    (1000, 1000, 0.10, 3000, 0.30),
    (2999, 1000, 0.10, 3000, 0.30),
    (3000, 3000, 0.30, 5000, 0.50),
    (7200, 5000, 0.50, 10000, 0.70),
    (10000, 10000, 0.70, None, None),
    (250000, 10000, 0.70, None, None),
])
def test_criterion_for_step(step, milestone, threshold, next_step, next_threshold):
    criterion = diag.criterion_for_step(step, HParams())
    if milestone is None:
        assert criterion is None
        return
    assert criterion == {"step": milestone, "threshold": pytest.approx(threshold),
                         "next_step": next_step, "next_threshold": next_threshold
                         if next_threshold is None else pytest.approx(next_threshold)}


@pytest.mark.parametrize("value,passed", [(0.31, True), (0.30, False), (0.1, False)])
def test_criterion_judges_a_value(value, passed):
    criterion = diag.criterion_for_step(4000, HParams(), value)
    assert criterion["value"] == value and criterion["passed"] is passed


def test_criterion_follows_the_hparams():
    hp = create_hparams("preset=demo")  # milestones 200, 500, 1000, 2000
    assert diag.criterion_for_step(600, hp)["step"] == 500
    assert diag.criterion_for_step(199, hp) is None
    assert diag.next_milestone(199, hp) == {"step": 200, "threshold": pytest.approx(0.10)}
    assert diag.next_milestone(2000, hp) is None


# ---------------------------------------------------------------------------- red flags
def _summary(maps):
    padded, text_lengths, decoder_lengths = _pad(maps)
    return diag.batch_metrics(padded, text_lengths, decoder_lengths,
                              seconds_per_step=SECONDS_PER_STEP)


def _ids(flags):
    return [f["id"] for f in flags]


def test_no_red_flags_before_the_start_step():
    bad = _summary([uniform(100, 40)] * 4)
    hp = HParams()
    assert diag.red_flags(1999, bad, 0.0, hp) == []
    assert _ids(diag.red_flags(2000, bad, 0.0, hp)) == [1, 2, 3]


def test_flag_1_low_diagonality():
    flags = diag.red_flags(2400, _summary([horizontal_band(100, 40, 20)] * 2 +
                                          [hard_diagonal(100, 40)] * 3), 1.0, HParams())
    # mean diagonality 0.6 * 1 + 0.4 * 0.03: no flag 1; two of five bands: no flag 4
    assert flags == []
    flags = diag.red_flags(2400, _summary([horizontal_band(100, 40, 20)] * 4 +
                                          [hard_diagonal(100, 40)]), 1.0, HParams())
    assert _ids(flags) == [4]
    flags = diag.red_flags(2400, _summary([horizontal_band(100, 40, 0)] * 5), 1.0, HParams())
    assert _ids(flags) == [1, 4]
    assert flags[0]["name"] == "low diagonality"
    assert flags[0]["message"] == "diagonality 0.0% is below 5% at step 2400"


def test_flag_2_needs_a_missed_criterion_and_a_tiny_guided_term():
    hp = HParams()
    mid = _summary([realistic_diagonal(120, 37)] + [uniform(120, 37)] * 3)  # about 0.25
    assert 0.05 < mid["mean"]["diagonal_score"] < 0.3
    assert _ids(diag.red_flags(3000, mid, 0.005, hp)) == [2]  # misses 0.30 at 3000
    assert diag.red_flags(2000, mid, 0.005, hp) == []  # passes 0.10 at 1000
    assert diag.red_flags(3000, mid, 0.05, hp) == []  # the guidance still pulls
    assert diag.red_flags(3000, mid, None, hp) == []  # unknown: not judged
    message = diag.red_flags(3000, mid, 0.005, hp)[0]["message"]
    assert "0.0050" in message and "step-3000 criterion (30%)" in message


def test_flag_3_only_when_every_utterance_is_diffuse():
    hp = HParams()
    assert 3 in _ids(diag.red_flags(2000, _summary([uniform(100, 40)] * 3), 1.0, hp))
    mixed = _summary([uniform(100, 40)] * 3 + [uniform(100, 5)])  # 0.2 >= 0.1
    assert 3 not in _ids(diag.red_flags(2000, mixed, 1.0, hp))


def test_flag_4_from_half_the_utterances():
    hp = HParams()
    half = _summary([horizontal_band(100, 40, 3)] * 2 + [realistic_diagonal(100, 40)] * 2)
    assert _ids(diag.red_flags(2000, half, 1.0, hp)) == [4]
    assert "2 of 4" in diag.red_flags(2000, half, 1.0, hp)[0]["message"]
    fewer = _summary([horizontal_band(100, 40, 3)] + [realistic_diagonal(100, 40)] * 2)
    assert diag.red_flags(2000, fewer, 1.0, hp) == []


def test_red_flags_from_a_log_record():
    record = {"metrics": {"diagonal_score": 0.01}, "failure_counts": {"diffuse": 8,
                                                                       "horizontal_band": 0},
              "n_items": 8}
    assert _ids(diag.red_flags(2200, record, 0.5, HParams())) == [1, 3]


def test_red_flags_in_russian():
    flags = diag.red_flags(2000, _summary([uniform(100, 40)] * 3), 0.0, HParams(), lang="ru")
    assert flags[0]["name"] == "низкая диагональность"
    assert "шаге 2000" in flags[0]["message"]


def test_both_languages_have_the_same_messages():
    import string

    en, ru = diag.MESSAGES["en"], diag.MESSAGES["ru"]
    assert set(en) == set(ru)
    for key in en:
        fields = lambda s: sorted(f for _, f, _, _ in string.Formatter().parse(s) if f)  # noqa
        assert fields(en[key]) == fields(ru[key]), key


# ---------------------------------------------------------------------------- pictures
def test_plot_alignment_to_numpy():
    image = diag.plot_alignment_to_numpy(realistic_diagonal(120, 37), "teacher-forced", 0.15)
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.shape[0] > 200 and image.shape[1] > 300
    assert image.std() > 20  # not a blank canvas
    with pytest.raises(diag.DiagnosticsError, match="matrix"):
        diag.plot_alignment_to_numpy(np.zeros((2, 3, 4)))


def test_empty_batch():
    summary = diag.batch_metrics(np.zeros((0, 5, 4)), [], [])
    assert summary["n_items"] == 0 and summary["per_item"] == []
    assert summary["failure_counts"]["healthy"] == 0
    assert np.isnan(summary["mean"]["diagonal_score"])


@pytest.mark.parametrize("shape", [(4,), (0, 3), (2, 2, 2)])
def test_classify_failures_rejects_non_matrices(shape):
    with pytest.raises(diag.DiagnosticsError, match="non-empty"):
        diag.classify_failures(np.zeros(shape))


def test_near_uniform_rows_do_not_collapse_or_stick():
    A = uniform(200, 50)
    A[:, -1] += 0.01  # a slight lean to the end: the argmax is the last token everywhere
    A /= A.sum(axis=1, keepdims=True)
    assert diag.classify_failures(A, diag.alignment_metrics(A), SECONDS_PER_STEP) == ["diffuse"]
