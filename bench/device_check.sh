#!/usr/bin/env bash
# The GPU check of issue #15, one command on a fresh GPU machine holding this repository:
#
#     bash bench/device_check.sh                 # on a CUDA machine, ~7.5 minutes
#     OUT=/some/folder bash bench/device_check.sh
#     bash bench/device_check.sh --cpu-dry-run   # the plumbing on a CPU: tiny sizes, ~1 minute
#
# Stages, each with a time limit so that one hang cannot eat the others' time:
#   1. environment  imports every package of requirements.txt; installs the missing ones with
#                   pip (torch excepted: a CUDA build must already be there). Not in a dry run.
#   2. cuda tests   python -m pytest -m cuda tests/test_cuda.py (all skipped in a dry run).
#   3. throughput   bench/train_throughput.py, default model, LJSpeech-like lengths, length
#                   bucketing: batch 128 and 64, bf16 and fp32 (TF32), r=1 and r=2, the eager
#                   step and the CUDA-graph step, torch.compile off and on; rows run in order of
#                   importance while the time budget lasts (the rest are listed as skipped).
#   4. training     python train.py, default preset on the English demo corpus, bf16, CUDA
#                   graphs, a few hundred steps with validation and free-running validation.
# Then one table and one JSON line (the last line of the output). Everything worth keeping
# (logs, the JSON, the training run's train.log and diagnostics) goes under $OUT when it is
# set, else under a new folder in /tmp whose name is printed.
#
# Exit status: 0 when every stage ran and the tests passed (the throughput target is reported,
# not enforced), 1 when a stage failed, 2 for bad arguments or a missing torch.
#
# Environment: PYTHON (default python3), DEVICE_CHECK_BUDGET_S (default 450: the whole check
# on one H100/H200 within 8 minutes), DEVICE_CHECK_TRAIN_STEPS (default 300).
set -u -o pipefail

usage() { sed -n '2,27p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
for arg in "$@"; do
    case "$arg" in
        --cpu-dry-run) DRY_RUN=1 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check.sh: unknown argument '$arg' (use --cpu-dry-run or --help)" >&2
           exit 2 ;;
    esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT" || exit 2
PYTHON="${PYTHON:-python3}"
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "device_check.sh: no '$PYTHON' on PATH; set PYTHON=/path/to/python" >&2
    exit 2
fi
if [ -n "${OUT:-}" ]; then
    OUT_DIR="$OUT"
else
    OUT_DIR="$(mktemp -d /tmp/device_check.XXXXXX)"
fi
mkdir -p "$OUT_DIR" || { echo "device_check.sh: cannot create $OUT_DIR" >&2; exit 2; }
if [ "$DRY_RUN" = 1 ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # shared CPU: one thread per process
fi

export DC_ROOT="$ROOT" DC_OUT="$OUT_DIR" DC_DRY_RUN="$DRY_RUN" DC_PYTHON="$PYTHON"
export DC_BUDGET_S="${DEVICE_CHECK_BUDGET_S:-450}"
export DC_TRAIN_STEPS="${DEVICE_CHECK_TRAIN_STEPS:-300}"
exec "$PYTHON" - <<'PY'
"""device_check.sh's driver: runs the stages as subprocesses and writes the table and JSON."""
import glob
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT, OUT, PY = os.environ["DC_ROOT"], os.environ["DC_OUT"], os.environ["DC_PYTHON"]
DRY = os.environ["DC_DRY_RUN"] == "1"
BUDGET = float(os.environ["DC_BUDGET_S"])
TRAIN_STEPS = int(os.environ["DC_TRAIN_STEPS"])
START = time.monotonic()
TARGET_FRAMES_PER_S = 100_000  # issue #15: default model, one H100/H200, bf16, r=1
TRAIN_RESERVE_S = 40 if DRY else 150  # kept for the training run while the benchmark runs


def elapsed() -> float:
    return time.monotonic() - START


def left() -> float:
    return BUDGET - elapsed()


def run(cmd, log_name, limit, env=None):
    """Runs `cmd` in the repository with a time limit; stdout+stderr go to OUT/log_name.

    Returns (exit status or "timeout", stdout text, seconds).
    """
    started = time.monotonic()
    path = os.path.join(OUT, log_name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    full_env = dict(os.environ, **(env or {}))
    try:
        done = subprocess.run(cmd, cwd=ROOT, env=full_env, capture_output=True, text=True,
                              timeout=max(1.0, limit))
        status, stdout, stderr = done.returncode, done.stdout, done.stderr
    except subprocess.TimeoutExpired as err:
        status = "timeout"
        stdout = err.stdout.decode(errors="replace") if isinstance(err.stdout, bytes) else (
            err.stdout or "")
        stderr = err.stderr.decode(errors="replace") if isinstance(err.stderr, bytes) else (
            err.stderr or "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"$ {' '.join(cmd)}\n{stdout}\n--- stderr ---\n{stderr}")
    return status, stdout, time.monotonic() - started


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def note(message):
    print(f"[{elapsed():5.0f} s] {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- 1. environment
def environment():
    probe = ("import importlib.util, json, sys\n"
             "names = sys.argv[1:]\n"
             "print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))\n")
    wanted = []
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            name = re.split(r"[<>=!~\[ #;]", line.strip(), maxsplit=1)[0]
            if name:
                wanted.append(name)
    found = json.loads(subprocess.run([PY, "-c", probe, *wanted], capture_output=True,
                                      text=True, check=True).stdout)
    missing = [n for n, ok in found.items() if not ok]
    result = {"missing": missing, "installed": [], "install_failed": []}
    if "torch" in missing:
        result["status"] = "torch missing"
        return result
    if missing and not DRY:
        note(f"installing {', '.join(missing)}")
        status, _, _ = run([PY, "-m", "pip", "install", "--quiet", *missing],
                           "environment_pip.log", min(180, left() / 4))
        after = json.loads(subprocess.run([PY, "-c", probe, *missing], capture_output=True,
                                          text=True, check=True).stdout)
        result["installed"] = [n for n, ok in after.items() if ok]
        result["install_failed"] = [n for n, ok in after.items() if not ok]
    probe_torch = ("import json, torch\n"
                   "cuda = torch.cuda.is_available()\n"
                   "print(json.dumps({'torch': torch.__version__, 'cuda': cuda,\n"
                   "  'cuda_version': torch.version.cuda,\n"
                   "  'device': torch.cuda.get_device_name(0) if cuda else 'cpu',\n"
                   "  'devices': torch.cuda.device_count() if cuda else 0}))\n")
    if DRY:  # no CUDA wanted; the version without importing torch (seconds on a busy CPU)
        version = subprocess.run(
            [PY, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
            capture_output=True, text=True).stdout.strip() or "?"
        status, stdout = 0, json.dumps({"torch": version, "cuda": False, "device": "cpu"})
    else:
        status, stdout, _ = run([PY, "-c", probe_torch], "environment_torch.log", 120)
    result.update(last_json(stdout) or {"torch": "?", "cuda": False, "device": "?"})
    ok = status == 0 and not result["install_failed"] and (DRY or result.get("cuda"))
    result["status"] = "ok" if ok else ("no CUDA device" if status == 0 else "torch failed")
    # Missing optional packages that tests do not import do not fail the check.
    if result["install_failed"] and set(result["install_failed"]) <= {"optuna", "tensorboard"}:
        result["status"] = "ok" if (DRY or result.get("cuda")) else result["status"]
    return result


# ---------------------------------------------------------------------------- 2. cuda tests
def cuda_tests():
    xml = os.path.join(OUT, "cuda_tests.xml")
    limit = 120 if DRY else min(150, max(30, left() - TRAIN_RESERVE_S - 120))
    status, stdout, seconds = run(
        [PY, "-m", "pytest", "-v", "-rs", "-m", "cuda", "tests/test_cuda.py",
         f"--junitxml={xml}", "-p", "no:cacheprovider"], "cuda_tests.log", limit)
    # Counted from pytest's progress lines, which a time limit leaves in place (the JUnit
    # file, kept under OUT, is only written at the end).
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    failed_names = []
    kinds = {"PASSED": "passed", "FAILED": "failed", "ERROR": "errors", "SKIPPED": "skipped"}
    for line in stdout.splitlines():
        found = re.match(r"(tests/test_cuda\.py::\S+) (PASSED|FAILED|ERROR|SKIPPED)\b", line)
        if found:
            counts[kinds[found.group(2)]] += 1
            if found.group(2) in ("FAILED", "ERROR"):
                failed_names.append(found.group(1))
    ran = status in (0, 1) and sum(counts.values()) > 0
    return {"status": "ok" if status == 0 and ran else
            ("timeout" if status == "timeout" else "failed"),
            "exit": status, "seconds": round(seconds, 1), **counts, "failed_tests": failed_names}


# ---------------------------------------------------------------------------- 3. throughput
def rows():
    """(name, flags, limit s, estimate s) in order of importance."""
    if DRY:
        common = ["--preset", "tiny", "--device", "cpu", "--batch_size", "2", "--r", "2",
                  "--steps", "1", "--warmup", "0", "--lengths", "short", "--pool", "16",
                  "--threads", "1"]
        return [("fp32 b2 r2 graphs", common + ["--cuda_graphs", "on"], 60, 5),
                ("fp32 b2 r2 eager", common + ["--cuda_graphs", "off"], 60, 5)]
    common = ["--preset", "default", "--device", "cuda", "--lengths", "ljspeech",
              "--bucketing", "on"]
    fast = ["--cuda_graphs", "on", "--warmup", "3", "--steps", "8"]
    eager = ["--cuda_graphs", "off", "--warmup", "2", "--steps", "5"]
    compiled = ["--compile", "on", "--warmup", "3", "--steps", "5"]

    def cfg(precision, batch, r):
        return common + ["--precision", precision, "--batch_size", str(batch), "--r", str(r)]

    return [
        ("bf16 b128 r1 graphs", cfg("bf16", 128, 1) + fast, 90, 30),
        ("bf16 b128 r1 eager", cfg("bf16", 128, 1) + eager, 90, 40),
        ("bf16 b128 r2 graphs", cfg("bf16", 128, 2) + fast, 90, 25),
        ("bf16 b128 r2 eager", cfg("bf16", 128, 2) + eager, 90, 30),
        ("bf16 b64 r1 graphs", cfg("bf16", 64, 1) + fast, 90, 25),
        ("fp32 b128 r1 graphs", cfg("fp32", 128, 1) + fast, 90, 30),
        ("bf16 b128 r1 graphs+compile",
         cfg("bf16", 128, 1) + ["--cuda_graphs", "on"] + compiled, 200, 120),
        ("bf16 b64 r1 eager", cfg("bf16", 64, 1) + eager, 90, 30),
        ("fp32 b128 r1 eager", cfg("fp32", 128, 1) + eager, 90, 40),
        ("bf16 b64 r2 graphs", cfg("bf16", 64, 2) + fast, 90, 20),
        ("bf16 b128 r1 eager+compile",
         cfg("bf16", 128, 1) + ["--cuda_graphs", "off"] + compiled, 200, 120),
    ]


def throughput():
    results = []
    for name, flags, limit, estimate in rows():
        room = left() - TRAIN_RESERVE_S
        if room < estimate:
            results.append({"name": name, "status": "skipped (time budget)"})
            continue
        note(f"throughput {name}")
        log = "bench/" + re.sub(r"[^a-z0-9]+", "_", name) + ".log"
        cmd = [PY, "bench/train_throughput.py", "--loop", "optimised", *flags]
        status, stdout, seconds = run(cmd, log, min(limit, room))
        data = last_json(stdout)
        if status == 0 and data and data.get("results"):
            results.append({"name": name, "status": "ok", "seconds": round(seconds, 1),
                            **data["results"][0]})
        else:
            tail = stdout.strip().splitlines()[-1:] if stdout.strip() else []
            results.append({"name": name, "status": f"failed ({status})", "log": log,
                            "seconds": round(seconds, 1), "tail": tail})
    return results


# ---------------------------------------------------------------------------- 4. training
def training_run():
    work = tempfile.mkdtemp(prefix="device_check_train_")
    if DRY:
        steps, device = 2, "cpu"  # one validation with free running, on the demo corpus
        hparams = ("preset=tiny,precision=bf16,cuda_graphs=true,iters_per_validation=2,"
                   "iters_per_checkpoint=100000,n_frames_per_step=3,batch_size=2,"
                   "max_decoder_steps=20")
        limit = max(20, left())
    else:
        steps, device = TRAIN_STEPS, "cuda"
        hparams = ("preset=default,precision=bf16,cuda_graphs=true,iters_per_validation=100,"
                   "iters_per_checkpoint=100000,num_workers=4,keep_checkpoints=1")
        limit = max(60, left())
    minutes = max(0.5, (limit - 45) / 60)  # train.py stops itself (and saves) before the limit
    cmd = [PY, "train.py", f"--hparams={hparams}", "--max_steps", str(steps), "--device",
           device, "--max_minutes", f"{minutes:.2f}", "--output_directory",
           os.path.join(work, "output"), "--log_directory", os.path.join(work, "logs"),
           "--tensorboard_directory", os.path.join(work, "runs"), "--run_name", "device_check"]
    note(f"training run ({steps} steps)")
    status, _, seconds = run(cmd, "train_run/stdout.log", limit)
    run_dir = os.path.join(work, "output", "device_check")
    keep = os.path.join(OUT, "train_run")
    os.makedirs(keep, exist_ok=True)
    for path in (os.path.join(work, "logs", "train.log"),
                 os.path.join(run_dir, "diagnostics.jsonl"),
                 os.path.join(run_dir, "hparams.json"),
                 *sorted(glob.glob(os.path.join(run_dir, "alignments", "*.npz")))[-2:]):
        if os.path.exists(path):
            shutil.copy(path, keep)
    records = []
    diagnostics = os.path.join(run_dir, "diagnostics.jsonl")
    if os.path.exists(diagnostics):
        with open(diagnostics, encoding="utf-8") as f:
            records = [json.loads(line) for line in f if line.strip()]
    step_seconds, last_step = [], 0
    log = os.path.join(work, "logs", "train.log")
    if os.path.exists(log):
        with open(log, encoding="utf-8") as f:
            for line in f:
                found = re.search(r"\bstep (\d+): .*?([0-9.]+) s/step", line)
                if found:
                    last_step = max(last_step, int(found.group(1)))
                    step_seconds.append(float(found.group(2)))
    shutil.rmtree(work, ignore_errors=True)  # checkpoints (hundreds of MB) are not kept
    last = records[-1] if records else {}
    free = last.get("free_running") or {}
    losses = last.get("losses") or {}
    finite = all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf")
                 for r in records for v in (r.get("losses") or {}).values())
    ok = status == 0 and bool(records) and finite and all(r.get("free_running") for r in records)
    return {
        "status": "ok" if ok else f"failed ({status})", "exit": status,
        "seconds": round(seconds, 1), "steps": last_step, "validations": len(records),
        "median_s_per_step": round(statistics.median(step_seconds), 4) if step_seconds else None,
        "last_validation_step": last.get("step"),
        "loss": losses.get("total"),
        "diagonal_score": (last.get("metrics") or {}).get("diagonal_score"),
        "free_running_diagonal_score": free.get("diagonal_score"),
        "free_running_stopped_share": free.get("stopped_share"),
        "losses_finite": finite,
    }


# ---------------------------------------------------------------------------- report
def fmt(value, spec=",.0f"):
    return "-" if value is None else format(value, spec)


def best(results, **where):
    found = [r for r in results if r.get("status") == "ok"
             and all(r.get(k) == v for k, v in where.items())]
    return max(found, key=lambda r: r["real_frames_per_s"]) if found else None


def main() -> int:
    note(f"device check{' (CPU dry run)' if DRY else ''}; output in {OUT}")
    env = environment()
    if env["status"] == "torch missing":
        print("device_check.sh: torch is not importable; install a CUDA build of torch first",
              file=sys.stderr)
        return 2
    note(f"environment: {env['status']} ({env.get('device')}, torch {env.get('torch')})")
    if env["status"] != "ok":
        tests = {"status": "not run"}
        bench = []
        train = {"status": "not run"}
    else:
        note("cuda tests")
        tests = cuda_tests()
        bench = throughput()
        train = training_run()

    precision = "fp32" if DRY else "bf16"
    fast_r1 = best(bench, precision=precision, r=1, cuda_graphs=True)
    eager_r1 = best(bench, precision=precision, r=1, cuda_graphs=False, compile=False)
    fast_r2 = best(bench, precision=precision, r=2, cuda_graphs=True)
    if DRY:  # the dry run's rows are r=2 (tiny sizes): report them where r=1 would be
        fast_r1 = fast_r2
        eager_r1 = best(bench, precision=precision, r=2, cuda_graphs=False, compile=False)
    figure = fast_r1["real_frames_per_s"] if fast_r1 else None
    targets = {
        "target_real_frames_per_s": TARGET_FRAMES_PER_S,
        "best_graphs_r1": figure, "best_graphs_r1_row": fast_r1 and fast_r1["name"],
        "best_graphs_r2": fast_r2 and fast_r2["real_frames_per_s"],
        "best_eager_r1": eager_r1 and eager_r1["real_frames_per_s"],
        "met": None if DRY or figure is None else figure >= TARGET_FRAMES_PER_S,
    }

    lines = [f"device check{' (CPU dry run: tiny sizes, CUDA parts skipped)' if DRY else ''}: "
             f"{env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda_version')}; output {OUT}",
             f"{'stage / row':<30} {'status':<24} {'real frames/s':>13} {'vs eager':>8} "
             f"{'s/step':>8} {'peak MB':>8} {'padding':>8}"]
    extra = env["missing"] and f" (missing: {', '.join(env['missing'])})" or ""
    lines.append(f"{'environment':<30} {env['status'] + extra:<24}")
    if tests.get("status") != "not run":
        counts = (f"{tests['passed']} passed, {tests['failed'] + tests['errors']} failed, "
                  f"{tests['skipped']} skipped")
        lines.append(f"{'cuda tests':<30} {tests['status']:<24} {counts}; "
                     f"{tests['seconds']:.0f} s")
    for row in bench:
        if row["status"] != "ok":
            lines.append(f"{row['name']:<30} {row['status']:<24}")
            continue
        base = best(bench, precision=row["precision"], r=row["r"],
                    batch_size=row["batch_size"], cuda_graphs=False, compile=False)
        ratio = f"{row['real_frames_per_s'] / base['real_frames_per_s']:.2f}x" if base else "-"
        lines.append(f"{row['name']:<30} {'ok':<24} {fmt(row['real_frames_per_s']):>13} "
                     f"{ratio:>8} {row['s_per_step']:>8.3f} {fmt(row['peak_mb']):>8} "
                     f"{100 * row['padding_share']:>7.1f}%")
    if train.get("status") != "not run":
        lines.append(
            f"{'training run':<30} {train['status']:<24} {train['steps']} steps, "
            f"{fmt(train['median_s_per_step'], '.3f')} s/step; validation loss "
            f"{fmt(train['loss'], '.3f')}, diagonality TF {fmt(train['diagonal_score'], '.2f')} "
            f"FR {fmt(train['free_running_diagonal_score'], '.2f')}, FR stopped "
            f"{fmt(train['free_running_stopped_share'], '.0%')}")
    verdict = ("not measured (dry run)" if DRY else "not measured" if figure is None else
               ("MET" if targets["met"] else "NOT MET"))
    lines.append(f"{'target >= 100,000 (bf16 r=1)':<30} {verdict:<24} {fmt(figure):>13}")
    table = "\n".join(lines)
    failed = (env["status"] != "ok" or tests.get("status") != "ok"
              or train.get("status") != "ok"
              or any(r["status"].startswith("failed") for r in bench))
    report = {"bench": "device_check", "dry_run": DRY, "ok": not failed,
              "seconds": round(elapsed(), 1), "out": OUT, "environment": env,
              "cuda_tests": tests, "throughput": bench, "training_run": train,
              "targets": targets}
    with open(os.path.join(OUT, "device_check.txt"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(OUT, "device_check.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    print(table)
    print(json.dumps(report))
    return 1 if failed else 0


sys.exit(main())
PY
