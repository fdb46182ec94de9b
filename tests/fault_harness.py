"""The fault tests' harness (test_faults.py, test_fuzz.py): running trainers, killing them, and
checking what they leave in their run folder.

- `Tally`: what the fault tests tried and how it went (kills survived, resumes exact, bad inputs
  refused cleanly, fuzzed inputs clean, files lost, tracebacks); conftest.py prints its
  `summary()` at the end of the session.
- `Workspace`: a generated corpus, the base hparams, and the runner of `python SCRIPT ARGS`
  processes, forked from a server that imported train.py's modules once; `ProcResult` is the
  record of one process.
- `DirWatch` and `watched_run`: the temporary files a trainer writes (`TEMPORARIES`), seen the
  moment they appear (inotify), and a SIGKILL at a planned moment or inside a planned write.
- the run-folder checks: `run_inventory`, `check_run_files` (every file loads, nothing torn or
  orphaned, nothing lost since the kill), `checkpoint_difference` (the exact-resume comparison,
  bit for bit), `lock_pid`. They are the only functions here that know the run folder's layout.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import math
import multiprocessing
import os
import re
import runpy
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from checkpoint import resolve_checkpoint
from helpers import ROOT, corpus_hparams, train_command, write_token_corpus
from runlock import LOCK_NAME

TRACEBACK = "Traceback (most recent call last)"
PROC_TIMEOUT = 300  # seconds; a trainer still running after it counts as hung


# ---------------------------------------------------------------------------------- tally
KIND_LABELS = {"random": "random moment", "checkpoint": "checkpoint write",
               "snapshot": "snapshot write", "latest": "checkpoint_LATEST link",
               "hparams": "hparams.json write"}


class Tally:
    """What the fault tests of a session tried, and how it went."""

    def __init__(self) -> None:
        self.kills: Dict[str, List[Tuple[bool, bool]]] = {}  # kind -> (survived, landed inside
        # the write it targeted (random kills: inside any write)), per kill
        self.resumes: List[bool] = []  # exact, per run that finished after a kill
        self.fresh_restarts = 0  # of those, runs killed before their first checkpoint
        self.bad_inputs: List[bool] = []  # refused cleanly
        self.fuzz: Dict[str, List[int]] = {}  # target -> [tried, accepted, rejected]
        self.cli_fuzz: List[bool] = []  # clean
        self.concurrent: List[bool] = []  # refused cleanly
        self.files_lost: List[str] = []
        self.tracebacks: List[str] = []
        self.processes = 0

    def fuzz_counts(self, target: str) -> List[int]:
        return self.fuzz.setdefault(target, [0, 0, 0])

    def ran(self) -> bool:
        return bool(self.processes or self.fuzz)

    def summary(self) -> str:
        """One line: each figure the session produced (and only those)."""
        parts = []
        if self.kills:
            survived = [ok for kills in self.kills.values() for ok, _ in kills]
            kinds = []
            for kind, kills in sorted(self.kills.items()):
                landed = sum(inside for _, inside in kills)
                text = f"{KIND_LABELS[kind]} {sum(ok for ok, _ in kills)}/{len(kills)}"
                if kind != "random":
                    text += f" (landed inside it {landed}/{len(kills)})"
                elif landed:
                    text += f" ({landed} inside a write)"
                kinds.append(text)
            parts.append(f"kills survived {sum(survived)}/{len(survived)} ({', '.join(kinds)})")
        if self.resumes:
            fresh = f" ({self.fresh_restarts} a fresh restart)" if self.fresh_restarts else ""
            parts.append(f"resumes exact {sum(self.resumes)}/{len(self.resumes)}{fresh}")
        if self.bad_inputs:
            parts.append(f"bad inputs refused cleanly {sum(self.bad_inputs)}/"
                         f"{len(self.bad_inputs)}")
        if self.concurrent:
            parts.append(f"second trainers refused {sum(self.concurrent)}/"
                         f"{len(self.concurrent)}")
        for target, (tried, accepted, rejected) in sorted(self.fuzz.items()):
            parts.append(f"fuzzed {target} clean {accepted + rejected}/{tried} "
                         f"(accepted {accepted}, refused {rejected})")
        if self.cli_fuzz:
            parts.append(f"fuzzed hparams through train.py clean {sum(self.cli_fuzz)}/"
                         f"{len(self.cli_fuzz)}")
        parts.append(f"files lost {len(self.files_lost)}")
        parts.append(f"tracebacks {len(self.tracebacks)} in {self.processes} processes")
        return "fault campaign: " + "; ".join(parts)


# ---------------------------------------------------------------------------------- processes
@dataclasses.dataclass
class ProcResult:
    label: str
    cmd: List[str]
    rc: Optional[int]
    stdout: str
    stderr: str
    wall: float
    pid: int
    hung: bool = False

    def tail(self, n: int = 1500) -> str:
        return (self.stdout[-n:] + "\n--- stderr ---\n" + self.stderr[-n:]).strip()

    def has_traceback(self) -> bool:
        return TRACEBACK in self.stderr or TRACEBACK in self.stdout


# Starting `python train.py` costs seconds of CPU in imports (torch alone ~3 s) before the first
# line of training, and the fault tests start dozens. So every trainer is a child of a fork server
# that imported train.py's modules once (multiprocessing's forkserver: a single-threaded process,
# so forking it is safe). The child runs the script with runpy, as `python SCRIPT ARGS` would:
# same argv, same __main__, same exit status (a SIGKILL reads -9), output to its own files.
_FORK_PRELOAD = ["train", "alignment_diagnostics", "check_data", "librosa.filters",
                 "torch._dynamo", "torch.utils.tensorboard", "matplotlib.pyplot"]
_mp_context = None
_mp_lock = threading.Lock()


def _child_main(script: str, argv: List[str], cwd: str, out: str, err: str) -> None:
    """In the forked child: `python SCRIPT ARGV...` with stdout/stderr into files."""
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    # unbuffered, as PYTHONUNBUFFERED=1 would be: a killed trainer's last lines are on disk
    sys.stdout = open(1, "w", encoding="utf-8", buffering=1, closefd=False)
    sys.stderr = open(2, "w", encoding="utf-8", buffering=1, closefd=False)
    os.chdir(cwd)
    sys.argv = [script] + list(argv)
    code = 0
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as stop:
        if stop.code is None:
            code = 0
        elif isinstance(stop.code, int):
            code = stop.code
        else:
            print(stop.code, file=sys.stderr)
            code = 1
    except BaseException:
        # The fork server stands in for the interpreter: an uncaught exception must reach stderr
        # exactly as `python train.py` would print it, so that the tests see the traceback.
        sys.excepthook(*sys.exc_info())
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


class ForkedProcess:
    """subprocess.Popen's small interface over a forkserver child running a script."""

    def __init__(self, script: str, argv: List[str], cwd: str, out: str, err: str):
        global _mp_context
        with _mp_lock:
            if _mp_context is None:
                # the server imports the preload by name; Python 3.11's forkserver passes it the
                # environment, not sys.path, so the repository goes in PYTHONPATH
                paths = [ROOT] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep)
                                  if p and p != ROOT]
                os.environ["PYTHONPATH"] = os.pathsep.join(paths)
                _mp_context = multiprocessing.get_context("forkserver")
                _mp_context.set_forkserver_preload(_FORK_PRELOAD)
            self.process = _mp_context.Process(target=_child_main,
                                               args=(script, argv, cwd, out, err), daemon=False)
            self.process.start()
        self.pid = self.process.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.process.exitcode

    def poll(self) -> Optional[int]:
        return self.process.exitcode

    def wait(self, timeout: Optional[float] = None) -> Optional[int]:
        self.process.join(timeout)
        if self.process.exitcode is None:
            raise subprocess.TimeoutExpired("forked " + self.process.name, timeout)
        return self.process.exitcode

    def send_signal(self, sig: int) -> None:
        if self.process.exitcode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class Workspace:
    """The fault tests' folder: a generated corpus (18 training and 4 validation utterances),
    the base hparams, and the runs, logs and process outputs under it."""

    def __init__(self, root: str, tally: Tally):
        self.root = os.path.abspath(root)
        self.tally = tally
        self.output = os.path.join(self.root, "output")
        self.procs = os.path.join(self.root, "procs")
        os.makedirs(self.procs, exist_ok=True)
        self.train_list, self.val_list = write_token_corpus(os.path.join(self.root, "corpus"),
                                                            n_train=18, n_val=4)
        self.corpus = os.path.dirname(self.train_list)
        self.base = corpus_hparams(self.train_list, self.val_list)

    def run_dir(self, run_name: str) -> str:
        return os.path.join(self.output, run_name)

    def train_cmd(self, run_name: str, hparams: str, *more: str, script: Optional[str] = None,
                  log_name: Optional[str] = None) -> List[str]:
        """train.py (or `script`) on run `run_name`, its logs in logs/<log_name or run_name>."""
        extra = {"script": script} if script else {}
        return train_command(self.root, hparams, *more, run_name=run_name,
                             log=os.path.join("logs", log_name or run_name), **extra)

    def log_of(self, run_name: str) -> str:
        """train.log of a run started with `train_cmd` (empty when there is none)."""
        path = os.path.join(self.root, "logs", run_name, "train.log")
        with contextlib.suppress(FileNotFoundError), open(path, encoding="utf-8") as f:
            return f.read()
        return ""

    def start(self, label: str, cmd: List[str]) -> Tuple[ForkedProcess, str, str, float]:
        """Starts `cmd` (python SCRIPT ARGS...) with its output in procs/LABEL.out and .err."""
        out = os.path.join(self.procs, f"{label}.out")
        err = os.path.join(self.procs, f"{label}.err")
        with open(os.path.join(self.procs, f"{label}.cmd"), "w", encoding="utf-8") as f:
            f.write(json.dumps(cmd) + "\n")
        proc = ForkedProcess(cmd[1], cmd[2:], self.root, out, err)
        self.tally.processes += 1
        return proc, out, err, time.monotonic()

    def finish(self, label: str, cmd: List[str], proc: ForkedProcess, out: str, err: str,
               started: float, timeout: float = PROC_TIMEOUT) -> ProcResult:
        """Waits for `proc` (killing it after `timeout`) and reads its output; a traceback in it
        goes into the tally."""
        hung = False
        try:
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            proc.wait()
        texts = []
        for path in (out, err):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
            except FileNotFoundError:  # a child that died before it opened its files
                texts.append("")
        result = ProcResult(label, cmd, proc.returncode, texts[0], texts[1],
                            time.monotonic() - started, proc.pid, hung)
        if result.has_traceback():
            self.tally.tracebacks.append(f"{label}: {' '.join(cmd)}")
        return result

    def run(self, label: str, cmd: List[str], timeout: float = PROC_TIMEOUT) -> ProcResult:
        proc, out, err, started = self.start(label, cmd)
        return self.finish(label, cmd, proc, out, err, started, timeout)


# ---------------------------------------------------------------------------------- watching
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_CLOEXEC, _IN_NONBLOCK = 0o2000000, 0o4000
_EVENT = struct.Struct("iIII")
_libc = None


def _inotify_libc():
    global _libc
    if _libc is None:
        try:
            lib = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
            lib.inotify_init1, lib.inotify_add_watch  # noqa: B018 (present on Linux only)
            _libc = lib
        except (OSError, AttributeError):
            _libc = False
    return _libc or None


class DirWatch:
    """New and vanished names in a few folders, as they happen.

    inotify (Linux): the kernel reports a file's creation at once, so a kill can land inside a
    write of a few milliseconds. Elsewhere, the folders are listed every millisecond.
    `events(timeout)` returns [(monotonic time, "create" | "gone", folder, name)].
    """

    def __init__(self, folders: List[str]):
        self.folders = list(folders)
        libc = _inotify_libc()
        self.fd = -1
        self.wds: Dict[int, str] = {}
        if libc is not None:
            fd = libc.inotify_init1(_IN_CLOEXEC | _IN_NONBLOCK)
            if fd >= 0:
                self.fd = fd
                for folder in self.folders:
                    wd = libc.inotify_add_watch(fd, os.fsencode(folder),
                                                _IN_CREATE | _IN_MOVED_TO | _IN_MOVED_FROM
                                                | _IN_DELETE)
                    if wd < 0:
                        os.close(fd)
                        self.fd = -1
                        break
                    self.wds[wd] = folder
        self.kind = "inotify" if self.fd >= 0 else "polling"
        self.listing = {f: self._list(f) for f in self.folders}

    @staticmethod
    def _list(folder: str) -> set:
        try:
            return set(os.listdir(folder))
        except OSError:
            return set()

    def events(self, timeout: float) -> List[Tuple[float, str, str, str]]:
        if self.fd < 0:
            return self._poll(timeout)
        ready, _, _ = select.select([self.fd], [], [], max(0.0, timeout))
        if not ready:
            return []
        now = time.monotonic()
        try:
            data = os.read(self.fd, 1 << 16)
        except BlockingIOError:
            return []
        found, offset = [], 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size: offset + _EVENT.size + length]
            offset += _EVENT.size + length
            name = os.fsdecode(raw.split(b"\0", 1)[0])
            kind = "create" if mask & (_IN_CREATE | _IN_MOVED_TO) else "gone"
            found.append((now, kind, self.wds.get(wd, ""), name))
        return found

    def _poll(self, timeout: float) -> List[Tuple[float, str, str, str]]:
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            found = []
            now = time.monotonic()
            for folder in self.folders:
                names = self._list(folder)
                found += [(now, "create", folder, n) for n in sorted(names - self.listing[folder])]
                found += [(now, "gone", folder, n) for n in sorted(self.listing[folder] - names)]
                self.listing[folder] = names
            if found or now >= deadline:
                return found
            time.sleep(0.001)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@dataclasses.dataclass
class KillPlan:
    """When `watched_run` kills its trainer: `at_seconds` after the log line of `anchor_step`
    (0: after the start), or `delay` seconds after the `occurrence`-th temporary file of `kind`
    appeared."""
    kind: str  # random | a key of TEMPORARIES
    anchor_step: int = 0
    at_seconds: float = 0.0
    occurrence: int = 1
    delay: float = 0.0


def watched_run(ws: Workspace, label: str, cmd: List[str], run_dir: str,
                plan: Optional[KillPlan] = None) -> Tuple[ProcResult, Dict[str, Any]]:
    """Runs a trainer while watching its run folder: measures how long each temporary file
    lives (create -> rename) and, with a plan, kills it with SIGKILL.

    Returns (result, info): info holds "killed" (SIGKILL sent), "kill_time", "tmp" (the targeted
    temporary), "landed" (it still existed after the trainer died: the kill hit the write),
    "windows" {kind: [seconds]}, "watch" (inotify | polling).
    """
    folders = snapshot_folders(run_dir)
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    watch = DirWatch(folders)
    proc, out, err, started = ws.start(label, cmd)
    patterns = {k: temporary_pattern(k, proc.pid) for k in TEMPORARIES}
    born: Dict[str, float] = {}
    info: Dict[str, Any] = {"killed": False, "kill_time": None, "tmp": None, "landed": False,
                            "windows": {k: [] for k in TEMPORARIES}, "watch": watch.kind}
    seen = 0
    deadline = started + PROC_TIMEOUT
    # a random kill: `at_seconds` after the anchor, the start or the log line of a step
    anchor = started if plan is None or plan.anchor_step == 0 else None
    # the log line of a training step: "step N: ..." (a validation's starts "validation")
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
        left = [n for folder in folders for n in DirWatch._list(folder)
                if any(p.match(n) for p in patterns.values())]
        info["landed"] = bool(left)
        info["tmp"] = ", ".join(left) or None
    return result, info


# ---------------------------------------------------------------------------------- run folder
# The only functions here that know the run folder's layout (checkpoint_N, checkpoint_LATEST,
# alignments/step_N.npz, hparams.json, diagnostics.jsonl, the trainer's lock and the writers'
# `.tmp<pid>` temporaries).

# The temporary files a trainer writes, by kind: a file is written under its temporary name and
# renamed (os.replace) over the real one. {pid} is the writer's.
TEMPORARIES = {
    "checkpoint": r"checkpoint_\d+\.tmp{pid}",  # checkpoint.save_checkpoint (torch.save)
    "snapshot": r"step_\d+\.tmp{pid}\.npz",  # alignments/, the validation's snapshot
    "latest": r"checkpoint_LATEST\.tmp{pid}",  # the checkpoint_LATEST symlink
    "hparams": r"hparams\.json\.tmp{pid}",  # hparams.json (at the start, after a rollback)
}


def temporary_pattern(kind: str, pid: int) -> "re.Pattern[str]":
    """The name of a temporary file of this kind written by `pid`."""
    return re.compile("^" + TEMPORARIES[kind].format(pid=pid) + "$")


def snapshot_folders(run_dir: str) -> List[str]:
    """The folders a trainer writes its files into: the run folder and its alignments/."""
    return [run_dir, os.path.join(run_dir, "alignments")]


def lock_pid(run_dir: str) -> Optional[int]:
    """The pid written in the run folder's trainer lock, if any."""
    try:
        with open(os.path.join(run_dir, LOCK_NAME), encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def run_inventory(run_dir: str) -> Dict[str, List[str]]:
    """The complete (final-named) files of a run folder that a kill must not lose."""
    names = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []
    folder = os.path.join(run_dir, "alignments")
    snapshots = sorted(n for n in os.listdir(folder) if re.fullmatch(r"step_\d+\.npz", n)) \
        if os.path.isdir(folder) else []
    return {"checkpoints": [n for n in names if re.fullmatch(r"checkpoint_\d+", n)],
            "snapshots": snapshots,
            "other": [n for n in names if n in ("hparams.json", "diagnostics.jsonl")]}


def checkpoint_path(run_dir: str, step: Optional[int] = None) -> str:
    """checkpoint_<step>, or checkpoint_LATEST when `step` is None."""
    return os.path.join(run_dir, "checkpoint_LATEST" if step is None else f"checkpoint_{step}")


def has_checkpoint(run_dir: str) -> bool:
    return bool(run_inventory(run_dir)["checkpoints"])


def _loads_checkpoint(path: str) -> Optional[str]:
    """None when `path` loads with weights_only=True as a checkpoint dict, else why not."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to load is the finding
        return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    if not isinstance(data, dict) or "state_dict" not in data or "iteration" not in data:
        return "loads, but is not a checkpoint dict"
    return None


@dataclasses.dataclass
class RunFiles:
    lost: List[str]  # one line per file that does not load, is torn, orphaned or gone
    torn_diagnostics: bool  # diagnostics.jsonl ends in a torn line (allowed after a kill)
    records: List[int]  # the steps of diagnostics.jsonl's records, in file order


def check_run_files(run_dir: str, *, final: bool,
                    expected: Optional[Dict[str, List[str]]] = None) -> RunFiles:
    """Checks every file of a run folder; each violation is a lost file.

    - every checkpoint_N loads with torch.load(weights_only=True); checkpoint_LATEST resolves
      to one that does;
    - every alignments/step_N.npz loads (allow_pickle=False), hparams.json parses;
    - diagnostics.jsonl: every line parses; a torn last line is allowed only when not `final`
      (a killed trainer's; the resumed run must have removed it);
    - `final`: no temporary file is left, and every file in `expected` (the inventory taken
      right after a kill) still exists.
    """
    lost: List[str] = []
    torn = False
    steps: List[int] = []
    if not os.path.isdir(run_dir):
        return RunFiles(lost, torn, steps)
    inventory = run_inventory(run_dir)
    for name in inventory["checkpoints"]:
        why = _loads_checkpoint(os.path.join(run_dir, name))
        if why:
            lost.append(f"{run_dir}/{name} does not load: {why}")
    latest = checkpoint_path(run_dir)
    if inventory["checkpoints"] or os.path.lexists(latest):
        try:
            why = _loads_checkpoint(resolve_checkpoint(latest))
        except Exception as err:  # a dangling or unreadable link is the finding
            why = f"{type(err).__name__}: {err}"
        if why:
            lost.append(f"{latest} does not resolve to a loadable checkpoint: {why}")
    for name in inventory["snapshots"]:
        path = os.path.join(run_dir, "alignments", name)
        try:
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    data[key]
        except Exception as err:
            lost.append(f"{path} does not load: {type(err).__name__}: {err}")
    hp_path = os.path.join(run_dir, "hparams.json")
    if os.path.exists(hp_path):
        try:
            with open(hp_path, encoding="utf-8") as f:
                json.load(f)
        except ValueError as err:
            lost.append(f"{hp_path} does not parse: {err}")
    log = os.path.join(run_dir, "diagnostics.jsonl")
    if os.path.exists(log):
        with open(log, encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        for i, line in enumerate(lines):
            try:
                steps.append(int(json.loads(line)["step"]))
            except (ValueError, KeyError, TypeError):
                if i == len(lines) - 1 and not final:
                    torn = True
                else:
                    lost.append(f"{log} line {i + 1} does not parse"
                                + (" (a torn line the resumed run did not remove)" if final
                                   else ""))
    if final:
        for folder in snapshot_folders(run_dir):
            for name in sorted(DirWatch._list(folder)):
                if ".tmp" in name:
                    lost.append(f"{os.path.join(folder, name)}: orphaned temporary file")
        for group, names in (expected or {}).items():
            for name in names:
                path = os.path.join(run_dir, "alignments" if group == "snapshots" else "", name)
                if not os.path.exists(path):
                    lost.append(f"{path}: existed after the kill, gone after the resumed run")
    return RunFiles(lost, torn, steps)


def _tensor_tree_diff(a: Any, b: Any, where: str = "") -> Optional[str]:
    """The first place where two loaded checkpoints differ (tensors compared bit for bit)."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        if not (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor)):
            return where or "/"
        if a.dtype != b.dtype or a.shape != b.shape or not torch.equal(a, b):
            return where or "/"
        return None
    if isinstance(a, dict) and isinstance(b, dict):
        if set(a) != set(b):
            return f"{where}/keys"
        for key in a:
            diff = _tensor_tree_diff(a[key], b[key], f"{where}/{key}")
            if diff:
                return diff
        return None
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        if len(a) != len(b):
            return f"{where}/len"
        for i, (x, y) in enumerate(zip(a, b)):
            diff = _tensor_tree_diff(x, y, f"{where}/{i}")
            if diff:
                return diff
        return None
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return None
    return None if a == b else (where or "/")


# train.py neither seeds nor uses Python's `random` module; the checkpoint carries its state,
# which is whatever the interpreter started with, so it differs between any two runs,
# interrupted or not. Every other entry must match bit for bit.
NOT_COMPARED = ("rng", "python")


def checkpoint_difference(path_a: str, path_b: str) -> Optional[str]:
    """None when the two checkpoints hold the same training state, bit for bit: weights,
    optimizer, scheduler, torch and NumPy RNGs, guards, sampler, hparams; else the first key
    that differs."""
    a = torch.load(path_a, map_location="cpu", weights_only=True)
    b = torch.load(path_b, map_location="cpu", weights_only=True)
    outer, inner = NOT_COMPARED
    for data in (a, b):
        if isinstance(data.get(outer), dict):
            data[outer].pop(inner, None)
    return _tensor_tree_diff(a, b)
