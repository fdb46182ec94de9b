"""Plots the guided-attention weight w(step) of the default hparams.

    python scripts/plot_guided_schedule.py [--hparams="guide_loss_weight=5.0"] [--max_step=120000]

Writes docs/guided_attention_schedule.png (or --output).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run from anywhere

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from hparams import create_hparams  # noqa: E402
from loss_function import guided_attention_weight  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hparams", default="", help="overrides, name=value,name=value")
    parser.add_argument("--max_step", type=int, default=120000)
    parser.add_argument("--output", default=str(ROOT / "docs" / "guided_attention_schedule.png"))
    args = parser.parse_args(argv)
    hp = create_hparams(args.hparams)
    steps = np.arange(0, args.max_step + 1, 100)
    weights = np.array([guided_attention_weight(int(s), hp) for s in steps])

    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.plot(steps, weights, color="tab:blue", label="w(step)")
    ax.axvline(hp.guide_decay_start, color="gray", linestyle="--", linewidth=1,
               label=f"fade starts ({hp.guide_decay_start})")
    end = hp.guide_decay_start + hp.guide_decay_steps
    if hp.guide_decay_steps > 0 and end <= args.max_step:
        ax.axvline(end, color="gray", linestyle=":", linewidth=1, label=f"weight 0 ({end})")
    ax.axhline(hp.guide_loss_weight * hp.guide_lowbound, color="tab:orange", linestyle=":",
               linewidth=1, label="floor before the fade: guide_loss_weight x guide_lowbound")
    # symlog: the early weights (~20) and the late ones (~0.1, then 0) both stay readable.
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_ylim(0, 1.5 * max(float(weights.max()), 1e-3))
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("guided-attention weight")
    ax.set_title(f"w = {hp.guide_loss_weight:g} x max({hp.guide_lowbound:g}, "
                 f"{hp.guide_scale:g} x {hp.guide_decay:g}^step) x fade(step)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.output, dpi=100)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
