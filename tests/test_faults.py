"""bench/faults.py: its checks can see a lost file, an inexact resume and a temporary file; its
quick campaign runs clean (every kill survived, every resume exact, 0 files lost, 0 tracebacks)."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import faults  # noqa: E402


def _checkpoint(path, value=0.0, python_state=1):
    torch.save({"iteration": 2, "state_dict": {"w": torch.full((3,), value)},
                "rng": {"torch": torch.zeros(2, dtype=torch.uint8),
                        "python": {"version": 3, "state": [python_state], "gauss_next": None}}},
               path)


def _run_folder(tmp_path):
    run = tmp_path / "run"
    (run / "alignments").mkdir(parents=True)
    _checkpoint(run / "checkpoint_2")
    _checkpoint(run / "checkpoint_4")
    os.symlink("checkpoint_4", run / "checkpoint_LATEST")
    (run / "hparams.json").write_text("{}")
    (run / "diagnostics.jsonl").write_text('{"step": 4}\n')
    return run


def test_an_intact_run_folder_loses_nothing(tmp_path):
    ledger = faults.Ledger()
    result = faults.check_run_files(str(_run_folder(tmp_path)), ledger, "t", final=True)
    assert result["lost"] == 0 and ledger.files_lost == [] and result["records"] == [4]


def test_a_cut_checkpoint_and_a_dangling_latest_are_lost_files(tmp_path):
    run = _run_folder(tmp_path)
    data = (run / "checkpoint_4").read_bytes()
    (run / "checkpoint_4").write_bytes(data[: len(data) // 2])
    ledger = faults.Ledger()
    result = faults.check_run_files(str(run), ledger, "t", final=False)
    # checkpoint_4 itself, and checkpoint_LATEST that points at it
    assert result["lost"] == 2, ledger.files_lost
    assert "checkpoint_4 does not load" in ledger.files_lost[0]


def test_a_torn_last_record_is_allowed_after_a_kill_but_not_after_the_resume(tmp_path):
    run = _run_folder(tmp_path)
    with open(run / "diagnostics.jsonl", "a") as f:
        f.write('{"step": 8, "los')
    after_kill = faults.check_run_files(str(run), faults.Ledger(), "t", final=False)
    assert after_kill["lost"] == 0 and after_kill["torn_diagnostics"]
    ledger = faults.Ledger()
    assert faults.check_run_files(str(run), ledger, "t", final=True)["lost"] == 1
    assert "torn line" in ledger.files_lost[0]


def test_orphaned_temporaries_and_vanished_files_are_lost_after_the_resume(tmp_path):
    run = _run_folder(tmp_path)
    expected = faults.run_inventory(str(run))
    (run / "hparams.json.tmp123").write_text("{")
    (run / "alignments" / "step_4.tmp123.npz").write_bytes(b"PK")
    (run / "checkpoint_2").unlink()
    ledger = faults.Ledger()
    result = faults.check_run_files(str(run), ledger, "t", final=True, expected=expected)
    assert result["lost"] == 3, ledger.files_lost
    assert sum("orphaned temporary" in t for t in ledger.files_lost) == 2
    assert any("checkpoint_2: existed after the kill" in t for t in ledger.files_lost)


def test_checkpoint_difference_is_bit_for_bit_but_ignores_pythons_unused_rng(tmp_path):
    _checkpoint(tmp_path / "a", 1.0, python_state=1)
    _checkpoint(tmp_path / "b", 1.0, python_state=2)
    _checkpoint(tmp_path / "c", 1.0 + 2 ** -20)
    assert faults.checkpoint_difference(str(tmp_path / "a"), str(tmp_path / "b")) is None
    assert faults.checkpoint_difference(str(tmp_path / "a"), str(tmp_path / "c")) == "/state_dict/w"


def test_the_watch_sees_a_temporary_file_come_and_go(tmp_path):
    watch = faults.DirWatch([str(tmp_path)])
    pid = 4242

    def write():
        time.sleep(0.1)
        tmp = tmp_path / f"checkpoint_6.tmp{pid}"
        tmp.write_bytes(b"x" * 100)
        os.replace(tmp, tmp_path / "checkpoint_6")

    threading.Thread(target=write).start()
    seen, deadline = [], time.monotonic() + 5
    while len(seen) < 3 and time.monotonic() < deadline:
        seen += [(kind, name) for _, kind, _, name in watch.events(0.1)]
    watch.close()
    assert ("create", f"checkpoint_6.tmp{pid}") in seen
    assert ("gone", f"checkpoint_6.tmp{pid}") in seen
    assert faults.temporary_pattern("checkpoint", pid).match(f"checkpoint_6.tmp{pid}")
    assert not faults.temporary_pattern("checkpoint", pid).match(f"checkpoint_LATEST.tmp{pid}")
    assert faults.temporary_pattern("snapshot", pid).match(f"step_4.tmp{pid}.npz")


def test_kill_plans_cover_each_kind_and_repeat_with_the_seed():
    import random
    ref = faults.Reference(wall=20.0)
    targets = ["random"] + list(faults.TARGETED)
    n = len(faults.KILL_CYCLE)
    plans = faults.plan_kills(n, random.Random(0), ref, targets)
    assert [p.kind for p in plans] == list(faults.KILL_CYCLE)
    assert set(faults.KILL_CYCLE) == set(targets)
    again = faults.plan_kills(n, random.Random(0), ref, targets)
    assert [(p.anchor_step, p.at_seconds, p.occurrence) for p in plans] == \
        [(p.anchor_step, p.at_seconds, p.occurrence) for p in again]
    randoms = [p for p in plans if p.kind == "random"]
    assert all(0 <= p.anchor_step < faults.KILL_STEPS and 0 <= p.at_seconds <= 2 for p in randoms)
    default = faults.parse_args([]).targets
    assert [p.kind for p in faults.plan_kills(10, random.Random(0), ref, default)] == [
        "checkpoint", "random", "snapshot", "random", "checkpoint", "random", "snapshot",
        "random", "hparams", "random"]


@pytest.mark.slow
def test_the_quick_campaign_is_clean(tmp_path):
    """Reference run, 2 kills (one inside a checkpoint write) with their resumes, 5 bad inputs,
    30 fuzzed inputs, 2 fuzzed command lines, 2 divergence injections, 1 concurrent trainer:
    about a minute on 2 cores."""
    pytest.importorskip("hypothesis")
    cmd = [sys.executable, os.path.join(ROOT, "bench", "faults.py"), "--quick", "--kills", "2",
           "--fuzz", "10", "--workdir", str(tmp_path / "campaign")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    figures = json.loads(lines[-1])
    table = "\n".join(lines[:-1])
    for row in ("kills survived / tried", "resumes exact / tried",
                "bad inputs rejected cleanly / tried", "fuzzed hparams strings clean / tried",
                "fuzzed filelists clean / tried", "fuzzed texts clean / tried",
                "divergence injections caught / tried", "concurrent trainers refused / tried",
                "tracebacks seen", "files lost"):
        assert row in table, table
    assert figures["files_lost"] == 0 and figures["tracebacks"] == 0, table
    kills = figures["kills"]
    assert kills["tried"] == 2 and kills["survived"] == 2, table
    assert kills["by_kind"]["checkpoint"]["tried"] == 1
    assert figures["resumes"]["exact"] == figures["resumes"]["tried"]
    assert figures["bad_inputs"]["rejected_cleanly"] == figures["bad_inputs"]["tried"] == 5
    for target in figures["fuzz"].values():
        assert target["tried"] == 10 and target["tracebacks"] == 0
    assert figures["divergence"]["caught"] == figures["divergence"]["tried"] == 2
    assert figures["concurrent"]["refused"] == figures["concurrent"]["tried"] == 1
    assert figures["clean"] is True
