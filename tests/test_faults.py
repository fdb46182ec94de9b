"""The fault campaign: trainers killed with SIGKILL (at a random moment, and inside checkpoint,
snapshot and hparams.json writes) resume bit for bit; bad checkpoints and alignments given to the
real command lines are refused in one line, with nothing lost and no code run; a second
trainer resuming a busy run folder is refused. The harness's own checks are tested first, on
hand-made run folders (fast); everything that starts a trainer is `slow`.

test_long_runs.py covers what is not repeated here: resuming in the middle of an epoch, records
newer than the checkpoint, divergence (non-finite steps, an exploding loss), a second trainer
starting fresh on a busy folder, and bad hparams and folders on train.py's command line;
test_check_data.py gives train.py a filelist with audio too long and a text without letters.

    python -m pytest tests/test_faults.py tests/test_fuzz.py -m slow
    python -m pytest tests/test_faults.py -m slow --fault-kills 12 --fault-seed 3

ends with one line, "fault campaign: kills survived n/n ...; resumes exact n/n; bad inputs
refused cleanly n/n; ...; files lost 0; tracebacks 0" (conftest.py prints it).
"""
from __future__ import annotations

import dataclasses
import os
import random
import re
import signal
import sys
import threading
import time
from typing import Callable, Dict, List

import pytest
import torch

from checkpoint import save_checkpoint
from fault_harness import (TEMPORARIES, TRACEBACK, DirWatch, KillPlan, Tally, Workspace,
                           check_run_files, checkpoint_difference, checkpoint_path,
                           has_checkpoint, lock_pid, run_inventory, temporary_pattern,
                           watched_run)
from helpers import ROOT, seeded_model, tiny, wait_for

KILL_STEPS = 8  # every kill trains to this step, like the reference run
# a checkpoint every 2 steps, a validation (and its alignment snapshot) every 4; keep_checkpoints=0
# so that no checkpoint is pruned and every one must survive every kill
RUN_HPARAMS = ("iters_per_checkpoint=2,iters_per_validation=4,keep_checkpoints=0,"
               "iters_per_audio=0,free_running_every=0")
# The kinds of kill, in turn (--fault-kills takes the first n): inside a checkpoint write, an
# alignment snapshot write, at a random moment, inside the hparams.json write at the start, ...
# The checkpoint_LATEST link lives ~0.1 ms, too short to land in, so it comes late.
KILL_CYCLE = ("checkpoint", "snapshot", "random", "hparams", "random", "checkpoint", "snapshot",
              "random", "latest", "random")
# how many of a kind a run of KILL_STEPS steps writes before its last: checkpoints 2, 4, 6 (a kill
# at the first leaves nothing to resume from), snapshots 4 and 8, hparams.json once at the start
OCCURRENCES = {"checkpoint": 3, "snapshot": 2, "latest": 3, "hparams": 1}


def pytest_generate_tests(metafunc):
    if "kill_index" in metafunc.fixturenames:
        n = metafunc.config.getoption("fault_kills")
        metafunc.parametrize("kill_index", range(n),
                             ids=[f"{i}-{KILL_CYCLE[i % len(KILL_CYCLE)]}" for i in range(n)])


# ---------------------------------------------------------------------------------- the checks
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
    result = check_run_files(str(_run_folder(tmp_path)), final=True)
    assert result.lost == [] and result.records == [4]


def test_a_cut_checkpoint_and_a_dangling_latest_are_lost_files(tmp_path):
    run = _run_folder(tmp_path)
    data = (run / "checkpoint_4").read_bytes()
    (run / "checkpoint_4").write_bytes(data[: len(data) // 2])
    result = check_run_files(str(run), final=False)
    # checkpoint_4 itself, and checkpoint_LATEST that points at it
    assert len(result.lost) == 2, result.lost
    assert "checkpoint_4 does not load" in result.lost[0]


def test_a_torn_last_record_is_allowed_after_a_kill_but_not_after_the_resume(tmp_path):
    run = _run_folder(tmp_path)
    with open(run / "diagnostics.jsonl", "a") as f:
        f.write('{"step": 8, "los')
    after_kill = check_run_files(str(run), final=False)
    assert after_kill.lost == [] and after_kill.torn_diagnostics
    final = check_run_files(str(run), final=True)
    assert len(final.lost) == 1 and "torn line" in final.lost[0]


def test_orphaned_temporaries_and_vanished_files_are_lost_after_the_resume(tmp_path):
    run = _run_folder(tmp_path)
    expected = run_inventory(str(run))
    (run / "hparams.json.tmp123").write_text("{")
    (run / "alignments" / "step_4.tmp123.npz").write_bytes(b"PK")
    (run / "checkpoint_2").unlink()
    result = check_run_files(str(run), final=True, expected=expected)
    assert len(result.lost) == 3, result.lost
    assert sum("orphaned temporary" in t for t in result.lost) == 2
    assert any("checkpoint_2: existed after the kill" in t for t in result.lost)


def test_checkpoint_difference_is_bit_for_bit_but_ignores_pythons_unused_rng(tmp_path):
    _checkpoint(tmp_path / "a", 1.0, python_state=1)
    _checkpoint(tmp_path / "b", 1.0, python_state=2)
    _checkpoint(tmp_path / "c", 1.0 + 2 ** -20)
    assert checkpoint_difference(str(tmp_path / "a"), str(tmp_path / "b")) is None
    assert checkpoint_difference(str(tmp_path / "a"), str(tmp_path / "c")) == "/state_dict/w"


def test_the_watch_sees_a_temporary_file_come_and_go(tmp_path):
    watch = DirWatch([str(tmp_path)])
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
    assert temporary_pattern("checkpoint", pid).match(f"checkpoint_6.tmp{pid}")
    assert not temporary_pattern("checkpoint", pid).match(f"checkpoint_LATEST.tmp{pid}")
    assert temporary_pattern("snapshot", pid).match(f"step_4.tmp{pid}.npz")


def test_the_summary_line_says_what_was_tried_and_how_it_went():
    tally = Tally()
    tally.kills = {"checkpoint": [(True, True)], "random": [(True, False), (False, True)]}
    tally.resumes, tally.fresh_restarts = [True, True], 1
    tally.bad_inputs = [True, False]
    tally.fuzz_counts("texts")[:] = [30, 12, 18]
    tally.files_lost, tally.processes = ["x: gone"], 9
    assert tally.summary() == (
        "fault campaign: kills survived 2/3 (checkpoint write 1/1 (landed inside it 1/1), "
        "random moment 1/2 (1 inside a write)); resumes exact 2/2 (1 a fresh restart); "
        "bad inputs refused cleanly 1/2; fuzzed texts clean 30/30 (accepted 12, refused 18); "
        "files lost 1; tracebacks 0 in 9 processes")


# ---------------------------------------------------------------------------------- kills
@dataclasses.dataclass
class Reference:
    """The uninterrupted run every killed one is compared with."""
    run_dir: str
    records: List[int]  # its validation steps
    windows: Dict[str, List[float]]  # seconds each temporary file of a kind lived

    def window(self, kind: str) -> float:
        values = sorted(self.windows.get(kind) or [])
        return values[len(values) // 2] if values else 0.0


def plan_kill(index: int, seed: int, ref: Reference) -> KillPlan:
    """The kill of `index`: its kind from KILL_CYCLE, its moment drawn from (seed, index)."""
    rng = random.Random(f"{seed}:{index}")
    kind = KILL_CYCLE[index % len(KILL_CYCLE)]
    plan = KillPlan(kind)
    if kind == "random":
        # anywhere in the run: in the start-up (data check, model, the first batch), or up to
        # half a second (a few tiny steps) after a step's log line: its validation, checkpoint,
        # the next step
        plan.anchor_step = rng.randint(0, KILL_STEPS - 2)
        plan.at_seconds = rng.uniform(0.0, 2.0 if plan.anchor_step == 0 else 0.5)
    else:
        plan.occurrence = rng.randint(1, OCCURRENCES[kind])
        # somewhere in the first half of a write as long as on the reference run; at once for
        # writes of a few milliseconds (the watch's own reaction takes part of it)
        share, window = rng.uniform(0.0, 0.5), ref.window(kind)
        plan.delay = share * window if window > 0.005 else 0.0
    return plan


@pytest.fixture(scope="module")
def quick_thread_switches():
    """The watching thread must get the interpreter at once when a temporary file appears."""
    saved = sys.getswitchinterval()
    sys.setswitchinterval(0.0005)
    yield
    sys.setswitchinterval(saved)


@pytest.fixture(scope="module")
def reference(fault_workspace, quick_thread_switches) -> Reference:
    ws = fault_workspace
    run_dir = ws.run_dir("reference")
    cmd = ws.train_cmd("reference", f"{ws.base},{RUN_HPARAMS}", f"--max_steps={KILL_STEPS}")
    result, info = watched_run(ws, "reference", cmd, run_dir)
    assert result.rc == 0, f"the reference run failed (exit {result.rc}): {result.tail()}"
    files = check_run_files(run_dir, final=True)
    assert files.lost == [] and os.path.exists(checkpoint_path(run_dir, KILL_STEPS)), files.lost
    return Reference(run_dir, files.records, info["windows"])


def test_kill_plans_follow_the_cycle_and_repeat_with_the_seed():
    ref = Reference("", [], {"checkpoint": [0.05], "snapshot": [0.002]})
    plans = [plan_kill(i, 0, ref) for i in range(len(KILL_CYCLE))]
    assert [p.kind for p in plans] == list(KILL_CYCLE)
    assert set(KILL_CYCLE) == {"random"} | set(TEMPORARIES)
    assert plans == [plan_kill(i, 0, ref) for i in range(len(KILL_CYCLE))]
    assert plans != [plan_kill(i, 1, ref) for i in range(len(KILL_CYCLE))]
    for p in plans:
        if p.kind == "random":
            assert 0 <= p.anchor_step < KILL_STEPS - 1 and 0 <= p.at_seconds <= 2
        else:
            assert 1 <= p.occurrence <= OCCURRENCES[p.kind]
    assert all(p.delay <= 0.025 for p in plans if p.kind == "checkpoint")
    assert all(p.delay == 0 for p in plans if p.kind == "snapshot")  # a 2 ms write: at once


@pytest.mark.slow
def test_a_killed_trainer_resumes_exactly(fault_workspace, fault_tally, reference, kill_index,
                                          fault_seed):
    """SIGKILL (as planned by `plan_kill`), then `train.py -c checkpoint_LATEST` (a fresh start
    when no checkpoint was written yet): the run finishes, no file is lost, and its checkpoint of
    the last step and its validation records equal the uninterrupted run's, bit for bit."""
    ws = fault_workspace
    plan = plan_kill(kill_index, fault_seed, reference)
    run_name = f"kill{kill_index:02d}"
    run_dir = ws.run_dir(run_name)
    hparams = f"{ws.base},{RUN_HPARAMS}"
    victim, info = watched_run(ws, f"{run_name}_victim",
                               ws.train_cmd(run_name, hparams, f"--max_steps={KILL_STEPS}"),
                               run_dir, plan)
    if victim.rc != -signal.SIGKILL:
        assert victim.rc == 0, f"the trainer failed before the kill: {victim.tail()}"
        pytest.skip(f"the trainer finished before the kill ({plan})")
    after_kill = run_inventory(run_dir)
    first = check_run_files(run_dir, final=False)
    resumed = has_checkpoint(run_dir)
    more = (["-c", checkpoint_path(run_dir)] if resumed else []) + [f"--max_steps={KILL_STEPS}"]
    second = ws.run(f"{run_name}_resume", ws.train_cmd(run_name, hparams, *more))
    final = check_run_files(run_dir, final=True, expected=after_kill)
    lost = first.lost + final.lost
    mine = checkpoint_path(run_dir, KILL_STEPS)
    diff = (checkpoint_difference(mine, checkpoint_path(reference.run_dir, KILL_STEPS))
            if second.rc == 0 and os.path.exists(mine) else "no checkpoint")
    fault_tally.kills.setdefault(plan.kind, []).append((second.rc == 0, info["landed"]))
    fault_tally.files_lost += lost
    if second.rc == 0:
        fault_tally.resumes.append(diff is None and final.records == reference.records)
        fault_tally.fresh_restarts += not resumed
    what = (f"{plan}, killed at {info['kill_time']:.2f} s"
            + (f" inside {info['tmp']}" if info["landed"] else ""))
    assert second.rc == 0, f"{what}: the run after the kill exited {second.rc}: {second.tail()}"
    assert lost == [], f"{what}: files lost: {lost}"
    assert diff is None, f"{what}: checkpoint_{KILL_STEPS} differs from the reference at {diff}"
    assert final.records == reference.records, what


# ---------------------------------------------------------------------------------- two trainers
@pytest.mark.slow
def test_a_second_trainer_resuming_a_busy_run_folder_is_refused(fault_workspace, fault_tally):
    """While a trainer runs, `train.py -c <its checkpoint_LATEST>` exits 2 with one line naming
    its pid, and the first goes on; SIGTERM then stops the first cleanly, nothing lost."""
    ws = fault_workspace
    run_name = "concurrent"
    run_dir = ws.run_dir(run_name)
    hparams = f"{ws.base},{RUN_HPARAMS},iters_per_validation=10"
    cmd = ws.train_cmd(run_name, hparams, "--max_steps=200")
    first, out, err, started = ws.start(run_name, cmd)
    second = None
    try:
        ready = wait_for(lambda: has_checkpoint(run_dir) and lock_pid(run_dir) == first.pid,
                         150, proc=first)
        if ready:
            label = f"{run_name}_second"
            second = ws.run(label, ws.train_cmd(run_name, hparams, "-c", checkpoint_path(run_dir),
                                                "--max_steps=200", log_name=label), timeout=180)
        first_alive = first.poll() is None
    finally:
        first.send_signal(signal.SIGTERM)
        result = ws.finish(run_name, cmd, first, out, err, started)
    files = check_run_files(run_dir, final=True)
    fault_tally.files_lost += files.lost
    refused = (second is not None and second.rc == 2 and first_alive
               and len(second.stderr.splitlines()) == 1
               and re.match(rf"error: another trainer \(pid {first.pid}\) is using",
                            second.stderr) is not None)
    fault_tally.concurrent.append(refused)
    assert ready, f"the first trainer never wrote a checkpoint: {result.tail()}"
    assert refused, (f"exit {second.rc}, first trainer alive: {first_alive}, stderr "
                     f"{second.stderr!r}")
    assert result.rc == 128 + signal.SIGTERM, result.tail()
    assert "stopped by signal 15" in result.stdout, result.tail()
    assert files.lost == []
    assert files.records == sorted(set(files.records)), "records interleaved or repeated"


# ---------------------------------------------------------------------------------- bad input
class _CodePayload:
    """Pickles as a call of os.system: what a checkpoint carrying code looks like."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.fixture(scope="module")
def bad_files(fault_workspace) -> Dict[str, str]:
    """Files no command line must accept: three checkpoints (random bytes, cut in half, carrying
    code) and a text file as an alignment; "CODE_RAN" is the file the code would create."""
    ws = fault_workspace
    folder = os.path.join(ws.root, "bad")
    os.makedirs(folder, exist_ok=True)
    files = {name: os.path.join(folder, name) for name in
             ("random.pt", "truncated.pt", "code.pt", "notes.txt", "CODE_RAN")}
    with open(files["random.pt"], "wb") as f:
        f.write(random.Random(7).randbytes(4096))
    hp = tiny()
    whole = save_checkpoint(os.path.join(folder, "whole.pt"), model=seeded_model(hp),
                            optimizer=None, hp=hp, step=2, update_latest=False)
    with open(whole, "rb") as f:
        data = f.read()
    with open(files["truncated.pt"], "wb") as f:
        f.write(data[: len(data) // 2])
    torch.save({"state_dict": _CodePayload(f"touch {files['CODE_RAN']}")}, files["code.pt"])
    with open(files["notes.txt"], "w", encoding="utf-8") as f:
        f.write("step 400: the attention looks diagonal\n")
    return files


@dataclasses.dataclass
class BadInput:
    name: str
    command: Callable[[Workspace, Dict[str, str], str], List[str]]  # (ws, files, run) -> argv
    message: str  # a regex the one line on stderr must match
    kept: str  # the bad file, which must still be there afterwards


def _resume_from(name: str) -> Callable[[Workspace, Dict[str, str], str], List[str]]:
    """train.py for 2 steps from the bad file `name` (-c)."""
    def command(ws: Workspace, files: Dict[str, str], run: str) -> List[str]:
        return ws.train_cmd(run, ws.base, "--max_steps=2", "-c", files[name])
    return command


# (A filelist with audio too long or a text without letters: test_check_data.py gives it to
# train.py.)
BAD_INPUTS = [
    BadInput("-c random bytes", _resume_from("random.pt"),
             r"^error: \S+random\.pt: not a PyTorch checkpoint", "random.pt"),
    BadInput("-c a checkpoint cut short", _resume_from("truncated.pt"),
             r"^error: \S+truncated\.pt: truncated", "truncated.pt"),
    BadInput("-c a checkpoint carrying code", _resume_from("code.pt"),
             r"^error: \S+code\.pt: contains code \(blocked global `os\.system`\) and was refused",
             "code.pt"),
    BadInput("--alignment a text file",
             lambda ws, f, run: [sys.executable, os.path.join(ROOT, "alignment_diagnostics.py"),
                                 f"--alignment={f['notes.txt']}", "--no-plot"],
             r"^alignment_diagnostics: error: \S+notes\.txt: not a NumPy file", "notes.txt"),
]


@pytest.mark.slow
@pytest.mark.parametrize("bad", BAD_INPUTS, ids=[b.name for b in BAD_INPUTS])
def test_bad_input_is_refused_in_one_line_with_nothing_lost(fault_workspace, fault_tally,
                                                           bad_files, bad):
    """Exit 2 and one line on stderr naming the file and what is wrong with it, no traceback, the
    bad file left where it was, no code run, no file lost."""
    ws = fault_workspace
    run_name = "bad_" + re.sub(r"\W+", "_", bad.name).strip("_")
    result = ws.run(run_name, bad.command(ws, bad_files, run_name), timeout=180)
    why = []
    if result.rc != 2:
        why.append(f"exit {result.rc}, expected 2")
    if len(result.stderr.splitlines()) != 1:
        why.append(f"{len(result.stderr.splitlines())} lines on stderr, expected one")
    if not re.search(bad.message, result.stderr):
        why.append(f"stderr does not match {bad.message!r}")
    if TRACEBACK in result.stderr:
        why.append("a traceback")
    if os.path.exists(bad_files["CODE_RAN"]):
        why.append("THE PICKLED CODE RAN")
    lost = check_run_files(ws.run_dir(run_name), final=True).lost
    if not os.path.exists(bad_files[bad.kept]):
        lost.append(f"{bad_files[bad.kept]} was removed")
    fault_tally.files_lost += lost
    fault_tally.bad_inputs.append(not why and not lost)
    assert not why, f"{'; '.join(why)}: {' '.join(result.cmd)}\n{result.tail()}"
    assert lost == []
