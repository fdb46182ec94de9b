"""Fuzzed input (hypothesis): hparams strings, filelists and texts are each accepted, or refused
with the module's own one-line error; never a traceback. A few fuzzed hparams strings then go
through train.py: accepted ones train (or are refused by the data check), refused ones exit 2
with the same one line.

Part of the fault campaign (see test_faults.py); `--fuzz-examples` sets the examples per target,
`--fault-seed` the draw. All `slow`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Dict, List, Tuple

import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from check_data import check_filelists
from data_utils import DataError, read_filelist
from fault_harness import TRACEBACK, check_run_files
from hparams import HParams, HParamsError, create_hparams
from text import ArpabetError, UnknownCharacterError, UnknownCleanerError, text_to_sequence
from text.cleaners import CLEANERS
from text.symbols import get_symbols

pytestmark = pytest.mark.slow


def _one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "\r" not in text


def _fuzz(strategy, examples: int, draw_seed: int):
    """`@given(strategy)` with the campaign's settings: `examples` examples drawn from
    `draw_seed`, no example database, no deadline, failing examples shrunk."""
    def decorate(body):
        return seed(draw_seed)(settings(
            max_examples=examples, database=None, deadline=None,
            phases=[Phase.generate, Phase.shrink],
            suppress_health_check=list(HealthCheck))(given(strategy)(body)))
    return decorate


# ---------------------------------------------------------------------------------- hparams
_SPECIAL_VALUES = [
    "1e400", "-1e400", "nan", "inf", "-inf", "1e38", "1e-400", "0", "-0", "-1", "1", "true",
    "False", "yes", "off", "[]", "[a,b]", "[1,2,3]", "[0.1;0.2]", "['x']", '""', "''", "None",
    "0x10", "1_000", "\uff11\uff12", "\u0663", "2**53", "1e15", "9007199254740993", "tiny", "demo",
    "default", "english", "russian", "fp16", "bf16", "stop", "warn", "remediate", "constant",
    "[basic_cleaners]", "[english_cleaners,russian_cleaners]", "[nope]", "[", "]", "=", ",", " "]


def hparams_values():
    return st.one_of(
        st.sampled_from(_SPECIAL_VALUES),
        st.integers(min_value=-10 ** 6, max_value=10 ** 6).map(str),
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=12),
        st.lists(st.text(alphabet="abc01._ -", max_size=5), max_size=3).map(
            lambda xs: "[" + ",".join(xs) + "]"),
    )


def hparams_strings():
    names = [f.name for f in dataclasses.fields(HParams)]
    name = st.one_of(st.sampled_from(names), st.sampled_from(names).map(str.upper),
                     st.text(max_size=10))
    pair = st.tuples(name, st.sampled_from(["=", "=", "=", " = ", ":", "=="]),
                     hparams_values()).map("".join)
    return st.one_of(
        st.lists(pair, max_size=5).map(",".join),
        st.tuples(st.sampled_from(["default", "tiny", "demo", "nvidia", "demo_ru", "x", ""]),
                  st.lists(pair, max_size=3)).map(lambda t: ",".join(["preset=" + t[0]] + t[1])),
        st.text(max_size=40),
    )


def _same(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return all(a[k] == b[k] or (isinstance(a[k], float) and isinstance(b[k], float)
                                and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def test_fuzzed_hparams_strings_are_accepted_or_refused_in_one_line(fuzz_examples, fault_seed,
                                                                    fault_tally):
    """create_hparams: an HParamsError of one line, or hparams that survive what a checkpoint
    does with them (to_json, from_dict) unchanged."""
    counts = fault_tally.fuzz_counts("hparams strings")

    @_fuzz(hparams_strings(), fuzz_examples, fault_seed)
    def check(text: str) -> None:
        counts[0] += 1
        try:
            hp = create_hparams(text)
        except HParamsError as err:
            assert _one_line(str(err)), f"create_hparams({text!r}): {str(err)!r}"
            counts[2] += 1
            return
        again = HParams.from_dict(json.loads(hp.to_json()))
        assert _same(again.to_dict(), hp.to_dict()), f"{text!r} changes through to_json/from_dict"
        counts[1] += 1

    check()


# ---------------------------------------------------------------------------------- filelists
def filelists(n_wavs: int):
    """(lines as bytes, newline, a trailing newline or not): mostly well-formed `path|text`
    lines over wavs/utt_0000.wav.., with broken paths, texts, speakers, encodings, bytes."""
    wav = "wavs/utt_0000.wav"
    good_path = st.sampled_from([f"wavs/utt_{i:04d}.wav" for i in range(n_wavs)])
    path = st.one_of(good_path, good_path,
                     st.sampled_from(["wavs/missing.wav", "", " ", "DUMMY/LJ001-0001.wav", "wavs",
                                      wav + " ", "../corpus/" + wav]),
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


def test_fuzzed_filelists_are_read_or_refused_line_by_line(fuzz_examples, fault_seed,
                                                           fault_tally, fault_workspace):
    """read_filelist in both modes and check_filelists: problems of one line each, and the
    collecting mode faults exactly what the raising mode refuses."""
    counts = fault_tally.fuzz_counts("filelists")
    hp = create_hparams("preset=tiny,text_cleaners=[basic_cleaners]")
    path = os.path.join(fault_workspace.corpus, "fuzzed_filelist.txt")
    with open(fault_workspace.train_list, encoding="utf-8") as f:
        n_wavs = sum(1 for _ in f)

    @_fuzz(filelists(n_wavs), fuzz_examples, fault_seed)
    def check(value: Tuple[List[bytes], bytes, bool]) -> None:
        lines, newline, trailing = value
        data = newline.join(lines) + (newline if trailing else b"")
        with open(path, "wb") as f:
            f.write(data)
        counts[0] += 1
        entries, problems = read_filelist(path, collect_errors=True)
        assert all(_one_line(str(p)) for p in problems), (data, problems)
        try:
            raised_entries = read_filelist(path)
        except DataError as err:
            assert problems, f"{data!r}: the raising mode refused what collect mode accepted: {err}"
            assert _one_line(str(err)), (data, str(err))
        else:
            assert not problems, f"{data!r}: the raising mode accepted {problems[0]}"
            assert raised_entries == entries, f"{data!r}: the two modes read different entries"
        checked = check_filelists(path, None, hp, decode_audio=False)
        assert all(_one_line(str(p)) for p in checked), (data, checked)
        counts[2 if problems or any(p.severity == "error" for p in checked) else 1] += 1

    check()


# ---------------------------------------------------------------------------------- texts
_TEXT_PIECES = [
    "1", "1,000", "3.14", "$5.50", "\u00a33", "1st", "22nd", "1990s", "10:30", "-7", "#1", "Mr.",
    "Dr.", "St.", "{HH AH0}", "{hh ah0 l ow1}", "{XX}", "{", "}", "{}", "_", "~",
    "\u043f\u0440\u0438\u0432\u0435\u0442", "\u0451\u0436", "\u0410\u0411", "9" * 50,
    "1" + "0" * 40, "1e100", "0.000000001", "\u00e9\u00e8", "\u00df", "\U0001f600", "\u0301",
    "\x00", "\t", "  ", "'", '"', "?!...", "...", "\u2026", "\u00bd", "\u2163", "\u0661\u0662"]


def texts():
    """(text, cleaners, symbol set, drop unknown characters)."""
    text = st.one_of(st.text(max_size=40),
                     st.lists(st.one_of(st.sampled_from(_TEXT_PIECES), st.text(max_size=6)),
                              max_size=8).map(" ".join))
    cleaners = st.lists(st.sampled_from(list(CLEANERS) + ["nope_cleaners"]), min_size=1,
                        max_size=2)
    return st.tuples(text, cleaners, st.sampled_from(["english", "russian"]), st.booleans())


def test_fuzzed_texts_become_symbol_ids_or_one_line_errors(fuzz_examples, fault_seed,
                                                           fault_tally):
    counts = fault_tally.fuzz_counts("texts")
    sizes = {s: len(get_symbols(s)) for s in ("english", "russian")}

    @_fuzz(texts(), fuzz_examples, fault_seed)
    def check(value: Tuple[str, List[str], str, bool]) -> None:
        text, cleaners, symbol_set, drop = value
        counts[0] += 1
        try:
            ids = text_to_sequence(text, cleaners, symbol_set, drop_unknown=drop)
        except (UnknownCharacterError, ArpabetError, UnknownCleanerError) as err:
            assert _one_line(str(err)), (value, str(err))
            counts[2] += 1
            return
        assert all(isinstance(i, int) and 0 < i < sizes[symbol_set] for i in ids), (value, ids)
        counts[1] += 1

    check()


# ---------------------------------------------------------------------------------- train.py
# hparams a fuzzed string may change and still train 2 steps of the tiny model in seconds
_CHEAP = ["curriculum", "curriculum_start_quantile", "curriculum_steps", "diagonal_band",
          "divergence_factor", "divergence_lr_factor", "divergence_window", "drop_unknown_chars",
          "epochs", "free_running_every", "gate_positive_weight", "gate_threshold",
          "grad_clip_thresh", "guide_decay", "guide_decay_start", "guide_decay_steps",
          "guide_loss_weight", "guide_lowbound", "guide_scale", "guide_sigma", "iters_per_audio",
          "iters_per_checkpoint", "iters_per_log", "iters_per_validation", "keep_checkpoints",
          "learning_rate", "lr_decay_factor", "lr_patience_steps", "lr_schedule",
          "max_audio_seconds", "max_bad_steps", "max_steps", "min_audio_seconds",
          "min_learning_rate", "p_attention_dropout", "p_decoder_dropout", "p_encoder_dropout",
          "p_postnet_dropout", "p_prenet_dropout", "red_flag_action", "red_flag_band_share",
          "red_flag_diagonal", "red_flag_guided_term", "red_flag_max_attention",
          "red_flag_patience", "red_flag_start_step", "remedy_guide_loss_weight", "seed",
          "success_steps", "success_thresholds", "weight_decay"]
CLI_TRIES = 2  # one accepted and one refused string, where the draw has both


def cheap_hparams_strings():
    """Fuzzed "name=value" lists over _CHEAP names (those present in HParams)."""
    names = sorted(set(_CHEAP) & {f.name for f in dataclasses.fields(HParams)})
    pair = st.tuples(st.sampled_from(names), hparams_values()).map(lambda t: f"{t[0]}={t[1]}")
    return st.lists(pair, min_size=1, max_size=3).map(",".join)


@pytest.fixture(scope="module")
def cli_candidates(fault_workspace, fault_seed) -> List[Tuple[str, str]]:
    """CLI_TRIES fuzzed strings for train.py: (string, the in-process HParamsError or "")."""
    accepted: List[Tuple[str, str]] = []
    refused: List[Tuple[str, str]] = []

    @_fuzz(cheap_hparams_strings(), 8 * CLI_TRIES, fault_seed)
    def draw(text: str) -> None:
        try:
            text.encode("utf-8")  # a lone surrogate cannot be a command-line argument
        except UnicodeEncodeError:
            return
        if "\0" in text:  # nor can a NUL
            return
        try:
            create_hparams(f"{fault_workspace.base},{text}")
        except HParamsError as err:
            refused.append((text, str(err)))
            return
        accepted.append((text, ""))

    draw()
    half = min(len(accepted), CLI_TRIES // 2)
    return (accepted[:half] + refused[: CLI_TRIES - half])[:CLI_TRIES]


@pytest.mark.parametrize("index", range(CLI_TRIES))
def test_fuzzed_hparams_through_train_py(fault_workspace, fault_tally, cli_candidates, index):
    """Refused in-process: exit 2 with exactly that error as the one line on stderr. Accepted:
    exit 0 (3 for a red flag), or 2 from the data check; no traceback, no file lost."""
    ws = fault_workspace
    text, error = cli_candidates[index]
    run_name = f"fuzzcli{index:02d}"
    result = ws.run(run_name, ws.train_cmd(run_name, f"{ws.base},{text}", "--max_steps=2"),
                    timeout=240)
    why = []
    if error:
        if result.rc != 2:
            why.append(f"exit {result.rc}, expected 2")
        if result.stderr.strip() != f"error: {error}":
            why.append(f"stderr {result.stderr.strip()[:200]!r} is not 'error: {error[:100]}'")
    elif result.rc == 2:
        if "data check:" not in result.stdout:
            why.append(f"exit 2 for hparams create_hparams accepts: {result.stderr[:200]!r}")
    elif result.rc not in (0, 3):
        why.append(f"exit {result.rc}, expected 0 (or 3, a red flag)")
    if TRACEBACK in result.stderr:
        why.append("a traceback")
    lost = check_run_files(ws.run_dir(run_name), final=True).lost
    fault_tally.files_lost += lost
    fault_tally.cli_fuzz.append(not why and not lost)
    assert not why, f"hparams {text!r}: {'; '.join(why)}\n{result.tail()}"
    assert lost == []
