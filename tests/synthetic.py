"""A generated corpus in which every letter is a distinct sound, for training tests.

Each letter of a short random text becomes a tone of its own frequency lasting a random 50-110 ms,
so a model can learn the alignment from a few hundred utterances in seconds. Nothing here is
simulated attention: the tests train the real model on these wavs.
"""
from __future__ import annotations

import os
from typing import List, Tuple

import numpy as np
import soundfile as sf

LETTERS = "abcdefgh"


def _tone(freq: float, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2 * freq * t)
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    return (wave * ramp + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def letter_frequency(letter: str) -> float:
    """Tones spaced on a log scale from 250 Hz to 4 kHz, one per letter."""
    index = LETTERS.index(letter)
    return float(250.0 * (16.0 ** (index / (len(LETTERS) - 1))))


def synth_text(text: str, sr: int, rng: np.random.Generator) -> np.ndarray:
    parts = [np.zeros(int(0.05 * sr), np.float32)]
    for ch in text:
        if ch == " ":
            parts.append(np.zeros(int(rng.uniform(0.04, 0.07) * sr), np.float32))
        else:
            parts.append(_tone(letter_frequency(ch), rng.uniform(0.05, 0.11), sr, rng))
    parts.append(np.zeros(int(0.05 * sr), np.float32))
    return np.concatenate(parts)


def write_token_corpus(folder: str, n_train: int = 48, n_val: int = 8, seed: int = 0,
                       sr: int = 22050, min_len: int = 4, max_len: int = 12,
                       shuffle_text: bool = False) -> Tuple[str, str]:
    """Writes wavs and `train.txt` / `val.txt` filelists into `folder`.

    Args:
        shuffle_text: pair every wav with another utterance's text (a corpus that cannot align).
    Returns:
        (train filelist path, validation filelist path)
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "wavs"), exist_ok=True)
    texts: List[str] = []
    for _ in range(n_train + n_val):
        n = int(rng.integers(min_len, max_len + 1))
        words, current = [], ""
        for _ in range(n):
            current += LETTERS[int(rng.integers(len(LETTERS)))]
            if len(current) >= 3 and rng.random() < 0.4:
                words.append(current)
                current = ""
        if current:
            words.append(current)
        texts.append(" ".join(words))
    lines = []
    for i, text in enumerate(texts):
        name = f"wavs/utt_{i:04d}.wav"
        sf.write(os.path.join(folder, name), synth_text(text, sr, rng), sr, subtype="PCM_16")
        lines.append((name, text))
    if shuffle_text:
        order = rng.permutation(len(lines))
        lines = [(lines[i][0], lines[j][1]) for i, j in enumerate(order)]
    train_path = os.path.join(folder, "train.txt")
    val_path = os.path.join(folder, "val.txt")
    with open(train_path, "w", encoding="utf-8") as f:
        f.writelines(f"{p}|{t}\n" for p, t in lines[:n_train])
    with open(val_path, "w", encoding="utf-8") as f:
        f.writelines(f"{p}|{t}\n" for p, t in lines[n_train:])
    return train_path, val_path
