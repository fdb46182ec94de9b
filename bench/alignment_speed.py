"""How fast does attention align? A preset on a corpus, guided attention on and off.

    python bench/alignment_speed.py                       # 2 min per run, the demo corpus
    python bench/alignment_speed.py --max_minutes 20      # the laptop target: 20 minutes per run
    python bench/alignment_speed.py --runs guided --language ru --max_minutes 10
    python bench/alignment_speed.py --corpus festvox-ru --max_minutes 30 --threads 1
    python bench/alignment_speed.py --training_files data/x/train.txt \
        --validation_files data/x/val.txt

Corpora:
  demo        (default) the preset's own filelists: the shipped espeak demo corpus.
  festvox-ru  a real Russian voice, Debian's festvox-ru package (`apt-get install festvox-ru`;
              620 utterances of one male speaker, 16 kHz; licence in docs/real_speech.md). The
              first run prepares it with prepare_dataset.py (`--format festvox --language ru
              --resample --trim_silence`, at the runs' sampling_rate and max_audio_seconds) into
              `<output_dir>/data/`, and later runs reuse that folder. `--corpus_dir` points at
              another copy of the voice (e.g. unpacked with `dpkg-deb -x`).
  `--training_files/--validation_files` (and `--data_root`): any filelists; they win over
  `--corpus`.

Each run is a real `train.py` run (subprocess) with free-running decoding of every validation
item at every validation. The table gives the step and the wall time at which the validation
diagonality first reached 0.3, 0.5 and 0.7, teacher-forced (TF) and free-running (FR: each item
decoded from its text alone), the first validation meeting the target (FR diagonality >= 0.7
with >= 80% of the items stopped by their gate within 20% of their true length), and at the end
of the run the diagonalities and that share ("stop ok"). When train.py records a reading-only
free-running diagonality (`free_running.reading_diagonal_score`), it is shown too. Every run
starts cold (its run folder, mel cache included, is removed first), so the minutes include what a
first run pays. A PNG of the curves and a JSON line follow. Our figures are in bench/README.md.

Exit status: 0 done, 2 bad input (one line on stderr), 1 a training run failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # the flat modules (hparams) when run as `python bench/...`
    sys.path.insert(0, ROOT)

from run_files import RunFolder, ValidationRecord  # noqa: E402

THRESHOLDS = (0.3, 0.5, 0.7)
TARGET_DIAGONAL = 0.7  # the real-voice target: FR diagonality ...
TARGET_STOP_SHARE = 0.8  # ... with this share of items stopping near their true length
FESTVOX_RU_DIR = "/usr/share/festival/voices/russian/msu_ru_nsh_clunits"
CORPORA = ("demo", "festvox-ru")


class BenchError(ValueError):
    """Bad input: one line for stderr, exit status 2."""


class RunFailed(RuntimeError):
    """A train.py run exited with an error: one line for stderr, exit status 1."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--language", choices=("en", "ru"), default=None,
                        help="text set: en by default, ru for --corpus festvox-ru; ru runs "
                             "PRESET_ru when there is one, else PRESET with the Russian cleaners")
    parser.add_argument("--corpus", choices=CORPORA, default="demo")
    parser.add_argument("--corpus_dir", default=FESTVOX_RU_DIR,
                        help="the festvox-ru voice folder (etc/txt.done.data, wav/)")
    parser.add_argument("--training_files", help="a training filelist instead of --corpus")
    parser.add_argument("--validation_files", help="its validation filelist")
    parser.add_argument("--data_root", help="folder for the filelists' relative audio paths")
    parser.add_argument("--runs", default="guided,unguided",
                        help="comma-separated: guided (the preset's guidance), unguided (weight 0)")
    parser.add_argument("--max_minutes", type=float, default=2.0, help="wall time per run")
    parser.add_argument("--max_steps", type=int, default=0, help="0 = the preset's max_steps")
    parser.add_argument("--iters_per_validation", type=int, default=100)
    parser.add_argument("--hparams", default="", help="more overrides for every run")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0 = torch's default")
    parser.add_argument("--output_dir", default=os.path.join("bench_output", "alignment_speed"))
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------- set-up
def language_of(args: argparse.Namespace) -> str:
    return args.language or ("ru" if args.corpus == "festvox-ru" else "en")


def base_hparams(args: argparse.Namespace) -> List[str]:
    """The overrides every run shares (before the corpus's filelists)."""
    from hparams import PRESETS

    hparams = []
    if language_of(args) == "ru" and not args.preset.endswith("_ru"):
        if f"{args.preset}_ru" in PRESETS:
            hparams.append(f"preset={args.preset}_ru")
        else:  # a preset without a Russian twin: the same model with the Russian text set
            hparams += [f"preset={args.preset}", "text_cleaners=[russian_cleaners]",
                        "symbol_set=russian"]
    else:
        hparams.append(f"preset={args.preset}")
    hparams += [f"iters_per_validation={args.iters_per_validation}", "free_running_every=1",
                "free_running_items=1000", "iters_per_log=50", "red_flag_action=warn"]
    if args.max_steps:
        hparams.append(f"max_steps={args.max_steps}")
    if args.hparams:
        hparams.append(args.hparams)
    return hparams


def check_hparams(overrides: List[str]):
    """The effective hparams of the shared overrides; a bad override is a BenchError."""
    from hparams import HParamsError, create_hparams

    try:
        return create_hparams(",".join(overrides))
    except HParamsError as err:
        raise BenchError(f"--hparams: {err}") from None


def prepare_festvox(args: argparse.Namespace, hp) -> List[str]:
    """Prepares festvox-ru once into <output_dir>/data; returns the filelist overrides.

    The folder is named by the settings that change its audio (sample rate, length limits), so
    runs with other settings get their own copy; a finished copy (its prepared.json holds the
    same prepare_dataset.py arguments) is reused.
    """
    corpus = args.corpus_dir
    if not os.path.isfile(os.path.join(corpus, "etc", "txt.done.data")):
        raise BenchError(f"{corpus}: no festvox-ru voice here (etc/txt.done.data missing); "
                         f"install it (apt-get install festvox-ru) or point --corpus_dir at an "
                         f"unpacked copy")
    name = (f"festvox_ru_{hp.sampling_rate}hz_{hp.min_audio_seconds:g}-"
            f"{hp.max_audio_seconds:g}s")
    out = os.path.abspath(os.path.join(args.output_dir, "data", name))
    marker = os.path.join(out, "prepared.json")  # written last: its presence means complete
    command = [sys.executable, os.path.join(ROOT, "prepare_dataset.py"), "--format", "festvox",
               "--input", corpus, "--out", out, "--language", "ru", "--resample",
               "--trim_silence", "--hparams",
               f"sampling_rate={hp.sampling_rate},min_audio_seconds={hp.min_audio_seconds},"
               f"max_audio_seconds={hp.max_audio_seconds},trim_top_db={hp.trim_top_db}"]
    settings = command[1:]  # the interpreter may differ between runs; the settings may not
    try:
        with open(marker, encoding="utf-8") as f:
            done = json.load(f).get("settings") == settings
    except (OSError, ValueError):
        done = False
    if not done:
        print(f"preparing festvox-ru into {out} ...", flush=True)
        proc = subprocess.run(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
            raise BenchError(f"prepare_dataset.py exited {proc.returncode}: {last}")
        # the summary without its list of skipped lines (they are in <out>/skipped.txt)
        print("\n".join(line for line in proc.stdout.strip().splitlines()
                        if not line.startswith("    ")), flush=True)
        with open(marker, "w", encoding="utf-8") as f:
            json.dump({"settings": settings}, f)
    return [f"training_files={os.path.join(out, 'train.txt')}",
            f"validation_files={os.path.join(out, 'val.txt')}"]


def corpus_hparams(args: argparse.Namespace, hp) -> List[str]:
    """The filelist overrides for the chosen corpus (none for the preset's own)."""
    if args.training_files or args.validation_files:
        if not (args.training_files and args.validation_files):
            raise BenchError("--training_files and --validation_files go together")
        for path in (args.training_files, args.validation_files):
            if not os.path.isfile(path):
                raise BenchError(f"{path}: no such filelist")
        out = [f"training_files={os.path.abspath(args.training_files)}",
               f"validation_files={os.path.abspath(args.validation_files)}"]
        if args.data_root:
            out.append(f"data_root={os.path.abspath(args.data_root)}")
        return out
    if args.data_root:
        raise BenchError("--data_root goes with --training_files/--validation_files")
    if args.corpus == "festvox-ru":
        return prepare_festvox(args, hp)
    return []


# ---------------------------------------------------------------------------------- the runs
def run_training(args: argparse.Namespace, name: str, shared: List[str]) -> Dict[str, Any]:
    """One train.py run; returns its diagnostics records and start time."""
    hparams = list(shared)
    if name == "unguided":
        hparams.append("guide_loss_weight=0")
    out = os.path.abspath(args.output_dir)
    env = dict(os.environ)
    if args.threads:
        env["OMP_NUM_THREADS"] = str(args.threads)
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), f"--output_directory={out}/output",
           f"--log_directory={out}/logs/{name}", f"--tensorboard_directory={out}/runs",
           f"--run_name={name}", f"--hparams={','.join(hparams)}",
           f"--max_minutes={args.max_minutes}"]
    run_dir = os.path.join(out, "output", name)
    # A cold start: an earlier run's mel cache would make this one look faster, and its
    # diagnostics.jsonl would mix two curves.
    shutil.rmtree(run_dir, ignore_errors=True)
    print(f"{name}: train.py --hparams={','.join(hparams)} --max_minutes={args.max_minutes}",
          flush=True)
    started = time.time()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
    if proc.returncode not in (0, 3):  # 3: a red-flag stop, a result like any other
        last = (proc.stderr.strip().splitlines() or ["(no message)"])[-1]
        raise RunFailed(f"{name}: train.py exited {proc.returncode}: {last} "
                        f"(log: {out}/logs/{name})")
    records = RunFolder(run_dir).records(strict=False)
    return {"name": name, "started": started, "finished": time.time(), "records": records}


def _or_nan(value: Optional[float]) -> float:
    return float("nan") if value is None else float(value)


def _or0(value: Optional[float]) -> float:
    """A figure a record may lack or hold as null (no target lengths) counts as 0."""
    return 0.0 if value is None else float(value)


def _fr(record: ValidationRecord, name: str) -> Optional[float]:
    """A free-running figure of the record; None when the validation did not decode."""
    free = record.free_running
    return None if free is None else getattr(free, name)


def _value(record: ValidationRecord, key: str) -> Optional[float]:
    return record.diagonal_score if key == "tf" else _fr(record, "diagonal_score")


def _at(record: ValidationRecord, started: float) -> Dict[str, float]:
    return {"step": record.step, "minutes": (record.time - started) / 60}


def first_reach(records: List[ValidationRecord], started: float, key: str,
                threshold: float) -> Optional[Dict[str, float]]:
    for record in records:
        value = _value(record, key)
        if value is not None and value >= threshold:
            return _at(record, started)
    return None


def first_target(records: List[ValidationRecord], started: float) -> Optional[Dict[str, float]]:
    """The first validation with FR diagonality >= 0.7 and >= 80% of items stopping near length."""
    for record in records:
        if (_or0(_fr(record, "diagonal_score")) >= TARGET_DIAGONAL
                and _or0(_fr(record, "near_length_share")) >= TARGET_STOP_SHARE):
            return _at(record, started)
    return None


def summarise(run: Dict[str, Any]) -> Dict[str, Any]:
    records, started = run["records"], run["started"]
    last = records[-1] if records else None
    frees = [r.free_running for r in records if r.free_running is not None]

    def final(name: str) -> Optional[float]:
        return None if last is None else _fr(last, name)

    return {
        "run": run["name"],
        "steps": last.step if last else 0,
        "minutes": ((last.time if last else started) - started) / 60,
        "wall_minutes": (run["finished"] - started) / 60,
        "validations": len(records),
        "fr_items": final("items"),
        "reach": {f"{key}_{t}": first_reach(records, started, key, t)
                  for key in ("tf", "fr") for t in THRESHOLDS},
        "target": first_target(records, started),
        "final_tf_diagonal": last.diagonal_score if last else None,
        "final_fr_diagonal": final("diagonal_score"),
        "final_fr_reading_diagonal": final("reading_diagonal_score"),
        "final_fr_reading_runs_on": final("runs_on"),
        "final_fr_stopped": final("stopped_share"),
        "final_fr_stopped_near_length": final("near_length_share"),
        "best_fr_diagonal": max((_or0(f.diagonal_score) for f in frees), default=None),
        "best_fr_stopped_near_length": max((_or0(f.near_length_share) for f in frees),
                                           default=None),
    }


# ---------------------------------------------------------------------------------- output
def table(results: List[Dict[str, Any]]) -> str:
    def cell(hit: Optional[Dict[str, float]]) -> str:
        return "-" if hit is None else f"{hit['step']} / {hit['minutes']:.1f}m"

    def fmt(x: Optional[float], pct: bool = False) -> str:
        return "-" if x is None else (f"{x:.0%}" if pct else f"{x:.2f}")

    reading = any(r["final_fr_reading_diagonal"] is not None for r in results)
    head = ["run", "steps", "min"] + [f"{k.upper()}>={t}" for k in ("tf", "fr") for t in THRESHOLDS]
    head += ["target", "final TF", "final FR"] + (["FR reading"] if reading else [])
    head += ["FR stop ok", "best FR"]
    rows = []
    for r in results:
        row = [r["run"], str(r["steps"]), f"{r['minutes']:.1f}"]
        row += [cell(r["reach"][f"{k}_{t}"]) for k in ("tf", "fr") for t in THRESHOLDS]
        row += [cell(r["target"]), fmt(r["final_tf_diagonal"]), fmt(r["final_fr_diagonal"])]
        if reading:
            row.append(fmt(r["final_fr_reading_diagonal"]))
        row += [fmt(r["final_fr_stopped_near_length"], pct=True), fmt(r["best_fr_diagonal"])]
        rows.append(row)
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]
    return "\n".join("  ".join(x.ljust(w) for x, w in zip(line, widths)).rstrip()
                     for line in [head] + rows)


def plot(runs: List[Dict[str, Any]], path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6.5), sharex=True,
                                      gridspec_kw={"height_ratios": [2, 1]})
    for run, color in zip(runs, ("tab:blue", "tab:orange", "tab:green", "tab:red")):
        records = run["records"]
        steps = [r.step for r in records]

        def curve(name: str) -> List[float]:
            return [_or_nan(_fr(r, name)) for r in records]

        top.plot(steps, [r.diagonal_score for r in records], color=color,
                 label=f"{run['name']} teacher-forced")
        top.plot(steps, curve("diagonal_score"), color=color, linestyle="--",
                 label=f"{run['name']} free-running")
        top.plot(steps, curve("reading_diagonal_score"), color=color, linestyle=":",
                 label=f"{run['name']} free-running, reading part")
        bottom.plot(steps, curve("near_length_share"), color=color, marker=".",
                    label=run["name"])
    for t in THRESHOLDS:
        top.axhline(t, color="grey", linewidth=0.5)
    bottom.axhline(TARGET_STOP_SHARE, color="grey", linewidth=0.5)
    top.set_ylabel("validation diagonal_score")
    top.set_ylim(-0.02, 1.02)
    top.legend(loc="lower right", fontsize=7)
    top.set_title(textwrap.fill(title, 110), fontsize=8)  # long --hparams would run off
    bottom.set_ylabel("gate stop within 20%")
    bottom.set_ylim(-0.02, 1.02)
    bottom.set_xlabel("step")
    bottom.legend(loc="lower right", fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        shared = base_hparams(args)
        hp = check_hparams(shared)
        names = [n.strip() for n in args.runs.split(",") if n.strip()]
        unknown = sorted(set(names) - {"guided", "unguided"})
        if unknown or not names:
            raise BenchError(f"--runs {args.runs!r}: choose guided and/or unguided")
        os.makedirs(args.output_dir, exist_ok=True)
        shared += corpus_hparams(args, hp)
        check_hparams(shared)
        runs = [run_training(args, name, shared) for name in names]
    except BenchError as err:
        print(f"alignment_speed: error: {err}", file=sys.stderr)
        return 2
    except RunFailed as err:
        print(f"alignment_speed: error: {err}", file=sys.stderr)
        return 1
    results = [summarise(run) for run in runs]
    corpus = ("filelists " + args.training_files if args.training_files
              else f"corpus {args.corpus}")
    threads = args.threads or "default"
    print(f"alignment speed: preset {args.preset}, {corpus}, language {language_of(args)}, "
          f"{args.max_minutes} min per run, {threads} thread(s); cells are 'step / wall minutes' "
          f"of first reach; target = FR >= {TARGET_DIAGONAL} with >= {TARGET_STOP_SHARE:.0%} "
          f"stopping within 20% of their length")
    print(table(results))
    png = os.path.join(args.output_dir, "alignment_speed.png")
    plot(runs, png, f"{args.preset} on {args.corpus if not args.training_files else 'filelists'}"
                    f" ({args.hparams or 'no extra overrides'})")
    print(f"curves: {png}")
    print(json.dumps({"benchmark": "alignment_speed", "preset": args.preset,
                      "corpus": None if args.training_files else args.corpus,
                      "language": language_of(args), "max_minutes": args.max_minutes,
                      "threads": args.threads, "hparams": ",".join(shared),
                      "results": results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
