"""Shared fixtures: tiny hparams and a small generated corpus of wavs with a filelist.

`make_corpus(tmp_path, n, sr=22050)` writes `n` short wavs under `<tmp_path>/wavs/` and a filelist
`<tmp_path>/<name>.txt` whose paths are relative to the filelist's folder, and returns a `Corpus`.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import pytest
import soundfile as sf

# Tests import the flat modules (audio, data_utils, ...) from the repository root.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from hparams import create_hparams  # noqa: E402

# Tiny models run faster on one thread, and subprocesses (train.py, torchrun) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
import torch  # noqa: E402
torch.set_num_threads(1)

SENTENCES = (
    "Printing, in the only sense with which we are at present concerned.",
    "The earliest book printed with movable types.",
    "A very fine book.",
    "It is a mark of the art.",
    "He said no!",
    "We have seen that the letters were Gothic.",
    "The first books were printed in black letter.",
    "Yes.",
)


class Corpus(NamedTuple):
    root: Path  # the folder holding the filelist
    filelist: Path
    wavs: List[Path]  # absolute paths, in filelist order
    texts: List[str]
    sr: int


def synth_utterance(text: str, sr: int, seed: int = 0,
                    seconds_per_char: float = 0.02) -> np.ndarray:
    """float32 audio in [-0.5, 0.5]: one short tone per character (silence for spaces), so the
    length follows the text and the mel has structure."""
    rng = np.random.default_rng(seed)
    step = int(seconds_per_char * sr)
    t = np.arange(step) / sr
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.004)
    parts = [np.zeros(int(0.03 * sr))]
    for ch in text:
        if ch == " ":
            parts.append(np.zeros(step))
        else:
            freq = 200.0 + 35.0 * (ord(ch.lower()) % 64)
            parts.append(0.4 * np.sin(2 * np.pi * freq * t) * fade)
    parts.append(np.zeros(int(0.03 * sr)))
    wav = np.concatenate(parts) + 0.001 * rng.standard_normal(sum(len(p) for p in parts))
    return np.clip(wav, -0.5, 0.5).astype(np.float32)


def write_corpus(root, n: int, sr: int = 22050, name: str = "train",
                 texts: Optional[Sequence[str]] = None, subtype: str = "PCM_16",
                 speakers: Optional[Sequence[str]] = None, seed: int = 0) -> Corpus:
    """Writes `n` wavs and a `path|text[|speaker]` filelist; texts cycle through SENTENCES."""
    root = Path(root)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    texts = list(texts) if texts is not None else [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    wavs, lines = [], []
    for i in range(n):
        rel = f"wavs/{name}_{i:03d}.wav"
        sf.write(root / rel, synth_utterance(texts[i], sr, seed + i), sr, subtype=subtype)
        wavs.append((root / rel).resolve())
        fields = [rel, texts[i]] + ([speakers[i]] if speakers is not None else [])
        lines.append("|".join(fields))
    filelist = root / f"{name}.txt"
    filelist.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Corpus(root, filelist, wavs, texts[:n], sr)


@pytest.fixture
def make_corpus():
    """The `write_corpus` function: `make_corpus(tmp_path, 4, sr=22050)`."""
    return write_corpus


@pytest.fixture
def tiny_hp():
    """create_hparams("preset=tiny"): 20 mel channels, batch 4, no mel cache."""
    return create_hparams("preset=tiny")
