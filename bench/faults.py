"""Fault campaign: kill -9, exact resume, bad and fuzzed input, divergence, two trainers.

    python bench/faults.py                       # the default campaign (a few minutes on 2 cores)
    python bench/faults.py --kills 20 --seed 3   # more kills, another draw
    python bench/faults.py --quick --kills 2 --fuzz 10 --workdir /tmp/faults   # the test's run

Every figure comes from real runs of `train.py` (tiny preset, a generated corpus, CPU, one
thread) and real calls of the parsers; nothing is simulated. What it does:

- kills: a trainer is started and killed with SIGKILL, either at a random moment or the moment
  a checkpoint's (`checkpoint_N.tmp<pid>`) or an alignment snapshot's (`step_N.tmp<pid>.npz`)
  temporary file appears (inotify; a short random delay inside the write window measured on the
  reference run). Then the run is resumed with `-c checkpoint_LATEST` (a fresh start when no
  checkpoint existed yet). A kill is survived when that run exits 0. After the kill and again
  after the resume every file is checked (see `check_run_files`): a file that no longer loads, a
  file gone, an orphaned temporary or a torn diagnostics.jsonl left after the resume is a lost
  file. The resumed run's last checkpoint is compared bit for bit (every tensor, the optimizer,
  RNG and sampler state) with the same step of an uninterrupted reference run.
- bad inputs: the issue's list, each through the real command line: exit 2, one line, no
  traceback, nothing written lost, no code run.
- fuzzing (hypothesis): hparams strings through `hparams.create_hparams`, filelists through
  `data_utils.read_filelist` (both modes) and `check_data.check_filelists`, texts through
  `text.text_to_sequence`; each example is accepted or rejected with the module's own one-line
  error, anything else is a traceback. A few of the hparams strings then go through `train.py`.
- divergence: learning_rate=1 (explodes on the tiny model) with red_flag_action=remediate
  (must roll back) and =stop (must exit 3 with a report), and NaN mels (skipped steps, then a
  divergence stop).
- two trainers on one run folder: the second must exit 2 naming the first one's pid, the
  first goes on and stops cleanly on SIGTERM (exit 143, checkpoint saved).

Prints a table, then one JSON line with every figure (`tail -n 1`). Exit status 0 when every
row is clean (no lost file, no traceback, every try as expected), else 1.

Code: this file holds the command line, the campaign driver (the scenarios that run trainers:
kills and their resumes, divergence, two trainers; all run on a thread pool while the fuzzing
runs in-process) and the table and JSON output. bench/fault_harness.py runs the trainers and
checks their run folders (the exact-resume comparison included); bench/fault_inputs.py holds
the bad inputs and the fuzzing. --help shows the text above this paragraph.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

# the sibling modules lie beside this file: on sys.path already when it runs as a script, not
# necessarily when it is imported
BENCH = os.path.dirname(os.path.abspath(__file__))
if BENCH not in sys.path:
    sys.path.insert(0, BENCH)

# fault_harness first: it puts the repository on sys.path and sets one thread per process
from fault_harness import (PROC_TIMEOUT, TARGETED, TEMPORARIES, TRAIN, DirWatch,  # noqa: E402
                           Ledger, ProcResult, Reference, Workspace, check_run_files,
                           checkpoint_difference, run_inventory, temporary_pattern)
from fault_inputs import (QUICK_BAD, FuzzTally, bad_input_try, bad_inputs,  # noqa: E402
                          cli_candidates, cli_fuzz_try, fuzz_filelists, fuzz_hparams,
                          fuzz_texts, prepare_bad_files)

from checkpoint import LATEST, list_checkpoints  # noqa: E402

KILL_STEPS = 8  # every kill scenario trains to this step, like the reference run
# tiny model, generated corpus; a checkpoint every 2 steps, a validation (snapshot) every 4;
# keep_checkpoints=0 so that no checkpoint is pruned and every one must survive every kill
RUN_HPARAMS = ("iters_per_checkpoint=2,iters_per_validation=4,keep_checkpoints=0,"
               "iters_per_audio=0,free_running_every=0")


# ---------------------------------------------------------------------------------- kills
@dataclasses.dataclass
class KillPlan:
    index: int
    kind: str  # random | one of TEMPORARIES
    anchor_step: int = 0  # random: the kill comes after this step's log line (0: the start)
    at_seconds: float = 0.0  # random: seconds after the anchor
    occurrence: int = 1  # targeted: kill at the n-th temporary file of its kind
    delay: float = 0.0  # targeted: seconds between the file's appearance and the kill

def watched_run(ws: Workspace, label: str, cmd: List[str], run_dir: str,
                plan: Optional[KillPlan] = None) -> Tuple[ProcResult, Dict[str, Any]]:
    """Runs a trainer while watching its run folder: measures how long each temporary file
    lives (create -> rename) and, with a plan, kills it with SIGKILL.

    Returns (result, info): info holds "killed" (SIGKILL sent), "kill_time", "tmp" (the targeted
    temporary), "landed" (it still existed after the trainer died: the kill hit the write),
    "windows" {kind: [seconds]}, "watch" (inotify | polling).
    """
    os.makedirs(os.path.join(run_dir, "alignments"), exist_ok=True)
    watch = DirWatch([run_dir, os.path.join(run_dir, "alignments")])
    proc, out, err, started = ws.start(label, cmd)
    patterns = {k: temporary_pattern(k, proc.pid) for k in TEMPORARIES}
    born: Dict[str, float] = {}
    info: Dict[str, Any] = {"killed": False, "kill_time": None, "tmp": None, "landed": False,
                            "windows": {k: [] for k in TEMPORARIES}, "watch": watch.kind}
    seen = 0
    deadline = started + PROC_TIMEOUT
    # a random kill: `at_seconds` after the anchor, the start or the log line of a step
    anchor = started if plan is None or plan.anchor_step == 0 else None
    # train.log's line of a training step: "step N: ..." (a validation's starts "validation")
    anchor_line = re.compile(rf"^step {plan.anchor_step}:", re.M) if plan else None

    def kill() -> None:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            info["killed"] = True
            info["kill_time"] = time.monotonic() - started

    try:
        while proc.poll() is None and time.monotonic() < deadline:
            wait = 0.2
            if plan is not None and plan.kind == "random" and not info["killed"]:
                if anchor is None:
                    with contextlib.suppress(OSError), open(out, encoding="utf-8",
                                                            errors="replace") as f:
                        if anchor_line.search(f.read()):
                            anchor = time.monotonic()
                wait = 0.02 if anchor is None else min(
                    wait, anchor + plan.at_seconds - time.monotonic())
                if wait <= 0:
                    kill()
                    break
            for when, kind, folder, name in watch.events(wait):
                for tmp_kind, pattern in patterns.items():
                    if not pattern.match(name):
                        continue
                    if kind == "create":
                        born[name] = when
                        if plan is not None and plan.kind == tmp_kind and not info["killed"]:
                            seen += 1
                            if seen == plan.occurrence:
                                if plan.delay > 0:
                                    time.sleep(plan.delay)
                                kill()
                                info["tmp"] = os.path.join(folder, name)
                    elif name in born:
                        info["windows"][tmp_kind].append(when - born.pop(name))
            if info["killed"]:
                break
    finally:
        watch.close()
    result = ws.finish(label, cmd, proc, out, err, started)
    if info["tmp"]:
        info["landed"] = os.path.exists(info["tmp"])
    elif info["killed"]:
        # a random kill that happened to land inside a write leaves its temporary behind
        left = [n for folder in (run_dir, os.path.join(run_dir, "alignments"))
                for n in (os.listdir(folder) if os.path.isdir(folder) else [])
                if any(p.match(n) for p in patterns.values())]
        info["landed"] = bool(left)
        info["tmp"] = ", ".join(left) or None
    return result, info


def last_logged_step(result: ProcResult) -> int:
    steps = re.findall(r"^step (\d+):", result.stdout, flags=re.M)
    return int(steps[-1]) if steps else 0


def reference_run(ws: Workspace, ref: Reference) -> None:
    run_name = "reference"
    ref.run_dir = ws.run_dir(run_name)
    cmd = ws.train_cmd(run_name, f"{ws.base},{RUN_HPARAMS}", f"--max_steps={KILL_STEPS}")
    result, info = watched_run(ws, run_name, cmd, ref.run_dir)
    ref.wall = result.wall
    ref.windows = info["windows"]
    files = check_run_files(ref.run_dir, ws.ledger, run_name, final=True)
    ref.records = files["records"]
    ref.ok = (result.rc == 0 and os.path.exists(
        os.path.join(ref.run_dir, f"checkpoint_{KILL_STEPS}")))
    if not ref.ok:
        ws.ledger.problem(f"reference run failed (exit {result.rc}): {result.tail()}")


def kill_scenario(ws: Workspace, plan: KillPlan, ref: Reference) -> Dict[str, Any]:
    """One kill and its resume; the record of what happened and what was checked."""
    run_name = f"kill{plan.index:02d}"
    run_dir = ws.run_dir(run_name)
    hparams = f"{ws.base},{RUN_HPARAMS}"
    cmd = ws.train_cmd(run_name, hparams, f"--max_steps={KILL_STEPS}")
    victim, info = watched_run(ws, f"{run_name}_victim", cmd, run_dir, plan)
    record: Dict[str, Any] = {
        "kind": plan.kind, "occurrence": plan.occurrence if plan.kind != "random" else None,
        "anchor_step": plan.anchor_step if plan.kind == "random" else None,
        "at_seconds": round(info["kill_time"], 3) if info["kill_time"] is not None else None,
        "delay_ms": round(plan.delay * 1000, 2), "target": info["tmp"],
        "landed_in_write": info["landed"], "victim_exit": victim.rc,
        "victim_last_step": last_logged_step(victim), "watch": info["watch"],
    }
    killed = victim.rc == -signal.SIGKILL
    record["killed"] = killed
    if not killed:
        # finished (or failed) before the kill came: not a kill try
        record["result"] = "finished before the kill" if victim.rc == 0 else "victim failed"
        if victim.rc != 0:
            ws.ledger.problem(f"{run_name}: the trainer failed before the kill (exit "
                              f"{victim.rc}): {victim.tail()}")
        return record
    after_kill = run_inventory(run_dir)
    first = check_run_files(run_dir, ws.ledger, f"{run_name} after the kill", final=False)
    record["torn_diagnostics_after_kill"] = first["torn_diagnostics"]
    record["checkpoints_after_kill"] = len(after_kill["checkpoints"])
    resumed = bool(list_checkpoints(run_dir))
    more = [f"--max_steps={KILL_STEPS}"]
    if resumed:
        more = ["-c", os.path.join(run_dir, LATEST)] + more
    second = ws.run(f"{run_name}_resume", ws.train_cmd(run_name, hparams, *more))
    record["resumed"] = resumed
    record["resume_exit"] = second.rc
    record["survived"] = second.rc == 0
    if second.rc != 0:
        ws.ledger.problem(f"{run_name}: the run after the kill exited {second.rc}: "
                          f"{' '.join(second.cmd)}\n{second.tail()}")
    final = check_run_files(run_dir, ws.ledger, f"{run_name} after the resume", final=True,
                            expected=after_kill)
    record["files_lost"] = first["lost"] + final["lost"]
    exact = None
    if second.rc == 0 and ref.ok:
        mine = os.path.join(run_dir, f"checkpoint_{KILL_STEPS}")
        theirs = os.path.join(ref.run_dir, f"checkpoint_{KILL_STEPS}")
        diff = checkpoint_difference(mine, theirs) if os.path.exists(mine) else "no checkpoint"
        same_records = final["records"] == ref.records
        exact = diff is None and same_records
        if not exact:
            ws.ledger.problem(
                f"{run_name}: not exact after the {'resume' if resumed else 'fresh restart'}: "
                + (f"checkpoint_{KILL_STEPS} differs from the reference at {diff}" if diff
                   else f"validation records {final['records']} != reference {ref.records}"))
    record["exact"] = exact
    return record


# how many of a kind a run of KILL_STEPS steps writes: checkpoints 2, 4, 6 (the kill at the
# first leaves nothing to resume from), snapshots 4 and 8, hparams.json once at the start
OCCURRENCES = {"checkpoint": 3, "snapshot": 2, "latest": 3, "hparams": 1}
# The order kinds are tried in, repeated: checkpoint and snapshot writes with a random moment
# between them, then the small writes (--targets leaves out the kinds it does not name; the
# checkpoint_LATEST link lives ~0.1 ms, too short to land in, so it is not in the default).
KILL_CYCLE = ("checkpoint", "random", "snapshot", "random", "checkpoint", "random", "snapshot",
              "random", "hparams", "random", "latest", "random")


def kill_kinds(targets: List[str]) -> List[str]:
    return [k for k in KILL_CYCLE if k in targets]


def plan_kills(n: int, rng: random.Random, ref: Reference, targets: List[str]
               ) -> List[KillPlan]:
    kinds = kill_kinds(targets)
    plans = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        plan = KillPlan(i, kind)
        if kind == "random":
            # anywhere in the run: in the start-up (imports, data check, model, the first
            # batch), or up to a second after step N's log line (its validation, checkpoint,
            # the next step)
            plan.anchor_step = rng.randint(0, KILL_STEPS - 1)
            plan.at_seconds = rng.uniform(0.0, 2.0 if plan.anchor_step == 0 else 1.0)
        else:
            plan.occurrence = rng.randint(1, OCCURRENCES[kind])
            # somewhere in the first half of a write as long as on the reference run; at once
            # for writes of a few milliseconds (the watch's own reaction takes part of it)
            share, window = rng.uniform(0.0, 0.5), ref.window(kind)
            plan.delay = share * window if window > 0.005 else 0.0
        plans.append(plan)
    return plans


# ---------------------------------------------------------------------------------- divergence
NAN_WRAPPER = """\
import runpy, sys
import data_utils
original = data_utils.TextMelDataset.get_mel
def get_mel(self, index):
    mel = original(self, index).clone()
    mel[0, 0] = float("nan")
    return mel
data_utils.TextMelDataset.get_mel = get_mel
sys.argv = [{train!r}] + sys.argv[1:]
runpy.run_path({train!r}, run_name="__main__")
"""


def divergence_try(ws: Workspace, kind: str) -> Dict[str, Any]:
    run_name = f"diverge_{kind}"
    run_dir = ws.run_dir(run_name)
    common = "keep_checkpoints=0,iters_per_audio=0,free_running_every=0,iters_per_validation=100"
    if kind == "nan_stop":
        wrapper = os.path.join(ws.root, "nan_mels.py")
        with open(wrapper, "w", encoding="utf-8") as f:
            f.write(NAN_WRAPPER.format(train=TRAIN))
        cmd = ws.train_cmd(run_name, f"{ws.base},{common},max_bad_steps=3,red_flag_action=stop",
                           "--max_steps=10", "--skip_data_check", script=wrapper)
    else:
        action = "remediate" if kind == "explode_remediate" else "stop"
        cmd = ws.train_cmd(run_name, f"{ws.base},{common},learning_rate=1.0,divergence_factor=2,"
                                     f"iters_per_checkpoint=2,red_flag_action={action}",
                           "--max_steps=20")
    result = ws.run(run_name, cmd)
    log_path = os.path.join(ws.root, "logs", run_name, "train.log")
    log = open(log_path, encoding="utf-8").read() if os.path.exists(log_path) else ""
    reports = [n for n in (os.listdir(run_dir) if os.path.isdir(run_dir) else [])
               if n.startswith("red_flag_report_step_")]
    report_text = "".join(open(os.path.join(run_dir, n), encoding="utf-8").read()
                          for n in reports)
    flagged = "red flag 5 (divergence)" in log
    why = []
    if not flagged:
        why.append("no divergence red flag in train.log")
    if kind == "explode_remediate":
        rolled = bool(re.search(r"rolled back to \S+checkpoint_\d+ \(step \d+\), learning rate "
                                r"x0\.5", log))
        if not rolled:
            why.append("no rollback in train.log")
        if result.rc not in (0, 3):
            why.append(f"exit {result.rc}, expected 0 or 3")
        outcome = "rolled back" + (", then stopped" if result.rc == 3 else "")
    else:
        if result.rc != 3:
            why.append(f"exit {result.rc}, expected 3")
        if "divergence" not in report_text:
            why.append("no red_flag_report_step_N.txt naming the divergence")
        if kind == "nan_stop" and "non-finite steps skipped" not in log:
            why.append("skipped non-finite steps not counted in train.log")
        outcome = "stopped"
    check_run_files(run_dir, ws.ledger, run_name, final=True)
    if why:
        ws.ledger.problem(f"divergence {kind} not caught: {'; '.join(why)}: "
                          f"{' '.join(cmd)}\n{result.tail()}")
    return {"kind": kind, "caught": not why, "exit": result.rc, "outcome": outcome, "why": why}


# ---------------------------------------------------------------------------------- two trainers
def concurrent_try(ws: Workspace, tries: int) -> Dict[str, Any]:
    """A long first trainer; while it runs, `tries` second trainers on its run folder (a fresh
    start, then a resume from its checkpoint_LATEST) must each exit 2 naming its pid. Then
    SIGTERM stops the first: exit 143 with a checkpoint saved."""
    run_name = "concurrent"
    run_dir = ws.run_dir(run_name)
    hparams = f"{ws.base},{RUN_HPARAMS},iters_per_validation=10"
    cmd = ws.train_cmd(run_name, hparams, "--max_steps=200")
    first, out, err, started = ws.start(run_name, cmd)
    lock = os.path.join(run_dir, ".trainer.lock")
    records = []

    def wait_for(condition: Callable[[], bool], seconds: float = 150) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and first.poll() is None:
            if condition():
                return True
            time.sleep(0.1)
        return False

    def lock_pid() -> Optional[int]:
        try:
            text = open(lock, encoding="ascii").read().strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    for i in range(tries):
        if i == 0:
            ready = wait_for(lambda: lock_pid() == first.pid)
            more = ["--max_steps=200"]
        else:
            ready = wait_for(lambda: bool(list_checkpoints(run_dir)))
            more = ["-c", os.path.join(run_dir, LATEST), "--max_steps=200"]
        if not ready:
            records.append({"refused": False, "why": "the first trainer never got that far"})
            continue
        label = f"{run_name}_second{i}"
        second = ws.run(label, ws.train_cmd(run_name, hparams, *more, log_name=label),
                        timeout=180)
        first_alive = first.poll() is None
        lines = second.stderr.splitlines()
        why = []
        if second.rc != 2:
            why.append(f"exit {second.rc}, expected 2")
        if len(lines) != 1 or not re.match(rf"error: another trainer \(pid {first.pid}\) is using",
                                           second.stderr):
            why.append(f"stderr is not one line naming pid {first.pid}: {second.stderr[:300]!r}")
        if not first_alive:
            why.append("the first trainer had ended before the second one finished")
        records.append({"refused": not why, "exit": second.rc, "stderr": second.stderr.strip(),
                        "why": why})
        if why:
            ws.ledger.problem(f"second trainer {i} not refused cleanly: {'; '.join(why)}")
    # the first trainer is stopped the way a scheduler stops it
    stopped = wait_for(lambda: bool(list_checkpoints(run_dir)), 150)
    if first.poll() is None:
        first.send_signal(signal.SIGTERM)
    result = ws.finish(run_name, cmd, first, out, err, started)
    why_first = []
    if result.rc != 128 + signal.SIGTERM:
        why_first.append(f"exit {result.rc} after SIGTERM, expected {128 + signal.SIGTERM}")
    if "stopped by signal 15" not in result.stdout:
        why_first.append("no 'stopped by signal 15 ... checkpoint saved' line")
    files = check_run_files(run_dir, ws.ledger, run_name, final=True)
    steps = files["records"]
    if steps != sorted(set(steps)):
        why_first.append(f"diagnostics.jsonl records interleaved or repeated: {steps}")
    if why_first:
        ws.ledger.problem(f"first trainer of the concurrency test: {'; '.join(why_first)}\n"
                          f"{result.tail()}")
    return {"tries": records, "first_exit": result.rc, "first_ok": not why_first and stopped,
            "first_why": why_first}


# ---------------------------------------------------------------------------------- campaign
def campaign(args: argparse.Namespace) -> Tuple[Dict[str, Any], Ledger]:
    started = time.monotonic()
    ledger = Ledger()
    rng = random.Random(args.seed)
    ws = Workspace(args.workdir, ledger, args.spawn)
    ref = Reference()
    ref_done, fuzz_done = threading.Event(), threading.Event()
    # inotify's thread must get the interpreter at once when a temporary file appears
    sys.setswitchinterval(0.0005)

    bad_list = bad_inputs(ws)
    if args.quick:
        bad_list = [b for b in bad_list if b.name in QUICK_BAD]
    prepare_bad_files(ws)
    divergence_kinds = (["explode_remediate", "nan_stop"] if args.quick
                        else ["explode_remediate", "explode_stop", "nan_stop"])
    concurrent_tries = 1 if args.quick else 2
    n_cli = 2 if args.quick else 5
    results: Dict[str, Any] = {"bad": [], "divergence": [], "kills": [], "cli": []}
    tallies: List[FuzzTally] = []

    def do_reference() -> None:
        try:
            reference_run(ws, ref)
        finally:
            ref_done.set()

    def do_kill(plan_index: int, plans: List[KillPlan]) -> None:
        results["kills"].append(kill_scenario(ws, plans[plan_index], ref))

    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(do_reference)]
        futures += [pool.submit(lambda i=i, b=b: results["bad"].append(
            bad_input_try(ws, i, b, ref_done, ref))) for i, b in enumerate(bad_list)]
        futures += [pool.submit(lambda k=k: results["divergence"].append(divergence_try(ws, k)))
                    for k in divergence_kinds]
        futures.append(pool.submit(lambda: results.__setitem__(
            "concurrent", concurrent_try(ws, concurrent_tries))))
        # the in-process fuzzing runs here meanwhile (the trainers are separate processes)
        fuzz_started = time.monotonic()
        try:
            tallies = [fuzz_hparams(args.fuzz, args.seed), fuzz_filelists(
                args.fuzz, args.seed, ws.corpus, ws.corpus), fuzz_texts(args.fuzz, args.seed)]
        finally:
            fuzz_done.set()
        fuzz_seconds = time.monotonic() - fuzz_started
        for tally in tallies:
            for text in tally.tracebacks:
                ledger.traceback(f"fuzz {tally.target}: {text}")
            for text in tally.unclean:
                ledger.problem(f"fuzz {tally.target}: not clean: {text}")
        candidates = cli_candidates(ws.base, n_cli, args.seed)
        futures += [pool.submit(lambda i=i, c=c: results["cli"].append(cli_fuzz_try(ws, i, *c)))
                    for i, c in enumerate(candidates)]
        ref_done.wait()
        plans = plan_kills(args.kills, rng, ref, args.targets) if ref.ok else []
        futures += [pool.submit(do_kill, i, plans) for i in range(len(plans))]
        for future in futures:
            try:
                future.result()
            except Exception as err:  # a bug of this script, never a finding of the trainer
                ledger.problem(f"campaign error: {''.join(traceback.format_exception(err))}")
                raise
    figures = summarise(args, results, tallies, ref, ledger, time.monotonic() - started,
                        fuzz_seconds)
    return figures, ledger


def summarise(args, results, tallies, ref, ledger, wall, fuzz_seconds) -> Dict[str, Any]:
    kills = sorted(results["kills"], key=lambda r: (r["kind"], r.get("at_seconds") or 0))
    tried = [k for k in kills if k["killed"]]
    by_kind = {kind: [k for k in tried if k["kind"] == kind]
               for kind in ("random",) + TARGETED}
    resumes = [k for k in tried if k.get("resumed") and k.get("exact") is not None]
    fresh = [k for k in tried if not k.get("resumed") and k.get("exact") is not None]
    concurrent = results.get("concurrent", {"tries": []})
    figures = {
        "kills": {
            "tried": len(tried), "survived": sum(bool(k.get("survived")) for k in tried),
            "planned": len(kills),
            "finished_before_the_kill": sum(not k["killed"] for k in kills),
            "by_kind": {kind: {"tried": len(v), "survived": sum(bool(k.get("survived"))
                                                                for k in v),
                               "landed_in_write": sum(bool(k["landed_in_write"]) for k in v)}
                        for kind, v in by_kind.items()},
            "fresh_restarts": len(fresh),
            "write_window_ms": {k: round(1000 * ref.window(k), 2) for k in ref.windows},
            "watch": kills[0]["watch"] if kills else None,
            "details": kills,
        },
        "resumes": {"tried": len(resumes), "exact": sum(bool(k["exact"]) for k in resumes),
                    "fresh_restarts_exact": sum(bool(k["exact"]) for k in fresh),
                    "fresh_restarts": len(fresh)},
        "bad_inputs": {"tried": len(results["bad"]),
                       "rejected_cleanly": sum(b["clean"] for b in results["bad"]),
                       "details": sorted(results["bad"], key=lambda b: b["name"])},
        "fuzz": {t.target: t.as_dict() for t in tallies},
        "fuzz_cli": {"tried": len(results["cli"]),
                     "clean": sum(c["clean"] for c in results["cli"]),
                     "details": results["cli"]},
        "divergence": {"tried": len(results["divergence"]),
                       "caught": sum(d["caught"] for d in results["divergence"]),
                       "details": results["divergence"]},
        "concurrent": {"tried": len(concurrent["tries"]),
                       "refused": sum(t["refused"] for t in concurrent["tries"]),
                       "first_stopped_cleanly": concurrent.get("first_ok"),
                       "details": concurrent},
        "tracebacks": len(ledger.tracebacks),
        "files_lost": len(ledger.files_lost),
        "processes": ledger.processes,
        "reference_run_s": round(ref.wall, 1),
        "fuzz_examples_per_target": args.fuzz,
        "fuzz_seconds": round(fuzz_seconds, 1),
        "seed": args.seed, "quick": args.quick, "jobs": args.jobs, "spawn": args.spawn,
        "wall_s": round(wall, 1),
    }
    figures["clean"] = (
        figures["files_lost"] == 0 and figures["tracebacks"] == 0 and not ledger.problems
        and figures["kills"]["survived"] == figures["kills"]["tried"] > 0
        and figures["resumes"]["exact"] == figures["resumes"]["tried"]
        and figures["bad_inputs"]["rejected_cleanly"] == figures["bad_inputs"]["tried"]
        and figures["divergence"]["caught"] == figures["divergence"]["tried"]
        and figures["concurrent"]["refused"] == figures["concurrent"]["tried"]
        and bool(figures["concurrent"]["first_stopped_cleanly"]))
    return figures


KIND_LABELS = {"checkpoint": "checkpoint write", "snapshot": "snapshot write",
               "latest": "checkpoint_LATEST link", "hparams": "hparams.json write"}


def format_table(f: Dict[str, Any]) -> str:
    k = f["kills"]
    kinds = k["by_kind"]

    def kind_text(name: str, label: str) -> str:
        v = kinds[name]
        text = f"{label} {v['survived']}/{v['tried']}"
        if name != "random":
            text += f" (landed inside the write {v['landed_in_write']}/{v['tried']})"
        elif v["landed_in_write"]:
            text += f" ({v['landed_in_write']} inside a write)"
        return text

    rows = [
        ("kills survived / tried", f"{k['survived']}/{k['tried']}",
         ", ".join([kind_text("random", "random moment")]
                   + [kind_text(t, KIND_LABELS[t]) for t in TARGETED if kinds[t]["tried"]])
         + (f"; {k['finished_before_the_kill']} finished before the kill"
            if k["finished_before_the_kill"] else "")),
        ("resumes exact / tried", f"{f['resumes']['exact']}/{f['resumes']['tried']}",
         f"bit for bit vs. an uninterrupted run at step {KILL_STEPS}; fresh restarts (killed "
         f"before the first checkpoint) exact {f['resumes']['fresh_restarts_exact']}/"
         f"{f['resumes']['fresh_restarts']}"),
        ("bad inputs rejected cleanly / tried",
         f"{f['bad_inputs']['rejected_cleanly']}/{f['bad_inputs']['tried']}",
         "exit 2, one line, nothing lost, no code run"),
    ]
    for target, t in f["fuzz"].items():
        rows.append((f"fuzzed {target.split(' ->')[0]} clean / tried",
                     f"{t['accepted'] + t['rejected']}/{t['tried']}",
                     f"accepted {t['accepted']}, rejected {t['rejected']}, unclean "
                     f"{t['unclean']}, tracebacks {t['tracebacks']}"))
    cli = f["fuzz_cli"]
    exits: Dict[Any, int] = {}
    for c in cli["details"]:
        exits[c["exit"]] = exits.get(c["exit"], 0) + 1
    rows.append(("fuzzed hparams via train.py clean / tried", f"{cli['clean']}/{cli['tried']}",
                 ", ".join(f"exit {e}: {n}" for e, n in sorted(exits.items(), key=str))))
    d = f["divergence"]
    rows.append(("divergence injections caught / tried", f"{d['caught']}/{d['tried']}",
                 ", ".join(f"{x['kind']}: {x['outcome']} (exit {x['exit']})"
                           for x in sorted(d["details"], key=lambda x: x["kind"]))))
    c = f["concurrent"]
    rows.append(("concurrent trainers refused / tried", f"{c['refused']}/{c['tried']}",
                 "exit 2 naming the first one's pid; the first then stopped by SIGTERM: "
                 + ("exit 143, checkpoint saved" if c["first_stopped_cleanly"] else "NOT CLEAN")))
    rows.append(("tracebacks seen", str(f["tracebacks"]), f"over {f['processes']} processes and "
                 f"{sum(t['tried'] for t in f['fuzz'].values())} fuzzed inputs"))
    rows.append(("files lost", str(f["files_lost"]), "must be 0"))
    width = max(len(r[0]) for r in rows)
    lines = [f"fault campaign: seed {f['seed']}, {f['jobs']} jobs, spawn {f['spawn']}, "
             f"{'quick, ' if f['quick'] else ''}fuzz {f['fuzz_examples_per_target']} examples "
             f"per target; temporary files live (reference run, median) "
             + ", ".join(f"{KIND_LABELS[t].split()[0]} {k['write_window_ms'].get(t, 0)} ms"
                         for t in TARGETED)
             + f" ({k['watch'] or 'no'} watch)"]
    lines += [f"{name:<{width}}  {value:>7}  {note}" for name, value, note in rows]
    lines.append(f"wall time {f['wall_s']:.0f} s ({f['processes']} processes; reference run "
                 f"{f['reference_run_s']:.0f} s, in-process fuzzing {f['fuzz_seconds']:.0f} s)")
    return "\n".join(lines)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    # the docstring without its last paragraph (where the code lives)
    parser = argparse.ArgumentParser(description=__doc__.partition("\nCode: ")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kills", type=int, default=10,
                        help="kill scenarios (about 4 in 10 targeted at temporary files)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--targets", default="random,checkpoint,snapshot,hparams",
                        help="kinds of kill, in turn: random (a random moment) and the "
                             "temporary files to kill inside: " + ", ".join(TARGETED))
    parser.add_argument("--fuzz", type=int, default=30, help="hypothesis examples per target")
    parser.add_argument("--workdir", default=None,
                        help="where runs go (kept); default: a temporary folder, removed "
                             "when the campaign is clean")
    parser.add_argument("--quick", action="store_true",
                        help="fewer bad inputs, 2 divergence injections, 1 concurrent try, "
                             "2 fuzzed command lines")
    parser.add_argument("--jobs", type=int, default=2, help="scenarios run at once")
    parser.add_argument("--spawn", choices=("fork", "exec"), default="fork",
                        help="fork: trainers are forked from a server that imported train.py's "
                             "modules once (saves seconds of imports each); exec: every trainer "
                             "is a new `python train.py` process")
    args = parser.parse_args(argv)
    args.targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.targets) - set(("random",) + TARGETED))
    if unknown or not args.targets:
        parser.error(f"--targets: unknown {', '.join(unknown) or '(empty)'}; choose from "
                     f"random, {', '.join(TARGETED)}")
    if args.kills < 1 or args.fuzz < 1 or args.jobs < 1:
        parser.error("--kills, --fuzz and --jobs must be >= 1")
    return args


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    temporary = args.workdir is None
    if temporary:
        args.workdir = tempfile.mkdtemp(prefix="taco_faults_")
    os.makedirs(args.workdir, exist_ok=True)
    figures, ledger = campaign(args)
    if ledger.problems:
        print(f"{len(ledger.problems)} problem(s):")
        for text in ledger.problems:
            print("- " + text.replace("\n", "\n  "))
        print()
    print(format_table(figures))
    if temporary and figures["clean"]:
        shutil.rmtree(args.workdir, ignore_errors=True)
    else:
        print(f"runs, logs and process outputs: {args.workdir}")
    print(json.dumps(figures, default=str))
    return 0 if figures["clean"] else 1


if __name__ == "__main__":
    sys.exit(main())
