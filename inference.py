"""Text to mel to wav with a trained checkpoint.

    python inference.py -c output/trial_0/checkpoint_LATEST --text "Hello world."
    python inference.py -c output/trial_0/checkpoint_LATEST --text_file sentences.txt
    python inference.py -c output/trial_0/checkpoint_LATEST --filelist filelists/demo_en_val.txt
    python inference.py -c tacotron2_statedict.pt --hparams="preset=nvidia"   # NVIDIA file

For every sentence, `--output_dir` (default `inference_output`) receives:
  * `<name>.wav`: Griffin-Lim audio at hp.sampling_rate, 16-bit (for listening, not for quality);
  * `<name>.npy`: the postnet mel, float32 (n_mel, frames), natural-log compressed, exactly the
    layout and scale of NVIDIA's mels, so WaveGlow or HiFi-GAN checkpoints trained on NVIDIA mels
    take it as is;
  * `<name>.png`: the mel and the attention map (true grid) with its alignment scores.

Sentences are decoded in batches; each item stops on its own gate. An item that runs to
max_decoder_steps is reported by name with its alignment scores: it is the usual sign of a failed
alignment. The text cleaners and the symbol set come from the checkpoint's hparams.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

import plotting
from alignment_metrics import alignment_metrics, free_running_metrics
from audio import MEL_CLIP_VALUE, griffin_lim, save_wav
from checkpoint import CheckpointError, model_from_checkpoint
from commons import decoder_lengths
from data_utils import DataError, read_filelist
from devices import DeviceError, choose_device
from hparams import HParams, HParamsError
from messages import one_line
from run_files import LATEST
from text import ArpabetError, UnknownCharacterError, UnknownCleanerError, text_to_sequence


class InferenceError(ValueError):
    """Bad input to inference (an empty text, an unreadable sentence file); one line."""


def _encode(text: str, hp: HParams, where: str) -> List[int]:
    """Symbol ids of one sentence; `where` names it in error messages."""
    if not text.strip():
        raise InferenceError(f"{where}: empty text; give at least one character to speak")
    try:
        ids = text_to_sequence(text, hp.text_cleaners, hp.symbol_set,
                               drop_unknown=hp.drop_unknown_chars)
    except UnknownCharacterError as err:
        raise UnknownCharacterError(f"{where}: {err}", err.characters, err.text) from None
    if not ids:
        raise InferenceError(f"{where}: text {text!r} has no symbol left after cleaning")
    return ids


def synthesize(model: torch.nn.Module, hp: HParams, texts: Sequence[str], device: Any,
               batch_size: int = 8, seed: Optional[int] = None,
               names: Optional[Sequence[str]] = None) -> List[Dict[str, Any]]:
    """Decodes sentences into mels, in batches; each item stops on its own gate.

    Texts are sorted by length so that a batch holds sentences of similar length (less padding);
    the results come back in the order of `texts`.

    Args:
        model: a `Tacotron2` in eval mode on `device`.
        hp: the hparams the model was built with (cleaners, symbol set, r, diagonal band).
        texts: sentences to speak.
        device: where to run the model.
        batch_size: sentences decoded together.
        seed: seeds torch's generator first; the prenet's dropout (on at inference) makes the
            output random otherwise.
        names: optional names of the sentences (output file stems), one per text.

    Returns:
        One dict per text: `name` (when `names` is given), `text`, `mel` float32 ndarray
        (n_mel, frames) (the postnet mel, trimmed to the item's own length, a multiple of r),
        `alignment` float32 ndarray (T, N) (T decoder steps, N tokens), `hit_max_steps` bool,
        `scores` (`alignment_metrics.alignment_metrics` of the alignment, plus
        `reading_diagonal_score`: the same up to where the attention reached the end of the
        text, and `runs_on`: it read to the end and then did not stop).

    Raises:
        InferenceError: an empty text.
        UnknownCharacterError: a character outside the symbol set (unless hp.drop_unknown_chars).
        ArpabetError: a bad phoneme in curly braces.
    """
    if names is not None and len(names) != len(texts):
        raise ValueError(f"synthesize: {len(names)} names for {len(texts)} texts")
    if batch_size < 1:
        raise ValueError(f"synthesize: batch_size must be >= 1, got {batch_size}")
    labels = list(names) if names is not None else [f"text {i + 1}" for i in range(len(texts))]
    sequences = [_encode(text, hp, label) for text, label in zip(texts, labels)]
    if seed is not None:
        torch.manual_seed(seed)  # seeds CUDA generators too
    r = hp.n_frames_per_step
    order = sorted(range(len(texts)), key=lambda i: len(sequences[i]), reverse=True)
    results: List[Optional[Dict[str, Any]]] = [None] * len(texts)
    model.eval()
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        lengths = torch.tensor([len(sequences[i]) for i in chunk], dtype=torch.long)
        ids = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.long)  # 0 = pad symbol
        for row, i in enumerate(chunk):
            ids[row, :len(sequences[i])] = torch.tensor(sequences[i], dtype=torch.long)
        with torch.inference_mode():
            out = model.inference(ids.to(device), lengths.to(device))
        mel_postnet = out.mel_postnet.float().cpu().numpy()  # (B, n_mel, T_max)
        alignments = out.alignments.float().cpu().numpy()  # (B, steps, N_max)
        mel_lengths = out.mel_lengths.cpu().tolist()
        hit = out.hit_max_steps.cpu().tolist()
        for row, i in enumerate(chunk):
            frames = int(mel_lengths[row])
            steps = decoder_lengths(frames, r)  # the decoder steps that made these frames
            alignment = np.ascontiguousarray(alignments[row, :steps, :len(sequences[i])],
                                             dtype=np.float32)
            item: Dict[str, Any] = {
                "text": texts[i],
                "mel": np.ascontiguousarray(mel_postnet[row, :, :frames], dtype=np.float32),
                "alignment": alignment,
                "hit_max_steps": bool(hit[row]),
                "scores": _scores(alignment, bool(hit[row]), hp),
            }
            if names is not None:
                item["name"] = names[i]
            results[i] = item
    return [item for item in results if item is not None]


def _scores(alignment: np.ndarray, hit_max_steps: bool, hp: HParams) -> Dict[str, Any]:
    """Whole-map metrics, plus how well the text was read and whether the decoder ran on."""
    scores = alignment_metrics(alignment, band=hp.diagonal_band)
    T, N = alignment.shape
    free = free_running_metrics(alignment[None], [N], [T], [hit_max_steps],
                                band=hp.diagonal_band)
    item = free["per_item"][0]
    scores.update(reading_diagonal_score=free["reading_diagonal_score"],
                  reading_steps=item["reading_steps"], runs_on=item["runs_on"])
    return scores


def vocode_griffin_lim(mel: np.ndarray, hp: HParams, n_iters: int) -> np.ndarray:
    """Griffin-Lim audio of a mel (n_mel, frames): (frames - 1) * hop_length samples.

    A mel of a few frames (a gate that fired at once) is too short for the STFT's reflect
    padding, so it is extended with silent frames (log 1e-5) for the phase search and the
    audio cut back to its own length.
    """
    frames = mel.shape[1]
    min_frames = hp.filter_length // hp.hop_length + 2  # > filter_length // 2 samples
    if frames < min_frames:
        silence = np.full((mel.shape[0], min_frames - frames), np.log(MEL_CLIP_VALUE), mel.dtype)
        mel = np.concatenate([mel, silence], axis=1)  # (n_mel, frames) -> (n_mel, min_frames)
    return griffin_lim(mel, hp, n_iters=n_iters)[:(frames - 1) * hp.hop_length]


def _score_text(scores: Dict[str, Any]) -> str:
    return (f"diagonal_score {scores['diagonal_score']:.3f}, reading "
            f"{scores['reading_diagonal_score']:.3f}, focus_score {scores['focus_score']:.3f}"
            + (", runs on after the text" if scores["runs_on"] else ""))


def _read_text_file(path: str) -> List[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = [line.strip() for line in f]
    except (OSError, UnicodeDecodeError) as err:
        raise InferenceError(f"{path}: cannot read sentences: {one_line(err)}") from None
    texts = [line for line in lines if line]
    if not texts:
        raise InferenceError(f"{path}: empty text; the file holds no sentence")
    return texts


def _read_filelist(path: str) -> Tuple[List[str], List[str]]:
    """(names, texts) of a `audio_path|text[|speaker]` filelist; names are the audio basenames.

    The audio files need not exist: only their names are used.
    """
    entries = read_filelist(path, check_exists=False)
    names = [os.path.splitext(os.path.basename(e.audio_path))[0] for e in entries]
    return names, [e.text for e in entries]


def _unique(names: List[str]) -> List[str]:
    """Appends _2, _3, ... to repeated names so that no output overwrites another."""
    seen: Dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if seen[name] == 1 else f"{name}_{seen[name]}")
    return out


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="inference.py", description="Text to mel (.npy), Griffin-Lim wav and attention plot.")
    parser.add_argument("-c", "--checkpoint", required=True,
                        help=f"checkpoint file, run/{LATEST}, or an NVIDIA state_dict")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="one sentence")
    source.add_argument("--text_file", help="UTF-8 file, one sentence per line")
    source.add_argument("--filelist", help="audio_path|text lines; audio basenames name outputs")
    parser.add_argument("-o", "--output_dir", default="inference_output")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--griffin_lim_iters", type=int, default=60)
    parser.add_argument("--gate_threshold", type=float, default=None,
                        help="override the checkpoint's; > 1 never stops on the gate")
    parser.add_argument("--max_decoder_steps", type=int, default=None,
                        help="override the checkpoint's")
    parser.add_argument("--attention_window", type=int, default=None,
                        help="keep attention monotonic: each step attends from 1 token before "
                             "the previous focus to N tokens after it (long texts); 0 = off")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed for the prenet's dropout (on at inference)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    parser.add_argument("--hparams", default=None,
                        help="overrides, name=value,...; NVIDIA files carry no hparams, so give "
                             "the model's here (e.g. preset=nvidia)")
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error(f"--batch_size must be >= 1, got {args.batch_size}")
    if args.griffin_lim_iters < 0:
        parser.error(f"--griffin_lim_iters must be >= 0, got {args.griffin_lim_iters}")
    return args


def _overrides(args: argparse.Namespace) -> Optional[str]:
    parts = [args.hparams] if args.hparams else []
    if args.gate_threshold is not None:
        parts.append(f"gate_threshold={args.gate_threshold!r}")
    if args.max_decoder_steps is not None:
        parts.append(f"max_decoder_steps={args.max_decoder_steps}")
    if args.attention_window is not None:
        parts.append(f"attention_window={args.attention_window}")
    return ",".join(parts) or None


def run(args: argparse.Namespace) -> int:
    """The CLI's work once arguments are parsed; errors propagate as exceptions."""
    if args.filelist is not None:
        names, texts = _read_filelist(args.filelist)
    elif args.text_file is not None:
        texts = _read_text_file(args.text_file)
        names = [f"sentence_{i + 1:03d}" for i in range(len(texts))]
    else:
        if not args.text.strip():
            raise InferenceError("--text: empty text; give at least one character to speak")
        texts, names = [args.text.strip()], ["sentence_001"]
    names = _unique(names)

    device = choose_device(args.device)
    model, hp, ckpt = model_from_checkpoint(args.checkpoint, device, _overrides(args))
    print(f"{ckpt['path']}: step {ckpt.get('iteration', '?')}, preset {hp.preset}, "
          f"{hp.symbol_set} symbols, cleaners {','.join(hp.text_cleaners)}, device {device}, "
          f"gate_threshold {hp.gate_threshold}, max_decoder_steps {hp.max_decoder_steps}"
          + (f", attention window {hp.attention_window}" if hp.attention_window else ""))

    start = time.perf_counter()
    results = synthesize(model, hp, texts, device, batch_size=args.batch_size, seed=args.seed,
                         names=names)
    mel_seconds = time.perf_counter() - start

    os.makedirs(args.output_dir, exist_ok=True)
    seconds_per_frame = hp.hop_length / hp.sampling_rate
    audio_seconds = 0.0
    gl_seconds = 0.0
    failed = []
    for item in results:
        stem = os.path.join(args.output_dir, item["name"])
        np.save(stem + ".npy", item["mel"])
        start = time.perf_counter()
        wav = vocode_griffin_lim(item["mel"], hp, args.griffin_lim_iters)
        gl_seconds += time.perf_counter() - start
        save_wav(stem + ".wav", wav, hp.sampling_rate)
        seconds = item["mel"].shape[1] * seconds_per_frame
        audio_seconds += seconds
        scores = item["scores"]
        stop = "hit max_decoder_steps" if item["hit_max_steps"] else "gate"
        plotting.mel_and_alignment_png(
            stem + ".png", item["mel"], item["alignment"],
            f"{item['name']}: {_score_text(scores)}, stop: {stop}\n{item['text'][:100]}",
            hp.diagonal_band)
        print(f"{item['name']}: {seconds:.2f} s, {item['mel'].shape[1]} frames, "
              f"{item['alignment'].shape[0]} steps, {item['alignment'].shape[1]} tokens, "
              f"stop: {stop}, {_score_text(scores)} -> {stem}.wav")
        if item["hit_max_steps"]:
            failed.append(item)

    for item in failed:
        print(f"warning: {item['name']} reached max_decoder_steps={hp.max_decoder_steps} without "
              f"its gate firing ({_score_text(item['scores'])}): the usual sign of a failed "
              f"alignment", file=sys.stderr)
    mel_rtf = audio_seconds / max(mel_seconds, 1e-9)
    gl_rtf = audio_seconds / max(gl_seconds, 1e-9)
    print(f"{len(results)} sentence(s), {audio_seconds:.2f} s of audio in {args.output_dir}; "
          f"real-time factor (audio s / wall s): mel generation {mel_rtf:.2f} "
          f"({mel_seconds:.2f} s), Griffin-Lim {gl_rtf:.2f} ({gl_seconds:.2f} s)")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status (2 for a bad input, with a one-line message)."""
    args = _parse_args(argv)
    try:
        return run(args)
    except (ArpabetError, CheckpointError, DataError, DeviceError, HParamsError, InferenceError,
            UnknownCharacterError, UnknownCleanerError) as err:
        print(f"inference.py: error: {one_line(err, limit=1000)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
