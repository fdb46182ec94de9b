"""Helpers the tests share: tiny hparams and models, random batches, generated corpora, and the
trainer's command line.

- `tiny`, `without_dropout`, `seeded_model`, `dropout_free_model`: the tiny preset, the same
  hparams with every dropout at 0, a model built under a seed, and one that computes eval mode's
  function in train mode (where cuDNN's LSTM has a backward).
- `make_batch`: a `data_utils.Batch` of random ids and mels whose padding is random too.
- `grads_of_everything`: gradients of a loss that reaches every output of the model.
- `step_run`: what `train.train_step` reads of a run.
- `lively_model`, `gate_trajectories`, `threshold_with_distinct_stops`: a batch whose items stop
  decoding at different steps.
- `synth_speech`, `write_corpus`, `write_token_corpus`: generated audio and filelists (one tone
  per character; the fixtures of conftest.py call them).
- `corpus_hparams`, `train_command`, `wait_for`: running `train.py` as a user does, and waiting
  on what it writes.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import soundfile as sf
import torch

from commons import decoder_lengths
from data_utils import Batch
from hparams import HParams, create_hparams
from model import Tacotron2
from text.symbols import get_symbols

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")


# ---------------------------------------------------------------------------- models and batches
def tiny(overrides: str = "") -> HParams:
    """create_hparams("preset=tiny[,overrides]")."""
    return create_hparams("preset=tiny" + ("," + overrides if overrides else ""))


# Every dropout probability of the model: the encoder's, the prenet's (on at inference too), the
# two decoder LSTMs' and the postnet's.
DROPOUTS = tuple(f.name for f in dataclasses.fields(HParams)
                 if f.name.startswith("p_") and f.name.endswith("_dropout"))


def without_dropout(hp: HParams) -> HParams:
    """`hp` with every dropout at 0."""
    return hp.replace(**{name: 0.0 for name in DROPOUTS})


def seeded_model(hp: HParams, seed: int = 0) -> Tacotron2:
    torch.manual_seed(seed)
    return Tacotron2(hp)


def dropout_free_model(hp: HParams, seed: int = 0) -> Tacotron2:
    """A seeded model of `without_dropout(hp)` that computes eval mode's function in train mode.

    For tests that compare gradients: eval mode would switch the dropouts off, but cuDNN's LSTM
    has no backward in eval mode. Here every dropout is 0 and every module trains, except
    BatchNorm, which normalises with its running statistics as in eval mode (in train mode the
    gradient of a convolution's bias before it would be rounding noise).
    """
    model = seeded_model(without_dropout(hp), seed).train()
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()
    return model


def make_batch(hp: HParams, text_lengths: Sequence[int], mel_lengths: Sequence[int], seed: int = 0,
               extra_text: int = 0, extra_frames: int = 0) -> Batch:
    """A `Batch` of random ids and mels in the given row order; the padding is random too.

    Args:
        text_lengths, mel_lengths: per item; the widths are their maxima (plus `extra_text`,
            `extra_frames`), the frames rounded up to a multiple of `n_frames_per_step`.
    Returns:
        Batch(text (B, N), text_lengths (B,), mel (B, n_mel, T), gate (B, T), mel_lengths (B,)),
        `order` None; the gate target is 1 from frame mel_length - 1 on, as the collate's.
    """
    g = torch.Generator().manual_seed(seed)
    r = hp.n_frames_per_step
    n_max = max(text_lengths) + extra_text
    t_max = decoder_lengths(max(mel_lengths) + extra_frames, r) * r
    n_symbols = len(get_symbols(hp.symbol_set))
    text = torch.randint(1, n_symbols, (len(text_lengths), n_max), generator=g)
    mel = torch.randn(len(text_lengths), hp.n_mel_channels, t_max, generator=g)
    lengths = torch.tensor(list(mel_lengths))
    gate = (torch.arange(t_max)[None, :] >= (lengths[:, None] - 1)).float()  # (B, T)
    return Batch(text, torch.tensor(list(text_lengths)), mel, gate, lengths)


def step_run(hp: HParams, device: torch.device = torch.device("cpu"), step: int = 0
             ) -> SimpleNamespace:
    """The fields of `train.Run` that `train.train_step` reads: hp, device, step, world size 1
    and a logger."""
    return SimpleNamespace(hp=hp, device=device, step=step, world_size=1,
                           logger=logging.getLogger("tests"))


def grads_of_everything(model: torch.nn.Module, out) -> Tuple[torch.Tensor, ...]:
    """Gradients of every parameter for a loss that reaches mel, postnet, gate and alignments
    (summed in float32, so that autocast outputs compare too)."""
    total = sum(t.float().square().sum() for t in out[:3]) + out.alignments.float().square().sum()
    return torch.autograd.grad(total, list(model.parameters()))


# ---------------------------------------------------------------------------- stopping
def lively_model(hp: HParams, seed: int = 3) -> Tacotron2:
    """A model in eval mode with livelier dynamics and gate, whose items stop at different steps."""
    model = seeded_model(hp, seed=seed).eval()
    decoder = model.decoder
    with torch.no_grad():
        for weight in (decoder.attention_rnn.weight_ih, decoder.attention_rnn.weight_hh,
                       decoder.decoder_rnn.weight_ih, decoder.decoder_rnn.weight_hh):
            weight.mul_(3.0)
        decoder.gate_layer.linear_layer.weight.mul_(5.0)
    return model


def gate_trajectories(model: Tacotron2, batch: Batch) -> List[torch.Tensor]:
    """Per item, the max gate probability of each step (over its r frames), decoded alone without
    stopping: a list of double (steps,)."""
    r = model.n_frames_per_step
    model.decoder.gate_threshold = 1.0  # never stops
    out = []
    for i, n in enumerate(batch.text_lengths.tolist()):
        alone = model.inference(batch.text[i:i + 1, :n], batch.text_lengths[i:i + 1])
        out.append(torch.sigmoid(alone.gate[0].double()).view(-1, r).max(1).values)
    return out


def threshold_with_distinct_stops(trajectories: List[torch.Tensor]
                                  ) -> Tuple[float, List[Optional[int]], float]:
    """A gate threshold giving the items different stop steps, as far as possible from every gate
    value: (threshold, each item's stop step or None, the distance to the nearest gate value)."""
    values = torch.cat(trajectories).unique().sort().values
    best = None
    for lo, hi in zip(values[:-1].tolist(), values[1:].tolist()):
        theta = (lo + hi) / 2
        stops = []
        for traj in trajectories:
            above = (traj > theta).nonzero()
            stops.append(int(above[0]) + 1 if len(above) else None)
        margin = min(float((traj - theta).abs().min()) for traj in trajectories)
        key = (len(set(stops)), margin)
        if best is None or key > best[0]:
            best = (key, theta, stops)
    return best[1], best[2], best[0][1]


# ---------------------------------------------------------------------------- generated audio
LETTERS = "abcdefgh"  # the token corpus's alphabet: each letter a pitch of its own


def letter_frequency(ch: str) -> float:
    """The tone of a character: eight pitches on a log scale from 250 Hz to 4 kHz; a to h get one
    each, every other character shares one with a letter (its code point modulo 8)."""
    index = (ord(ch.lower()) - ord("a")) % len(LETTERS)
    return float(250.0 * (16.0 ** (index / (len(LETTERS) - 1))))


def _tone(freq: float, seconds: float, sr: int, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    wave = 0.3 * np.sin(2 * np.pi * freq * t) + 0.1 * np.sin(2 * np.pi * 2 * freq * t)
    ramp = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.01)  # 10 ms fades: no clicks
    return (wave * ramp + 0.002 * rng.standard_normal(len(t))).astype(np.float32)


def synth_speech(text: str, sr: int, rng: np.random.Generator,
                 char_seconds: Tuple[float, float] = (0.05, 0.11),
                 space_seconds: Tuple[float, float] = (0.04, 0.07),
                 edge_seconds: float = 0.05) -> np.ndarray:
    """float32 audio in [-0.5, 0.5]: silence, one tone per character (`letter_frequency`, a
    duration drawn from `char_seconds`), a pause for each space, silence.

    A model learns to align such audio to its text in a few hundred steps; nothing here simulates
    attention.
    """
    parts = [np.zeros(int(edge_seconds * sr), np.float32)]
    for ch in text:
        if ch == " ":
            parts.append(np.zeros(int(rng.uniform(*space_seconds) * sr), np.float32))
        else:
            parts.append(_tone(letter_frequency(ch), rng.uniform(*char_seconds), sr, rng))
    parts.append(np.zeros(int(edge_seconds * sr), np.float32))
    return np.concatenate(parts)


# ---------------------------------------------------------------------------- generated corpora
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


def write_corpus(root, n: int, sr: int = 22050, name: str = "train",
                 texts: Optional[Sequence[str]] = None, subtype: str = "PCM_16",
                 speakers: Optional[Sequence[str]] = None, seed: int = 0) -> Corpus:
    """Writes `n` short wavs under `<root>/wavs/` and a `path|text[|speaker]` filelist
    `<root>/<name>.txt` with paths relative to its folder; texts cycle through SENTENCES.

    Every character lasts 20 ms, so an utterance's length follows its text.
    """
    root = Path(root)
    (root / "wavs").mkdir(parents=True, exist_ok=True)
    texts = list(texts) if texts is not None else [SENTENCES[i % len(SENTENCES)] for i in range(n)]
    wavs, lines = [], []
    for i in range(n):
        rel = f"wavs/{name}_{i:03d}.wav"
        audio = synth_speech(texts[i], sr, np.random.default_rng(seed + i),
                             char_seconds=(0.02, 0.02), space_seconds=(0.02, 0.02),
                             edge_seconds=0.03)
        sf.write(root / rel, audio, sr, subtype=subtype)
        wavs.append((root / rel).resolve())
        fields = [rel, texts[i]] + ([speakers[i]] if speakers is not None else [])
        lines.append("|".join(fields))
    filelist = root / f"{name}.txt"
    filelist.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return Corpus(root, filelist, wavs, texts[:n], sr)


def write_token_corpus(folder: str, n_train: int = 48, n_val: int = 8, seed: int = 0,
                       sr: int = 22050, min_len: int = 4, max_len: int = 12,
                       shuffle_text: bool = False) -> Tuple[str, str]:
    """Writes wavs of random words over LETTERS and `train.txt` / `val.txt` filelists into
    `folder`: a corpus whose alignment a tiny model learns in seconds.

    Args:
        min_len, max_len: letters per utterance.
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
        sf.write(os.path.join(folder, name), synth_speech(text, sr, rng), sr, subtype="PCM_16")
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


# ---------------------------------------------------------------------------- the trainer
def corpus_hparams(train_list: str, val_list: str, extra: str = "") -> str:
    """The tiny preset on a token corpus (basic cleaners), plus `extra` ("a=1,b=2")."""
    base = (f"preset=tiny,training_files={train_list},validation_files={val_list},"
            f"text_cleaners=[basic_cleaners]")
    return base + ("," + extra if extra else "")


def train_command(folder, hparams: str, *more: str, run_name: str = "trial_0",
                  log: str = "logs", script: str = TRAIN) -> List[str]:
    """`python train.py` writing its run under `<folder>/output/<run_name>`, its logs under
    `<folder>/<log>` and its TensorBoard events under `<folder>/runs`."""
    folder = Path(folder)
    return [sys.executable, script, f"--output_directory={folder / 'output'}",
            f"--log_directory={folder / log}", f"--tensorboard_directory={folder / 'runs'}",
            f"--run_name={run_name}", f"--hparams={hparams}", *more]


def wait_for(condition: Callable[[], bool], seconds: float = 120.0, proc=None) -> bool:
    """Polls `condition` every 0.1 s: True once it holds; False when `seconds` have passed or
    `proc` (a Popen-like object, optional) has ended first."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc is not None and proc.poll() is not None:
            return condition()
        time.sleep(0.1)
    return False
