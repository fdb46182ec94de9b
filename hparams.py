"""All settings of a run in one dataclass.

`create_hparams("name=value,name=value")` keeps NVIDIA's override habit. A `preset=NAME` inside the
same string selects a named preset first; the names given after it override the preset. Every
checkpoint carries `to_dict()` of its hparams, so diagnostics and inference rebuild the model from
the checkpoint alone.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import numbers
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Tuple


class HParamsError(ValueError):
    """A bad hparams string, an unknown name or a value of the wrong type.

    Attributes:
        problems: one line per bad value (the message joins them with "; ").
    """

    def __init__(self, message: str, problems: Optional[List[str]] = None):
        super().__init__(message)
        self.problems = list(problems) if problems is not None else [message]


@dataclass
class HParams:
    # ------------------------------------------------------------------ Experiment
    preset: str = "default"  # default | nvidia | demo | demo_ru | demo_real | demo_ru_real | tiny
    seed: int = 1234
    epochs: int = 100000  # upper bound; max_steps usually ends a run first
    max_steps: int = 0  # stop after this many optimizer steps; 0 = no limit
    iters_per_log: int = 10  # one train.log line every this many steps
    iters_per_validation: int = 200  # validation, diagnostics and alignment snapshot
    iters_per_checkpoint: int = 1000
    keep_checkpoints: int = 5  # newest checkpoints kept on disk; 0 = keep all
    iters_per_audio: int = 5  # a Griffin-Lim sample every this many validations
    free_running_every: int = 1  # free-running decoding every this many validations; 0 = never
    free_running_items: int = 4  # validation items decoded from text alone
    # Speech quality of the free-running decodes (quality.py: MCD-DTW; English: word error rate
    # of their Griffin-Lim audio when pocketsphinx is installed), every this many free-running
    # validations; 0 = never. The recordings' own scores (the references) once per run.
    iters_per_quality: int = 5
    quality_items: int = 4  # the first free-running items scored (at most free_running_items)
    quality_griffin_lim_iters: int = 30
    quality_patience: int = 5  # quality validations without improvement: flag 6 on an aligned run
    ignore_layers: List[str] = field(default_factory=lambda: ["embedding.weight"])  # warm start
    precision: str = "fp32"  # fp32 | bf16 | fp16 (autocast on the device's type)
    compile: bool = False  # torch.compile the decoder step
    cuda_graphs: bool = False  # decoder loop replayed as CUDA graphs (decoder_graphs.py)
    dist_backend: str = ""  # "" = nccl on CUDA, gloo on CPU

    # ------------------------------------------------------------------ Data
    training_files: str = "filelists/demo_en_train.txt"
    validation_files: str = "filelists/demo_en_val.txt"
    data_root: str = ""  # "" = relative paths resolve against the filelist's folder, then the cwd
    text_cleaners: List[str] = field(default_factory=lambda: ["english_cleaners"])
    symbol_set: str = "english"  # english | russian
    drop_unknown_chars: bool = False  # False = a character outside the set is an error
    mel_cache: bool = True  # cache mels on disk in <run folder>/mel_cache
    num_workers: int = 2  # DataLoader worker processes (0 = load in the training process)
    bucket_batches: bool = True  # batches of similar mel length
    bucket_size_multiplier: int = 32  # a bucket holds this many batches before it is split
    min_audio_seconds: float = 0.3  # data check: shorter is a warning
    max_audio_seconds: float = 20.0  # data check: longer is an error (training refuses to start)

    # ------------------------------------------------------------------ Audio
    max_wav_value: float = 32768.0
    sampling_rate: int = 22050
    filter_length: int = 1024
    hop_length: int = 256
    win_length: int = 1024
    n_mel_channels: int = 80
    mel_fmin: float = 0.0
    mel_fmax: float = 8000.0
    trim_silence: bool = False  # trim leading/trailing silence before the mel
    trim_top_db: float = 40.0  # dB below the peak counted as silence when trimming

    # ------------------------------------------------------------------ Model
    symbols_embedding_dim: int = 512
    encoder_kernel_size: int = 5
    encoder_n_convolutions: int = 3
    encoder_embedding_dim: int = 512
    n_frames_per_step: int = 1  # r: mel frames per decoder step
    decoder_rnn_dim: int = 1024
    prenet_dim: int = 256
    max_decoder_steps: int = 1000
    gate_threshold: float = 0.5  # stop when sigmoid(gate) exceeds it; >= 1 never stops (probes)
    # Free-running decoding only: each step may attend from 1 token before the previous step's
    # focus to this many tokens after it, so attention cannot jump back or skip ahead on long
    # texts (a monotonic window); 0 = off (plain location-sensitive attention).
    attention_window: int = 0
    p_attention_dropout: float = 0.1
    p_decoder_dropout: float = 0.1
    p_encoder_dropout: float = 0.02
    p_postnet_dropout: float = 0.05
    p_prenet_dropout: float = 0.5  # always on, at inference too (as in the paper)
    attention_rnn_dim: int = 1024
    attention_dim: int = 128
    attention_location_n_filters: int = 32
    attention_location_kernel_size: int = 31
    postnet_embedding_dim: int = 512
    postnet_kernel_size: int = 5
    postnet_n_convolutions: int = 5
    mask_padding: bool = True

    # ------------------------------------------------------------------ Optimization
    learning_rate: float = 5e-4
    weight_decay: float = 1e-6
    grad_clip_thresh: float = 1.0
    batch_size: int = 64
    lr_schedule: str = "plateau"  # plateau (ReduceLROnPlateau on validation loss) | constant
    lr_decay_factor: float = 0.8
    lr_patience_steps: int = 5000  # converted to validations for ReduceLROnPlateau
    min_learning_rate: float = 1e-5
    gate_positive_weight: float = 1.0  # pos_weight of the gate BCE
    # Distance of the mel and postnet-mel predictions to the recording: mse (Tacotron 2's
    # squared error) or l1 (absolute error, as ESPnet's and Coqui's Tacotrons offer; the median
    # rather than the mean of what the recording might be).
    mel_loss: str = "mse"
    # Gradual training: once aligned, continue with a smaller reduction factor (fewer frames per
    # decoder step), carrying the weights (the output layers keep their first frames' rows).
    reduce_r_to: int = 0  # 0 = keep n_frames_per_step
    reduce_r_step: int = 0  # switch at the first validation from this step; 0 = when aligned
    curriculum: bool = False  # offer short texts first
    curriculum_start_quantile: float = 0.3  # share of training texts offered at step 0
    curriculum_steps: int = 5000  # steps until every text is offered
    # Divergence guard. A finite loss above divergence_factor x the median of the last
    # divergence_window finite losses is an explosion; max_bad_steps skipped non-finite steps in
    # a row raise the `divergence` red flag. Rolling back to the last checkpoint multiplies the
    # learning rate by divergence_lr_factor.
    divergence_factor: float = 10.0  # > 1
    divergence_window: int = 100  # steps in the running median
    max_bad_steps: int = 5  # non-finite steps in a row that raise the red flag
    divergence_lr_factor: float = 0.5  # in (0, 1]; 1 = roll back without lowering the rate

    # ------------------------------------------------------------------ Guided attention
    guide_loss_weight: float = 2.0  # 0 = off
    guide_sigma: float = 0.2  # g in W = 1 - exp(-(n/N - t/T)^2 / (2 g^2))
    guide_scale: float = 10.0
    guide_decay: float = 0.9999  # per step
    guide_lowbound: float = 0.1
    guide_decay_start: int = 10000  # step where the linear fade to 0 starts
    guide_decay_steps: int = 100000  # length of that fade; 0 = no fade

    # ------------------------------------------------------------------ Diagnostics
    diagonal_band: float = 0.15  # b of diagonal_score
    success_steps: List[int] = field(default_factory=lambda: [1000, 3000, 5000, 10000])
    success_thresholds: List[float] = field(default_factory=lambda: [0.10, 0.30, 0.50, 0.70])
    red_flag_start_step: int = 2000
    red_flag_diagonal: float = 0.05  # flag 1: diagonality below this
    red_flag_guided_term: float = 0.01  # flag 2: weight x guided loss below this
    red_flag_max_attention: float = 0.1  # flag 3: every utterance's max attention below this
    red_flag_band_share: float = 0.5  # flag 4: share of utterances with a horizontal band
    red_flag_action: str = "remediate"  # remediate | stop | warn
    red_flag_patience: int = 2000  # steps after remediation before a stop
    remedy_guide_loss_weight: float = 5.0

    # ------------------------------------------------------------------ methods
    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "HParams":
        """Rebuild from `to_dict()` output; unknown names are an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise HParamsError(f"unknown hparam(s): {', '.join(unknown)}")
        hp = cls(**{k: _coerce(k, _field_type(k), v) for k, v in values.items()})
        hp.check()
        return hp

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **changes: Any) -> "HParams":
        hp = dataclasses.replace(self, **changes)
        hp.check()
        return hp

    def differences(self, other: "HParams | None" = None) -> Dict[str, Any]:
        """Names whose value differs from `other` (default: the plain defaults)."""
        base = (other or HParams()).to_dict()
        return {k: v for k, v in self.to_dict().items() if base[k] != v}

    def check(self) -> None:
        """Checks every value and the relations between them.

        Raises:
            HParamsError: one "hparam <name>=<value>: <what it must be>" per bad value, joined
                with "; " on one line; `err.problems` lists them one by one.
        """
        problems: List[str] = []
        broken = set()  # fields of the wrong type or not finite: no range check on them

        def bad(name: str, why: str, shown: Optional[str] = None) -> None:
            text = repr(getattr(self, name)) if shown is None else shown
            problems.append(f"hparam {name}={text}: {why}")
            broken.add(name)

        # Types and finiteness first: the range checks below compare numbers.
        hints = _type_hints()
        for item in dataclasses.fields(self):
            problem = _value_problem(hints[item.name], getattr(self, item.name))
            if problem:
                bad(item.name, *problem)

        def value(name: str) -> Any:
            return None if name in broken else getattr(self, name)

        def at_least(low: float, *names: str) -> None:
            for name in names:
                if value(name) is not None and value(name) < low:
                    bad(name, f"must be >= {low:g}")

        def above(low: float, *names: str, hint: str = "") -> None:
            for name in names:
                if value(name) is not None and not value(name) > low:
                    bad(name, f"must be > {low:g}{hint}")

        def between(low: float, high: float, *names: str) -> None:
            for name in names:
                if value(name) is not None and not low <= value(name) <= high:
                    bad(name, f"must be between {low:g} and {high:g}")

        if self.preset not in PRESETS:
            bad("preset", f"unknown preset; choose one of {', '.join(PRESETS)}")
        if self.precision not in ("fp32", "bf16", "fp16"):
            bad("precision", "choose fp32, bf16 or fp16")
        if self.lr_schedule not in ("plateau", "constant"):
            bad("lr_schedule", "choose plateau or constant")
        if self.mel_loss not in ("mse", "l1"):
            bad("mel_loss", "choose mse or l1")
        if self.red_flag_action not in ("remediate", "stop", "warn"):
            bad("red_flag_action", "choose remediate, stop or warn")
        if self.symbol_set not in ("english", "russian"):
            bad("symbol_set", "choose english or russian")
        at_least(1, "n_frames_per_step", "batch_size", "iters_per_validation",
                 "iters_per_checkpoint", "iters_per_log", "sampling_rate", "hop_length",
                 "filter_length", "win_length", "n_mel_channels", "max_decoder_steps", "epochs",
                 "free_running_items", "bucket_size_multiplier", "divergence_window",
                 "max_bad_steps", "quality_items", "quality_griffin_lim_iters", "quality_patience")
        at_least(0, "attention_window", "max_steps", "keep_checkpoints", "iters_per_audio",
                 "free_running_every", "iters_per_quality", "reduce_r_to", "reduce_r_step",
                 "num_workers", "curriculum_steps", "lr_patience_steps", "guide_decay_start",
                 "guide_decay_steps", "red_flag_start_step", "red_flag_patience",
                 "weight_decay", "guide_loss_weight", "guide_scale", "remedy_guide_loss_weight",
                 "gate_threshold", "mel_fmin")
        if value("seed") is not None and not 0 <= self.seed < 2 ** 32:
            bad("seed", "must be between 0 and 2**32 - 1 (numpy's seed range)")
        above(0, "learning_rate", "min_learning_rate", hint=" (e.g. 1e-3)")
        for name in ("learning_rate", "min_learning_rate"):
            # Adam moves every weight by about the learning rate per step: above 1 a run only
            # diverges, and far above it Adam's float32 step overflows.
            if value(name) is not None and getattr(self, name) > 1.0:
                bad(name, "must be at most 1 (Adam's step size; 1e-3 is typical)")
        above(0, "grad_clip_thresh", "gate_positive_weight", "guide_sigma", "max_wav_value",
              "min_audio_seconds", "max_audio_seconds")
        if value("win_length") is not None and value("filter_length") is not None \
                and self.win_length > self.filter_length:
            bad("win_length", f"must not exceed filter_length={self.filter_length}")
        if value("mel_fmin") is not None and value("mel_fmax") is not None \
                and not self.mel_fmax > self.mel_fmin:
            bad("mel_fmax", f"must be above mel_fmin={self.mel_fmin:g}")
        if not {"success_steps", "success_thresholds"} & broken:
            if len(self.success_steps) != len(self.success_thresholds):
                bad("success_thresholds", "needs one threshold per entry of success_steps")
            if list(self.success_steps) != sorted(self.success_steps):
                bad("success_steps", "must be in increasing order")
        between(0.0, 1.0, "p_attention_dropout", "p_decoder_dropout", "p_encoder_dropout",
                "p_postnet_dropout", "p_prenet_dropout", "curriculum_start_quantile",
                "guide_lowbound")
        if value("guide_decay") is not None and not 0.0 < self.guide_decay <= 1.0:
            bad("guide_decay", "must be in (0, 1]")
        if value("lr_decay_factor") is not None and not 0.0 < self.lr_decay_factor < 1.0:
            bad("lr_decay_factor", "must be in (0, 1): the learning rate is multiplied by it")
        if value("divergence_factor") is not None and not self.divergence_factor > 1.0:
            bad("divergence_factor", "must be > 1: a loss above this many times the running "
                                     "median counts as an explosion")
        if value("divergence_lr_factor") is not None \
                and not 0.0 < self.divergence_lr_factor <= 1.0:
            bad("divergence_lr_factor", "must be in (0, 1]: the learning rate is multiplied by "
                                        "it on a rollback")
        if "min_audio_seconds" not in broken and "max_audio_seconds" not in broken \
                and not self.min_audio_seconds < self.max_audio_seconds:
            bad("min_audio_seconds",
                f"must be below max_audio_seconds={self.max_audio_seconds:g}")
        if "text_cleaners" not in broken and not self.text_cleaners:
            bad("text_cleaners", "name at least one cleaner")
        if problems:
            raise HParamsError("; ".join(problems), problems)


# Integers are bounded where a float (a JSON number, a command-line "1e30") still holds every
# integer exactly; far above any real setting, and "batch_size=1e30" fails here, not in torch.
INT_LIMIT = 2 ** 53


def _value_problem(typ: Any, value: Any) -> Optional[Tuple[str, ...]]:
    """(why,) or (why, shown value) when `value` is not a sane `typ`; None when it is."""
    if typing.get_origin(typ) in (list, List):
        (item_type,) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            return ("must be a list",)
        for item in value:
            problem = _value_problem(item_type, item)
            if problem:
                return (f"every entry {problem[0]}",)
        return None
    if typ is bool:
        return None if isinstance(value, bool) else ("must be true or false",)
    if typ is str:
        return None if isinstance(value, str) else ("must be a string",)
    # numbers.Integral / Real: numpy's scalars (an np.int64 from a computation) are fine too
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            return ("must be a whole number",)
        if abs(int(value)) >= INT_LIMIT:
            return ("must be a whole number below 2**53", f"{float(value):.3g}")
        return None
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            return ("must be a number",)
        if not math.isfinite(value):
            return ("must be a finite number",)
        return None
    return None


# Presets: changes applied on top of the defaults. `default` is the user's fixes on NVIDIA's model.
PRESETS: Dict[str, Dict[str, Any]] = {
    "default": {},
    # NVIDIA's original recipe: the baseline the benchmarks compare against. Their hparams.py sets
    # p_attention_dropout=0.1 and p_decoder_dropout=0.1; their model.py hard-codes 0.5 for the
    # encoder and postnet dropouts (docs/nvidia_compatibility.md).
    "nvidia": {
        "learning_rate": 1e-3, "lr_schedule": "constant", "p_attention_dropout": 0.1,
        "p_decoder_dropout": 0.1, "p_encoder_dropout": 0.5, "p_postnet_dropout": 0.5,
        "guide_loss_weight": 0.0, "batch_size": 64, "bucket_batches": False,
    },
    # Small enough to align on the shipped demo corpus on a laptop CPU in minutes.
    "demo": {
        "symbols_embedding_dim": 128, "encoder_embedding_dim": 128, "encoder_n_convolutions": 2,
        "attention_rnn_dim": 256, "decoder_rnn_dim": 256, "prenet_dim": 64, "attention_dim": 64,
        "attention_location_n_filters": 16, "postnet_embedding_dim": 128,
        "postnet_n_convolutions": 3, "n_frames_per_step": 3, "batch_size": 16,
        "learning_rate": 1e-3, "iters_per_validation": 100, "iters_per_checkpoint": 500,
        "max_steps": 3000, "gate_positive_weight": 5.0, "max_decoder_steps": 400,
        "red_flag_start_step": 600, "lr_patience_steps": 1000, "num_workers": 0,
        "success_steps": [200, 500, 1000, 2000], "success_thresholds": [0.10, 0.30, 0.50, 0.70],
    },
    # The same small model on the Russian demo corpus.
    "demo_ru": {
        "training_files": "filelists/demo_ru_train.txt",
        "validation_files": "filelists/demo_ru_val.txt",
        "text_cleaners": ["russian_cleaners"], "symbol_set": "russian",
    },
    # For tests: a model of a few thousand parameters that trains a step in milliseconds.
    "tiny": {
        "symbols_embedding_dim": 16, "encoder_embedding_dim": 16, "encoder_n_convolutions": 1,
        "encoder_kernel_size": 3, "attention_rnn_dim": 32, "decoder_rnn_dim": 32,
        "prenet_dim": 16, "attention_dim": 16, "attention_location_n_filters": 4,
        "attention_location_kernel_size": 7, "postnet_embedding_dim": 16,
        "postnet_n_convolutions": 2, "postnet_kernel_size": 3, "n_mel_channels": 20,
        "batch_size": 4, "iters_per_validation": 5, "iters_per_checkpoint": 5, "iters_per_log": 1,
        "max_decoder_steps": 50, "max_steps": 10,
        "free_running_items": 2, "mel_cache": False, "num_workers": 0,
    },
}
# demo_ru builds on demo.
PRESETS["demo_ru"] = {**PRESETS["demo"], **PRESETS["demo_ru"]}
# The demo model on a real voice (docs/real_speech.md, bench/README.md "Real speech"): r=5 halves
# the decoder steps of human speech's longer clips, clips of at most 10 s align far sooner on a
# CPU, and a heavier gate weight balances the single stop frame of ~600-frame clips.
PRESETS["demo_real"] = {**PRESETS["demo"], "n_frames_per_step": 5, "gate_positive_weight": 10.0,
                        "max_audio_seconds": 10.0}
PRESETS["demo_ru_real"] = {**PRESETS["demo_real"], **{
    k: v for k, v in PRESETS["demo_ru"].items() if k in ("text_cleaners", "symbol_set")},
    "training_files": "data/festvox_ru/train.txt",
    "validation_files": "data/festvox_ru/val.txt"}


@functools.lru_cache(maxsize=None)
def _type_hints() -> Dict[str, Any]:
    # Evaluating the annotations (strings, under `from __future__ import annotations`) costs a
    # few milliseconds; once per field per create_hparams made each call take 0.2 s.
    return typing.get_type_hints(HParams)


def _field_type(name: str) -> Any:
    hints = _type_hints()
    if name not in hints:
        raise HParamsError(
            f"unknown hparam {name!r}; see hparams.py for the names")
    return hints[name]


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _coerce(name: str, typ: Any, value: Any) -> Any:
    """Converts `value` (a string from the command line, or a JSON value) to the field's type."""
    origin = typing.get_origin(typ)
    try:
        if origin in (list, List):
            (item_type,) = typing.get_args(typ)
            if isinstance(value, str):
                text = value.strip()
                if text.startswith("["):
                    text = text[1:-1] if text.endswith("]") else text[1:]
                items = [s.strip().strip("'\"") for s in text.replace(";", " ").replace(",", " ").split()]
                value = [s for s in items if s]
            if not isinstance(value, (list, tuple)):
                raise ValueError("expected a list")
            return [_coerce(name, item_type, v) for v in value]
        if typ is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE:
                return True
            if text in _FALSE:
                return False
            raise ValueError("expected true or false")
        if typ is int:
            if isinstance(value, bool):
                raise ValueError("expected an integer")
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError("expected an integer")
                return int(value)
            text = str(value).strip()
            try:
                return int(text)
            except ValueError:
                as_float = float(text)  # accept 1e4
                if not as_float.is_integer():
                    raise
                return int(as_float)
        if typ is float:
            if isinstance(value, bool):
                raise ValueError("expected a number")
            return float(value)
        if typ is str:
            return str(value).strip().strip("'\"") if isinstance(value, str) else str(value)
    except (ValueError, TypeError) as err:
        raise HParamsError(f"bad value for hparam {name}: {value!r} ({err})") from None
    raise HParamsError(f"hparam {name} has an unsupported type {typ}")


def _split_overrides(text: str) -> List[str]:
    """Splits "a=1,b=[1,2],c=x" at the commas that are not inside brackets."""
    parts, depth, current = [], 0, []
    for ch in text:
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_overrides(text: str | None) -> Dict[str, Any]:
    """Parses "a=1,b=2" into coerced values, in order; raises HParamsError naming a bad pair.

    A list value takes brackets, "success_steps=[100,200]", or semicolons, "success_steps=100;200".
    """
    values: Dict[str, Any] = {}
    for pair in _split_overrides(text or ""):
        if "=" not in pair:
            raise HParamsError(f"bad hparams entry {pair!r}: expected name=value")
        name, value = (s.strip() for s in pair.split("=", 1))
        values[name] = _coerce(name, _field_type(name), value)
    return values


def create_hparams(text: str | None = None, base: HParams | None = None) -> HParams:
    """Defaults (or `base`), then the preset named in `text`, then the other names in `text`."""
    overrides = parse_overrides(text)
    values = (base or HParams()).to_dict()
    preset = overrides.get("preset")
    if preset is not None:
        if preset not in PRESETS:
            raise HParamsError(
                f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
        values.update(PRESETS[preset])
        values["preset"] = preset
    values.update({k: v for k, v in overrides.items() if k != "preset"})
    return HParams.from_dict(values)
