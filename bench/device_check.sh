#!/usr/bin/env bash
# The GPU check: one command on a fresh GPU machine holding this repository, within 6 minutes.
#
#     bash bench/device_check.sh                 # on a CUDA machine
#     OUT=/some/folder bash bench/device_check.sh
#     bash bench/device_check.sh --only=rows,voice   # some stages (the environment always runs)
#     bash bench/device_check.sh --cpu-dry-run   # the plumbing on a CPU: tiny sizes, ~1 minute
#
# Stages, in this order, each with a time limit so that one hang cannot eat the others' time:
#   environment  imports every package of requirements.txt; installs the missing ones from the
#                wheels in .whl/ when it holds some (../shared/device/wheels.sh), else with pip
#                (torch excepted: a CUDA build must already be there). No install in a dry run.
#   tests        python -m pytest -m cuda tests/test_cuda.py (all skipped in a dry run).
#   rows         bench/train_throughput.py, default model, LJSpeech-like lengths, length
#                bucketing, one process per row, while the budget lasts: bf16 b128 r1 graphs
#                (the headline), bf16 b512 r1 graphs, fp32 (TF32) b128 r1 graphs, bf16 b256 r1
#                graphs, bf16 b128 r1 eager, fp32 b128 r1 eager, then b64, r2 and torch.compile
#                rows. A row that does not fit its estimate into the time left is listed with
#                the reason; one that runs out of GPU memory reports that as its result.
#   voice        python train.py, default preset, bf16, CUDA graphs, on the festvox-ru pack
#                (data/festvox_ru_pack.tar, from python bench/make_voice_pack.py) for the time
#                left, at least DEVICE_CHECK_VOICE_S, free-running validation every 50 steps.
#                Without the pack it is skipped, and the table says so.
# Then one table and one JSON line (the last line of the output). Everything worth keeping goes
# under $OUT when it is set, else under a new folder in /tmp whose name is printed:
# device_check.txt (the table), device_check.json and device_check_logs.tar.gz (every stage's
# log, the JUnit file of the tests, the voice run's train.log, diagnostics.jsonl, hparams.json
# and last alignment snapshot): three files, for callers that get only a few back.
#
# Exit status: 0 when every stage that ran passed (a row out of memory or skipped for time, the
# targets and a missing pack do not fail the check), 1 when a stage failed, 2 for bad arguments
# or a missing torch.
#
# Environment: PYTHON (default python3); DEVICE_CHECK_BUDGET_S (default 360: the whole check);
# DEVICE_CHECK_VOICE_S (default 120: kept for the voice stage while tests and rows run);
# DEVICE_CHECK_VOICE_PACK (default data/festvox_ru_pack.tar).
set -u -o pipefail

usage() { sed -n '2,37p' "$0" | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
ONLY=""
for arg in "$@"; do
    case "$arg" in
        --cpu-dry-run) DRY_RUN=1 ;;
        --only=*) ONLY="${arg#--only=}" ;;
        -h|--help) usage; exit 0 ;;
        *) echo "device_check.sh: unknown argument '$arg' (use --cpu-dry-run, --only=STAGES or" \
                "--help)" >&2
           exit 2 ;;
    esac
done
for stage in ${ONLY//,/ }; do
    case "$stage" in
        tests|rows|voice) ;;
        *) echo "device_check.sh: unknown stage '$stage' in --only (choose from tests, rows," \
                "voice)" >&2
           exit 2 ;;
    esac
done

PACK="${DEVICE_CHECK_VOICE_PACK:-}"
case "$PACK" in
    ""|/*) ;;
    *) PACK="$PWD/$PACK" ;;  # relative to where the command was started
esac
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
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
if [ "$DRY_RUN" = 1 ]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"  # shared CPU: one thread per process
fi

export DC_ROOT="$ROOT" DC_OUT="$OUT_DIR" DC_DRY_RUN="$DRY_RUN" DC_PYTHON="$PYTHON"
export DC_ONLY="${ONLY:-tests,rows,voice}"
export DC_BUDGET_S="${DEVICE_CHECK_BUDGET_S:-360}"
export DC_VOICE_S="${DEVICE_CHECK_VOICE_S:-120}"
export DC_VOICE_PACK="${PACK:-$ROOT/data/festvox_ru_pack.tar}"
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
import tarfile
import tempfile
import time
from typing import List, NamedTuple

ROOT, OUT, PY = os.environ["DC_ROOT"], os.environ["DC_OUT"], os.environ["DC_PYTHON"]
sys.path.insert(0, ROOT)  # run_files reads the voice run's records
DRY = os.environ["DC_DRY_RUN"] == "1"
STAGES = set(os.environ["DC_ONLY"].split(","))
BUDGET = float(os.environ["DC_BUDGET_S"])
VOICE_PACK = os.environ["DC_VOICE_PACK"]
START = time.monotonic()
LOGS = os.path.join(OUT, "logs")  # archived into device_check_logs.tar.gz at the end
# Kept for the voice stage while the tests and the rows run (only when it will run).
VOICE_RESERVE_S = 40 if DRY else float(os.environ["DC_VOICE_S"])
TESTS_LIMIT_S = 120 if DRY else 150
# Targets, reported beside the rows and not enforced: real mel frames/s of the default model on
# one GPU, by (precision, batch size, r).
TARGETS = {("bf16", 128, 1): 150_000, ("bf16", 512, 1): 300_000}
# NVIDIA/tacotron2's own training step at batch 128 (r=1), real mel frames/s measured on one
# H200; a row at batch 128, r=1 prints its figure over the one of its precision.
NVIDIA_H200 = {"fp32": 38_534, "bf16": 34_821}
# torch.compile's warm-up of the decoder step, estimated (not measured for this version): a
# compile row runs only when it and the row's steps fit into the time left. On a CPU (dry run)
# the C++ compilation of every kernel would take longer than a dry run's minutes.
COMPILE_WARMUP_S = 600 if DRY else 150


def elapsed() -> float:
    return time.monotonic() - START


def left() -> float:
    return BUDGET - elapsed()


def voice_reserve() -> float:
    """Seconds the earlier stages leave for the voice stage (0 when it will not run)."""
    return VOICE_RESERVE_S if "voice" in STAGES and os.path.isfile(VOICE_PACK) else 0.0


def run(cmd, log_name, limit, env=None):
    """Runs `cmd` in the repository with a time limit; stdout+stderr go to LOGS/log_name.

    Returns (exit status or "timeout", stdout text, stderr text, seconds).
    """
    started = time.monotonic()
    path = os.path.join(LOGS, log_name)
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
    return status, stdout, stderr, time.monotonic() - started


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


# ---------------------------------------------------------------------------- environment
def probe(names):
    code = ("import importlib.util, json, sys\n"
            "print(json.dumps({n: importlib.util.find_spec(n) is not None\n"
            "                  for n in sys.argv[1:]}))\n")
    return json.loads(subprocess.run([PY, "-c", code, *names], capture_output=True, text=True,
                                     check=True).stdout)


def install(missing):
    """The wheels of .whl/ into a folder on PYTHONPATH (the GPU machine reaches no registry),
    else pip from the index. Returns where they came from."""
    wheels = sorted(glob.glob(os.path.join(ROOT, ".whl", "*.whl")))
    if wheels:
        note(f"installing {', '.join(missing)} from .whl/ ({len(wheels)} wheels)")
        site = tempfile.mkdtemp(prefix="device_check_site_")
        run([PY, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
             "--no-cache-dir", "--upgrade", "--target", site, *wheels],
            "environment_pip.log", 120)
        # every later stage is a subprocess of this driver and inherits it
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (site, os.environ.get("PYTHONPATH")) if p)
        return ".whl"
    note(f"installing {', '.join(missing)} with pip")
    run([PY, "-m", "pip", "install", "--quiet", *missing], "environment_pip.log",
        min(180, left() / 4))
    return "pip"


def environment():
    wanted = []
    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as f:
        for line in f:
            name = re.split(r"[<>=!~\[ #;]", line.strip(), maxsplit=1)[0]
            if name:
                wanted.append(name)
    found = probe(wanted)
    missing = [n for n, ok in found.items() if not ok]
    result = {"missing": missing, "installed": [], "install_failed": []}
    if "torch" in missing:
        result["status"] = "torch missing"
        return result
    if missing and not DRY:
        result["installed_from"] = install(missing)
        after = probe(missing)
        result["installed"] = [n for n, ok in after.items() if ok]
        result["install_failed"] = [n for n, ok in after.items() if not ok]
    probe_torch = ("import json, sys, torch\n"
                   f"sys.path.insert(0, {ROOT!r})\n"
                   "import devices\n"
                   "cuda = devices.cuda_available()\n"
                   "print(json.dumps({'torch': torch.__version__, 'cuda': cuda,\n"
                   "  'cuda_version': torch.version.cuda,\n"
                   "  'device': devices.device_name(devices.choose_device()),\n"
                   "  'devices': devices.cuda_device_count()}))\n")
    if DRY:  # no CUDA wanted; the version without importing torch (seconds on a busy CPU)
        version = subprocess.run(
            [PY, "-c", "import importlib.metadata as m; print(m.version('torch'))"],
            capture_output=True, text=True).stdout.strip() or "?"
        status, stdout = 0, json.dumps({"torch": version, "cuda": False, "device": "cpu"})
    else:
        status, stdout, _, _ = run([PY, "-c", probe_torch], "environment_torch.log", 120)
    result.update(last_json(stdout) or {"torch": "?", "cuda": False, "device": "?"})
    ok = status == 0 and not result["install_failed"] and (DRY or result.get("cuda"))
    result["status"] = "ok" if ok else ("no CUDA device" if status == 0 else "torch failed")
    # Missing optional packages that tests do not import do not fail the check.
    if result["install_failed"] and set(result["install_failed"]) <= {"optuna", "tensorboard"}:
        result["status"] = "ok" if (DRY or result.get("cuda")) else result["status"]
    return result


# ---------------------------------------------------------------------------- tests
def cuda_tests():
    xml = os.path.join(LOGS, "cuda_tests.xml")
    # the headline row's estimate stays free after the tests, besides the voice stage's time
    limit = TESTS_LIMIT_S if DRY else min(TESTS_LIMIT_S, max(30, left() - voice_reserve()
                                                             - ROWS[0].estimate))
    status, stdout, _, seconds = run(
        [PY, "-m", "pytest", "-v", "-rs", "-m", "cuda", "tests/test_cuda.py",
         f"--junitxml={xml}", "-p", "no:cacheprovider"], "cuda_tests.log", limit)
    # Counted from pytest's progress lines, which a time limit leaves in place (the JUnit
    # file is only written at the end).
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
            "exit": status, "seconds": round(seconds, 1), "limit_s": round(limit),
            **counts, "failed_tests": failed_names}


# ---------------------------------------------------------------------------- rows
class Row(NamedTuple):
    name: str
    flags: List[str]
    estimate: float  # seconds on a fresh machine, process start included (not measured)
    compile: bool = False


def make_rows() -> List[Row]:
    """The throughput rows, in order of importance."""
    if DRY:
        common = ["--preset", "tiny", "--device", "cpu", "--batch_size", "2", "--r", "2",
                  "--lengths", "short", "--pool", "16", "--threads", "1"]
        once = ["--steps", "1", "--warmup", "0"]
        return [
            Row("fp32 b2 r2 graphs", common + once + ["--cuda_graphs", "on"], 5),
            Row("fp32 b2 r2 eager", common + once + ["--cuda_graphs", "off"], 5),
            # the out-of-memory path: a prenet of 2^44 units cannot be allocated anywhere
            Row("fp32 b2 r2 prenet 2^44 (OOM)", common + once + [
                "--cuda_graphs", "off", "--hparams", f"prenet_dim={2 ** 44}"], 5),
            Row("fp32 b2 r2 graphs+compile", common + [
                "--steps", "1", "--warmup", "1", "--cuda_graphs", "on", "--compile", "on"],
                COMPILE_WARMUP_S + 10, compile=True),
        ]
    common = ["--preset", "default", "--device", "cuda", "--lengths", "ljspeech",
              "--bucketing", "on"]

    def cfg(precision, batch, r, graphs, warmup, steps, compiled=False):
        return common + ["--precision", precision, "--batch_size", str(batch), "--r", str(r),
                         "--cuda_graphs", "on" if graphs else "off",
                         "--compile", "on" if compiled else "off",
                         "--warmup", str(warmup), "--steps", str(steps)]

    return [
        Row("bf16 b128 r1 graphs", cfg("bf16", 128, 1, True, 3, 10), 30),
        Row("bf16 b512 r1 graphs", cfg("bf16", 512, 1, True, 2, 4), 45),
        Row("fp32 b128 r1 graphs", cfg("fp32", 128, 1, True, 2, 6), 30),
        Row("bf16 b256 r1 graphs", cfg("bf16", 256, 1, True, 2, 4), 35),
        Row("bf16 b128 r1 eager", cfg("bf16", 128, 1, False, 1, 3), 35),
        Row("fp32 b128 r1 eager", cfg("fp32", 128, 1, False, 1, 3), 40),
        Row("bf16 b64 r1 graphs", cfg("bf16", 64, 1, True, 2, 6), 25),
        Row("bf16 b128 r2 graphs", cfg("bf16", 128, 2, True, 2, 6), 25),
        Row("bf16 b128 r2 eager", cfg("bf16", 128, 2, False, 1, 3), 30),
        Row("bf16 b64 r1 eager", cfg("bf16", 64, 1, False, 1, 3), 30),
        Row("bf16 b128 r1 graphs+compile", cfg("bf16", 128, 1, True, 3, 5, compiled=True),
            COMPILE_WARMUP_S + 30, compile=True),
        Row("bf16 b128 r1 eager+compile", cfg("bf16", 128, 1, False, 3, 3, compiled=True),
            COMPILE_WARMUP_S + 40, compile=True),
    ]


ROWS = make_rows()


def is_oom(stdout, stderr):
    data = last_json(stdout)
    if data and data.get("out_of_memory"):
        return data["out_of_memory"]
    if re.search(r"OutOfMemoryError|out of memory", stderr):  # not reported by the bench itself
        lines = [line for line in stderr.splitlines() if "out of memory" in line.lower()]
        return {"error": (lines or ["out of memory"])[-1][:300]}
    return None


def throughput():
    results = []
    for row in ROWS:
        room = left() - voice_reserve()
        if room < row.estimate:
            why = (f"compile warm-up ~{COMPILE_WARMUP_S:.0f} s (estimated) > remaining budget "
                   f"{max(0, room):.0f} s" if row.compile else
                   f"~{row.estimate:.0f} s (estimated) > remaining budget {max(0, room):.0f} s")
            results.append({"name": row.name, "status": "skipped", "reason": why,
                            "estimate_s": row.estimate})
            continue
        note(f"throughput {row.name}")
        log = "bench/" + re.sub(r"[^a-z0-9]+", "_", row.name.lower()).strip("_") + ".log"
        cmd = [PY, "bench/train_throughput.py", "--loop", "optimised", *row.flags]
        status, stdout, stderr, seconds = run(cmd, log, min(2 * row.estimate, room))
        data = last_json(stdout)
        oom = is_oom(stdout, stderr) if status != 0 else None
        if status == 0 and data and data.get("results"):
            results.append({"name": row.name, "status": "ok", "seconds": round(seconds, 1),
                            "estimate_s": row.estimate, **data["results"][0]})
        elif oom is not None:  # a result, not a failure: the configuration does not fit
            results.append({**{k: v for k, v in oom.items() if k != "status"}, "name": row.name,
                            "status": "out of memory", "seconds": round(seconds, 1),
                            "log": log})
        else:
            tail = (stderr.strip() or stdout.strip()).splitlines()[-1:]
            results.append({"name": row.name, "status": f"failed ({status})", "log": log,
                            "seconds": round(seconds, 1), "tail": tail})
    return results


# ---------------------------------------------------------------------------- voice
SKIP_NO_PACK = "real-voice stage skipped: no pack (python bench/make_voice_pack.py)"


def read_training_run(work, run_name, keep):
    """The figures of a train.py run in `work` (output/, logs/), from its validation records
    (run_files) and train.log; the small files go to `keep`."""
    from run_files import RunFolder  # the repository's; NumPy only, no torch

    folder = RunFolder(os.path.join(work, "output", run_name))
    log = os.path.join(work, "logs", "train.log")
    os.makedirs(keep, exist_ok=True)
    snapshots = sorted(folder.snapshots().items())
    for path in (log, folder.diagnostics_path, folder.hparams_path,
                 *[p for _, p in snapshots[-1:]]):
        if os.path.exists(path):
            shutil.copy(path, keep)
    records = folder.records(strict=False)
    step_seconds, last_step = [], 0
    if os.path.exists(log):
        with open(log, encoding="utf-8") as f:
            for line in f:
                found = re.search(r"\bstep (\d+): .*?([0-9.]+) ?s/step", line)
                if found:
                    last_step = max(last_step, int(found.group(1)))
                    step_seconds.append(float(found.group(2)))
                found = re.search(r"\bfinished at step (\d+)", line)
                if found:
                    last_step = max(last_step, int(found.group(1)))
    last = records[-1] if records else None
    free = last.free_running if last is not None else None
    finite = all(isinstance(v, (int, float)) and v == v and abs(v) != float("inf")
                 for r in records for v in r.losses.values())
    median = statistics.median(step_seconds) if step_seconds else None

    def fr(name):
        return getattr(free, name) if free is not None else None

    return records, {
        "steps": last_step, "validations": len(records),
        "median_s_per_step": round(median, 4) if median else None,
        "steps_per_s": round(1 / median, 2) if median else None,
        "last_validation_step": last.step if last is not None else None,
        "loss": last.losses.get("total") if last is not None else None,
        "diagonal_score": last.diagonal_score if last is not None else None,
        "free_running_diagonal_score": fr("diagonal_score"),
        "free_running_end_reached_share": fr("end_reached_share"),
        "free_running_stopped_share": fr("stopped_share"),
        "free_running_near_length_share": fr("near_length_share"),
        "free_running_items": fr("items"),
        "losses_finite": finite,
    }


def voice_run():
    if not os.path.isfile(VOICE_PACK):
        note(SKIP_NO_PACK)
        return {"status": "skipped", "reason": SKIP_NO_PACK, "pack": VOICE_PACK}
    work = tempfile.mkdtemp(prefix="device_check_voice_")
    with tarfile.open(VOICE_PACK) as tar:
        extra = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
        tar.extractall(os.path.join(work, "data"), **extra)
    data = os.path.join(work, "data", "festvox_ru")
    lists = {name: os.path.join(data, f"{name}.txt") for name in ("train", "val")}
    clips = {}
    for name, path in lists.items():
        with open(path, encoding="utf-8") as f:
            clips[name] = sum(1 for line in f if line.strip())
    common = (f"training_files={lists['train']},validation_files={lists['val']},"
              "text_cleaners=[russian_cleaners],symbol_set=russian,max_audio_seconds=10,"
              "precision=bf16,cuda_graphs=true,iters_per_checkpoint=100000,keep_checkpoints=1,"
              "red_flag_action=warn,free_running_every=1,iters_per_audio=0")
    if DRY:  # the plumbing: two steps of the tiny model, one validation with free running
        steps, device, margin = ["--max_steps", "2"], "cpu", 0
        hparams = ("preset=tiny," + common + ",n_frames_per_step=3,batch_size=2,"
                   "iters_per_validation=2,free_running_items=2,max_decoder_steps=20")
        limit = max(60, left())
    else:  # every validation item decoded from text alone, every 50 steps
        steps, device, margin = [], "cuda", 30
        hparams = ("preset=default," + common + ",iters_per_validation=50,"
                   "free_running_items=1000,num_workers=8")
        limit = max(60, left())
    # train.py stops itself (and saves) once --max_minutes have passed since its start; the
    # margin covers its start, a validation begun just before and the last save.
    minutes = max(0.5, (limit - margin) / 60)
    cmd = [PY, "train.py", f"--hparams={hparams}", *steps, "--device", device,
           "--max_minutes", f"{minutes:.2f}", "--output_directory", os.path.join(work, "output"),
           "--log_directory", os.path.join(work, "logs"),
           "--tensorboard_directory", os.path.join(work, "runs"), "--run_name", "voice"]
    note(f"real-voice run: {clips['train']} training clips, {minutes:.1f} min")
    status, _, stderr, seconds = run(cmd, "voice_run/stdout.log", limit)
    records, figures = read_training_run(work, "voice", os.path.join(LOGS, "voice_run"))
    shutil.rmtree(work, ignore_errors=True)  # checkpoints (hundreds of MB) are not kept
    ok = (status == 0 and bool(records) and figures["losses_finite"]
          and all(r.free_running is not None for r in records))
    result = {"status": "ok" if ok else f"failed ({status})", "exit": status,
              "seconds": round(seconds, 1), "pack": VOICE_PACK, "train_clips": clips["train"],
              "validation_clips": clips["val"], **figures}
    if not ok:
        result["tail"] = stderr.strip().splitlines()[-1:]
    return result


# ---------------------------------------------------------------------------- report
def fmt(value, spec=",.0f"):
    return "-" if value is None else format(value, spec)


def share(value):
    return "-" if value is None else f"{100 * value:.0f}%"


def best(results, **where):
    found = [r for r in results if r.get("status") == "ok"
             and all(r.get(k) == v for k, v in where.items())]
    return max(found, key=lambda r: r["real_frames_per_s"]) if found else None


def row_line(row, bench):
    if row["status"] == "skipped":
        return f"{row['name']:<30} skipped: {row['reason']}"
    if row["status"] == "out of memory":
        total = (f" of {row['device_total_mb']:,.0f} MB" if row.get("device_total_mb") else "")
        peak = f"peak {row['peak_mb']:,.0f} MB{total}; " if row.get("peak_mb") else ""
        return f"{row['name']:<30} {'out of memory':<14} {peak}{row.get('error', '')[:90]}"
    if row["status"] != "ok":
        return f"{row['name']:<30} {row['status']:<14} see {row.get('log')}"
    base = best(bench, precision=row["precision"], r=row["r"], batch_size=row["batch_size"],
                cuda_graphs=False, compile=False)
    frames = row["real_frames_per_s"]
    vs_eager = f"{frames / base['real_frames_per_s']:.2f}x" if base else "-"
    nvidia = (f"{frames / NVIDIA_H200[row['precision']]:.2f}x"
              if row["batch_size"] == 128 and row["r"] == 1 and row["precision"] in NVIDIA_H200
              else "-")
    target = TARGETS.get((row["precision"], row["batch_size"], row["r"]))
    verdict = "" if target is None else (
        f">= {target:,}: " + ("not measured (dry run)" if DRY else
                              "met" if frames >= target else "NOT MET"))
    return (f"{row['name']:<30} {'ok':<14} {fmt(frames):>13} {row['s_per_step']:>8.3f} "
            f"{fmt(row['peak_mb']):>8} {100 * row['padding_share']:>7.1f}% {vs_eager:>8} "
            f"{nvidia:>8}  {verdict}")


def targets_summary(bench):
    summary = {}
    for (precision, batch, r), target in TARGETS.items():
        found = best(bench, precision=precision, batch_size=batch, r=r)
        figure = found and found["real_frames_per_s"]
        summary[f"{precision} b{batch} r{r}"] = {
            "target": target, "best": figure, "row": found and found["name"],
            "met": None if DRY or figure is None else figure >= target}
    return summary


def voice_line(voice):
    name = "real voice (festvox-ru)"
    if voice["status"] == "skipped":
        return f"{name:<30} {voice['reason']}"
    text = (f"{name:<30} {voice['status']:<14} {voice['steps']} steps (stage "
            f"{voice['seconds']:.0f} s), {fmt(voice['steps_per_s'], '.2f')} steps/s; "
            f"validation step {fmt(voice['last_validation_step'], 'd')}: loss {fmt(voice['loss'], '.3f')}, "
            f"diagonality TF {fmt(voice['diagonal_score'], '.2f')} "
            f"FR {fmt(voice['free_running_diagonal_score'], '.2f')}")
    items = voice["free_running_items"]
    return (text + f"\n{'':<30} {'':<14} free running, {fmt(items, 'd')} validation items: read "
            f"to the end {share(voice['free_running_end_reached_share'])}, stopped on the gate "
            f"{share(voice['free_running_stopped_share'])}, near the true length "
            f"{share(voice['free_running_near_length_share'])}")


def archive_logs():
    """LOGS -> OUT/device_check_logs.tar.gz, then LOGS removed."""
    path = os.path.join(OUT, "device_check_logs.tar.gz")
    with tarfile.open(path, "w:gz") as tar:
        tar.add(LOGS, arcname="logs")
    shutil.rmtree(LOGS, ignore_errors=True)
    return path


def main() -> int:
    note(f"device check{' (CPU dry run)' if DRY else ''}; output in {OUT}")
    os.makedirs(LOGS, exist_ok=True)
    env = environment()
    if env["status"] == "torch missing":
        print("device_check.sh: torch is not importable; install a CUDA build of torch first",
              file=sys.stderr)
        return 2
    note(f"environment: {env['status']} ({env.get('device')}, torch {env.get('torch')})")
    ready = env["status"] == "ok"
    tests, bench, voice = {"status": "not run"}, [], {"status": "not run"}
    if ready and "tests" in STAGES:
        note("cuda tests")
        tests = cuda_tests()
    if ready and "rows" in STAGES:
        bench = throughput()
    if ready and "voice" in STAGES:
        voice = voice_run()

    lines = [f"device check{' (CPU dry run: tiny sizes, CUDA parts skipped)' if DRY else ''}: "
             f"{env.get('device', '?')}, torch {env.get('torch', '?')}, "
             f"CUDA {env.get('cuda_version')}; output {OUT}",
             f"{'stage / row':<30} {'status':<14} {'real frames/s':>13} {'s/step':>8} "
             f"{'peak MB':>8} {'padding':>8} {'vs eager':>8} {'x NVIDIA':>8}  target"]
    extra = ""
    if env["missing"]:
        source = env.get("installed_from")
        extra = (f" (missing: {', '.join(env['missing'])}"
                 + (f"; installed from {source}" if source else "") + ")")
    lines.append(f"{'environment':<30} {env['status']}{extra}")
    if tests.get("status") != "not run":
        lines.append(f"{'cuda tests':<30} {tests['status']:<14} {tests['passed']} passed, "
                     f"{tests['failed'] + tests['errors']} failed, {tests['skipped']} skipped; "
                     f"{tests['seconds']:.0f} s of {tests['limit_s']} s")
    lines += [row_line(row, bench) for row in bench]
    if voice.get("status") != "not run":
        lines.append(voice_line(voice))
    targets = targets_summary(bench)
    if bench:
        lines.append("x NVIDIA (H200 figure): real frames/s over NVIDIA's own training step at "
                     "batch 128, r=1, on one H200: "
                     + ", ".join(f"{v:,} {k}" for k, v in NVIDIA_H200.items()) + " frames/s")
    for key, found in targets.items():
        verdict = ("not measured (dry run)" if DRY else "not measured" if found["best"] is None
                   else "MET" if found["met"] else "NOT MET")
        lines.append(f"{'target ' + key + ' >= ' + format(found['target'], ','):<30} "
                     f"{verdict:<24} {fmt(found['best'])}")
    table = "\n".join(line.rstrip() for line in lines)
    failed = (env["status"] != "ok"
              or ("tests" in STAGES and tests.get("status") != "ok")
              or any(r["status"].startswith("failed") for r in bench)
              or voice.get("status", "").startswith("failed"))
    report = {"bench": "device_check", "dry_run": DRY, "ok": not failed,
              "stages": sorted(STAGES), "budget_s": BUDGET, "seconds": round(elapsed(), 1),
              "out": OUT, "environment": env, "cuda_tests": tests, "throughput": bench,
              "voice": voice, "targets": targets, "nvidia_h200": NVIDIA_H200}
    with open(os.path.join(OUT, "device_check.txt"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(OUT, "device_check.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=1)
    archive_logs()
    print(table)
    print(json.dumps(report))
    return 1 if failed else 0


sys.exit(main())
PY
