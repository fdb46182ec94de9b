"""How fast does attention align? The demo preset on the demo corpus, guided attention on and off.

    python bench/alignment_speed.py                       # a few minutes: 2 min per run
    python bench/alignment_speed.py --max_minutes 20      # the laptop target: 20 minutes per run
    python bench/alignment_speed.py --runs guided --language ru --max_minutes 10

Each run is a real `train.py` run (subprocess) with free-running decoding of every validation
item at every validation. The table gives the step and the wall time at which the validation
diagonality first reached 0.3, 0.5 and 0.7, teacher-forced (TF) and free-running (FR: each item
decoded from its text alone), and at the end of the run the free-running diagonality and the share
of items whose gate stopped them within 20% of their true length. A PNG of the curves and a JSON
line follow. The figures we measured are in bench/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THRESHOLDS = (0.3, 0.5, 0.7)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--language", choices=("en", "ru"), default="en")
    parser.add_argument("--runs", default="guided,unguided",
                        help="comma-separated: guided (the preset's guidance), unguided (weight 0)")
    parser.add_argument("--max_minutes", type=float, default=2.0, help="wall time per run")
    parser.add_argument("--max_steps", type=int, default=0, help="0 = the preset's max_steps")
    parser.add_argument("--iters_per_validation", type=int, default=100)
    parser.add_argument("--hparams", default="", help="more overrides for every run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--output_dir", default=os.path.join("bench_output", "alignment_speed"))
    return parser.parse_args(argv)


def run_training(args: argparse.Namespace, name: str) -> Dict[str, Any]:
    """One train.py run; returns its diagnostics records and start time."""
    preset = args.preset if args.language == "en" else f"{args.preset}_ru"
    hparams = [f"preset={preset}", f"iters_per_validation={args.iters_per_validation}",
               "free_running_every=1", "free_running_items=1000", "iters_per_log=50",
               "red_flag_action=warn"]
    if args.max_steps:
        hparams.append(f"max_steps={args.max_steps}")
    if name == "unguided":
        hparams.append("guide_loss_weight=0")
    if args.hparams:
        hparams.append(args.hparams)
    out = os.path.abspath(args.output_dir)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--output_directory={out}/output",
           f"--log_directory={out}/logs/{name}", f"--tensorboard_directory={out}/runs",
           f"--run_name={name}", f"--hparams={','.join(hparams)}",
           f"--max_minutes={args.max_minutes}"]
    run_dir = os.path.join(out, "output", name)
    log = os.path.join(run_dir, "diagnostics.jsonl")
    if os.path.exists(log):
        os.remove(log)  # a fresh curve; checkpoints of an earlier run are left alone
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 3):
        raise SystemExit(f"{name}: train.py exited {proc.returncode}: {proc.stderr[-2000:]}")
    with open(log, encoding="utf-8") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {"name": name, "started": started, "records": records}


def first_reach(records: List[Dict[str, Any]], started: float, key: str,
                threshold: float) -> Optional[Dict[str, float]]:
    for record in records:
        value = (record["metrics"]["diagonal_score"] if key == "tf"
                 else (record.get("free_running") or {}).get("diagonal_score"))
        if value is not None and value >= threshold:
            return {"step": record["step"], "minutes": (record["time"] - started) / 60}
    return None


def summarise(run: Dict[str, Any]) -> Dict[str, Any]:
    records, started = run["records"], run["started"]
    last = records[-1] if records else {}
    free = last.get("free_running") or {}
    return {
        "run": run["name"],
        "steps": last.get("step", 0),
        "minutes": (last.get("time", started) - started) / 60,
        "reach": {f"{key}_{t}": first_reach(records, started, key, t)
                  for key in ("tf", "fr") for t in THRESHOLDS},
        "final_tf_diagonal": last.get("metrics", {}).get("diagonal_score"),
        "final_fr_diagonal": free.get("diagonal_score"),
        "final_fr_stopped_near_length": free.get("near_length_share"),
        "best_fr_diagonal": max(((r.get("free_running") or {}).get("diagonal_score", 0.0)
                                 for r in records), default=None),
    }


def print_table(results: List[Dict[str, Any]]) -> None:
    def cell(hit):
        return "-" if hit is None else f"{hit['step']} / {hit['minutes']:.1f}m"

    head = ["run", "steps", "min"] + [f"{k.upper()}>={t}" for k in ("tf", "fr") for t in THRESHOLDS]
    head += ["final TF", "final FR", "FR stop ok"]
    rows = []
    for r in results:
        def fmt(x, pct=False):
            return "-" if x is None else (f"{x:.0%}" if pct else f"{x:.2f}")
        rows.append([r["run"], str(r["steps"]), f"{r['minutes']:.1f}"]
                    + [cell(r["reach"][f"{k}_{t}"]) for k in ("tf", "fr") for t in THRESHOLDS]
                    + [fmt(r["final_tf_diagonal"]), fmt(r["final_fr_diagonal"]),
                       fmt(r["final_fr_stopped_near_length"], pct=True)])
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    for line in [head] + rows:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths)))


def plot(runs: List[Dict[str, Any]], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for run, color in zip(runs, ("tab:blue", "tab:orange", "tab:green")):
        steps = [r["step"] for r in run["records"]]
        ax.plot(steps, [r["metrics"]["diagonal_score"] for r in run["records"]], color=color,
                label=f"{run['name']} teacher-forced")
        ax.plot(steps, [(r.get("free_running") or {}).get("diagonal_score", float("nan"))
                        for r in run["records"]], color=color, linestyle="--",
                label=f"{run['name']} free-running")
    for t in THRESHOLDS:
        ax.axhline(t, color="grey", linewidth=0.5)
    ax.set_xlabel("step")
    ax.set_ylabel("validation diagonal_score")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    runs = [run_training(args, name.strip()) for name in args.runs.split(",") if name.strip()]
    results = [summarise(run) for run in runs]
    print(f"alignment speed: preset {args.preset}, language {args.language}, "
          f"{args.max_minutes} min per run, cells are 'step / wall minutes' of first reach")
    print_table(results)
    png = os.path.join(args.output_dir, "alignment_speed.png")
    plot(runs, png)
    print(f"curves: {png}")
    print(json.dumps({"benchmark": "alignment_speed", "preset": args.preset,
                      "language": args.language, "max_minutes": args.max_minutes,
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
