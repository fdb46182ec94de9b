"""Success criteria and red flags (guardrails.py) on generated attention maps."""
from __future__ import annotations

import numpy as np
import pytest

import alignment_metrics as am
import guardrails
from hparams import HParams, create_hparams
from test_alignment_metrics import (SECONDS_PER_STEP, _pad, hard_diagonal, horizontal_band,
                                    realistic_diagonal, uniform)


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
    criterion = guardrails.criterion_for_step(step, HParams())
    if milestone is None:
        assert criterion is None
        return
    assert criterion == {"step": milestone, "threshold": pytest.approx(threshold),
                         "next_step": next_step, "next_threshold": next_threshold
                         if next_threshold is None else pytest.approx(next_threshold)}


@pytest.mark.parametrize("value,passed", [(0.31, True), (0.30, False), (0.1, False)])
def test_criterion_judges_a_value(value, passed):
    criterion = guardrails.criterion_for_step(4000, HParams(), value)
    assert criterion["value"] == value and criterion["passed"] is passed


def test_criterion_follows_the_hparams():
    hp = create_hparams("preset=demo")  # milestones 200, 500, 1000, 2000
    assert guardrails.criterion_for_step(600, hp)["step"] == 500
    assert guardrails.criterion_for_step(199, hp) is None
    assert guardrails.next_milestone(199, hp) == {"step": 200, "threshold": pytest.approx(0.10)}
    assert guardrails.next_milestone(2000, hp) is None


# ---------------------------------------------------------------------------- red flags
def _summary(maps):
    padded, text_lengths, decoder_lengths = _pad(maps)
    return am.batch_metrics(padded, text_lengths, decoder_lengths,
                              seconds_per_step=SECONDS_PER_STEP)


def _ids(flags):
    return [f.id for f in flags]


def test_no_red_flags_before_the_start_step():
    bad = _summary([uniform(100, 40)] * 4)
    hp = HParams()
    assert guardrails.red_flags(1999, bad, 0.0, hp) == []
    assert _ids(guardrails.red_flags(2000, bad, 0.0, hp)) == [1, 2, 3]


def test_flag_1_low_diagonality():
    flags = guardrails.red_flags(2400, _summary([horizontal_band(100, 40, 20)] * 2 +
                                          [hard_diagonal(100, 40)] * 3), 1.0, HParams())
    # mean diagonality 0.6 * 1 + 0.4 * 0.03: no flag 1; two of five bands: no flag 4
    assert flags == []
    flags = guardrails.red_flags(2400, _summary([horizontal_band(100, 40, 20)] * 4 +
                                          [hard_diagonal(100, 40)]), 1.0, HParams())
    assert _ids(flags) == [4]
    flags = guardrails.red_flags(2400, _summary([horizontal_band(100, 40, 0)] * 5), 1.0, HParams())
    assert _ids(flags) == [1, 4]
    assert flags[0].name == "low diagonality"
    assert flags[0].message == "diagonality 0.0% is below 5% at step 2400"


def test_flag_2_needs_a_missed_criterion_and_a_tiny_guided_term():
    hp = HParams()
    mid = _summary([realistic_diagonal(120, 37)] + [uniform(120, 37)] * 3)  # about 0.25
    assert 0.05 < mid["mean"]["diagonal_score"] < 0.3
    assert _ids(guardrails.red_flags(3000, mid, 0.005, hp)) == [2]  # misses 0.30 at 3000
    assert guardrails.red_flags(2000, mid, 0.005, hp) == []  # passes 0.10 at 1000
    assert guardrails.red_flags(3000, mid, 0.05, hp) == []  # the guidance still pulls
    assert guardrails.red_flags(3000, mid, None, hp) == []  # unknown: not judged
    message = guardrails.red_flags(3000, mid, 0.005, hp)[0].message
    assert "0.0050" in message and "step-3000 criterion (30%)" in message


def test_flag_3_only_when_every_utterance_is_diffuse():
    hp = HParams()
    assert 3 in _ids(guardrails.red_flags(2000, _summary([uniform(100, 40)] * 3), 1.0, hp))
    mixed = _summary([uniform(100, 40)] * 3 + [uniform(100, 5)])  # 0.2 >= 0.1
    assert 3 not in _ids(guardrails.red_flags(2000, mixed, 1.0, hp))


def test_flag_4_from_half_the_utterances():
    hp = HParams()
    half = _summary([horizontal_band(100, 40, 3)] * 2 + [realistic_diagonal(100, 40)] * 2)
    assert _ids(guardrails.red_flags(2000, half, 1.0, hp)) == [4]
    assert "2 of 4" in guardrails.red_flags(2000, half, 1.0, hp)[0].message
    fewer = _summary([horizontal_band(100, 40, 3)] + [realistic_diagonal(100, 40)] * 2)
    assert guardrails.red_flags(2000, fewer, 1.0, hp) == []


def test_red_flags_from_a_log_record():
    record = {"metrics": {"diagonal_score": 0.01}, "failure_counts": {"diffuse": 8,
                                                                       "horizontal_band": 0},
              "n_items": 8}
    assert _ids(guardrails.red_flags(2200, record, 0.5, HParams())) == [1, 3]


def test_red_flags_in_russian():
    flags = guardrails.red_flags(2000, _summary([uniform(100, 40)] * 3), 0.0, HParams(), lang="ru")
    assert flags[0].name == "низкая диагональность"
    assert "шаге 2000" in flags[0].message


def test_non_finite_attention_raises_the_divergence_flag_at_any_step():
    maps = [hard_diagonal(60, 20)] * 3
    padded, text_lengths, decoder_lengths = _pad(maps)
    padded[1] = np.nan
    summary = am.batch_metrics(padded, text_lengths, decoder_lengths)
    flags = guardrails.red_flags(10, summary, 1.0, HParams())  # long before red_flag_start_step
    assert [f.kind for f in flags] == [guardrails.FlagKind.DIVERGENCE]
    assert flags[0].name == "divergence" and "1 of 3" in flags[0].message
    decision = guardrails.AlignmentGuard().check(10, summary, 1.0, HParams())
    assert decision.action is guardrails.Action.STOP


def test_divergence_guard_counts_non_finite_steps_and_explosions():
    hp = create_hparams("max_bad_steps=3,divergence_factor=10,divergence_window=20")
    guard = guardrails.DivergenceGuard(hp)
    for step in range(1, 16):
        assert guard.observe(step, 50.0 - step, 1.0, hp) is None
    assert guard.observe(16, float("nan"), None, hp) is None
    assert guard.observe(17, 40.0, float("inf"), hp) is None  # a non-finite gradient counts
    flag = guard.observe(18, float("nan"), None, hp)
    assert flag.kind is guardrails.FlagKind.DIVERGENCE and "3 steps in a row" in flag.message
    assert guard.skipped_total == 3
    assert guard.observe(19, 41.0, 1.0, hp) is None  # a good step resets the streak
    flag = guard.observe(20, 1e6, 1.0, hp)
    assert flag is not None and "running median" in flag.message
    restored = guardrails.DivergenceGuard(hp, guard.state_dict())
    assert restored.state_dict() == guard.state_dict()


def test_teacher_forced_pass_with_free_running_near_zero_warns():
    hp = create_hparams("preset=demo")  # milestones 200 (0.10), 500 (0.30) ...
    guard = guardrails.AlignmentGuard()
    warnings = [guard.free_running_gap(step, 0.8, 0.02, hp) for step in (200, 300, 400, 500)]
    assert warnings[:2] == [None, None]
    assert warnings[2] is not None and "teacher-forced" in warnings[2].lower()
    assert guard.free_running_gap(600, 0.8, 0.5, hp) is None  # free-running caught up
    assert guardrails.AlignmentGuard(guard.state_dict()).tf_only_streak == 0
    ru = guardrails.AlignmentGuard({"tf_only_streak": 5}).free_running_gap(700, 0.8, 0.0, hp,
                                                                            lang="ru")
    assert "свободного декодирования" in ru


def test_remediation_starts_the_curriculum_from_its_own_step():
    hp = create_hparams("red_flag_action=remediate")
    guard = guardrails.AlignmentGuard()
    bad = am.batch_metrics(*_pad([uniform(100, 40)] * 3))
    assert guard.check(5000, bad, 0.0, hp).action is guardrails.Action.REMEDIATE
    assert guard.curriculum_from == 5000 and guard.curriculum_step(5000, hp) == 0
    assert guardrails.AlignmentGuard().curriculum_step(300, hp) == 300  # user's curriculum



# ---------------------------------------------------------------------------------- speech
def _quality(mcd, wer=None, ceiling_wer=None):
    return {"mean_mcd": mcd, "mcd": [mcd], "wer": wer,
            "references": {"self_mcd": 0.0, "griffin_lim_mcd": 0.5, "flat_mcd": 4.5,
                           "griffin_lim_wer": ceiling_wer}}


def _free(diagonal, near):
    return am.FreeRunningScores(diagonal_score=diagonal, reading_diagonal_score=diagonal,
                                near_length_share=near)


def test_aligned_and_understood_are_told_apart():
    assert guardrails.is_aligned(_free(0.9, 0.9)) and not guardrails.is_aligned(_free(0.9, 0.5))
    assert not guardrails.is_aligned(None)
    assert guardrails.is_understood(_quality(3.0, wer=0.55, ceiling_wer=0.4)) is True
    assert guardrails.is_understood(_quality(3.0, wer=0.99, ceiling_wer=0.4)) is False
    assert guardrails.is_understood(_quality(3.0)) is None  # no recogniser: not judged
    # a recogniser that misses most words of the recordings themselves cannot judge
    assert guardrails.is_understood(_quality(3.0, wer=0.9, ceiling_wer=0.95)) is None
    line = guardrails.status_line(1200, _free(1.0, 0.88), _quality(3.0, 0.99, 0.41))
    assert line == "step 1200: aligned yes; understood no"
    assert "разборчивость не измерялась" in guardrails.status_line(1, None, None, lang="ru")


def test_an_aligned_run_whose_speech_stops_improving_gets_flag_6_as_advice():
    hp = create_hparams("quality_patience=3,red_flag_action=stop")
    guard = guardrails.AlignmentGuard()
    aligned = _free(0.95, 0.9)
    assert guard.quality_plateau(100, aligned, _quality(4.0), hp) is None
    assert guard.quality_plateau(200, aligned, _quality(3.0), hp) is None  # improving
    flags = [guard.quality_plateau(s, aligned, _quality(3.02), hp) for s in (300, 400, 500)]
    assert flags[:2] == [None, None]
    flag = flags[2]
    assert flag.kind is guardrails.FlagKind.QUALITY_PLATEAU
    assert "best MCD 3.00 dB at step 200" in flag.message and "n_frames_per_step" in flag.message
    # advice only: even red_flag_action=stop only warns about it
    good = am.batch_metrics(*_pad([hard_diagonal(100, 40)] * 3))
    decision = guard.check(600, good, 1.0, hp, flag)
    assert decision.action is guardrails.Action.WARN and decision.flags == [flag]
    # the guard's memory survives a resume
    again = guardrails.AlignmentGuard(guard.state_dict())
    assert (again.best_mcd, again.best_mcd_step, again.quality_stale) == (3.0, 200, 3)


def test_quality_counts_from_the_alignment_on():
    """Decodes that do not stop yet are no baseline: the best MCD starts when the run aligns."""
    hp = create_hparams("quality_patience=1")
    guard = guardrails.AlignmentGuard()
    guard.quality_plateau(100, _free(0.1, 0.0), _quality(2.0), hp)
    assert guard.quality_plateau(200, _free(0.1, 0.0), _quality(2.0), hp) is None
    assert guard.quality_plateau(300, _free(1.0, 1.0), _quality(3.5), hp) is None  # the first
    assert guard.best_mcd == 3.5 and guard.best_mcd_step == 300
    assert guard.quality_plateau(400, _free(1.0, 1.0), _quality(3.5), hp) is not None
