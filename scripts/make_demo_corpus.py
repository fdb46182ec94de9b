"""Regenerates the shipped demo corpus: espeak-ng speech for our own English and Russian sentences.

Run from the repository root (needs the `espeak-ng` command):

    python scripts/make_demo_corpus.py

It reads `scripts/demo_sentences_en.txt` and `scripts/demo_sentences_ru.txt` (one sentence per
line, numbers spelled out so the transcript says what espeak-ng says) and writes

    demo_corpus/en/en_0001.flac ...      22050 Hz, mono, 16-bit FLAC
    demo_corpus/ru/ru_0001.flac ...
    filelists/demo_en_train.txt, filelists/demo_en_val.txt
    filelists/demo_ru_train.txt, filelists/demo_ru_val.txt

Filelist lines are `../demo_corpus/en/en_0001.flac|Transcript.`: paths relative to the
filelist's own folder. One voice per language; each utterance gets a small seeded change of rate
and pitch so that durations and speaking rates vary a little, as they do with a human reader.
Leading and trailing silence are cut to a fixed 0.1 s so every file starts and ends alike.

The output is reproducible for a given `--seed` and espeak-ng version (made with 1.51).
Options: `--languages en ru`, `--seed 1234`, `--val_size 12`, `--corpus_dir`, `--filelist_dir`.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import List, NamedTuple, Set, Tuple

import numpy as np
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
SAMPLING_RATE = 22050
EDGE_SILENCE_S = 0.1  # silence kept before the first and after the last audible sample
SILENCE_DB = -60.0  # below the file's peak counts as silence (espeak-ng's pauses are digital zeros)
PEAK = 0.7  # peak level after normalisation: loud enough, far from clipping


class Voice(NamedTuple):
    espeak_voice: str
    rate_wpm: int  # espeak-ng -s: words per minute
    rate_jitter: int  # +- words per minute, drawn per utterance
    pitch: int  # espeak-ng -p: 0-99
    pitch_jitter: int
    cleaners: List[str]
    symbol_set: str


VOICES = {
    "en": Voice("en-us", 160, 15, 50, 8, ["english_cleaners"], "english"),
    "ru": Voice("ru", 150, 15, 50, 8, ["russian_cleaners"], "russian"),
}


def read_sentences(path: Path) -> List[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    sentences = [line for line in lines if line and not line.startswith("#")]
    for number, sentence in enumerate(sentences, 1):
        if "|" in sentence or "+" in sentence or any(ch.isdigit() for ch in sentence):
            # '|' breaks the filelist; espeak-ng reads '+' and digits its own way.
            raise ValueError(f"{path}: sentence {number} has '|', '+' or a digit: {sentence!r}")
    return sentences


def synthesize(text: str, voice: Voice, rate: int, pitch: int, workdir: str) -> np.ndarray:
    """espeak-ng -> float32 mono wav at SAMPLING_RATE."""
    out = os.path.join(workdir, "utt.wav")
    # "--" so a sentence starting with '-' is never read as an option.
    subprocess.run(["espeak-ng", "-v", voice.espeak_voice, "-s", str(rate), "-p", str(pitch),
                    "-w", out, "--", text], check=True, capture_output=True)
    wav, sr = sf.read(out, dtype="float32", always_2d=True)
    wav = wav.mean(axis=1)
    if sr != SAMPLING_RATE:  # espeak-ng 1.51 voices give 22050 Hz; other builds may not
        import librosa  # imported here: only needed when espeak-ng gives another rate

        wav = librosa.resample(wav, orig_sr=sr, target_sr=SAMPLING_RATE, res_type="soxr_hq")
    return wav.astype(np.float32)


def fix_edges(wav: np.ndarray) -> np.ndarray:
    """Cuts leading/trailing silence, then pads both ends with exactly EDGE_SILENCE_S of zeros."""
    peak = float(np.max(np.abs(wav)))
    if peak == 0.0:
        raise ValueError("espeak-ng produced silence")
    loud = np.nonzero(np.abs(wav) > peak * 10 ** (SILENCE_DB / 20))[0]
    speech = wav[loud[0]:loud[-1] + 1] * (PEAK / peak)
    pad = np.zeros(int(round(EDGE_SILENCE_S * SAMPLING_RATE)), dtype=np.float32)
    return np.concatenate([pad, speech, pad]).astype(np.float32)


def check_transcripts(sentences: List[str], voice: Voice, source: Path) -> None:
    """Every transcript must pass the language's cleaners with no character outside its set."""
    try:
        from text import unknown_characters
    except ImportError:
        print("note: text/ not importable, transcripts not checked against the symbol set")
        return
    for number, sentence in enumerate(sentences, 1):
        unknown = unknown_characters(sentence, voice.cleaners, voice.symbol_set)
        if unknown:
            raise ValueError(f"{source}: sentence {number} has characters outside the "
                             f"{voice.symbol_set} set: {unknown} in {sentence!r}")


def utterance_plan(lang: str, n: int, seed: int, val_size: int
                   ) -> Tuple[np.ndarray, np.ndarray, Set[int]]:
    """(espeak-ng rate per utterance, pitch per utterance, 0-based indices of the val items)."""
    voice = VOICES[lang]
    # One generator per language, so adding Russian sentences never changes the English audio.
    rng = np.random.default_rng([seed, list(VOICES).index(lang)])
    rates = voice.rate_wpm + rng.integers(-voice.rate_jitter, voice.rate_jitter + 1, n)
    pitches = voice.pitch + rng.integers(-voice.pitch_jitter, voice.pitch_jitter + 1, n)
    val_ids = set(rng.choice(n, size=val_size, replace=False).tolist())
    return rates, pitches, val_ids


def make_language(lang: str, corpus_dir: Path, filelist_dir: Path, seed: int,
                  val_size: int) -> None:
    voice = VOICES[lang]
    source = REPO / "scripts" / f"demo_sentences_{lang}.txt"
    sentences = read_sentences(source)
    check_transcripts(sentences, voice, source)
    rates, pitches, val_ids = utterance_plan(lang, len(sentences), seed, val_size)
    out_dir = corpus_dir / lang
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    train_lines, val_lines, seconds = [], [], 0.0
    with tempfile.TemporaryDirectory() as workdir:
        for i, sentence in enumerate(sentences):
            wav = fix_edges(synthesize(sentence, voice, int(rates[i]), int(pitches[i]), workdir))
            path = out_dir / f"{lang}_{i + 1:04d}.flac"
            sf.write(path, wav, SAMPLING_RATE, subtype="PCM_16", format="FLAC",
                     compression_level=1.0)  # smallest files: the corpus ships in git
            seconds += len(wav) / SAMPLING_RATE
            rel = os.path.relpath(path, filelist_dir).replace(os.sep, "/")
            (val_lines if i in val_ids else train_lines).append(f"{rel}|{sentence}\n")
    filelist_dir.mkdir(parents=True, exist_ok=True)
    (filelist_dir / f"demo_{lang}_train.txt").write_text("".join(train_lines), encoding="utf-8")
    (filelist_dir / f"demo_{lang}_val.txt").write_text("".join(val_lines), encoding="utf-8")
    print(f"{lang}: {len(sentences)} utterances ({len(train_lines)} train, {len(val_lines)} val), "
          f"{seconds / 60:.1f} min, in {out_dir}")


def main(argv: List[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--languages", nargs="+", default=list(VOICES), choices=list(VOICES))
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--val_size", type=int, default=12)
    parser.add_argument("--corpus_dir", type=Path, default=REPO / "demo_corpus")
    parser.add_argument("--filelist_dir", type=Path, default=REPO / "filelists")
    args = parser.parse_args(argv)
    if shutil.which("espeak-ng") is None:
        print("error: espeak-ng not found; install it (apt install espeak-ng)", file=sys.stderr)
        return 1
    sys.path.insert(0, str(REPO))  # for text/ when run as scripts/make_demo_corpus.py
    for lang in args.languages:
        make_language(lang, args.corpus_dir.resolve(), args.filelist_dir.resolve(), args.seed,
                      args.val_size)
    return 0


if __name__ == "__main__":
    sys.exit(main())
