"""How close a checkpoint's speech is to the recordings: word error rate and MCD-DTW.

    python bench/quality.py output/trial_0/checkpoint_LATEST filelists/demo_en_val.txt
    python bench/quality.py CKPT metadata_val.txt --max_items 20 --out quality.png --device cuda

For the first `--max_items` utterances of FILELIST, three versions of each are scored against
the recording:

  recording     the wav itself (as training loads it): its WER is the recogniser's own floor on
                this voice; its MCD is 0 by definition
  griffin-lim   the recording's mel through Griffin-Lim (`--griffin_lim_iters`) and back: the
                best a model can score when its mels are heard through Griffin-Lim
  model         the checkpoint's free-running synthesis of the text (each item stops on its own
                gate), heard through the same Griffin-Lim

WER: pocketsphinx's en-us model on the audio, against the text after the checkpoint's cleaners
(numbers spelled out), lower case without punctuation (quality.normalize_transcript); the
overall figure is all errors over all words. English only; without pocketsphinx and jiwer the
table shows MCD only. MCD: quality.mcd_dtw in dB (c1..c13 of the natural-log mel, along a DTW
path). The `hum` column is the MCD of a flat spectrum (the recording's mean log-mel at every
frame): a model scoring near it has learned the average spectrum and nothing else.

`--out` writes a PNG of recorded and synthesized mels side by side for the first
`--plot_items` items. A table, then one JSON line with every figure ("quality" holds the
model's quality.QualityResult as validation would log it).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402

import quality  # noqa: E402
from audio import griffin_lim, wav_for_mel  # noqa: E402
from checkpoint import model_from_checkpoint  # noqa: E402
from devices import choose_device  # noqa: E402
from data_utils import read_filelist  # noqa: E402
from inference import synthesize  # noqa: E402
from messages import one_line  # noqa: E402
from text import clean_text  # noqa: E402

VERSIONS = ("recording", "griffin_lim", "model")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("filelist", help="audio_path|text[|speaker] lines (the recordings)")
    parser.add_argument("--max_items", type=int, default=8, help="first N utterances")
    parser.add_argument("--griffin_lim_iters", type=int, default=60)
    parser.add_argument("--out", default=None, help="PNG of recorded vs synthesized mels")
    parser.add_argument("--plot_items", type=int, default=3, help="items drawn in --out")
    parser.add_argument("--device", default=None, help="default: CUDA when available")
    parser.add_argument("--data_root", default="",
                        help="folder of relative audio paths; default: the filelist's folder")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="prenet dropout seed")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    return parser.parse_args(argv)


def _wer(wavs: List[np.ndarray], texts: List[str], hp, notice: Optional[str]) -> Dict[str, Any]:
    if notice is not None:
        return {"wer": None, "item_wer": [None] * len(wavs), "heard": [None] * len(wavs)}
    scored = quality.word_error_rate(wavs, texts, hp.sampling_rate)
    return {"wer": scored.wer, "item_wer": scored.item_wer, "heard": scored.hypotheses}


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.max_items < 1:
        raise ValueError(f"--max_items must be at least 1, got {args.max_items}")
    device = choose_device(args.device)
    model, hp, ckpt = model_from_checkpoint(args.checkpoint, device)
    entries = read_filelist(args.filelist, args.data_root)[:args.max_items]
    notice = quality.wer_notice_for(hp.symbol_set)
    spoken = [clean_text(e.text, hp.text_cleaners) for e in entries]
    seconds: Dict[str, float] = {}

    start = time.perf_counter()
    wavs = [wav_for_mel(e.audio_path, hp) for e in entries]
    ref_mels = [quality.mel_of_wav(w, hp) for w in wavs]
    recording = _wer(wavs, spoken, hp, notice)
    recording["mcd"] = [0.0] * len(entries)
    hum = [quality.mcd_dtw(quality.flat_mel(m), m) for m in ref_mels]
    seconds["recording"] = time.perf_counter() - start

    start = time.perf_counter()
    resynthesized = [quality.resynthesize(m, hp, args.griffin_lim_iters) for m in ref_mels]
    gl = _wer([w for w, _ in resynthesized], spoken, hp, notice)
    gl["mcd"] = [quality.mcd_dtw(mel, ref) for (_, mel), ref in zip(resynthesized, ref_mels)]
    seconds["griffin_lim"] = time.perf_counter() - start

    start = time.perf_counter()
    results = synthesize(model, hp, [e.text for e in entries], device,
                         batch_size=args.batch_size, seed=args.seed)
    seconds["synthesis"] = time.perf_counter() - start
    start = time.perf_counter()
    mels = [r["mel"] for r in results]
    synth = _wer([griffin_lim(m, hp, n_iters=args.griffin_lim_iters) for m in mels], spoken, hp,
                 notice)
    synth["mcd"] = [quality.mcd_dtw(m, ref) for m, ref in zip(mels, ref_mels)]
    seconds["model"] = time.perf_counter() - start

    figures = {"recording": recording, "griffin_lim": gl, "model": synth}
    items = []
    for i, entry in enumerate(entries):
        item = {"name": os.path.splitext(os.path.basename(entry.audio_path))[0],
                "text": spoken[i], "frames": int(ref_mels[i].shape[1]),
                "model_frames": int(mels[i].shape[1]),
                "hit_max_steps": bool(results[i]["hit_max_steps"]), "hum_mcd": hum[i]}
        for version in VERSIONS:
            item[f"{version}_wer"] = figures[version]["item_wer"][i]
            item[f"{version}_mcd"] = figures[version]["mcd"][i]
            item[f"{version}_heard"] = figures[version]["heard"][i]
        items.append(item)
    references = {"self_mcd": 0.0, "griffin_lim_mcd": float(np.mean(gl["mcd"])),
                  "flat_mcd": float(np.mean(hum)), "griffin_lim_wer": gl["wer"],
                  "items": len(entries), "griffin_lim_items": len(entries),
                  "griffin_lim_iters": args.griffin_lim_iters}
    result = quality.QualityResult(
        mcd=synth["mcd"], mean_mcd=float(np.mean(synth["mcd"])), wer=synth["wer"],
        item_wer=synth["item_wer"] if synth["wer"] is not None else None,
        references=references,
        n_coefficients=quality.cepstral_order(quality.DEFAULT_MCD_COEFFICIENTS, hp.n_mel_channels),
        wer_notice=notice)
    out = {"bench": "quality", "checkpoint": args.checkpoint, "step": int(ckpt.get("iteration", 0)),
           "filelist": args.filelist, "items": len(entries), "device": str(device),
           "griffin_lim_iters": args.griffin_lim_iters, "wer_notice": notice,
           "overall": {v: {"wer": figures[v]["wer"], "mcd": float(np.mean(figures[v]["mcd"]))}
                       for v in VERSIONS},
           "hum_mcd": float(np.mean(hum)), "per_item": items, "quality": result.to_dict(),
           "seconds": {k: round(v, 2) for k, v in seconds.items()}, "png": None}
    if args.out:
        shown = min(args.plot_items, len(entries))
        out["png"] = draw_mels(args.out, ref_mels[:shown], mels[:shown], items[:shown])
    return out


def draw_mels(path: str, recorded: List[np.ndarray], synthesized: List[np.ndarray],
              items: List[Dict[str, Any]]) -> str:
    """One row per item: the recorded mel and the synthesized one on the same colour scale."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = max(1, len(recorded))
    fig = Figure(figsize=(12, 2.6 * rows), dpi=100)
    canvas = FigureCanvasAgg(fig)  # no pyplot: no global backend or display
    axes = fig.subplots(rows, 2, squeeze=False)
    for row, (ref, mel, item) in enumerate(zip(recorded, synthesized, items)):
        low, high = float(min(ref.min(), mel.min())), float(max(ref.max(), mel.max()))
        width = max(ref.shape[1], mel.shape[1])  # the same time axis for both
        wer = item["model_wer"]
        for ax, image, title in (
                (axes[row, 0], ref, f"{item['name']}: recording ({ref.shape[1]} frames)"),
                (axes[row, 1], mel, f"model ({mel.shape[1]} frames): MCD "
                                    f"{item['model_mcd']:.2f} dB"
                                    + (f", WER {wer:.0%}" if wer is not None else ""))):
            ax.imshow(image, aspect="auto", origin="lower", interpolation="none",
                      vmin=low, vmax=high, cmap="magma")
            ax.set_xlim(-0.5, width - 0.5)
            ax.set_title(title, fontsize=9)
            ax.set_ylabel("mel band")
    for ax in axes[-1]:
        ax.set_xlabel("frame")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.print_png(path)
    return path


def _cell(wer: Optional[float], mcd: float) -> str:
    return f"{'-' if wer is None else f'{wer:.0%}':>5} {mcd:>6.2f}"


def table(out: Dict[str, Any]) -> str:
    lines = [f"{out['checkpoint']} (step {out['step']}) on {out['filelist']}: {out['items']} "
             f"items, Griffin-Lim {out['griffin_lim_iters']} iterations; WER and MCD (dB) "
             f"against the recording; hum = MCD of a flat spectrum"]
    if out["wer_notice"]:
        lines.append(out["wer_notice"])
    lines.append(f"{'item':<14} {'recording':>12} {'griffin-lim':>12} {'model':>12} "
                 f"{'hum':>6}  model frames")
    lines.append(f"{'':<14} {'WER':>5} {'MCD':>6} {'WER':>5} {'MCD':>6} {'WER':>5} {'MCD':>6}")
    for item in out["per_item"]:
        cells = " ".join(_cell(item[f"{v}_wer"], item[f"{v}_mcd"]) for v in VERSIONS)
        stop = " (hit max_decoder_steps)" if item["hit_max_steps"] else ""
        lines.append(f"{item['name'][:14]:<14} {cells} {item['hum_mcd']:>6.2f}  "
                     f"{item['model_frames']} / {item['frames']}{stop}")
    overall = " ".join(_cell(out["overall"][v]["wer"], out["overall"][v]["mcd"])
                       for v in VERSIONS)
    lines.append(f"{'overall':<14} {overall} {out['hum_mcd']:>6.2f}")
    lines.append("seconds: " + ", ".join(f"{k} {v}" for k, v in out["seconds"].items())
                 + (f"; mels drawn in {out['png']}" if out["png"] else ""))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except (ValueError, OSError) as err:  # CheckpointError, DataError, AudioError, ... are here
        print(f"quality.py: error: {one_line(err, limit=1000)}", file=sys.stderr)
        return 2
    print(table(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
