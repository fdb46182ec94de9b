"""Free-running decoding of texts longer than anything the model was trained on.

    python bench/long_texts.py -c output/trial_0/checkpoint_LATEST
    python bench/long_texts.py -c CKPT --factors 2,3 --windows 0,4 --n_texts 12 --threads 1

Each long text is made of validation sentences joined one after another until it is `factor`
times as long (in symbols) as the longest training text. Every text is decoded from its text
alone (batched, each item stopping on its own gate) with plain location-sensitive attention
(`--windows 0`) and with the monotonic window of `hp.attention_window` (each step attends from
one token before the previous focus to W tokens after it). Per setting the table gives:

  reading diag   diagonality of the map up to where the attention reaches the end of the text
  end reached    share of texts whose attention reached their last tokens
  gate stopped   share of texts that reached the end and whose gate then stopped the decoder
                 within RUN_ON_SHARE of the reading length (alignment_metrics.free_running_metrics)
  runs on        share that read to the end and then did not stop

The decoder may run for `--steps_factor` times the expected number of steps (from the training
set's frames per symbol), so a text that is read and stopped is never cut by max_decoder_steps.
A JSON line with every figure ends the output. Figures we measured are in bench/README.md.
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

from alignment_metrics import free_running_metrics  # noqa: E402
from checkpoint import CheckpointError, model_from_checkpoint  # noqa: E402
from commons import decoder_lengths  # noqa: E402
from devices import DeviceError, choose_device  # noqa: E402
from data_utils import DataError, TextMelDataset, read_filelist  # noqa: E402
from messages import one_line  # noqa: E402
from hparams import HParamsError  # noqa: E402
from inference import synthesize  # noqa: E402


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--checkpoint", required=True)
    parser.add_argument("--factors", default="2,3",
                        help="text lengths as multiples of the longest training text")
    parser.add_argument("--windows", default="0,4",
                        help="attention windows to compare (0 = plain attention)")
    parser.add_argument("--n_texts", type=int, default=12, help="long texts per factor")
    parser.add_argument("--steps_factor", type=float, default=2.0,
                        help="max_decoder_steps = this x the expected steps of the longest text")
    parser.add_argument("--batch_size", type=int, default=6)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = default")
    return parser.parse_args(argv)


def long_texts(sentences: List[str], target: int, n_texts: int) -> List[str]:
    """`n_texts` texts of at least `target` characters, each a run of consecutive sentences
    (starting at a different sentence each time, wrapping around)."""
    texts = []
    for start in range(n_texts):
        parts, length, i = [], 0, start
        while length < target:
            sentence = sentences[i % len(sentences)].strip()
            parts.append(sentence)
            length += len(sentence) + 1
            i += 1
        texts.append(" ".join(parts))
    return texts


def run(args: argparse.Namespace) -> Dict[str, Any]:
    if args.threads:
        torch.set_num_threads(args.threads)
    device = choose_device(args.device)
    _, hp, ckpt = model_from_checkpoint(args.checkpoint, "cpu")
    train_set = TextMelDataset(read_filelist(hp.training_files, hp.data_root), hp)
    val_entries = read_filelist(hp.validation_files, hp.data_root)
    longest = max(train_set.text_lengths)
    frames_per_symbol = (sum(train_set.mel_lengths_estimate) / sum(train_set.text_lengths))
    rows = []
    for factor in [float(f) for f in args.factors.split(",")]:
        texts = long_texts([e.text for e in val_entries], int(factor * longest), args.n_texts)
        expected = decoder_lengths(int(factor * longest * frames_per_symbol),
                                   hp.n_frames_per_step)
        max_steps = int(args.steps_factor * expected)
        for window in [int(w) for w in args.windows.split(",")]:
            model, hp_run, _ = model_from_checkpoint(
                args.checkpoint, device,
                f"attention_window={window},max_decoder_steps={max_steps}")
            start = time.perf_counter()
            results = synthesize(model, hp_run, texts, device, batch_size=args.batch_size,
                                 seed=args.seed)
            seconds = time.perf_counter() - start
            scores = [free_running_metrics(r["alignment"][None], [r["alignment"].shape[1]],
                                           [r["alignment"].shape[0]], [r["hit_max_steps"]],
                                           band=hp_run.diagonal_band) for r in results]
            items = [s["per_item"][0] for s in scores]
            rows.append({
                "factor": factor, "window": window, "texts": len(texts),
                "chars": int(np.mean([len(t) for t in texts])),
                "max_decoder_steps": max_steps,
                "reading_diagonal": float(np.mean([s["reading_diagonal_score"] for s in scores])),
                "whole_diagonal": float(np.mean([s["diagonal_score"] for s in scores])),
                "end_reached": float(np.mean([i["read_to_end"] for i in items])),
                "gate_stopped": float(np.mean([i["read_to_end"] and i["stopped"]
                                               and not i["runs_on"] for i in items])),
                "runs_on": float(np.mean([i["runs_on"] for i in items])),
                "seconds": round(seconds, 1)})
    return {"checkpoint": args.checkpoint, "step": int(ckpt.get("iteration", 0)),
            "longest_training_text": longest, "rows": rows}


def table(out: Dict[str, Any]) -> str:
    head = (f"{'factor':>6} {'window':>6} {'texts':>5} {'chars':>7} {'reading diag':>12} "
            f"{'whole diag':>10} {'end reached':>11} {'gate stopped':>12} {'runs on':>7} "
            f"{'s':>6}")
    lines = [f"{out['checkpoint']} (step {out['step']}), longest training text "
             f"{out['longest_training_text']} symbols", head]
    for r in out["rows"]:
        lines.append(f"{r['factor']:>6g} {r['window'] or 'off':>6} {r['texts']:>5} "
                     f"{r['chars']:>7} {r['reading_diagonal']:>12.3f} "
                     f"{r['whole_diagonal']:>10.3f} {r['end_reached']:>11.0%} "
                     f"{r['gate_stopped']:>12.0%} {r['runs_on']:>7.0%} {r['seconds']:>6}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        out = run(args)
    except (CheckpointError, DataError, DeviceError, HParamsError, ValueError) as err:
        print(f"long_texts.py: error: {one_line(err, limit=1000)}", file=sys.stderr)
        return 2
    print(table(out))
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
