"""The search space and the objective of tune.py's trials.

The search space: `SEARCH_SPACE` (one `Dimension` per searched hparam), `--space` overrides
parsed onto it (`parse_space`), checked against hparams.py and widened to hold the plan's values
(`check_space`), and turned into a trial's `--hparams` string (`suggest`, `join_hparams`).

The objective: `score_records` scores a trial's validation records (diagnostics.jsonl, read as
train.py appends them by `RecordFollower`) and says whether the run diverged.

docs/tuning.md documents the space and the objective.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from guardrails import FlagKind
from hparams import HParams, HParamsError, create_hparams, parse_overrides
from run_files import RunFolder, ValidationRecord

_flag_line_re = re.compile(r"^red flag (\d+) \(", re.MULTILINE)  # RedFlag.line() in a report

# ----------------------------------------------------------------------------------- objective
# The objective is the mean free-running diagonality over the trial's steps (the area under the
# curve from (0, 0) to the last validation, divided by that step), plus small terms that order
# trials the main term cannot tell apart. docs/tuning.md explains the choice.
READING_WEIGHT = 0.1  # x mean free-running *reading* diagonality (the map cut where the text ends)
NEAR_LENGTH_WEIGHT = 0.05  # x share of free-running items whose gate stopped within 20% of their length
MEL_WEIGHT = 0.01  # x 1 / (1 + final teacher-forced postnet mel loss)
# --objective quality: the speech quality of the last quality validation, as the share of the way
# from a hum (0) to the recordings' own Griffin-Lim (1) that its MCD has come, plus the alignment
# objective above times QUALITY_ALIGNMENT_WEIGHT (it ranks trials before quality is measured).
OBJECTIVES = ("alignment", "quality")
QUALITY_ALIGNMENT_WEIGHT = 0.2
ALIGNED = 0.7  # "aligned": the free-running diagonality the table reports the first step of


# ----------------------------------------------------------------------------------- search space
@dataclass(frozen=True)
class Dimension:
    """One searched hparam: a float or int range (optionally log-scale) or a list of choices."""
    name: str
    kind: str  # "float" | "int" | "choice"
    low: Optional[float] = None
    high: Optional[float] = None
    log: bool = False
    choices: Tuple[Any, ...] = ()
    why: str = ""

    def describe(self) -> str:
        if self.kind == "choice":
            return "|".join(str(c) for c in self.choices)
        return f"{format_value(self.low)}:{format_value(self.high)}" + (":log" if self.log else "")


# The one place the search space is defined (docs/tuning.md shows the same table). Override any
# row from the command line: --space "name=low:high[:log],name=a|b|c,name=off" or a JSON file.
SEARCH_SPACE: Tuple[Dimension, ...] = (
    Dimension("guide_loss_weight", "float", 0.5, 10.0, log=True,
              why="strength of the diagonal prior; too weak does not align, too strong fights the data"),
    Dimension("guide_sigma", "float", 0.05, 0.5, log=True,
              why="width of the allowed band around the diagonal"),
    Dimension("guide_scale", "float", 1.0, 20.0, log=True,
              why="initial multiplier of the decaying guided weight"),
    Dimension("guide_decay", "float", 0.999, 1.0,
              why="per-step decay of that multiplier: 0.999 halves it in 700 steps, 1.0 never"),
    Dimension("learning_rate", "float", 1e-4, 3e-3, log=True,
              why="the usual first suspect"),
    Dimension("p_attention_dropout", "float", 0.0, 0.3, why="attention RNN dropout"),
    Dimension("p_decoder_dropout", "float", 0.0, 0.3, why="decoder RNN dropout"),
    Dimension("p_encoder_dropout", "float", 0.0, 0.5, why="encoder convolution dropout"),
    Dimension("p_postnet_dropout", "float", 0.0, 0.5, why="postnet dropout"),
    Dimension("p_prenet_dropout", "float", 0.3, 0.6,
              why="prenet dropout (on at inference too); it keeps the decoder listening to the text"),
    Dimension("n_frames_per_step", "choice", choices=(1, 2, 3),
              why="r: fewer decoder steps per utterance align faster"),
    Dimension("gate_positive_weight", "float", 1.0, 10.0, log=True,
              why="weight of the rare stop frames in the gate loss: stopping at the right length"),
)


class UsageError(Exception):
    """A bad command-line input; tune.py's main() prints it as one line and exits 2."""


def format_value(value: Any) -> str:
    """Short, exact-enough text of a value: floats with 6 significant digits."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _hparam_type(name: str) -> type:
    """The Python type of an hparam's default value; UsageError for unknown names."""
    defaults = HParams()
    if name not in {f.name for f in dataclasses.fields(HParams)}:
        raise UsageError(f"--space: unknown hparam {name!r}; see hparams.py for the names")
    return type(getattr(defaults, name))


def _coerce(name: str, text: str) -> Any:
    """A value from the command line converted to the hparam's type (hparams.py's rules)."""
    try:
        return parse_overrides(f"{name}={text}")[name]
    except HParamsError as err:
        raise UsageError(f"--space: {err}") from None


def _dimension_from_text(name: str, text: str) -> Optional[Dimension]:
    """"low:high", "low:high:log", "a|b|c" or "off" (None: not searched)."""
    text = text.strip()
    if text.lower() == "off":
        return None
    typ = _hparam_type(name)
    if typ in (list, dict):
        raise UsageError(f"--space: {name} is a list; only numbers, flags and words can be searched")
    if ":" in text:
        parts = [p.strip() for p in text.split(":")]
        log = len(parts) == 3 and parts[2].lower() == "log"
        if len(parts) not in (2, 3) or (len(parts) == 3 and not log):
            raise UsageError(f"--space: bad range {name}={text}; expected low:high or low:high:log")
        if typ not in (int, float):
            raise UsageError(f"--space: {name} is not a number; give choices a|b|c")
        low, high = _coerce(name, parts[0]), _coerce(name, parts[1])
        return Dimension(name, "int" if typ is int else "float", low, high, log=log)
    choices = tuple(_coerce(name, c.strip()) for c in text.split("|") if c.strip())
    if not choices:
        raise UsageError(f"--space: no values for {name}")
    return Dimension(name, "choice", choices=choices)


def _dimension_from_json(name: str, spec: Any) -> Optional[Dimension]:
    """{"low": .., "high": .., "log": bool} or {"choices": [...]} or null (not searched)."""
    if spec is None:
        return None
    if isinstance(spec, str):
        return _dimension_from_text(name, spec)
    if not isinstance(spec, dict):
        raise UsageError(f"--space: {name}: expected an object with low/high or choices, or null")
    if "choices" in spec:
        if not isinstance(spec["choices"], list) or not spec["choices"]:
            raise UsageError(f"--space: {name}: choices must be a non-empty list")
        return _dimension_from_text(name, "|".join(str(c) for c in spec["choices"]))
    if "low" not in spec or "high" not in spec:
        raise UsageError(f"--space: {name}: give low and high, or choices")
    text = f"{spec['low']}:{spec['high']}" + (":log" if spec.get("log") else "")
    return _dimension_from_text(name, text)


def parse_space(text: Optional[str], base: Sequence[Dimension] = SEARCH_SPACE) -> List[Dimension]:
    """The search space: `base` with the overrides of --space applied, in table order.

    Args:
        text: "name=low:high[:log],name=a|b|c,name=off", or the path of a JSON file
            {"name": {"low": 0.1, "high": 1, "log": true} | {"choices": [1, 2]} | null}.
            A name not in the table is added; "off" / null removes a row.
    """
    space: Dict[str, Optional[Dimension]] = {d.name: d for d in base}
    if not text or not text.strip():
        return [d for d in space.values() if d is not None]
    if text.strip().endswith(".json") or os.path.isfile(text):
        try:
            with open(text, encoding="utf-8") as f:
                spec = json.load(f)
        except (OSError, ValueError) as err:
            raise UsageError(f"--space: cannot read {text}: {err}") from None
        if not isinstance(spec, dict):
            raise UsageError(f"--space: {text} must hold a JSON object of name: range")
        for name, value in spec.items():
            _hparam_type(name)
            space[name] = _dimension_from_json(name, value)
    else:
        for pair in (p.strip() for p in text.split(",")):
            if not pair:
                continue
            if "=" not in pair:
                raise UsageError(f"--space: bad entry {pair!r}; expected name=low:high, "
                                 f"name=low:high:log, name=a|b|c or name=off")
            name, value = (s.strip() for s in pair.split("=", 1))
            _hparam_type(name)
            space[name] = _dimension_from_text(name, value)
    dims = [d for d in space.values() if d is not None]
    for d in dims:
        if d.kind != "choice":
            if not d.low < d.high:
                raise UsageError(f"--space: {d.name}: low {format_value(d.low)} must be below "
                                 f"high {format_value(d.high)} (give one choice to fix a value)")
            if d.log and d.low <= 0:
                raise UsageError(f"--space: {d.name}: a log-scale range needs low > 0")
    return dims


def check_space(space: Sequence[Dimension], base_hparams: str) -> Tuple[List[Dimension], List[str]]:
    """Checks every bound and choice against hparams.py and includes the plan's values.

    The first trial runs the plan's values, so a range that misses them is widened (and a choice
    list extended) to contain them; each such change is returned as a notice.
    Returns:
        (the space to search, notices)
    """
    plan = create_hparams(base_hparams)
    checked, notices = [], []
    for d in space:
        values = list(d.choices) if d.kind == "choice" else [d.low, d.high]
        for value in values:
            try:  # values are already of the field's type; replace() runs hparams.py's checks
                plan.replace(**{d.name: value})
            except HParamsError as err:
                raise UsageError(f"--space: {d.name}={format_value(value)} is not a valid "
                                 f"setting: {err}")
        current = getattr(plan, d.name)
        if d.kind == "choice":
            if current not in d.choices:
                notices.append(f"{d.name}: the plan's value {format_value(current)} added to "
                               f"the choices")
                d = dataclasses.replace(d, choices=(current,) + tuple(d.choices))
        elif not d.low <= current <= d.high:
            if d.log and current <= 0:
                raise UsageError(f"--space: {d.name}: the plan's value {format_value(current)} "
                                 f"cannot lie on a log scale; give a linear range "
                                 f"(e.g. {d.name}=0:{format_value(d.high)})")
            low, high = min(d.low, current), max(d.high, current)
            notices.append(f"{d.name}: range {d.describe()} widened to contain the plan's value "
                           f"{format_value(current)}")
            d = dataclasses.replace(d, low=type(d.low)(low), high=type(d.high)(high))
        checked.append(d)
    return checked, notices


def join_hparams(base: str, params: Dict[str, Any]) -> str:
    """The --hparams string of a trial: the base overrides, then the trial's values."""
    parts = [base.strip().strip(",")] if base and base.strip().strip(",") else []
    parts += [f"{name}={format_value(value)}" for name, value in params.items()]
    return ",".join(parts)


def plan_values(space: Sequence[Dimension], base_hparams: str) -> Dict[str, Any]:
    """The values of the searched hparams in the user's plan (defaults + preset + --hparams)."""
    plan = create_hparams(base_hparams)
    return {d.name: getattr(plan, d.name) for d in space}


def suggest(trial: Any, space: Sequence[Dimension]) -> Dict[str, Any]:
    """The trial's values, rounded to 6 significant digits so the printed string is what ran."""
    params: Dict[str, Any] = {}
    for d in space:
        if d.kind == "choice":
            params[d.name] = trial.suggest_categorical(d.name, list(d.choices))
        elif d.kind == "int":
            params[d.name] = trial.suggest_int(d.name, int(d.low), int(d.high), log=d.log)
        else:
            value = trial.suggest_float(d.name, float(d.low), float(d.high), log=d.log)
            params[d.name] = float(format_value(float(value)))
    return params


# ----------------------------------------------------------------------------------- scoring
@dataclass
class Score:
    """What a trial's diagnostics.jsonl says so far."""
    value: Optional[float] = None  # the objective if the trial ended at `step`
    step: int = 0  # the last validation with free-running decoding
    mean_diagonality: float = 0.0  # area under the free-running diagonality curve / step
    mean_reading: float = 0.0  # the same for the reading diagonality
    last_diagonality: Optional[float] = None
    near_length_share: float = 0.0
    mel_loss: Optional[float] = None
    aligned_step: Optional[int] = None  # first step with free-running diagonality >= ALIGNED
    curve: List[Tuple[int, float, float]] = field(default_factory=list)  # (step, diag, reading)
    diverged: Optional[str] = None  # why the run counts as diverged, or None
    red_flags: List[str] = field(default_factory=list)  # names of the last record's red flags
    quality: Optional[float] = None  # last quality validation: 0 = a hum, 1 = Griffin-Lim ceiling
    mcd: Optional[float] = None  # its MCD-DTW, dB


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _mean_under_curve(points: Sequence[Tuple[int, float]]) -> float:
    """Area under (0, 0), (step, value)... by trapezoids, divided by the last step."""
    area, prev_step, prev_value = 0.0, 0, 0.0
    for step, value in points:
        area += (step - prev_step) * (prev_value + value) / 2.0
        prev_step, prev_value = step, value
    return area / prev_step if prev_step else 0.0


def _divergence(record: ValidationRecord) -> Optional[str]:
    """Why this validation record shows a diverged run, or None."""
    step = record.step
    bad = sorted(k for k, v in record.losses.items() if not _finite(v))
    if bad:
        return f"non-finite {', '.join(bad)} loss at step {step}"
    if any(flag.kind is FlagKind.DIVERGENCE for flag in record.red_flags):
        return f"red flag divergence at step {step}"
    free = record.free_running
    for where, counts in (("teacher-forced", record.failure_counts),
                          ("free-running", free.failure_counts if free else None)):
        broken = (counts or {}).get("non_finite", 0)
        if _finite(broken) and broken > 0:
            return f"non-finite {where} attention in {int(broken)} item(s) at step {step}"
    if free is not None:
        for key in ("diagonal_score", "reading_diagonal_score"):
            if not _finite(getattr(free, key)):
                return f"non-finite free-running {key} at step {step}"
    return None


def quality_fraction(quality: Dict[str, Any]) -> Optional[float]:
    """How far a quality record's MCD has come from the hum (0) to the recordings' own
    Griffin-Lim (1), clipped to [0, 1]; None without both references."""
    refs = quality.get("references") or {}
    hum, ceiling, mcd = refs.get("flat_mcd"), refs.get("griffin_lim_mcd"), quality.get("mean_mcd")
    if not all(_finite(v) for v in (hum, ceiling, mcd)) or hum <= ceiling:
        return None
    return min(1.0, max(0.0, (hum - mcd) / (hum - ceiling)))


def score_records(records: Sequence[ValidationRecord], objective: str = "alignment") -> Score:
    """The objective from a run's validation records (diagnostics.jsonl, in order).

    value = mean free-running diagonality over [0, step]            (trapezoids from (0, 0))
            + READING_WEIGHT * the same for the reading diagonality
            + NEAR_LENGTH_WEIGHT * share of items stopping near their length (last record)
            + MEL_WEIGHT / (1 + postnet mel loss)                           (last record)
    The reading diagonality (`reading_diagonal_score`: the map cut where the text was read) is
    taken as the whole-map diagonality in records of trainers that do not write it.
    A record with a non-finite loss, diagonality or attention map (`failure_counts.non_finite`),
    or a divergence red flag, marks the run diverged. Records without free-running
    results (free_running_every > 1) add no point to the curve.
    With `objective="quality"`: QUALITY_ALIGNMENT_WEIGHT * that value + `quality_fraction` of
    the last record that scored quality (0 before any).
    """
    score = Score()
    for record in records:
        step = record.step
        if record.quality is not None:
            score.quality = quality_fraction(record.quality)
            score.mcd = record.quality.get("mean_mcd")
        score.red_flags = [flag.name for flag in record.red_flags]
        if score.diverged is None:
            score.diverged = _divergence(record)
        free = record.free_running
        if free is None or not _finite(free.diagonal_score):
            continue
        if score.curve and step <= score.curve[-1][0]:
            continue  # a repeated step adds no area
        diag = float(free.diagonal_score)
        reading = (float(free.reading_diagonal_score) if _finite(free.reading_diagonal_score)
                   else diag)
        score.curve.append((step, diag, reading))
        score.step, score.last_diagonality = step, diag
        near = free.near_length_share
        score.near_length_share = float(near) if _finite(near) else 0.0
        mel = record.losses.get("mel_postnet", record.losses.get("mel"))
        score.mel_loss = float(mel) if _finite(mel) else None
        if score.aligned_step is None and diag >= ALIGNED:
            score.aligned_step = step
    if score.curve:
        score.mean_diagonality = _mean_under_curve([(s, d) for s, d, _ in score.curve])
        score.mean_reading = _mean_under_curve([(s, r) for s, _, r in score.curve])
        mel_term = MEL_WEIGHT / (1.0 + score.mel_loss) if score.mel_loss is not None else 0.0
        score.value = (score.mean_diagonality + READING_WEIGHT * score.mean_reading
                       + NEAR_LENGTH_WEIGHT * score.near_length_share + mel_term)
        if objective == "quality":
            score.value = QUALITY_ALIGNMENT_WEIGHT * score.value + (score.quality or 0.0)
    return score


def divergence_in_reports(run_dir: str) -> Optional[str]:
    """A red-flag stop report of the run that names the divergence flag, as a short reason."""
    for path in RunFolder(run_dir).stop_reports():
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            continue
        kinds = {int(n) for n in _flag_line_re.findall(text)}
        if FlagKind.DIVERGENCE.value in kinds:
            return f"red flag divergence ({os.path.basename(path)})"
    return None
