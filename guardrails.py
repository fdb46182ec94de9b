"""What a run's own scores mean: success criteria, milestones, red flags, remediation, divergence.

The scores come from `alignment_metrics` (one implementation); this module only judges them
against the hparams (docs/alignment_metrics.md, "Success criteria" and "Red flags"). The guards
are plain state that a checkpoint carries (`state_dict`), so a resumed run knows whether it
already remediated, which milestones it has judged and how its recent losses looked.
"""
from __future__ import annotations

import bisect
import enum
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Deque, Dict, List, NamedTuple, Optional

import numpy as np

from alignment_metrics import FreeRunningScores
from hparams import HParams
from messages import message

MAX_ROLLBACKS = 3  # divergence rollbacks before the run stops: lowering the rate did not help
# The warning "teacher-forced passes, free-running does not" needs this many validations in a
# row: one bad free-running decode early on is normal.
TF_ONLY_VALIDATIONS = 3
FREE_RUNNING_NEAR_ZERO = 0.1
# "Aligned": free-running decoding reads (diagonality) and stops near the recorded length, the
# real-voice target of docs/alignment_metrics.md. "Understood": the word error rate of the
# model's Griffin-Lim audio within UNDERSTOOD_WER_MARGIN of the recordings' own Griffin-Lim.
ALIGNED_DIAGONAL = 0.7
ALIGNED_NEAR_LENGTH = 0.8
UNDERSTOOD_WER_MARGIN = 0.2
# Above this word error rate on the recordings' own Griffin-Lim the recogniser does not follow
# the voice (a language or a timbre it does not know): "understood" is then not judged.
UNDERSTOOD_MAX_CEILING = 0.6
QUALITY_MIN_GAIN_DB = 0.05  # an MCD this much below the best so far counts as improving
# Losses needed before the running median judges an explosion: the first steps of a run fall
# fast, and a median of a handful of them would be noise.
DIVERGENCE_MIN_HISTORY = 10

REMEDIES = ("check the data: python check_data.py {train} {val} (text-audio pairs, silence, "
            "sample rates)",
            "raise the guided-attention weight: --hparams=guide_loss_weight=5.0",
            "turn curriculum learning on: --hparams=curriculum=true (short texts first)")


# ---------------------------------------------------------------------------------- criteria
def criterion_for_step(step: int, hp: HParams,
                       diagonal_score: Optional[float] = None) -> Optional[Dict[str, Any]]:
    """The success criterion that judges `step`: the largest milestone at or below it.

    Args:
        step: training step.
        hp: `success_steps` and `success_thresholds` are read.
        diagonal_score: when given, `value` and `passed` (value > threshold) are added.

    Returns:
        None before the first milestone, else {"step", "threshold", "next_step",
        "next_threshold"} (the next two None at the last milestone), plus "value" and "passed".
    """
    steps, thresholds = list(hp.success_steps), list(hp.success_thresholds)
    i = bisect.bisect_right(steps, step) - 1
    if i < 0:
        return None
    has_next = i + 1 < len(steps)
    out: Dict[str, Any] = {"step": int(steps[i]), "threshold": float(thresholds[i]),
                           "next_step": int(steps[i + 1]) if has_next else None,
                           "next_threshold": float(thresholds[i + 1]) if has_next else None}
    if diagonal_score is not None:
        out["value"] = float(diagonal_score)
        out["passed"] = bool(diagonal_score > thresholds[i])
    return out


def next_milestone(step: int, hp: HParams) -> Optional[Dict[str, Any]]:
    """The first milestone after `step`: {"step", "threshold"}, or None after the last."""
    i = bisect.bisect_right(list(hp.success_steps), step)
    if i >= len(hp.success_steps):
        return None
    return {"step": int(hp.success_steps[i]), "threshold": float(hp.success_thresholds[i])}


# ---------------------------------------------------------------------------------- red flags
class FlagKind(enum.Enum):
    """The red flags, by the number users see in the log and the reports."""
    LOW_DIAGONALITY = 1
    GUIDANCE_WITHOUT_GRIP = 2
    ALL_WEIGHTS_LOW = 3
    HORIZONTAL_BANDS = 4
    DIVERGENCE = 5
    QUALITY_PLATEAU = 6  # advice only: it never remediates or stops a run

    def display_name(self, lang: str = "en") -> str:
        return message(lang, f"flag{self.value}_name")


@dataclass(frozen=True)
class RedFlag:
    """One red flag that is up: its kind and what it says, in the language it was judged in.

    On disk (diagnostics.jsonl, reports) it is `{"id", "name", "message"}`.
    """
    kind: FlagKind
    message: str
    name: str

    @classmethod
    def make(cls, kind: FlagKind, lang: str, text_key: str, **fields: Any) -> "RedFlag":
        return cls(kind, message(lang, text_key, **fields), kind.display_name(lang))

    @property
    def id(self) -> int:
        return self.kind.value

    def line(self) -> str:
        return f"red flag {self.id} ({self.name}): {self.message}"

    def to_dict(self) -> Dict[str, Any]:
        return {"id": self.id, "name": self.name, "message": self.message}

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "RedFlag":
        kind = FlagKind(int(data["id"]))
        return cls(kind, str(data.get("message", "")), str(data.get("name") or
                                                            kind.display_name()))


class Action(enum.Enum):
    """What a validation's judgment asks the trainer to do (`hp.red_flag_action` applied)."""
    CONTINUE = "continue"
    WARN = "warn"
    REMEDIATE = "remediate"
    STOP = "stop"


def _flag(kind: int, lang: str, text_key: str, **fields: Any) -> RedFlag:
    return RedFlag.make(FlagKind(kind), lang, text_key, **fields)


def red_flags(step: int, summary: Dict[str, Any], guided_term: Optional[float], hp: HParams,
              lang: str = "en") -> List[RedFlag]:
    """The red flags that are up at `step`.

    Flags 1-4 are judged from `hp.red_flag_start_step` on; flag 5 (divergence: non-finite
    attention) at any step, since a run that writes NaN cannot recover by waiting.

    Args:
        step: training step of the validation.
        summary: `alignment_metrics.batch_metrics` output; a diagnostics.jsonl record
            ("metrics", "failure_counts", "n_items") works too (flag 3 then counts `diffuse`).
        guided_term: guided-attention weight x loss as it entered the total; None = unknown
            (flag 2 is not judged).
        hp: thresholds (`red_flag_*`) and success criteria.
        lang: language of the messages.

    Returns:
        `RedFlag`s in id order.
    """
    if step is None:
        return []
    counts = summary.get("failure_counts") or {}
    per_item = summary.get("per_item")
    n_items = int(summary.get("n_items", len(per_item) if per_item is not None else 0))
    broken = int(counts.get("non_finite", 0))
    late_flags: List[RedFlag] = []
    if step >= hp.red_flag_start_step:
        late_flags = _judged_flags(step, summary, guided_term, hp, lang, counts, per_item,
                                   n_items)
    if broken:
        late_flags.append(_flag(FlagKind.DIVERGENCE.value, lang, "flag5_nonfinite_attention", count=broken,
                                n=n_items))
    return late_flags


def _judged_flags(step: int, summary: Dict[str, Any], guided_term: Optional[float],
                  hp: HParams, lang: str, counts: Dict[str, int],
                  per_item: Optional[List[Dict[str, Any]]], n_items: int) -> List[RedFlag]:
    mean = summary.get("mean") or summary.get("metrics") or {}
    diagonal = float(mean["diagonal_score"])
    flags = []
    if not diagonal >= hp.red_flag_diagonal:  # NaN is below every threshold too
        flags.append(_flag(1, lang, "flag1", value=diagonal, threshold=hp.red_flag_diagonal,
                           step=step))
    criterion = criterion_for_step(step, hp, diagonal)
    if (guided_term is not None and guided_term < hp.red_flag_guided_term
            and criterion is not None and not criterion["passed"]):
        flags.append(_flag(2, lang, "flag2", value=float(guided_term),
                           threshold=hp.red_flag_guided_term, diagonal=diagonal,
                           milestone=criterion["step"], criterion=criterion["threshold"]))
    if per_item:
        all_low = all(item["max_attention"] < hp.red_flag_max_attention for item in per_item)
    else:
        all_low = n_items > 0 and counts.get("diffuse", 0) == n_items
    if all_low:
        flags.append(_flag(3, lang, "flag3", threshold=hp.red_flag_max_attention))
    bands = int(counts.get("horizontal_band", 0))
    if n_items > 0 and bands / n_items >= hp.red_flag_band_share:
        flags.append(_flag(4, lang, "flag4", count=bands, n=n_items,
                           share=hp.red_flag_band_share))
    return flags


def _fmt(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.2f}"


def is_aligned(free: Optional[FreeRunningScores]) -> bool:
    """Free-running decoding reads its texts and stops near their recorded length."""
    return (free is not None and free.diagonal_score >= ALIGNED_DIAGONAL
            and (free.near_length_share or 0.0) >= ALIGNED_NEAR_LENGTH)


def is_understood(quality: Optional[Dict[str, Any]]) -> Optional[bool]:
    """The word error rate within UNDERSTOOD_WER_MARGIN of the recordings' own Griffin-Lim;
    None where it was not measured (no recogniser, not English, no quality validation) or
    cannot tell (the recogniser misses over UNDERSTOOD_MAX_CEILING of the recordings' words)."""
    if not quality or quality.get("wer") is None:
        return None
    ceiling = (quality.get("references") or {}).get("griffin_lim_wer")
    if ceiling is None or ceiling > UNDERSTOOD_MAX_CEILING:
        return None
    return float(quality["wer"]) <= float(ceiling) + UNDERSTOOD_WER_MARGIN


def status_line(step: int, free: Optional[FreeRunningScores],
                quality: Optional[Dict[str, Any]], lang: str = "en") -> str:
    """"aligned" and "understood" told apart, for the log and the report."""
    understood = is_understood(quality)
    yes_no = {True: message(lang, "status_yes"), False: message(lang, "status_no"),
              None: message(lang, "status_unknown")}
    return message(lang, "status_line", step=step, aligned=yes_no[is_aligned(free)],
                   understood=yes_no[understood])


def quality_figures(quality: Dict[str, Any], lang: str = "en") -> str:
    """A quality validation's scores with their references beside them, for a log line."""
    refs = quality.get("references") or {}
    if quality.get("wer") is not None:
        wer = message(lang, "quality_wer", wer=quality["wer"],
                      ceiling=_fmt(refs.get("griffin_lim_wer")))
    else:
        wer = message(lang, "quality_no_wer", why=quality.get("wer_notice") or "-")
    return message(lang, "quality_figures", mcd=quality["mean_mcd"],
                   n=len(quality.get("mcd") or []), ceiling=_fmt(refs.get("griffin_lim_mcd")),
                   hum=_fmt(refs.get("flat_mcd")), wer=wer)


def quality_line(step: int, quality: Dict[str, Any], lang: str = "en") -> str:
    """The log line of a quality validation, with the references beside the scores."""
    return message(lang, "quality_line", step=step, figures=quality_figures(quality, lang))


def remedies_text(hp: HParams) -> str:
    return "; ".join(r.format(train=hp.training_files, val=hp.validation_files) for r in REMEDIES)


def remediated_hparams(hp: HParams) -> HParams:
    """The hparams after remediation: stronger guidance and curriculum learning."""
    return hp.replace(guide_loss_weight=hp.remedy_guide_loss_weight, curriculum=True)


# ---------------------------------------------------------------------------------- the guards
class GuardDecision(NamedTuple):
    action: Action
    flags: List[RedFlag]
    message: str


class AlignmentGuard:
    """Milestones, red flags and the teacher-forced/free-running gap of one run, with
    `hp.red_flag_action` applied. State: `state_dict()` / the `state` argument."""

    def __init__(self, state: Optional[Dict[str, Any]] = None):
        state = state or {}
        self.remediated_at: Optional[int] = state.get("remediated_at")
        # The step from which a curriculum counts: 0 for one switched on by the user, the
        # remediation step for one the guard switched on (it then starts from the short texts).
        self.curriculum_from: Optional[int] = state.get("curriculum_from")
        self.milestones_done: List[int] = list(state.get("milestones_done", []))
        self.tf_only_streak: int = int(state.get("tf_only_streak", 0))
        # the best MCD of the run so far, its step, and quality validations since it
        self.best_mcd: Optional[float] = state.get("best_mcd")
        self.best_mcd_step: Optional[int] = state.get("best_mcd_step")
        self.quality_stale: int = int(state.get("quality_stale", 0))

    def state_dict(self) -> Dict[str, Any]:
        return {"remediated_at": self.remediated_at, "curriculum_from": self.curriculum_from,
                "milestones_done": list(self.milestones_done),
                "tf_only_streak": self.tf_only_streak, "best_mcd": self.best_mcd,
                "best_mcd_step": self.best_mcd_step, "quality_stale": self.quality_stale}

    def quality_plateau(self, step: int, free: Optional[FreeRunningScores],
                        quality: Optional[Dict[str, Any]], hp: HParams,
                        lang: str = "en") -> Optional[RedFlag]:
        """Flag 6 when an aligned run's MCD has not improved for `quality_patience` quality
        validations in a row; None otherwise. Call once per quality validation. The best MCD
        counts from the run's alignment on: before it, a decode that does not stop is another
        kind of sound, and comparing with it would say nothing about the speech."""
        if quality is None or not math.isfinite(float(quality["mean_mcd"])):
            return None
        if not is_aligned(free):
            self.best_mcd, self.best_mcd_step, self.quality_stale = None, None, 0
            return None
        mcd = float(quality["mean_mcd"])
        if self.best_mcd is None or mcd < self.best_mcd - QUALITY_MIN_GAIN_DB:
            self.best_mcd, self.best_mcd_step, self.quality_stale = mcd, step, 0
            return None
        self.quality_stale += 1
        if self.quality_stale < hp.quality_patience:
            return None
        refs = quality.get("references") or {}
        return _flag(FlagKind.QUALITY_PLATEAU.value, lang, "flag6",
                     diagonal=free.diagonal_score, k=self.quality_stale, best=self.best_mcd,
                     best_step=self.best_mcd_step, mcd=mcd,
                     ceiling=_fmt(refs.get("griffin_lim_mcd")), hum=_fmt(refs.get("flat_mcd")))

    def milestone_due(self, step: int, hp: HParams) -> bool:
        """Whether a validation at `step` reaches a milestone not judged yet (`milestone`
        would return its verdict)."""
        criterion = criterion_for_step(step, hp)
        return criterion is not None and criterion["step"] not in self.milestones_done

    def milestone(self, step: int, diagonal: float, hp: HParams,
                  free: Optional[FreeRunningScores] = None,
                  quality: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """The success criterion reached for the first time at this validation, judged.

        Args:
            diagonal: teacher-forced diagonality (the criterion is judged on it).
            free: the free-running figures of the same validation, shown beside the verdict:
                teacher forcing flatters, and the two side by side tell "aligns" from "reads".
            quality: the same validation's speech quality (the trainer scores it at every
                milestone), shown beside the verdict and kept as `mcd`/`wer`.
        """
        criterion = criterion_for_step(step, hp)
        if criterion is None or criterion["step"] in self.milestones_done:
            return None
        self.milestones_done.append(criterion["step"])
        passed = diagonal > criterion["threshold"]
        line = (f"criterion step {criterion['step']}: diagonality {diagonal:.2f} "
                f"{'>' if passed else '<='} {criterion['threshold']:.2f} "
                f"{'PASS' if passed else 'FAIL'}")
        out = {"step": criterion["step"], "threshold": criterion["threshold"],
               "value": float(diagonal), "passed": bool(passed)}
        if free is not None:
            out["free_value"] = float(free.diagonal_score)
            line += (f" (free-running beside it: diagonality {free.diagonal_score:.2f}, "
                     f"reading {free.reading_diagonal_score:.2f}, gate stopped "
                     f"{free.stopped_share:.0%})")
        if quality is not None:
            # the speech at the milestone too: aligned is not yet understood
            out["mcd"] = float(quality["mean_mcd"])
            out["wer"] = None if quality.get("wer") is None else float(quality["wer"])
            line += f"; speech: {quality_figures(quality)}"
        out["line"] = line
        return out

    def free_running_gap(self, step: int, teacher_diagonal: float,
                         free_diagonal: Optional[float], hp: HParams,
                         lang: str = "en") -> Optional[str]:
        """A warning when teacher-forced attention passes its criterion while free-running
        diagonality has stayed near 0 for `TF_ONLY_VALIDATIONS` validations in a row."""
        if free_diagonal is None:
            return None
        criterion = criterion_for_step(step, hp, teacher_diagonal)
        if criterion is not None and criterion["passed"] and free_diagonal < FREE_RUNNING_NEAR_ZERO:
            self.tf_only_streak += 1
        else:
            self.tf_only_streak = 0
        if self.tf_only_streak >= TF_ONLY_VALIDATIONS:
            return message(lang, "warn_tf_only", threshold=FREE_RUNNING_NEAR_ZERO,
                           k=self.tf_only_streak)
        return None

    def check(self, step: int, summary: Dict[str, Any], guided_term: float,
              hp: HParams, advice: Optional[RedFlag] = None) -> GuardDecision:
        """Red flags of this validation and what to do about them.

        Args:
            summary: `alignment_metrics.batch_metrics` output of the validation set.
            guided_term: guided weight x guided loss, as it entered the total.
            advice: flag 6 (`quality_plateau`) when it is up: reported, never acted on.
        """
        flags = red_flags(step, summary, guided_term, hp)
        if not flags:
            if advice is not None:  # flag 6 alone: advice, whatever red_flag_action says
                return GuardDecision(Action.WARN, [advice], f"step {step}: {advice.line()}")
            return GuardDecision(Action.CONTINUE, [], "")
        if advice is not None:
            flags.append(advice)
        names = ", ".join(f.line() for f in flags)
        action = Action(hp.red_flag_action)
        if any(f.kind is FlagKind.DIVERGENCE for f in flags) and action is not Action.WARN:
            # NaN attention: remediation cannot help a model that already holds NaN weights;
            # the divergence guard rolls back on the training side (see DivergenceGuard).
            return GuardDecision(Action.STOP, flags, f"step {step}: {names}. Stopping. Lower the "
                                 f"learning rate (now {hp.learning_rate:g}) and resume from the "
                                 f"last good checkpoint")
        if action is Action.WARN:
            return GuardDecision(Action.WARN, flags, f"step {step}: {names}")
        if action is Action.REMEDIATE and self.remediated_at is None:
            self.remediated_at = step
            if not hp.curriculum:
                self.curriculum_from = step
            return GuardDecision(
                Action.REMEDIATE, flags,
                f"step {step}: {names}. Remediation: guide_loss_weight "
                f"{hp.guide_loss_weight} -> {hp.remedy_guide_loss_weight}, curriculum on from "
                f"the short texts; training stops if a red flag is still up "
                f"{hp.red_flag_patience} steps from now")
        if action is Action.REMEDIATE and step - self.remediated_at < hp.red_flag_patience:
            return GuardDecision(Action.WARN, flags,
                                 f"step {step}: {names} (remediated at step {self.remediated_at}, "
                                 f"waiting until step {self.remediated_at + hp.red_flag_patience})")
        why = (f"still up {step - self.remediated_at} steps after remediation at step "
               f"{self.remediated_at}" if self.remediated_at is not None else "red_flag_action=stop")
        return GuardDecision(Action.STOP, flags,
                             f"step {step}: {names}; {why}. Stopping. Remedies: {remedies_text(hp)}")

    def curriculum_step(self, step: int, hp: HParams) -> int:
        """The step the curriculum schedule is at: counted from when the curriculum started."""
        return step - (self.curriculum_from or 0)


class DivergenceGuard:
    """Watches every training step's loss and gradient norm.

    A step whose loss or gradient norm is not finite must be skipped by the trainer (weights and
    optimizer untouched); `max_bad_steps` of them in a row, or a finite loss above
    `divergence_factor` times the running median of the last `divergence_window` finite losses,
    raise the `divergence` red flag (id 5).
    """

    def __init__(self, hp: HParams, state: Optional[Dict[str, Any]] = None):
        state = state or {}
        self.window: Deque[float] = deque(state.get("recent", []), maxlen=hp.divergence_window)
        self.bad_in_row: int = int(state.get("bad_in_row", 0))
        self.skipped_total: int = int(state.get("skipped_total", 0))
        self.rollbacks: int = int(state.get("rollbacks", 0))

    def state_dict(self) -> Dict[str, Any]:
        return {"recent": list(self.window), "bad_in_row": self.bad_in_row,
                "skipped_total": self.skipped_total, "rollbacks": self.rollbacks}

    def observe(self, step: int, loss: float, grad_norm: Optional[float], hp: HParams,
                lang: str = "en") -> Optional[RedFlag]:
        """Records one step; returns the `divergence` flag when it is up, else None.

        Args:
            loss: the step's total loss (non-finite = the step was skipped).
            grad_norm: its gradient norm before clipping; None when backward did not run.
        """
        finite = math.isfinite(loss) and (grad_norm is None or math.isfinite(grad_norm))
        if not finite:
            self.bad_in_row += 1
            self.skipped_total += 1
            if self.bad_in_row >= hp.max_bad_steps:
                return _flag(FlagKind.DIVERGENCE.value, lang, "flag5_nonfinite_steps",
                             count=self.bad_in_row, limit=hp.max_bad_steps)
            return None
        self.bad_in_row = 0
        if len(self.window) >= DIVERGENCE_MIN_HISTORY:
            median = float(np.median(np.asarray(self.window)))
            if median > 0 and loss > hp.divergence_factor * median:
                return _flag(FlagKind.DIVERGENCE.value, lang, "flag5_explosion", value=loss, step=step,
                             factor=hp.divergence_factor, median=median)
        self.window.append(float(loss))
        return None

    def can_roll_back(self) -> bool:
        """False once `MAX_ROLLBACKS` rollbacks have not helped."""
        return self.rollbacks < MAX_ROLLBACKS

    def continue_after_rollback(self, before: "DivergenceGuard") -> None:
        """This guard, restored from the checkpoint rolled back to, takes over the counts of
        the guard that saw the divergence (`before`), one more rollback among them; its losses
        start afresh, since the old ones describe weights that are gone."""
        self.window.clear()
        self.bad_in_row = 0
        self.skipped_total = before.skipped_total
        self.rollbacks = before.rollbacks + 1

