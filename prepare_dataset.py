"""Turns a speech corpus into training and validation filelists, optionally fixing its audio.

    python prepare_dataset.py --format ljspeech --input LJSpeech-1.1 --out data/ljspeech
    python prepare_dataset.py --format ruslan --input RUSLAN_data --wavs RUSLAN_data/RUSLAN \\
        --out data/ruslan --resample
    python prepare_dataset.py --format mailabs --input ru_RU/by_book/male/minaev --out data/minaev
    python prepare_dataset.py --format generic --input my_list.txt --out data/mine --trim_silence
    python prepare_dataset.py --format festvox --language ru --resample --trim_silence \\
        --input /usr/share/festival/voices/russian/msu_ru_nsh_clunits --out data/festvox_ru

Formats:
  ljspeech  `<input>/metadata.csv`: `id|raw text|normalized text`; audio `<input>/wavs/<id>.wav`.
            The normalized column is used (the raw one when a line has only two columns).
  ruslan    `id|text` (`<input>/metadata_RUSLAN_22200.csv`, else `<input>/metadata.csv`); audio
            `<wavs>/<id>.wav`, `--wavs` defaulting to `<input>/RUSLAN`, else `<input>/wavs`.
  mailabs   every `metadata.csv` below `<input>` (`id|text|normalized`, one per book), audio in
            the book's `wavs/` folder. Point `--input` at one speaker's folder for one voice.
  generic   `--input` is a `path|text` list; relative paths are relative to the list's folder.
  festvox   a festvox voice folder, the layout of CMU ARCTIC and of Debian's festvox-* voices:
            `<input>/etc/txt.done.data` (`--metadata`), one utterance a line,
            `( ru_0002 "Она завела, прядь волнистых вол+ос за ухо, ..." )`: an id, then the text
            in double quotes (a `\\"` inside it is a quote, `\\\\` a backslash); audio
            `<input>/wav/<id>.wav` (`--wavs`). The text is kept as written: the Russian set keeps
            the `+` stress marks (`--language ru`; the default language is en, as for CMU
            ARCTIC). A line that does not have this shape stops the run with an error naming
            `file:line` (such a file is not a festvox prompt list, or it is damaged), unlike
            the `|` formats, where a bad line is skipped.

Writes `<out>/train.txt` and `<out>/val.txt` (`path|text` lines, paths relative to `<out>`,
transcripts as given: training runs the cleaners), split at random with `--seed`; `--val_size`
is a count, or a fraction when below 1 (default: 5% of the corpus, at most 100).

Lines are skipped, with the reason, for missing or unreadable audio, an empty text, characters
outside the symbol set after the cleaners (`--language` or `--hparams` choose them), a sample
rate other than hp.sampling_rate (unless `--resample`), and clips outside hp.min_audio_seconds..
hp.max_audio_seconds. The reasons are printed and saved to `<out>/skipped.txt`.

Audio options. New files go to `<out>/wavs/<id>.wav` (16-bit mono); the source folder is never
written to unless `--in_place`, which overwrites the source files instead:
  --resample       files at another rate are resampled to hp.sampling_rate (soxr, high quality);
                   files already at that rate are used where they are.
  --trim_silence   leading and trailing silence quieter than hp.trim_top_db below the peak is cut
                   (every file is rewritten).
  --mels           log-mels (float32 .npy, (n_mel, frames), the hparams' audio settings) are
                   saved to `<out>/mels/<id>.npy`.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from audio import AudioError, audio_info, load_wav, mel_from_file, save_wav, trim_silence
from hparams import HParams, create_hparams
from text import clean_text, unknown_characters

FORMATS = ("ljspeech", "ruslan", "mailabs", "generic", "festvox")
LANGUAGES = {"en": (["english_cleaners"], "english"), "ru": (["russian_cleaners"], "russian")}
SKIPPED_SHOWN = 20  # skipped lines printed; all of them go to <out>/skipped.txt


class Item(NamedTuple):
    source: str  # the metadata file or list the line came from
    line: int  # 1-based
    uid: str  # file stem for outputs (<out>/wavs/<uid>.wav, <out>/mels/<uid>.npy)
    audio: str  # absolute path of the source audio
    text: str


class Skip(NamedTuple):
    source: str
    line: int
    reason: str  # short kind, counted in the summary
    message: str

    def __str__(self) -> str:
        return f"{self.source}:{self.line}: {self.reason}: {self.message}"


class Job(NamedTuple):
    """What to do to every item: picklable, for worker processes."""
    hp: HParams
    out_dir: str
    resample: bool
    trim: bool
    mels: bool
    in_place: bool


class Done(NamedTuple):
    item: Item
    audio: str  # the audio the filelist names (new or source)
    seconds: float
    written: bool  # a new or overwritten audio file
    resampled: bool
    mel: Optional[str]


class PrepareError(ValueError):
    """Bad input: a missing metadata file or folder, an unsafe output; one line naming it."""


# ---------------------------------------------------------------------------- readers

def _metadata_lines(path: str) -> List[Tuple[int, Optional[List[str]], str]]:
    """(line number, '|' fields or None, error) for each non-blank line of a metadata file."""
    if not os.path.isfile(path):
        raise PrepareError(f"{path}: no such metadata file")
    raw = Path(path).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark
        raw = raw[3:]
    rows = []
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        try:
            line = raw_line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            rows.append((number, None, f"not UTF-8 ({err.reason} at byte {err.start})"))
            continue
        if line.strip():
            rows.append((number, [f.strip() for f in line.split("|")], ""))
    return rows


def _audio_file(folder: str, uid: str) -> str:
    name = uid if os.path.splitext(uid)[1].lower() in (".wav", ".flac") else uid + ".wav"
    return os.path.abspath(os.path.join(folder, name))


def _read_id_text(metadata: str, wavs: str, text_columns: Sequence[int]
                  ) -> Tuple[List[Item], List[Skip]]:
    """`id|...` metadata: the text is the first non-empty column of `text_columns`."""
    items, skips = [], []
    for number, fields, error in _metadata_lines(metadata):
        if fields is None:
            skips.append(Skip(metadata, number, "bad_line", error))
            continue
        if len(fields) < 2 or not fields[0]:
            skips.append(Skip(metadata, number, "bad_line",
                              f"expected 'id|text...', found {len(fields)} field(s)"))
            continue
        text = next((fields[c] for c in text_columns if c < len(fields) and fields[c]), "")
        items.append(Item(metadata, number, os.path.splitext(fields[0])[0],
                          _audio_file(wavs, fields[0]), text))
    return items, skips


def read_ljspeech(input_dir: str, metadata: Optional[str] = None, wavs: Optional[str] = None
                  ) -> Tuple[List[Item], List[Skip]]:
    """LJ Speech: `id|raw|normalized`, the normalized column (raw when it is missing)."""
    return _read_id_text(metadata or os.path.join(input_dir, "metadata.csv"),
                         wavs or os.path.join(input_dir, "wavs"), (2, 1))


def read_ruslan(input_dir: str, metadata: Optional[str] = None, wavs: Optional[str] = None
                ) -> Tuple[List[Item], List[Skip]]:
    """RUSLAN: `id|text`."""
    if metadata is None:
        metadata = os.path.join(input_dir, "metadata_RUSLAN_22200.csv")
        if not os.path.isfile(metadata):
            metadata = os.path.join(input_dir, "metadata.csv")
    if wavs is None:
        wavs = next((d for d in (os.path.join(input_dir, "RUSLAN"), os.path.join(input_dir, "wavs"))
                     if os.path.isdir(d)), input_dir)
    return _read_id_text(metadata, wavs, (1,))


def read_mailabs(input_dir: str, metadata: Optional[str] = None, wavs: Optional[str] = None
                 ) -> Tuple[List[Item], List[Skip]]:
    """M-AILABS: a `metadata.csv` (`id|text|normalized`) and a `wavs/` folder per book."""
    if metadata or wavs:
        raise PrepareError("--metadata and --wavs do not apply to mailabs: every "
                           "<book>/metadata.csv below --input is read with its <book>/wavs")
    books = sorted(Path(input_dir).rglob("metadata.csv"))
    if not books:
        raise PrepareError(f"{input_dir}: no metadata.csv below this folder (M-AILABS keeps one "
                           f"per book, e.g. by_book/female/<speaker>/<book>/metadata.csv)")
    items, skips = [], []
    for book in books:
        book_items, book_skips = _read_id_text(str(book), str(book.parent / "wavs"), (2, 1))
        items += book_items
        skips += book_skips
    return items, skips


def read_generic(list_path: str, metadata: Optional[str] = None, wavs: Optional[str] = None
                 ) -> Tuple[List[Item], List[Skip]]:
    """`path|text` lines; relative paths against the list's folder."""
    if metadata or wavs:
        raise PrepareError("--metadata and --wavs do not apply to generic: --input is the "
                           "path|text list")
    if os.path.isdir(list_path):
        raise PrepareError(f"{list_path}: is a folder; --format generic takes a path|text list")
    folder = os.path.dirname(os.path.abspath(list_path))
    items, skips = [], []
    for number, fields, error in _metadata_lines(list_path):
        if fields is None or len(fields) != 2 or not fields[0]:
            skips.append(Skip(list_path, number, "bad_line",
                              error or f"expected 'path|text', found {len(fields)} field(s)"))
            continue
        audio = os.path.abspath(os.path.join(folder, os.path.expanduser(fields[0])))
        uid = os.path.splitext(os.path.basename(audio))[0]
        items.append(Item(list_path, number, uid, audio, fields[1]))
    return items, skips


# `( id "text" )` with optional spaces; inside the quotes a backslash escapes the next character
# (festvox writes `\"` for a quote in a prompt).
_festvox_line_re = re.compile(r'^\(\s*([^\s()"]+)\s+"((?:[^"\\]|\\.)*)"\s*\)\s*$')
_festvox_escape_re = re.compile(r"\\(.)")


def read_festvox(input_dir: str, metadata: Optional[str] = None, wavs: Optional[str] = None
                 ) -> Tuple[List[Item], List[Skip]]:
    """festvox / CMU ARCTIC: `( id "text" )` lines of etc/txt.done.data, audio wav/<id>.wav.

    Raises:
        PrepareError: a missing prompt file, or a line that is not `( id "text" )` (file:line).
    """
    if metadata is None and not os.path.isdir(input_dir):
        raise PrepareError(f"{input_dir}: is not a folder; --format festvox takes a voice folder "
                           f"holding etc/txt.done.data and wav/")
    metadata = metadata or os.path.join(input_dir, "etc", "txt.done.data")
    wavs = wavs or os.path.join(input_dir, "wav")
    if not os.path.isfile(metadata):
        raise PrepareError(f"{metadata}: no such prompt file (festvox voices keep "
                           f"etc/txt.done.data)")
    raw = Path(metadata).read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    items = []
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        try:
            line = raw_line.decode("utf-8").strip()
        except UnicodeDecodeError as err:
            raise PrepareError(f"{metadata}:{number}: not UTF-8 ({err.reason} at byte "
                               f"{err.start})") from None
        if not line:
            continue
        match = _festvox_line_re.match(line)
        if not match:
            shown = line if len(line) <= 60 else line[:57] + "..."
            raise PrepareError(f"{metadata}:{number}: malformed line, expected "
                               f"'( id \"text\" )', found {shown!r}")
        uid, text = match.group(1), _festvox_escape_re.sub(r"\1", match.group(2)).strip()
        items.append(Item(metadata, number, uid, _audio_file(wavs, uid), text))
    return items, []


READERS = {"ljspeech": read_ljspeech, "ruslan": read_ruslan, "mailabs": read_mailabs,
           "generic": read_generic, "festvox": read_festvox}


def _unique_uids(items: List[Item]) -> List[Item]:
    """Distinct output names: a repeated stem gets _2, _3, ... in order of appearance."""
    seen: Counter = Counter()
    out = []
    for item in items:
        seen[item.uid] += 1
        count = seen[item.uid]
        out.append(item if count == 1 else item._replace(uid=f"{item.uid}_{count}"))
    return out


# ---------------------------------------------------------------------------- processing

def _check_text(item: Item, hp: HParams) -> Optional[Skip]:
    if not item.text:
        return Skip(item.source, item.line, "empty_text", f"no text for {item.uid}")
    if hp.drop_unknown_chars:
        return None
    unknown = unknown_characters(item.text, hp.text_cleaners, hp.symbol_set)
    if unknown:
        return Skip(item.source, item.line, "unknown_chars",
                    f"character(s) {', '.join(map(repr, unknown))} not in the {hp.symbol_set!r} "
                    f"set after {hp.text_cleaners}; cleaned: "
                    f"{clean_text(item.text, hp.text_cleaners)!r}")
    return None


def process_item(item: Item, job: Job) -> Done | Skip:
    """Checks one utterance and writes its new audio and mel as asked."""
    hp = job.hp

    def skip(reason: str, message: str) -> Skip:
        return Skip(item.source, item.line, reason, message)

    text_problem = _check_text(item, hp)
    if text_problem:
        return text_problem
    if not os.path.isfile(item.audio):
        return skip("missing_audio", f"{item.audio}: no such audio file")
    try:
        sr, n_frames, channels = audio_info(item.audio)
    except AudioError as err:
        return skip("unreadable_audio", str(err))
    if n_frames == 0:
        return skip("empty_audio", f"{item.audio}: the file holds no samples")
    resample = sr != hp.sampling_rate
    if resample and not job.resample:
        return skip("sample_rate", f"{item.audio}: {sr} Hz, expected {hp.sampling_rate} Hz "
                                   f"(add --resample)")
    seconds = n_frames / sr
    audio, written = item.audio, False
    if resample or job.trim:
        try:
            wav = load_wav(item.audio, None)  # channels averaged to mono
        except AudioError as err:
            return skip("unreadable_audio", str(err))
        if resample:
            import soxr  # librosa's resampler (a librosa dependency), without librosa's import time

            wav = soxr.resample(wav, sr, hp.sampling_rate, quality="HQ").astype(np.float32)
        if job.trim:
            wav = trim_silence(wav, hp.trim_top_db)
        seconds = len(wav) / hp.sampling_rate
        audio = item.audio if job.in_place else os.path.join(job.out_dir, "wavs",
                                                             item.uid + ".wav")
    if seconds < hp.min_audio_seconds:
        return skip("too_short", f"{item.audio}: {seconds:.2f} s < min_audio_seconds="
                                 f"{hp.min_audio_seconds:g}")
    if seconds > hp.max_audio_seconds:
        return skip("too_long", f"{item.audio}: {seconds:.2f} s > max_audio_seconds="
                                f"{hp.max_audio_seconds:g}")
    if audio != item.audio or (job.in_place and (resample or job.trim)):
        tmp = audio + ".tmp" + os.path.splitext(audio)[1]
        save_wav(tmp, wav, hp.sampling_rate)
        os.replace(tmp, audio)  # a crash never leaves a half-written file under the real name
        written = True
    mel_path = None
    if job.mels:
        mel_path = os.path.join(job.out_dir, "mels", item.uid + ".npy")
        try:
            mel = mel_from_file(audio, hp)
        except AudioError as err:
            return skip("unreadable_audio", str(err))
        np.save(mel_path, mel.numpy().astype(np.float32))
    return Done(item, audio, seconds, written, resample, mel_path)


def _worker_init() -> None:
    import torch  # only the worker processes of --workers use it: the parent needs no torch

    torch.set_num_threads(1)  # the processes share the cores; one thread each


def _process_star(args: Tuple[Item, Job]) -> Done | Skip:
    return process_item(*args)


def split_items(n: int, val_size: Optional[float], seed: int) -> Tuple[List[int], List[int]]:
    """(train indices, val indices), each in input order; seeded."""
    if val_size is None:
        n_val = min(100, max(1, round(0.05 * n)))
    elif 0 < val_size < 1:
        n_val = max(1, round(val_size * n))
    elif val_size >= 1 and float(val_size).is_integer():
        n_val = int(val_size)
    else:
        raise PrepareError(f"--val_size {val_size:g}: give a count of at least 1 or a fraction "
                           f"between 0 and 1")
    if n_val >= n:
        shown = "(default 5%)" if val_size is None else f"{val_size:g}"
        raise PrepareError(f"--val_size {shown}: {n} usable utterance(s) cannot give "
                           f"{n_val} for validation and keep some for training")
    order = np.random.default_rng(seed).permutation(n)
    val = sorted(order[:n_val].tolist())
    val_set = set(val)
    return [i for i in range(n) if i not in val_set], val


def _check_outputs(items: Sequence[Item], job: Job, input_path: str) -> None:
    """Refuses outputs that would overwrite the sources (or the input list) by accident."""
    out = os.path.realpath(job.out_dir)
    for name in ("train.txt", "val.txt"):
        if os.path.realpath(os.path.join(out, name)) == os.path.realpath(input_path):
            raise PrepareError(f"{input_path}: would be overwritten by the output filelist; "
                               f"choose another --out")
    if (job.resample or job.trim) and not job.in_place:
        new_wavs = os.path.join(out, "wavs")
        sources = {os.path.realpath(os.path.dirname(item.audio)) for item in items}
        if new_wavs in sources:
            raise PrepareError(f"{new_wavs}: holds source audio and would be written to; choose "
                               f"another --out (or --in_place to overwrite the sources)")


def prepare(fmt: str, input_path: str, out_dir: str, hp: HParams, *, metadata: str | None = None,
            wavs: str | None = None, val_size: float | None = None, seed: int = 1234,
            resample: bool = False, trim: bool = False, mels: bool = False,
            in_place: bool = False, jobs: int = 1, progress: bool = True) -> dict:
    """Reads a corpus, checks and processes every line, writes the filelists.

    Returns:
        dict with `train`, `val` (filelist paths), `kept` (list of Done), `skipped` (list of
        Skip), `lines` (lines read), `hours`, `written`, `resampled`, `mels`.

    Raises:
        PrepareError: bad input or output; too few usable lines for the split.
    """
    if fmt not in READERS:
        raise PrepareError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not os.path.exists(input_path):
        raise PrepareError(f"{input_path}: no such file or folder")
    items, skipped = READERS[fmt](input_path, metadata, wavs)
    items = _unique_uids(items)
    job = Job(hp, os.path.abspath(out_dir), resample, trim, mels, in_place)
    _check_outputs(items, job, input_path)
    os.makedirs(out_dir, exist_ok=True)
    if (resample or trim) and not in_place:
        os.makedirs(os.path.join(out_dir, "wavs"), exist_ok=True)
    if mels:
        os.makedirs(os.path.join(out_dir, "mels"), exist_ok=True)

    bar = dict(total=len(items), unit="utt", disable=not progress, desc="prepare")
    if jobs > 1:
        with ProcessPoolExecutor(jobs, initializer=_worker_init) as pool:
            results = list(tqdm(pool.map(_process_star, [(i, job) for i in items],
                                         chunksize=16), **bar))
    else:
        results = [process_item(item, job) for item in tqdm(items, **bar)]
    kept = [r for r in results if isinstance(r, Done)]
    skipped += [r for r in results if isinstance(r, Skip)]
    skipped.sort(key=lambda s: (s.source, s.line))
    if not kept:
        raise PrepareError(f"{input_path}: no usable utterance ({len(skipped)} skipped: "
                           f"{skipped[0] if skipped else 'the metadata is empty'})")

    train_ids, val_ids = split_items(len(kept), val_size, seed)
    paths = {}
    for name, ids in (("train", train_ids), ("val", val_ids)):
        path = os.path.join(out_dir, f"{name}.txt")
        lines = [f"{os.path.relpath(kept[i].audio, job.out_dir).replace(os.sep, '/')}|"
                 f"{kept[i].item.text}\n" for i in ids]
        Path(path).write_text("".join(lines), encoding="utf-8")
        paths[name] = path
    skipped_path = os.path.join(out_dir, "skipped.txt")
    if skipped:
        Path(skipped_path).write_text("".join(f"{s}\n" for s in skipped), encoding="utf-8")
    elif os.path.exists(skipped_path):
        os.remove(skipped_path)  # a stale list from an earlier run would mislead
    return {"train": paths["train"], "val": paths["val"], "kept": kept, "skipped": skipped,
            "lines": len(items) + sum(s.reason == "bad_line" for s in skipped),
            "n_train": len(train_ids), "n_val": len(val_ids),
            "hours": sum(d.seconds for d in kept) / 3600,
            "written": sum(d.written for d in kept), "resampled": sum(d.resampled for d in kept),
            "mels": sum(d.mel is not None for d in kept)}


def summary(result: dict, out_dir: str) -> str:
    skipped = result["skipped"]
    lines = [f"lines read: {result['lines']}; kept {len(result['kept'])} "
             f"({result['hours']:.2f} h); skipped {len(skipped)}"]
    if skipped:
        reasons = Counter(s.reason for s in skipped)
        lines.append("  skipped: " + ", ".join(f"{k} {n}" for k, n in sorted(reasons.items())))
        lines += [f"    {s}" for s in skipped[:SKIPPED_SHOWN]]
        if len(skipped) > SKIPPED_SHOWN:
            lines.append(f"    ... {len(skipped) - SKIPPED_SHOWN} more")
        lines.append(f"  every skipped line: {os.path.join(out_dir, 'skipped.txt')}")
    lines.append(f"  train: {result['train']} ({result['n_train']} lines); "
                 f"val: {result['val']} ({result['n_val']} lines)")
    if result["written"]:
        lines.append(f"  audio written: {result['written']} ({result['resampled']} resampled)")
    if result["mels"]:
        lines.append(f"  mels: {result['mels']} in {os.path.join(out_dir, 'mels')}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Make train/val filelists from a speech corpus.",
        epilog="See the module docstring (python -c 'import prepare_dataset; "
               "help(prepare_dataset)') for the formats.")
    parser.add_argument("--format", required=True, choices=FORMATS)
    parser.add_argument("--input", required=True,
                        help="corpus folder (ljspeech, ruslan, mailabs, festvox) or path|text "
                             "list (generic)")
    parser.add_argument("--out", required=True, help="folder for train.txt, val.txt, wavs/, mels/")
    parser.add_argument("--metadata",
                        help="metadata file (ljspeech, ruslan, festvox) if not the default")
    parser.add_argument("--wavs",
                        help="audio folder (ljspeech, ruslan, festvox) if not the default")
    parser.add_argument("--language", choices=sorted(LANGUAGES),
                        help="cleaners and symbol set for the text check; default: ru for "
                             "ruslan, en otherwise (--hparams text_cleaners/symbol_set win)")
    parser.add_argument("--hparams", default="",
                        help='overrides, e.g. "sampling_rate=22050,max_audio_seconds=15"')
    parser.add_argument("--val_size", type=float, default=None,
                        help="validation lines: a count, or a fraction below 1")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--resample", action="store_true",
                        help="resample files at another rate to hp.sampling_rate")
    parser.add_argument("--trim_silence", action="store_true",
                        help="cut leading/trailing silence (hp.trim_top_db)")
    parser.add_argument("--mels", action="store_true", help="save log-mels to <out>/mels/")
    parser.add_argument("--in_place", action="store_true",
                        help="overwrite the source audio instead of writing <out>/wavs/")
    parser.add_argument("--jobs", type=int, default=1, help="worker processes")
    args = parser.parse_args(argv)

    language = args.language or ("ru" if args.format == "ruslan" else "en")
    cleaners, symbol_set = LANGUAGES[language]
    try:
        base = create_hparams().replace(text_cleaners=cleaners, symbol_set=symbol_set)
        hp = create_hparams(args.hparams, base=base)
        result = prepare(args.format, args.input, args.out, hp, metadata=args.metadata,
                         wavs=args.wavs, val_size=args.val_size, seed=args.seed,
                         resample=args.resample, trim=args.trim_silence, mels=args.mels,
                         in_place=args.in_place, jobs=max(1, args.jobs))
    except ValueError as err:  # PrepareError, HParamsError
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(summary(result, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
