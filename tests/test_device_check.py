"""bench/device_check.sh --cpu-dry-run: the GPU check's plumbing, on a CPU.

The dry run takes every stage of the real check at tiny sizes (environment, the `cuda` tests -
all skipped here, two throughput rows, a short train.py run with validation and free running)
and must print its table and JSON line and leave its files under $OUT. About 40 s of CPU time.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "bench", "device_check.sh")


def _run(args, tmp_path, out=None):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1")
    env.pop("OUT", None)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", SCRIPT, *args], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)


def test_cpu_dry_run_prints_table_and_json_and_keeps_files(tmp_path):
    out = tmp_path / "out"
    proc = _run(["--cpu-dry-run"], tmp_path, out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.strip().splitlines()
    report = json.loads(lines[-1])
    assert report["bench"] == "device_check" and report["dry_run"] and report["ok"]
    assert report["out"] == str(out)

    table = "\n".join(lines[:-1])
    for row in ("stage / row", "environment", "cuda tests", "fp32 b2 r2 graphs",
                "fp32 b2 r2 eager", "training run", "target >= 100,000"):
        assert row in table, row
    assert "not measured (dry run)" in table

    tests = report["cuda_tests"]  # collected and skipped without a GPU, and counted
    assert tests["status"] == "ok" and tests["skipped"] >= 10
    assert tests["passed"] == tests["failed"] == tests["errors"] == 0

    rows = report["throughput"]
    assert [r["name"] for r in rows] == ["fp32 b2 r2 graphs", "fp32 b2 r2 eager"]
    assert all(r["status"] == "ok" and r["real_frames_per_s"] > 0 for r in rows)
    assert [r["cuda_graphs"] for r in rows] == [True, False]
    assert report["targets"]["best_graphs_r1"] == rows[0]["real_frames_per_s"]
    assert report["targets"]["met"] is None  # no target on a CPU

    run = report["training_run"]
    assert run["status"] == "ok" and run["steps"] == 2 and run["validations"] == 1
    assert run["losses_finite"] and run["free_running_stopped_share"] is not None

    assert json.loads((out / "device_check.json").read_text()) == report
    assert (out / "device_check.txt").read_text().strip() == table
    assert (out / "cuda_tests.xml").is_file() and (out / "cuda_tests.log").is_file()
    assert (out / "bench" / "fp32_b2_r2_graphs.log").is_file()
    records = (out / "train_run" / "diagnostics.jsonl").read_text().splitlines()
    assert [json.loads(r)["step"] for r in records] == [2]
    assert (out / "train_run" / "train.log").is_file()


def test_unknown_argument_is_one_clear_error(tmp_path):
    proc = _run(["--gpu-please"], tmp_path)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("device_check.sh: unknown argument '--gpu-please' "
                                   "(use --cpu-dry-run or --help)")
