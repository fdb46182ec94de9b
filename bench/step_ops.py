"""Operations and dtype casts per decoder step of one training step, by precision and loop.

    python bench/step_ops.py                       # tiny model on the CPU, fp32 and bf16, eager and static loop
    python bench/step_ops.py --device cuda --preset default --who

The decoder runs hundreds of steps per batch, so what one step costs is what a training step
costs; under bf16/fp16 autocast every cast is one more kernel per step. Each configuration is
profiled (torch.profiler) for a forward and backward pass at two mel lengths, T and 2T frames
(r = 1); the difference divided by T is the cost of one decoder step, with everything done once
per batch (encoder, postnet, casts of weights made before the loop) cancelled out:

  ops/step      aten operators per decoder step, forward and backward (nested operators count too)
  casts/step    `aten::_to_copy` per decoder step: casts of activations, states and gradients
  kernels/step  CUDA kernels per decoder step (on CUDA only)

`--who` lists the casts per step by the shape of the tensor cast, to find what is cast at every
step that could be cast once per batch. A table, then one JSON line.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any, Dict, List

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the flat modules when run as `python bench/...`
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from commons import autocast_context  # noqa: E402
from devices import DeviceError, choose_device, synchronize  # noqa: E402
from hparams import HParamsError, create_hparams  # noqa: E402
from model import Tacotron2  # noqa: E402
from text.symbols import get_symbols  # noqa: E402


def _batch(hp, frames: int, batch_size: int, device: torch.device):
    """Random token ids and log-mel-like frames; every item `frames` long (no padding)."""
    g = torch.Generator().manual_seed(0)
    n_symbols = len(get_symbols(hp.symbol_set))
    tokens = max(4, frames // 4)
    text = torch.randint(1, n_symbols, (batch_size, tokens), generator=g)
    mel = torch.randn(batch_size, hp.n_mel_channels, frames, generator=g) * 2 - 5
    lengths = torch.full((batch_size,), tokens, dtype=torch.long)
    return text.to(device), lengths, mel.to(device), torch.full((batch_size,), frames,
                                                                  dtype=torch.long).to(device)


def profile_step(hp, device: torch.device, frames: int, batch_size: int) -> Dict[str, Any]:
    """Operator, cast and kernel counts of one forward + backward pass at `frames` frames."""
    torch.manual_seed(0)
    model = Tacotron2(hp).to(device).train()
    text, text_lengths, mel, mel_lengths = _batch(hp, frames, batch_size, device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda"
                                           else [])
    with profile(activities=activities, record_shapes=True) as prof:
        with autocast_context(hp.precision, device):
            out = model(text, text_lengths, mel, mel_lengths)
        (out.mel_postnet.float().square().mean() + out.alignments.float().square().mean()
         ).backward()
        synchronize(device)
    ops = casts = kernels = 0
    cast_shapes: Dict[str, int] = collections.Counter()
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            kernels += 1
        elif event.name.startswith("aten::"):
            ops += 1
            if event.name == "aten::_to_copy":
                casts += 1
                cast_shapes[str(event.input_shapes[0] if event.input_shapes else [])] += 1
    return {"ops": ops, "casts": casts, "kernels": kernels, "cast_shapes": cast_shapes}


def per_step(hp, device: torch.device, frames: int, batch_size: int) -> Dict[str, Any]:
    short = profile_step(hp, device, frames, batch_size)
    long = profile_step(hp, device, 2 * frames, batch_size)
    row = {k: (long[k] - short[k]) / frames for k in ("ops", "casts", "kernels")}
    shapes = {k: (long["cast_shapes"][k] - short["cast_shapes"][k]) / frames
              for k in set(long["cast_shapes"]) | set(short["cast_shapes"])}
    row["casts_by_shape"] = {k: round(v, 2) for k, v in sorted(shapes.items(), key=lambda kv: -kv[1])
                             if v >= 0.5}
    return row


def main(argv: List[str] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--hparams", default="", help="more overrides, name=value,...")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--frames", type=int, default=40, help="T: the short length profiled")
    parser.add_argument("--batch_size", type=int, default=2)
    parser.add_argument("--who", action="store_true", help="list the casts per step by shape")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        device = choose_device(args.device)
        rows = []
        for graphs in (False, True):
            for precision in ("fp32", "bf16"):
                hp = create_hparams(f"preset={args.preset},n_frames_per_step=1,"
                                    f"precision={precision},cuda_graphs={graphs}"
                                    + (f",{args.hparams}" if args.hparams else ""))
                row = per_step(hp, device, args.frames, args.batch_size)
                rows.append({"loop": "static" if graphs else "eager", "precision": precision,
                             **row})
    except (DeviceError, HParamsError) as err:
        print(f"step_ops.py: error: {err}", file=sys.stderr)
        return 2
    print(f"{'loop':<8}{'precision':<11}{'ops/step':>10}{'casts/step':>12}{'kernels/step':>14}")
    for row in rows:
        kernels = f"{row['kernels']:.1f}" if device.type == "cuda" else "-"
        print(f"{row['loop']:<8}{row['precision']:<11}{row['ops']:>10.1f}{row['casts']:>12.1f}"
              f"{kernels:>14}")
        if args.who:
            for shape, count in row["casts_by_shape"].items():
                print(f"    {count:5.2f} casts/step of a tensor shaped {shape}")
    print(json.dumps({"bench": "step_ops", "device": str(device), "preset": args.preset,
                      "frames": args.frames, "batch_size": args.batch_size, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
