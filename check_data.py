"""Checks filelists and their audio before training: one line per problem, then a summary.

    python check_data.py filelists/demo_en_train.txt filelists/demo_en_val.txt
    python check_data.py train.txt val.txt --hparams="preset=demo_ru" --plots data_report
    python check_data.py train.txt --write-clean train_clean.txt
    python check_data.py                     # the hparams' training_files and validation_files

Each problem is printed as `<filelist>:<line>: <severity>: <message>`. Errors stop training
(train.py runs the fast checks before it starts and exits with status 2 on an error, unless
--skip_data_check); `--write-clean` drops every flagged line; warnings are things to look at.
Exit status 1 when there is an error, 2 for bad hparams or arguments, 0 otherwise.

Errors: `bad_filelist` (missing, unreadable or empty filelist; a missing one's message names the
filelists beside it), `bad_line` (not `path|text` or `path|text|speaker`, not UTF-8),
`empty_text`, `no_letters` (text of punctuation alone, e.g. "?!...": nothing to pronounce),
`unknown_chars` (characters outside the symbol set after the cleaners; the cleaned text is
shown), `missing_audio`, `unreadable_audio`, `sample_rate`, `empty_audio`, `too_long` (longer
than hp.max_audio_seconds: one long clip pads its whole batch and can exhaust GPU memory days
into a run), `silent`, `duplicate` (the same audio twice in one filelist), `overlap` (the same
audio in two filelists, e.g. train and validation).
Warnings: `dropped_chars` (unknown characters that drop_unknown_chars=True drops), `channels`,
`too_short` (hp.min_audio_seconds), `clipping`, `near_silent`, `rate_outlier` (suspected
text-audio mismatch, below).

Speaking rate: seconds of audio per text symbol, in log scale, against the median of all the
lines checked together, by a robust z-score `(x - median) / (1.4826 * MAD)`. A line with |z| above
`RATE_Z_THRESHOLD` is a suspected text-audio mismatch: a transcript of another file, cut audio,
or a cut transcript. On the demo corpus (robust sd about 10%, largest healthy |z| about 3) it
flags a transcript swapped with one about 1.5x longer or shorter, and no healthy line.
Durations come from the file headers; audio is decoded only for the clipping and silence
checks, which `--no-decode` skips.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

import plotting
from audio import AudioError, audio_info, load_wav
from data_utils import FilelistEntry, read_filelist
from hparams import HParams, create_hparams
from text import ArpabetError, UnknownCharacterError, clean_text, text_to_sequence, \
    unknown_characters
from text.symbols import get_symbols

RATE_Z_THRESHOLD = 4.0  # |robust z| of log(seconds per symbol) above which a line is flagged
RATE_MIN_LINES = 8  # fewer usable lines give no trustworthy median: the rate check is skipped
RATE_MIN_MAD = 0.02  # log units; floor of the MAD so a very uniform corpus is not over-flagged
CLIP_LEVEL = 32767 / 32768  # full scale of 16-bit audio
CLIP_RUN = 3  # consecutive full-scale samples that make a clipped stretch
SILENT_DB = -60.0  # loudest frame below this (dBFS): silent, an error
NEAR_SILENT_DB = -40.0  # loudest frame below this (dBFS): near-silent, a warning
FRAME = 2048  # samples per frame for the loudness checks (93 ms at 22050 Hz)


class Problem(NamedTuple):
    filelist: str
    line: int  # 1-based; 0 = the filelist as a whole
    severity: str  # "error" | "warning"
    kind: str  # see the module docstring
    message: str

    def __str__(self) -> str:
        where = f"{self.filelist}:{self.line}" if self.line else self.filelist
        return f"{where}: {self.severity}: {self.message}"


class LineStats(NamedTuple):
    filelist: str
    line: int
    audio_path: str
    seconds: Optional[float]  # None when the header could not be read
    n_symbols: Optional[int]  # None when the text could not be encoded


class CheckReport(NamedTuple):
    problems: List[Problem]  # in filelist order, then line order
    lines: List[LineStats]
    rate_median: Optional[float]  # seconds per symbol; None when the rate check was skipped
    rate_spread: Optional[float]  # robust standard deviation of log(seconds per symbol)

    @property
    def n_errors(self) -> int:
        return sum(p.severity == "error" for p in self.problems)

    @property
    def n_warnings(self) -> int:
        return sum(p.severity == "warning" for p in self.problems)


def _show(path: str) -> str:
    """A path as short as is unambiguous: relative to the cwd when it lies below it."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# ---------------------------------------------------------------------------- reading

def _read(filelist: str, data_root: str) -> Tuple[List[FilelistEntry], List[Problem]]:
    """Every usable line of a filelist, and an error for each line that is not.

    The same reader as training's (`read_filelist`), in its collecting mode: training stops at
    the first bad line, this goes on so that one run lists every bad line. Missing audio is
    left to `_check_header`, which reports it with the other audio faults.
    """
    entries, faults = read_filelist(filelist, data_root, check_exists=False,
                                    collect_errors=True)
    return entries, [Problem(f.file, f.line, "error", f.kind, f.message) for f in faults]


# ---------------------------------------------------------------------------- checks

def _check_text(entry: FilelistEntry, hp: HParams) -> Tuple[Optional[int], List[Problem]]:
    """(number of symbols or None, problems) for one transcript."""
    if not entry.text:
        return None, []  # reported as empty_text while reading
    where = (entry.filelist, entry.line)
    try:
        ids = text_to_sequence(entry.text, hp.text_cleaners, hp.symbol_set,
                               drop_unknown=hp.drop_unknown_chars)
    except (UnknownCharacterError, ArpabetError):
        unknown = unknown_characters(entry.text, hp.text_cleaners, hp.symbol_set)
        cleaned = clean_text(entry.text, hp.text_cleaners)
        chars = ", ".join(repr(c) for c in unknown) or "none"
        return None, [Problem(*where, "error", "unknown_chars",
                              f"character(s) {chars} not in the {hp.symbol_set!r} symbol set "
                              f"after cleaners {hp.text_cleaners}; cleaned text: {cleaned!r}")]
    problems = []
    if hp.drop_unknown_chars:
        unknown = unknown_characters(entry.text, hp.text_cleaners, hp.symbol_set)
        if unknown:
            chars = ", ".join(repr(c) for c in unknown)
            problems.append(Problem(*where, "warning", "dropped_chars",
                                    f"character(s) {chars} outside the {hp.symbol_set!r} set "
                                    f"will be dropped (drop_unknown_chars=True)"))
    if not ids:
        return None, problems + [Problem(*where, "error", "empty_text",
                                         f"text {entry.text!r} cleans to no symbols")]
    if not any(_is_spoken(symbol) for symbol in _symbols(hp.symbol_set, ids)):
        # Punctuation alone ("?!...") gives the attention nothing to walk along: such a line
        # only teaches the decoder to babble, and it cannot align.
        cleaned = clean_text(entry.text, hp.text_cleaners)
        return None, problems + [Problem(*where, "error", "no_letters",
                                         f"text {entry.text!r} has no letters (cleaned: "
                                         f"{cleaned!r}); write out what is said or drop the "
                                         f"line")]
    return len(ids), problems


def _symbols(symbol_set: str, ids: Sequence[int]) -> List[str]:
    table = get_symbols(symbol_set)
    return [table[i] for i in ids]


def _is_spoken(symbol: str) -> bool:
    """A letter of the set or an ARPAbet phoneme ("@AA"): something that is pronounced."""
    return symbol.isalpha() or (symbol.startswith("@") and len(symbol) > 1)


def _check_header(entry: FilelistEntry, hp: HParams) -> Tuple[Optional[float], List[Problem]]:
    """(seconds or None, problems) from the audio file's header."""
    where = (entry.filelist, entry.line)
    path = _show(entry.audio_path)
    if not os.path.isfile(entry.audio_path):
        return None, [Problem(*where, "error", "missing_audio", f"{path}: no such audio file")]
    try:
        sr, n_frames, channels = audio_info(entry.audio_path)
    except AudioError as err:
        return None, [Problem(*where, "error", "unreadable_audio",
                              f"{path}: {str(err).split(': ', 1)[-1]}")]
    problems = []
    if n_frames == 0:
        return None, [Problem(*where, "error", "empty_audio", f"{path}: the file holds no samples")]
    if sr != hp.sampling_rate:
        problems.append(Problem(*where, "error", "sample_rate",
                                f"{path}: sample rate {sr} Hz, expected {hp.sampling_rate} Hz "
                                f"(resample it, e.g. python prepare_dataset.py --resample)"))
    if channels != 1:
        problems.append(Problem(*where, "warning", "channels",
                                f"{path}: {channels} channels; training averages them to mono"))
    seconds = n_frames / sr
    if seconds < hp.min_audio_seconds:
        problems.append(Problem(*where, "warning", "too_short",
                                f"{path}: {seconds:.2f} s, shorter than min_audio_seconds="
                                f"{hp.min_audio_seconds:g}"))
    if seconds > hp.max_audio_seconds:
        # An error, not a warning: one long clip in a batch sets the padded length of all of
        # it (memory, and an out-of-memory crash days into a run), and long clips align last.
        problems.append(Problem(*where, "error", "too_long",
                                f"{path}: {seconds:.2f} s, longer than max_audio_seconds="
                                f"{hp.max_audio_seconds:g}; split the clip, drop the line "
                                f"(--write-clean) or raise max_audio_seconds"))
    return seconds, problems


def _longest_run(mask: np.ndarray) -> int:
    if not mask.any():
        return 0
    # run lengths from the positions where the mask switches on and off
    edges = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return int((np.nonzero(edges == -1)[0] - np.nonzero(edges == 1)[0]).max())


def _check_signal(entry: FilelistEntry) -> List[Problem]:
    """Clipping and silence, from the decoded samples."""
    where = (entry.filelist, entry.line)
    path = _show(entry.audio_path)
    try:
        wav = load_wav(entry.audio_path, None)
    except AudioError as err:
        return [Problem(*where, "error", "unreadable_audio",
                        f"{path}: {str(err).split(': ', 1)[-1]}")]
    full = np.abs(wav) >= CLIP_LEVEL
    problems = []
    if _longest_run(full) >= CLIP_RUN:
        problems.append(Problem(*where, "warning", "clipping",
                                f"{path}: clipped: {int(full.sum())} samples at full scale "
                                f"({100 * full.mean():.2f}%); lower the gain and re-record or "
                                f"drop the clip"))
    n_frames = max(1, len(wav) // FRAME)
    frames = wav[:n_frames * FRAME].reshape(n_frames, -1) if len(wav) >= FRAME else wav[None, :]
    loudest = float(np.sqrt((frames.astype(np.float64) ** 2).mean(axis=1)).max())
    loudest_db = 20 * math.log10(loudest) if loudest > 0 else -math.inf
    if loudest_db < SILENT_DB:
        problems.append(Problem(*where, "error", "silent",
                                f"{path}: silent audio (loudest frame {loudest_db:.0f} dBFS)"))
    elif loudest_db < NEAR_SILENT_DB:
        problems.append(Problem(*where, "warning", "near_silent",
                                f"{path}: near-silent audio (loudest frame {loudest_db:.0f} "
                                f"dBFS); normalise its level"))
    return problems


def _check_rates(lines: Sequence[LineStats]) -> Tuple[Optional[float], Optional[float],
                                                      List[Problem]]:
    """Speaking-rate outliers against the robust median of all usable lines."""
    usable = [s for s in lines if s.seconds and s.n_symbols]
    if len(usable) < RATE_MIN_LINES:
        return None, None, []
    log_rate = np.log([s.seconds / s.n_symbols for s in usable])
    median = float(np.median(log_rate))
    spread = 1.4826 * max(float(np.median(np.abs(log_rate - median))), RATE_MIN_MAD)
    problems = []
    for s, x in zip(usable, log_rate):
        z = (x - median) / spread
        if abs(z) > RATE_Z_THRESHOLD:
            what = "slow" if z > 0 else "fast"
            problems.append(Problem(
                s.filelist, s.line, "warning", "rate_outlier",
                f"{_show(s.audio_path)}: suspected text-audio mismatch: {s.seconds:.2f} s for "
                f"{s.n_symbols} symbols = {s.seconds / s.n_symbols:.3f} s/symbol, {what} by "
                f"robust z={z:+.1f} against the corpus median {math.exp(median):.3f} s/symbol"))
    return math.exp(median), spread, problems


def run_checks(filelists: Sequence[str], hp: Optional[HParams] = None,
               decode_audio: bool = True) -> CheckReport:
    """All checks over several filelists checked together (duplicates, overlap, rates).

    Args:
        filelists: paths, e.g. [training, validation].
        hp: HParams (text_cleaners, symbol_set, drop_unknown_chars, sampling_rate, data_root,
            min_audio_seconds, max_audio_seconds); None = the defaults.
        decode_audio: also decode every file for the clipping and silence checks.

    Raises:
        UnknownCleanerError, ValueError: the hparams name an unknown cleaner or symbol set.
    """
    hp = hp or create_hparams()
    problems: List[Problem] = []
    stats: List[LineStats] = []
    first_seen: Dict[str, Tuple[str, int]] = {}
    for filelist in map(os.fspath, filelists):
        entries, read_problems = _read(filelist, hp.data_root)
        problems += read_problems
        for entry in entries:
            where = (entry.filelist, entry.line)
            key = os.path.normcase(os.path.realpath(entry.audio_path))
            if key in first_seen:
                other_list, other_line = first_seen[key]
                if other_list == filelist:
                    problems.append(Problem(*where, "error", "duplicate",
                                            f"{_show(entry.audio_path)}: duplicate of line "
                                            f"{other_line}"))
                else:
                    problems.append(Problem(*where, "error", "overlap",
                                            f"{_show(entry.audio_path)}: also in {other_list} "
                                            f"line {other_line} (train/validation overlap)"))
            else:
                first_seen[key] = where
            n_symbols, text_problems = _check_text(entry, hp)
            seconds, audio_problems = _check_header(entry, hp)
            problems += text_problems + audio_problems
            if decode_audio and seconds is not None:
                problems += _check_signal(entry)
            stats.append(LineStats(filelist, entry.line, entry.audio_path, seconds, n_symbols))
    rate_median, rate_spread, rate_problems = _check_rates(stats)
    problems += rate_problems
    order = {f: i for i, f in enumerate(map(os.fspath, filelists))}
    problems.sort(key=lambda p: (order.get(p.filelist, len(order)), p.line))
    return CheckReport(problems, stats, rate_median, rate_spread)


def check_filelists(train_path: str, val_path: Optional[str] = None,
                    hp: Optional[HParams] = None, decode_audio: bool = True) -> List[Problem]:
    """The problems of a training filelist and, if given, its validation filelist.

    train.py calls this with decode_audio=False (headers only: fast) and refuses to start when
    any problem has severity "error".

    Returns:
        Problems in filelist and line order; `str(problem)` is its one-line form.
    """
    paths = [train_path] + ([val_path] if val_path else [])
    return run_checks(paths, hp, decode_audio).problems


# ---------------------------------------------------------------------------- outputs

def summary(report: CheckReport, filelists: Sequence[str]) -> str:
    """A few lines: counts by severity and kind, hours, durations, speaking rate."""
    seconds = np.array([s.seconds for s in report.lines if s.seconds is not None])
    lines = [f"checked {len(report.lines)} lines in {len(filelists)} filelist(s): "
             f"{report.n_errors} error(s), {report.n_warnings} warning(s)"]
    for severity in ("error", "warning"):
        kinds = Counter(p.kind for p in report.problems if p.severity == severity)
        if kinds:
            lines.append(f"  {severity}s: " + ", ".join(f"{k} {n}" for k, n in
                                                        sorted(kinds.items())))
    if seconds.size:
        lines.append(f"  audio: {seconds.sum() / 3600:.2f} h in {seconds.size} files; duration "
                     f"min {seconds.min():.2f} s, median {np.median(seconds):.2f} s, max "
                     f"{seconds.max():.2f} s")
    if report.rate_median is not None:
        lines.append(f"  speaking rate: median {report.rate_median:.4f} s/symbol, robust sd "
                     f"{100 * (math.exp(report.rate_spread) - 1):.0f}%, lines beyond "
                     f"|z| > {RATE_Z_THRESHOLD:g} flagged")
    else:
        lines.append(f"  speaking rate: not checked (needs {RATE_MIN_LINES} usable lines)")
    return "\n".join(lines)


def write_plots(report: CheckReport, folder: str) -> List[str]:
    """PNG histograms of durations and of speaking rate into `folder`; returns the paths."""
    seconds = [s.seconds for s in report.lines if s.seconds is not None]
    rates = [s.seconds / s.n_symbols for s in report.lines if s.seconds and s.n_symbols]
    flagged = {(p.filelist, p.line) for p in report.problems if p.kind == "rate_outlier"}
    flagged_rates = [s.seconds / s.n_symbols for s in report.lines
                     if s.seconds and s.n_symbols and (s.filelist, s.line) in flagged]
    written = []
    for name, values, xlabel in (("durations.png", seconds, "duration (s)"),
                                 ("speaking_rate.png", rates, "seconds per text symbol")):
        fig, canvas = plotting.new_figure(7, 4)
        ax = fig.add_subplot(1, 1, 1)
        ax.hist(values, bins=min(50, max(5, len(values) // 4)), color="tab:blue")
        if name == "speaking_rate.png":
            if report.rate_median is not None:
                ax.axvline(report.rate_median, color="k", linestyle="--", label="median")
            for i, r in enumerate(flagged_rates):
                ax.axvline(r, color="tab:red", label="suspected mismatch" if i == 0 else None)
            if report.rate_median is not None or flagged_rates:
                ax.legend()
        ax.set_xlabel(xlabel)
        ax.set_ylabel("lines")
        ax.set_title(f"{xlabel}: {len(values)} lines")
        fig.tight_layout()
        written.append(plotting.save_png(canvas, os.path.join(folder, name)))
    return written


def _clean_targets(filelists: Sequence[str], out: str) -> List[str]:
    if len(filelists) == 1 and not out.endswith(os.sep) and not os.path.isdir(out):
        return [out]
    names = [os.path.basename(f) for f in filelists]
    if len(set(names)) != len(names):
        raise ValueError(f"--write-clean {out}: filelists share a file name; clean them one by "
                         f"one")
    return [os.path.join(out, name) for name in names]


def write_clean(report: CheckReport, filelists: Sequence[str], out: str,
                data_root: str = "") -> List[Tuple[str, int, int]]:
    """Writes each filelist without its flagged lines (errors and warnings).

    With one filelist `out` is the new file; with several it is a folder that receives each
    under its own name. Relative audio paths are rewritten for the new file's folder unless
    `data_root` anchors them.

    Returns:
        (path written, lines kept, lines dropped) per filelist.
    """
    flagged = {(p.filelist, p.line) for p in report.problems if p.line}
    by_line = {(s.filelist, s.line): s.audio_path for s in report.lines}
    results = []
    for filelist, target in zip(filelists, _clean_targets(filelists, out)):
        filelist = os.fspath(filelist)
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        src_dir = os.path.dirname(os.path.abspath(filelist))
        dst_dir = os.path.dirname(os.path.abspath(target))
        text = Path(filelist).read_bytes().decode("utf-8", errors="replace").lstrip("\ufeff")
        kept, dropped = [], 0
        for number, line in enumerate(text.split("\n"), start=1):
            line = line.rstrip("\r")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            if (filelist, number) in flagged or (filelist, number) not in by_line:
                dropped += 1
                continue
            audio, rest = line.split("|", 1)
            if not data_root and not os.path.isabs(audio.strip()) and src_dir != dst_dir:
                # the old relative path would now resolve against another folder
                audio = os.path.relpath(by_line[(filelist, number)], dst_dir).replace(os.sep, "/")
            kept.append(f"{audio}|{rest}\n")
        Path(target).write_text("".join(kept), encoding="utf-8")
        results.append((target, len(kept), dropped))
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Check filelists and audio before training (one line per problem).")
    parser.add_argument("filelists", nargs="*", metavar="FILELIST",
                        help="filelists checked together; default: the hparams' training_files "
                             "and validation_files")
    parser.add_argument("--hparams", default="", help='overrides, e.g. "preset=demo_ru"')
    parser.add_argument("--write-clean", dest="write_clean", metavar="OUT",
                        help="write the filelist(s) without the flagged lines (one filelist: "
                             "OUT is the file; several: OUT is a folder)")
    parser.add_argument("--plots", metavar="DIR",
                        help="write durations.png and speaking_rate.png into DIR")
    parser.add_argument("--no-decode", dest="decode", action="store_false",
                        help="headers only: skip the clipping and silence checks (fast)")
    args = parser.parse_args(argv)

    try:
        hp = create_hparams(args.hparams)
        filelists = args.filelists or [hp.training_files, hp.validation_files]
        report = run_checks(filelists, hp, decode_audio=args.decode)
    except ValueError as err:  # HParamsError, UnknownCleanerError, unknown symbol set
        print(f"error: {err}", file=sys.stderr)
        return 2
    for problem in report.problems:
        print(problem)
    print(summary(report, filelists))
    if args.plots:
        for path in write_plots(report, args.plots):
            print(f"  plot: {path}")
    if args.write_clean:
        try:
            results = write_clean(report, filelists, args.write_clean, hp.data_root)
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        for path, kept, dropped in results:
            print(f"  clean filelist: {path} ({kept} lines kept, {dropped} dropped)")
    return 1 if report.n_errors else 0


if __name__ == "__main__":
    sys.exit(main())
