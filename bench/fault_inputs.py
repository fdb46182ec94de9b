"""Bad and fuzzed input for the fault campaign (bench/faults.py).

- bad inputs: the issue's list of bad command lines (`bad_inputs`: a negative learning rate, -o
  on a file or in /proc, checkpoints of random bytes, cut short or carrying code, a text file as
  an alignment, filelist lines too long or without letters, ...), the files they need
  (`prepare_bad_files`), and one try of each through the real command line (`bad_input_try`:
  exit 2, one line, no traceback, nothing lost, no code run).
- fuzzing (hypothesis): the strategies and the in-process runs over hparams strings
  (`fuzz_hparams`), filelists (`fuzz_filelists`) and texts (`fuzz_texts`), each example
  accepted or rejected with the module's own one-line error, tallied in a `FuzzTally`; and a
  few fuzzed hparams strings through train.py (`cli_candidates`, `cli_fuzz_try`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import re
import shutil
import sys
import threading
import traceback
from typing import Any, Callable, Dict, List, Optional, Tuple

# fault_harness lies beside this file, which may have been imported from another folder
BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

# fault_harness first: it puts the repository on sys.path and sets one thread per process
from fault_harness import (DIAGNOSTICS, TRACEBACK, Reference, Workspace,  # noqa: E402
                           check_run_files)
import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from hparams import HParams, HParamsError, create_hparams  # noqa: E402


# ---------------------------------------------------------------------------------- bad inputs
@dataclasses.dataclass
class BadInput:
    name: str
    build: Callable[[Workspace, str], List[str]]  # (workspace, run name) -> command
    message: str  # must appear in the output (a regex)
    where: str = "stderr_line"  # stderr_line: exactly one line on stderr | output: anywhere
    prepare: Optional[Callable[[Workspace, str], None]] = None
    after: Optional[Callable[[Workspace, str], Optional[str]]] = None  # extra check: why not
    needs_reference: bool = False


class _CodePayload:
    """Pickles as a call of os.system: what a checkpoint with code looks like."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _sentinel(ws: Workspace) -> str:
    return os.path.join(ws.root, "bad", "CODE_RAN")


def _bad_path(ws: Workspace, name: str) -> str:
    os.makedirs(os.path.join(ws.root, "bad"), exist_ok=True)
    return os.path.join(ws.root, "bad", name)


def prepare_bad_files(ws: Workspace) -> None:
    """The bad files of the list: a file for -o, three refused checkpoints, a text file for
    --alignment, and two filelists with one bad line each."""
    with open(_bad_path(ws, "taken"), "w", encoding="utf-8") as f:
        f.write("not a folder\n")
    with open(_bad_path(ws, "random.pt"), "wb") as f:
        f.write(random.Random(7).randbytes(4096))
    torch.save({"state_dict": _CodePayload(f"touch {_sentinel(ws)}")}, _bad_path(ws, "code.pt"))
    with open(_bad_path(ws, "notes.txt"), "w", encoding="utf-8") as f:
        f.write("step 400: the attention looks diagonal\n")
    sr = 22050
    long_wav = os.path.join(ws.corpus, "wavs", "long.wav")
    sf.write(long_wav, (0.01 * np.sin(np.arange(21 * sr) * 0.05)).astype(np.float32), sr,
             subtype="PCM_16")
    shutil.copy(os.path.join(ws.corpus, "wavs", "utt_0000.wav"),
                os.path.join(ws.corpus, "wavs", "letterless.wav"))
    with open(ws.train_list, encoding="utf-8") as f:
        good = f.read()
    for name, line in (("long.txt", "wavs/long.wav|abc def gh"),
                       ("letterless.txt", "wavs/letterless.wav|?!...")):
        with open(os.path.join(ws.corpus, name), "w", encoding="utf-8") as f:
            f.write(good + line + "\n")


def _truncate_reference(ws: Workspace) -> str:
    """The reference run's checkpoint_2 cut in half, as a copy cut short."""
    path = _bad_path(ws, "truncated.pt")
    source = os.path.join(ws.run_dir("reference"), "checkpoint_2")
    with open(source, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def _unchanged_taken(ws: Workspace, _run: str) -> Optional[str]:
    with open(_bad_path(ws, "taken"), encoding="utf-8") as f:
        text = f.read()
    return None if text == "not a folder\n" else "the file given as -o was changed"


def _kept(name: str) -> Callable[[Workspace, str], Optional[str]]:
    def check(ws: Workspace, _run: str) -> Optional[str]:
        return None if os.path.exists(_bad_path(ws, name)) else f"{name} was removed"
    return check


def _no_code_ran(ws: Workspace, _run: str) -> Optional[str]:
    if os.path.exists(_sentinel(ws)):
        return "THE PICKLED CODE RAN (sentinel file created)"
    return _kept("code.pt")(ws, _run)


def _line_count(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def bad_inputs(ws: Workspace) -> List[BadInput]:
    def train(*more: str, hparams: str = "") -> Callable[[Workspace, str], List[str]]:
        return lambda w, run: w.train_cmd(run, w.base + hparams, "--max_steps=2", *more)

    def data(name: str) -> Callable[[Workspace, str], List[str]]:
        return lambda w, run: w.train_cmd(
            run, f"preset=tiny,training_files={os.path.join(w.corpus, name)},"
                 f"validation_files={w.val_list},text_cleaners=[basic_cleaners]", "--max_steps=2")

    long_list = os.path.join(ws.corpus, "long.txt")
    letterless = os.path.join(ws.corpus, "letterless.txt")
    n = _line_count(ws.train_list) + 1  # the bad line: after the good ones
    return [
        BadInput("learning_rate=-1", train(hparams=",learning_rate=-1"),
                 r"^error: hparam learning_rate=-1\.0: must be > 0"),
        BadInput("-o /proc/x", lambda w, run: w.train_cmd(run, w.base, output="/proc/x"),
                 r"^error: --output_directory /proc/x: cannot be used"),
        BadInput("-o an existing file",
                 lambda w, run: w.train_cmd(run, w.base, output=_bad_path(w, "taken")),
                 r"^error: --output_directory \S+taken: exists and is not a folder",
                 after=_unchanged_taken),
        BadInput("max_steps=-5 (hparams)", train(hparams=",max_steps=-5"),
                 r"^error: hparam max_steps=-5: must be >= 0"),
        BadInput("--max_steps -5", lambda w, run: w.train_cmd(run, w.base, "--max_steps", "-5"),
                 r"^error: --max_steps -5: must be >= 0"),
        BadInput("-c random bytes", train("-c", _bad_path(ws, "random.pt")),
                 r"^error: \S+random\.pt: not a PyTorch checkpoint", after=_kept("random.pt")),
        BadInput("-c truncated checkpoint",
                 lambda w, run: w.train_cmd(run, w.base, "-c", _truncate_reference(w)),
                 r"^error: \S+truncated\.pt: truncated", after=_kept("truncated.pt"),
                 needs_reference=True),
        BadInput("-c a pickle with code", train("-c", _bad_path(ws, "code.pt")),
                 r"^error: \S+code\.pt: contains code \(blocked global `os\.system`\) and was "
                 r"refused", after=_no_code_ran),
        BadInput("--alignment= a text file",
                 lambda w, run: [sys.executable, DIAGNOSTICS,
                                 f"--alignment={_bad_path(w, 'notes.txt')}", "--no-plot"],
                 r"^alignment_diagnostics: error: \S+notes\.txt: not a NumPy file"),
        BadInput("audio longer than max_audio_seconds", data("long.txt"),
                 rf"(?m)^{re.escape(long_list)}:{n}: error: .*longer than max_audio_seconds",
                 where="output"),
        BadInput("text with no letters (?!...)", data("letterless.txt"),
                 rf"(?m)^{re.escape(letterless)}:{n}: error: .*has no letters",
                 where="output"),
        BadInput("learning_rate=1e400", train(hparams=",learning_rate=1e400"),
                 r"^error: hparam learning_rate=inf"),
        BadInput("learning_rate=1e38", train(hparams=",learning_rate=1e38"),
                 r"^error: hparam learning_rate=1e\+38: must be at most 1"),
    ]


QUICK_BAD = ("learning_rate=-1", "-o an existing file", "-c a pickle with code",
             "text with no letters (?!...)", "learning_rate=1e38")


def bad_input_try(ws: Workspace, index: int, bad: BadInput, ref_done: threading.Event,
                  ref: Reference) -> Dict[str, Any]:
    run_name = f"bad{index:02d}"
    if bad.needs_reference:
        ref_done.wait()
        if not ref.ok:
            return {"name": bad.name, "clean": False, "why": "no reference checkpoint"}
    result = ws.run(run_name, bad.build(ws, run_name), timeout=180)
    why = []
    if result.rc != 2:
        why.append(f"exit {result.rc}, expected 2")
    if bad.where == "stderr_line":
        lines = result.stderr.splitlines()
        if len(lines) != 1:
            why.append(f"{len(lines)} lines on stderr, expected one")
        if not re.search(bad.message, result.stderr):
            why.append(f"stderr does not match {bad.message!r}")
    elif not re.search(bad.message, result.stdout + result.stderr):
        why.append(f"output does not match {bad.message!r}")
    if TRACEBACK in result.stderr:
        why.append("traceback")
    if bad.after is not None:
        extra = bad.after(ws, run_name)
        if extra:
            why.append(extra)
            if "lost" in extra or "removed" in extra or "changed" in extra:
                ws.ledger.lost(f"{run_name} ({bad.name}): {extra}")
    check_run_files(ws.run_dir(run_name), ws.ledger, run_name, final=True)
    if why:
        ws.ledger.problem(f"bad input {bad.name!r} not rejected cleanly: {'; '.join(why)}: "
                          f"{' '.join(result.cmd)}"
                          + ("" if "traceback" in why else f"\n{result.tail()}"))
    return {"name": bad.name, "clean": not why, "exit": result.rc,
            "stderr": result.stderr.strip()[:300], "why": why}


# ---------------------------------------------------------------------------------- fuzzing
# hypothesis and the modules it fuzzes (check_data, data_utils, text) are imported inside the
# functions that use them: only the fuzzing needs them, so `import faults` (the unit tests,
# --help) works without hypothesis installed and without the ~1 s they and check_data's
# matplotlib take to import
def _one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "\r" not in text


class FuzzTally:
    def __init__(self, target: str):
        self.target = target
        self.tried = 0
        self.accepted = 0
        self.rejected = 0
        self.unclean: List[str] = []
        self.tracebacks: List[str] = []
        self.examples: List[Tuple[Any, str]] = []  # (input, "accepted" | "rejected")

    def as_dict(self) -> Dict[str, Any]:
        return {"tried": self.tried, "accepted": self.accepted, "rejected": self.rejected,
                "unclean": len(self.unclean), "tracebacks": len(self.tracebacks),
                "unclean_examples": self.unclean[:5], "traceback_examples": self.tracebacks[:3]}

    @property
    def clean(self) -> int:
        return self.accepted + self.rejected


def _exception_line(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}{where}"


def _hypothesis_run(strategy, examples: int, seed: int, body: Callable[[Any], None]) -> None:
    # here, not at the top: see the fuzzing section's note
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value):
        body(value)

    run()


def hparams_strategy():
    return _hparams_strategy(hparams_strategy_values())


def hparams_strategy_values():
    from hypothesis import strategies as st  # here, not at the top: see the fuzzing section's note
    special = ["1e400", "-1e400", "nan", "inf", "-inf", "1e38", "1e-400", "0", "-0", "-1", "1",
               "true", "False", "yes", "off", "[]", "[a,b]", "[1,2,3]", "[0.1;0.2]", "['x']",
               '""', "''", "None", "0x10", "1_000", "\uff11\uff12", "\u0663", "2**53", "1e15",
               "9007199254740993", "tiny", "demo", "default", "english", "russian", "fp16",
               "bf16", "stop", "warn", "remediate", "constant", "[basic_cleaners]",
               "[english_cleaners,russian_cleaners]", "[nope]", "[", "]", "=", ",", " "]
    return st.one_of(
        st.sampled_from(special),
        st.integers(min_value=-10 ** 6, max_value=10 ** 6).map(str),
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=12),
        st.lists(st.text(alphabet="abc01._ -", max_size=5), max_size=3).map(
            lambda xs: "[" + ",".join(xs) + "]"),
    )


def _hparams_strategy(value):
    from hypothesis import strategies as st  # here, not at the top: see the fuzzing section's note
    names = [f.name for f in dataclasses.fields(HParams)]
    name = st.one_of(st.sampled_from(names), st.sampled_from(names).map(str.upper),
                     st.text(max_size=10))
    pair = st.tuples(name, st.sampled_from(["=", "=", "=", " = ", ":", "=="]), value).map(
        "".join)
    return st.one_of(
        st.lists(pair, max_size=5).map(",".join),
        st.tuples(st.sampled_from(["default", "tiny", "demo", "nvidia", "demo_ru", "x", ""]),
                  st.lists(pair, max_size=3)).map(
            lambda t: ",".join(["preset=" + t[0]] + t[1])),
        st.text(max_size=40),
    )


def fuzz_hparams(examples: int, seed: int) -> FuzzTally:
    tally = FuzzTally("hparams strings -> create_hparams")

    def body(text: str) -> None:
        tally.tried += 1
        try:
            hp = create_hparams(text)
        except HParamsError as err:
            if _one_line(str(err)):
                tally.rejected += 1
                tally.examples.append((text, "rejected"))
            else:
                tally.unclean.append(f"{text!r}: message of {len(str(err).splitlines())} lines")
            return
        except Exception as err:  # anything else is a traceback a user would see
            tally.tracebacks.append(f"create_hparams({text!r}): {_exception_line(err)}")
            return
        # accepted: it must also survive what a checkpoint does with it (to_dict -> from_dict)
        try:
            again = HParams.from_dict(json.loads(hp.to_json()))
        except Exception as err:
            tally.unclean.append(f"{text!r}: accepted, but its checkpoint copy is refused: "
                                 f"{_exception_line(err)}")
            return
        if again.to_dict() != hp.to_dict() and not _same_with_nan(again.to_dict(), hp.to_dict()):
            tally.unclean.append(f"{text!r}: accepted, but changes through to_json/from_dict")
            return
        tally.accepted += 1
        tally.examples.append((text, "accepted"))

    _hypothesis_run(hparams_strategy(), examples, seed, body)
    return tally


def _same_with_nan(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return all(a[k] == b[k] or (isinstance(a[k], float) and isinstance(b[k], float)
                                and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def filelist_strategy(corpus: str):
    from hypothesis import strategies as st  # here, not at the top: see the fuzzing section's note
    wav = "wavs/utt_0000.wav"
    good_path = st.sampled_from([f"wavs/utt_{i:04d}.wav" for i in range(18)])
    path = st.one_of(good_path, good_path,
                     st.sampled_from([os.path.join(corpus, wav), "wavs/missing.wav", "", " ",
                                      "DUMMY/LJ001-0001.wav", "wavs", wav + " ",
                                      "../corpus/" + wav]),
                     st.text(max_size=15))
    good_text = st.lists(st.sampled_from(["abc", "def", "gh", "bad", "cafe"]), min_size=1,
                         max_size=4).map(" ".join)
    text = st.one_of(good_text, good_text,
                     st.sampled_from(["?!...", "", " ", "a|b", "{HH AH0}", "1,000",
                                      "\u043f\u0440\u0438\u0432\u0435\u0442", "_", "\t"]),
                     st.text(max_size=30))
    speaker = st.one_of(st.none(), st.none(), st.sampled_from(["", "spk1", " "]),
                        st.text(max_size=5))
    line = st.tuples(path, text, speaker).map(
        lambda t: ("|".join([t[0], t[1]] + ([t[2]] if t[2] is not None else []))).encode(
            "utf-8", "surrogatepass"))
    raw = st.one_of(line, line, line, line, st.binary(max_size=30),
                    st.sampled_from([b"", b"# comment", b"\xef\xbb\xbf" + wav.encode() + b"|abc",
                                     b"\xff\xfe|abc", wav.encode() + b"|abc\r"]))
    return st.tuples(st.lists(raw, min_size=1, max_size=4), st.sampled_from([b"\n", b"\r\n"]),
                     st.booleans())


def fuzz_filelists(examples: int, seed: int, corpus: str, folder: str) -> FuzzTally:
    from check_data import check_filelists  # here, not at the top: see the fuzzing section's note
    from data_utils import DataError, read_filelist
    tally = FuzzTally("filelists -> read_filelist, check_filelists")
    hp = create_hparams("preset=tiny,text_cleaners=[basic_cleaners]")
    path = os.path.join(folder, "fuzzed_filelist.txt")

    def body(value: Tuple[List[bytes], bytes, bool]) -> None:
        lines, newline, trailing = value
        data = newline.join(lines) + (newline if trailing else b"")
        with open(path, "wb") as f:
            f.write(data)
        tally.tried += 1
        shown = data[:120]
        try:
            entries, problems = read_filelist(path, collect_errors=True)
            bad = [p for p in problems if not _one_line(str(p))]
            if bad:
                tally.unclean.append(f"{shown!r}: collected problem not one line: {bad[0]}")
                return
            try:
                raised_entries = read_filelist(path)
                if problems:
                    tally.unclean.append(f"{shown!r}: raising mode accepted what collect mode "
                                         f"faulted: {problems[0]}")
                    return
                if raised_entries != entries:
                    tally.unclean.append(f"{shown!r}: the two modes read different entries")
                    return
            except DataError as err:
                if not problems:
                    tally.unclean.append(f"{shown!r}: raising mode faulted what collect mode "
                                         f"accepted: {err}")
                    return
                if not _one_line(str(err)):
                    tally.unclean.append(f"{shown!r}: DataError not one line")
                    return
            checked = check_filelists(path, None, hp, decode_audio=False)
            if any(not _one_line(str(p)) for p in checked):
                tally.unclean.append(f"{shown!r}: a check_data problem is not one line")
                return
        except Exception as err:
            tally.tracebacks.append(f"filelist {shown!r}: {_exception_line(err)}")
            return
        if problems or any(p.severity == "error" for p in checked):
            tally.rejected += 1
        else:
            tally.accepted += 1

    _hypothesis_run(filelist_strategy(corpus), examples, seed, body)
    return tally


def text_strategy():
    from hypothesis import strategies as st  # here, not at the top: see the fuzzing section's note
    from text.cleaners import CLEANERS
    pieces = st.sampled_from([
        "1", "1,000", "3.14", "$5.50", "\u00a33", "1st", "22nd", "1990s", "10:30", "-7", "#1",
        "Mr.", "Dr.", "St.", "{HH AH0}", "{hh ah0 l ow1}", "{XX}", "{", "}", "{}", "_", "~",
        "\u043f\u0440\u0438\u0432\u0435\u0442", "\u0451\u0436", "\u0410\u0411", "9" * 50,
        "1" + "0" * 40, "1e100", "0.000000001", "\u00e9\u00e8", "\u00df", "\U0001f600",
        "\u0301", "\x00", "\t", "  ", "'", '"', "?!...", "...", "\u2026", "\u00bd", "\u2163",
        "\u0661\u0662"])
    text = st.one_of(st.text(max_size=40),
                     st.lists(st.one_of(pieces, st.text(max_size=6)), max_size=8).map(" ".join))
    cleaners = st.lists(st.one_of(st.sampled_from(list(CLEANERS)),
                                  st.sampled_from(["nope_cleaners"])), min_size=1, max_size=2)
    return st.tuples(text, cleaners, st.sampled_from(["english", "russian"]), st.booleans())


def fuzz_texts(examples: int, seed: int) -> FuzzTally:
    # here, not at the top: see the fuzzing section's note
    from text import (ArpabetError, UnknownCharacterError, UnknownCleanerError,
                      text_to_sequence)
    from text.symbols import get_symbols
    tally = FuzzTally("texts -> text_to_sequence")
    sizes = {s: len(get_symbols(s)) for s in ("english", "russian")}

    def body(value: Tuple[str, List[str], str, bool]) -> None:
        text, cleaners, symbol_set, drop = value
        tally.tried += 1
        try:
            ids = text_to_sequence(text, cleaners, symbol_set, drop_unknown=drop)
        except (UnknownCharacterError, ArpabetError, UnknownCleanerError) as err:
            if _one_line(str(err)):
                tally.rejected += 1
            else:
                tally.unclean.append(f"{text!r} {cleaners} {symbol_set}: "
                                     f"{type(err).__name__} message not one line")
            return
        except Exception as err:
            tally.tracebacks.append(f"text_to_sequence({text!r}, {cleaners}, {symbol_set!r}, "
                                    f"drop_unknown={drop}): {_exception_line(err)}")
            return
        if not all(isinstance(i, int) and 0 < i < sizes[symbol_set] for i in ids):
            tally.unclean.append(f"{text!r}: ids outside the symbol set")
            return
        tally.accepted += 1

    _hypothesis_run(text_strategy(), examples, seed, body)
    return tally


# hparams a fuzzed string may change and still train 2 steps of the tiny model in seconds
_CHEAP = {"seed", "learning_rate", "weight_decay", "grad_clip_thresh", "lr_schedule",
          "lr_decay_factor", "lr_patience_steps", "min_learning_rate", "gate_positive_weight",
          "divergence_factor", "divergence_window", "max_bad_steps", "divergence_lr_factor",
          "red_flag_start_step", "red_flag_diagonal", "red_flag_guided_term",
          "red_flag_max_attention", "red_flag_band_share", "red_flag_action",
          "red_flag_patience", "remedy_guide_loss_weight", "diagonal_band", "success_steps",
          "success_thresholds", "keep_checkpoints", "iters_per_log", "iters_per_checkpoint",
          "guide_loss_weight", "guide_sigma", "guide_scale", "guide_decay", "guide_lowbound",
          "guide_decay_start", "guide_decay_steps", "p_attention_dropout", "p_decoder_dropout",
          "p_encoder_dropout", "p_postnet_dropout", "p_prenet_dropout", "gate_threshold",
          "curriculum", "curriculum_start_quantile", "curriculum_steps", "min_audio_seconds",
          "max_audio_seconds", "drop_unknown_chars", "epochs", "max_steps",
          "iters_per_validation", "iters_per_audio", "free_running_every"}


def cheap_hparams_strategy():
    """Fuzzed "name=value" lists over the names in _CHEAP: strings train.py can be given
    with the tiny preset and still take 2 steps in seconds when they are accepted."""
    from hypothesis import strategies as st  # here, not at the top: see the fuzzing section's note
    values = hparams_strategy_values()
    pair = st.tuples(st.sampled_from(sorted(_CHEAP)), values).map(lambda t: f"{t[0]}={t[1]}")
    return st.lists(pair, min_size=1, max_size=3).map(",".join)


def cli_candidates(base: str, n: int, seed: int) -> List[Tuple[str, str, str]]:
    """`n` fuzzed hparams strings for train.py: (string, expected "accepted" | "rejected",
    the in-process error or ""), half of each where the draw allows."""
    accepted: List[Tuple[str, str, str]] = []
    rejected: List[Tuple[str, str, str]] = []

    def body(text: str) -> None:
        if "\0" in text:
            return  # cannot be a command-line argument
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return  # (a lone surrogate) cannot be a command-line argument either
        try:
            create_hparams(f"{base},{text}")
        except HParamsError as err:
            rejected.append((text, "rejected", str(err)))
            return
        except Exception:
            return  # the in-process fuzz counts these
        accepted.append((text, "accepted", ""))

    _hypothesis_run(cheap_hparams_strategy(), max(20, 8 * n), seed, body)
    half = min(len(accepted), n // 2)
    chosen = accepted[:half] + rejected[: n - half]
    return chosen[:n]


def cli_fuzz_try(ws: Workspace, index: int, text: str, expected: str, error: str
                 ) -> Dict[str, Any]:
    run_name = f"fuzzcli{index:02d}"
    result = ws.run(run_name, ws.train_cmd(run_name, f"{ws.base},{text}", "--max_steps=2"),
                    timeout=240)
    why = []
    if expected == "rejected":
        if result.rc != 2:
            why.append(f"exit {result.rc}, expected 2")
        if result.stderr.strip() != f"error: {error}":
            why.append(f"stderr {result.stderr.strip()[:200]!r} is not the one line "
                       f"'error: {error[:100]}'")
    elif result.rc == 2:
        # accepted hparams the data check refuses (e.g. a too-low max_audio_seconds) are a
        # clean refusal too
        if "data check:" not in result.stdout:
            why.append(f"exit 2 for hparams create_hparams accepts: {result.stderr[:200]!r}")
    elif result.rc not in (0, 3):
        why.append(f"exit {result.rc}, expected 0 (or 3, a red flag)")
    if TRACEBACK in result.stderr:
        why.append("traceback")
    check_run_files(ws.run_dir(run_name), ws.ledger, run_name, final=True)
    if why:
        ws.ledger.problem(f"fuzzed hparams {text!r} through train.py: {'; '.join(why)}\n"
                          f"{result.tail()}")
    return {"hparams": text, "expected": expected, "exit": result.rc, "clean": not why,
            "why": why}
