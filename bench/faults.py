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
"""
from __future__ import annotations

import argparse
import contextlib
import ctypes
import ctypes.util
import dataclasses
import json
import math
import os
import random
import re
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, "train.py")
DIAGNOSTICS = os.path.join(ROOT, "alignment_diagnostics.py")
for _path in (ROOT, os.path.join(ROOT, "tests")):
    if _path not in sys.path:
        sys.path.insert(0, _path)

os.environ["OMP_NUM_THREADS"] = "1"  # this process and every trainer it starts: one thread each
import numpy as np  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from checkpoint import LATEST, list_checkpoints, resolve_checkpoint  # noqa: E402
from hparams import HParams, HParamsError, create_hparams  # noqa: E402

TRACEBACK = "Traceback (most recent call last)"
KILL_STEPS = 8  # every kill scenario trains to this step, like the reference run
# tiny model, generated corpus; a checkpoint every 2 steps, a validation (snapshot) every 4;
# keep_checkpoints=0 so that no checkpoint is pruned and every one must survive every kill
RUN_HPARAMS = ("iters_per_checkpoint=2,iters_per_validation=4,keep_checkpoints=0,"
               "iters_per_audio=0,free_running_every=0")
PROC_TIMEOUT = 300  # seconds; a trainer still running after it counts as hung


# ---------------------------------------------------------------------------------- bookkeeping
class Ledger:
    """Every figure and every problem of the campaign; shared by the worker threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.problems: List[str] = []
        self.tracebacks: List[str] = []
        self.files_lost: List[str] = []
        self.processes = 0

    def problem(self, text: str) -> None:
        with self.lock:
            self.problems.append(text)

    def traceback(self, text: str) -> None:
        with self.lock:
            self.tracebacks.append(text)
            self.problems.append(f"traceback: {text}")

    def lost(self, text: str) -> None:
        with self.lock:
            self.files_lost.append(text)
            self.problems.append(f"file lost: {text}")


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


# ---------------------------------------------------------------------------------- processes
# Starting `python train.py` costs seconds of CPU in imports (torch alone ~3 s) before the first
# line of training; a campaign starts dozens. With --spawn fork (the default) every trainer is a
# child of a fork server that imported train.py's modules once (multiprocessing's forkserver:
# a single-threaded process, so forking it is safe). The child runs the script itself with
# runpy, as `python SCRIPT ARGS` would: same argv, same __main__, same exit status (a SIGKILL
# reads -9), output to its own files. --spawn exec starts real `python SCRIPT` processes instead.
_FORK_PRELOAD = ["train", "alignment_diagnostics", "check_data", "librosa.filters", "torch._dynamo",
                 "torch.utils.tensorboard", "matplotlib.pyplot"]
_mp_context = None
_mp_lock = threading.Lock()


def _child_main(script: str, argv: List[str], cwd: str, out: str, err: str) -> None:
    """In the forked child: `python SCRIPT ARGV...` with stdout/stderr into files."""
    import runpy
    for fd, path in ((1, out), (2, err)):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    # unbuffered, as PYTHONUNBUFFERED=1 gives the exec'd trainers: a killed trainer's last
    # lines are on disk
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
    except BaseException:  # what the interpreter does with an uncaught exception
        traceback.print_exc()
        code = 1
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


class ForkedProcess:
    """subprocess.Popen's small interface over a forkserver child running a script."""

    def __init__(self, script: str, argv: List[str], cwd: str, out: str, err: str):
        global _mp_context
        import multiprocessing
        with _mp_lock:
            if _mp_context is None:
                # the server imports the preload by name; Python 3.11's forkserver does not pass
                # on sys.path (only the environment), so the repository goes in PYTHONPATH
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
    """Folders, the corpus, the base hparams and the process runner of one campaign."""

    def __init__(self, root: str, ledger: Ledger, spawn: str = "fork"):
        self.root = os.path.abspath(root)
        self.ledger = ledger
        self.spawn = spawn
        self.output = os.path.join(self.root, "output")
        self.procs = os.path.join(self.root, "procs")
        os.makedirs(self.procs, exist_ok=True)
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT,
                    "PYTHONUNBUFFERED": "1"}
        from synthetic import write_token_corpus
        self.train_list, self.val_list = write_token_corpus(os.path.join(self.root, "corpus"),
                                                            n_train=18, n_val=4)
        self.corpus = os.path.dirname(self.train_list)
        self.base = (f"preset=tiny,training_files={self.train_list},"
                     f"validation_files={self.val_list},text_cleaners=[basic_cleaners]")

    def run_dir(self, run_name: str) -> str:
        return os.path.join(self.output, run_name)

    def train_cmd(self, run_name: str, hparams: str, *more: str, script: str = TRAIN,
                  output: Optional[str] = None, log_name: Optional[str] = None) -> List[str]:
        return [sys.executable, script, f"--output_directory={output or self.output}",
                f"--log_directory={os.path.join(self.root, 'logs', log_name or run_name)}",
                f"--tensorboard_directory={os.path.join(self.root, 'tb')}",
                f"--run_name={run_name}", f"--hparams={hparams}", *more]

    def start(self, label: str, cmd: List[str]) -> Tuple[Any, str, str, float]:
        """Starts `cmd` (python SCRIPT ARGS...) with its output in procs/LABEL.out and .err."""
        out = os.path.join(self.procs, f"{label}.out")
        err = os.path.join(self.procs, f"{label}.err")
        with open(os.path.join(self.procs, f"{label}.cmd"), "w", encoding="utf-8") as f:
            f.write(json.dumps(cmd) + "\n")
        if self.spawn == "fork":
            proc: Any = ForkedProcess(cmd[1], cmd[2:], self.root, out, err)
        else:
            with open(out, "w", encoding="utf-8") as fo, open(err, "w", encoding="utf-8") as fe:
                proc = subprocess.Popen(cmd, stdout=fo, stderr=fe, cwd=self.root, env=self.env)
        with self.ledger.lock:
            self.ledger.processes += 1
        return proc, out, err, time.monotonic()

    def finish(self, label: str, cmd: List[str], proc: Any, out: str, err: str,
               started: float, timeout: float = PROC_TIMEOUT) -> ProcResult:
        hung = False
        try:
            proc.wait(timeout=max(1.0, timeout - (time.monotonic() - started)))
        except subprocess.TimeoutExpired:
            hung = True
            proc.kill()
            proc.wait()
        wall = time.monotonic() - started
        texts = []
        for path in (out, err):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    texts.append(f.read())
            except FileNotFoundError:  # a child that died before it opened its files
                texts.append("")
        result = ProcResult(label, cmd, proc.returncode, texts[0], texts[1], wall, proc.pid, hung)
        if TRACEBACK in result.stderr or TRACEBACK in result.stdout:
            last = (result.stderr if TRACEBACK in result.stderr else result.stdout).splitlines()
            self.ledger.traceback(f"{label}: {' '.join(cmd)}\n" + "\n".join(last[-6:]))
        if hung:
            self.ledger.problem(f"{label}: still running after {timeout:.0f} s, killed: "
                                f"{' '.join(cmd)}")
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


# The temporary files a trainer writes, by kind: a file is written under its temporary name and
# renamed (os.replace) over the real one. {pid} is the writer's.
TEMPORARIES = {
    "checkpoint": r"checkpoint_\d+\.tmp{pid}",  # checkpoint.save_checkpoint (torch.save)
    "snapshot": r"step_\d+\.tmp{pid}\.npz",  # alignments/, train.write_validation_files
    "latest": r"checkpoint_LATEST\.tmp{pid}",  # the checkpoint_LATEST symlink
    "hparams": r"hparams\.json\.tmp{pid}",  # train.write_hparams_json (start, rollback)
}
TARGETED = tuple(TEMPORARIES)
# how many of a kind a run of KILL_STEPS steps writes: checkpoints 2, 4, 6 (the kill at the
# first leaves nothing to resume from), snapshots 4 and 8, hparams.json once at the start
OCCURRENCES = {"checkpoint": 3, "snapshot": 2, "latest": 3, "hparams": 1}


def temporary_pattern(kind: str, pid: int) -> "re.Pattern[str]":
    """The name of a temporary file of this kind written by `pid`."""
    return re.compile("^" + TEMPORARIES[kind].format(pid=pid) + "$")


# ---------------------------------------------------------------------------------- file checks
def _is_temporary(name: str) -> bool:
    return ".tmp" in name


def run_inventory(run_dir: str) -> Dict[str, List[str]]:
    """The complete (final-named) files of a run folder that a kill must not lose."""
    names = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else []
    folder = os.path.join(run_dir, "alignments")
    snapshots = sorted(n for n in os.listdir(folder) if re.fullmatch(r"step_\d+\.npz", n)) \
        if os.path.isdir(folder) else []
    return {"checkpoints": [n for n in names if re.fullmatch(r"checkpoint_\d+", n)],
            "snapshots": snapshots,
            "other": [n for n in names if n in ("hparams.json", "diagnostics.jsonl")]}


def _loads_checkpoint(path: str) -> Optional[str]:
    """None when `path` loads with weights_only=True as a checkpoint dict, else why not."""
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # any failure to load is the finding
        return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}"
    if not isinstance(data, dict) or "state_dict" not in data or "iteration" not in data:
        return "loads, but is not a checkpoint dict"
    return None


def check_run_files(run_dir: str, ledger: Ledger, label: str, *, final: bool,
                    expected: Optional[Dict[str, List[str]]] = None) -> Dict[str, Any]:
    """Checks every file of a run folder; each violation is a lost file (counted in `ledger`).

    - every checkpoint_N loads with torch.load(weights_only=True); checkpoint_LATEST resolves
      to one that does;
    - every alignments/step_N.npz loads (allow_pickle=False), hparams.json parses;
    - diagnostics.jsonl: every line parses; a torn last line is allowed only when not `final`
      (a killed trainer's; the resumed run must have removed it);
    - `final`: no temporary file is left, and every file in `expected` (the inventory taken
      right after a kill) still exists.
    Returns {"lost": n, "torn_diagnostics": bool, "records": [steps]}.
    """
    lost = 0
    torn = False
    steps: List[int] = []

    def lose(what: str) -> None:
        nonlocal lost
        lost += 1
        ledger.lost(f"{label}: {what}")

    if not os.path.isdir(run_dir):
        return {"lost": 0, "torn_diagnostics": False, "records": []}
    inventory = run_inventory(run_dir)
    for name in inventory["checkpoints"]:
        why = _loads_checkpoint(os.path.join(run_dir, name))
        if why:
            lose(f"{run_dir}/{name} does not load: {why}")
    latest = os.path.join(run_dir, LATEST)
    if inventory["checkpoints"] or os.path.lexists(latest):
        try:
            why = _loads_checkpoint(resolve_checkpoint(latest))
        except Exception as err:
            why = f"{type(err).__name__}: {err}"
        if why:
            lose(f"{latest} does not resolve to a loadable checkpoint: {why}")
    for name in inventory["snapshots"]:
        path = os.path.join(run_dir, "alignments", name)
        try:
            with np.load(path, allow_pickle=False) as data:
                for key in data.files:
                    data[key]
        except Exception as err:
            lose(f"{path} does not load: {type(err).__name__}: {err}")
    hp_path = os.path.join(run_dir, "hparams.json")
    if os.path.exists(hp_path):
        try:
            with open(hp_path, encoding="utf-8") as f:
                json.load(f)
        except Exception as err:
            lose(f"{hp_path} does not parse: {type(err).__name__}: {err}")
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
                    lose(f"{log} line {i + 1} does not parse"
                         + (" (a torn line the resumed run did not remove)" if final else ""))
    if final:
        for folder in (run_dir, os.path.join(run_dir, "alignments")):
            if os.path.isdir(folder):
                for name in sorted(os.listdir(folder)):
                    if _is_temporary(name):
                        lose(f"{os.path.join(folder, name)}: orphaned temporary file")
        for group, names in (expected or {}).items():
            for name in names:
                path = os.path.join(run_dir, "alignments" if group == "snapshots" else "", name)
                if not os.path.exists(path):
                    lose(f"{path}: existed after the kill, gone after the resumed run")
    return {"lost": lost, "torn_diagnostics": torn, "records": steps}


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


# ---------------------------------------------------------------------------------- kills
@dataclasses.dataclass
class KillPlan:
    index: int
    kind: str  # random | one of TEMPORARIES
    anchor_step: int = 0  # random: the kill comes after this step's log line (0: the start)
    at_seconds: float = 0.0  # random: seconds after the anchor
    occurrence: int = 1  # targeted: kill at the n-th temporary file of its kind
    delay: float = 0.0  # targeted: seconds between the file's appearance and the kill


@dataclasses.dataclass
class Reference:
    """The uninterrupted run every resumed run is compared with."""
    run_dir: str = ""
    wall: float = 0.0
    ok: bool = False
    records: List[int] = dataclasses.field(default_factory=list)
    windows: Dict[str, List[float]] = dataclasses.field(
        default_factory=lambda: {k: [] for k in TEMPORARIES})

    def window(self, kind: str) -> float:
        values = sorted(self.windows.get(kind) or [])
        return values[len(values) // 2] if values else 0.0


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


# ---------------------------------------------------------------------------------- bad inputs
@dataclasses.dataclass
class BadInput:
    name: str
    build: Callable[[Workspace, str], List[str]]  # (workspace, run name) -> command
    message: str  # must appear in the output (a regex)
    where: str = "stderr_line"  # stderr_line: exactly one line on stderr | output: anywhere
    prepare: Optional[Callable[[Workspace, str], None]] = None
    after: Optional[Callable[[Workspace, str], Optional[str]]] = None  # extra check: why not
    needs_reference: bool = False


class _CodePayload:
    """Pickles as a call of os.system: what a checkpoint with code looks like."""

    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def _sentinel(ws: Workspace) -> str:
    return os.path.join(ws.root, "bad", "CODE_RAN")


def _bad_path(ws: Workspace, name: str) -> str:
    os.makedirs(os.path.join(ws.root, "bad"), exist_ok=True)
    return os.path.join(ws.root, "bad", name)


def _prepare_files(ws: Workspace) -> None:
    """The bad files of the list: a file for -o, three refused checkpoints, a text file for
    --alignment, and two filelists with one bad line each."""
    with open(_bad_path(ws, "taken"), "w", encoding="utf-8") as f:
        f.write("not a folder\n")
    with open(_bad_path(ws, "random.pt"), "wb") as f:
        f.write(random.Random(7).randbytes(4096))
    torch.save({"state_dict": _CodePayload(f"touch {_sentinel(ws)}")}, _bad_path(ws, "code.pt"))
    with open(_bad_path(ws, "notes.txt"), "w", encoding="utf-8") as f:
        f.write("step 400: the attention looks diagonal\n")
    import soundfile as sf
    sr = 22050
    long_wav = os.path.join(ws.corpus, "wavs", "long.wav")
    sf.write(long_wav, (0.01 * np.sin(np.arange(21 * sr) * 0.05)).astype(np.float32), sr,
             subtype="PCM_16")
    shutil.copy(os.path.join(ws.corpus, "wavs", "utt_0000.wav"),
                os.path.join(ws.corpus, "wavs", "letterless.wav"))
    with open(ws.train_list, encoding="utf-8") as f:
        good = f.read()
    for name, line in (("long.txt", "wavs/long.wav|abc def gh"),
                       ("letterless.txt", "wavs/letterless.wav|?!..."),
                       ("big_number.txt", f"wavs/letterless.wav|abc {'9' * 40} def")):
        with open(os.path.join(ws.corpus, name), "w", encoding="utf-8") as f:
            f.write(good + line + "\n")


def _truncate_reference(ws: Workspace) -> str:
    """The reference run's checkpoint_2 cut in half, as a copy cut short."""
    path = _bad_path(ws, "truncated.pt")
    source = os.path.join(ws.run_dir("reference"), "checkpoint_2")
    with open(source, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])
    return path


def _unchanged_taken(ws: Workspace, _run: str) -> Optional[str]:
    with open(_bad_path(ws, "taken"), encoding="utf-8") as f:
        text = f.read()
    return None if text == "not a folder\n" else "the file given as -o was changed"


def _kept(name: str) -> Callable[[Workspace, str], Optional[str]]:
    def check(ws: Workspace, _run: str) -> Optional[str]:
        return None if os.path.exists(_bad_path(ws, name)) else f"{name} was removed"
    return check


def _no_code_ran(ws: Workspace, _run: str) -> Optional[str]:
    if os.path.exists(_sentinel(ws)):
        return "THE PICKLED CODE RAN (sentinel file created)"
    return _kept("code.pt")(ws, _run)


def _line_count(path: str) -> int:
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)


def bad_inputs(ws: Workspace) -> List[BadInput]:
    def train(*more: str, hparams: str = "") -> Callable[[Workspace, str], List[str]]:
        return lambda w, run: w.train_cmd(run, w.base + hparams, "--max_steps=2", *more)

    def data(name: str) -> Callable[[Workspace, str], List[str]]:
        return lambda w, run: w.train_cmd(
            run, f"preset=tiny,training_files={os.path.join(w.corpus, name)},"
                 f"validation_files={w.val_list},text_cleaners=[basic_cleaners]", "--max_steps=2")

    long_list = os.path.join(ws.corpus, "long.txt")
    letterless = os.path.join(ws.corpus, "letterless.txt")
    n = _line_count(ws.train_list) + 1  # the bad line: after the good ones
    return [
        BadInput("learning_rate=-1", train(hparams=",learning_rate=-1"),
                 r"^error: hparam learning_rate=-1\.0: must be > 0"),
        BadInput("-o /proc/x", lambda w, run: w.train_cmd(run, w.base, output="/proc/x"),
                 r"^error: --output_directory /proc/x: cannot be used"),
        BadInput("-o an existing file",
                 lambda w, run: w.train_cmd(run, w.base, output=_bad_path(w, "taken")),
                 r"^error: --output_directory \S+taken: exists and is not a folder",
                 after=_unchanged_taken),
        BadInput("max_steps=-5 (hparams)", train(hparams=",max_steps=-5"),
                 r"^error: hparam max_steps=-5: must be >= 0"),
        BadInput("--max_steps -5", lambda w, run: w.train_cmd(run, w.base, "--max_steps", "-5"),
                 r"^error: --max_steps -5: must be >= 0"),
        BadInput("-c random bytes", train("-c", _bad_path(ws, "random.pt")),
                 r"^error: \S+random\.pt: not a PyTorch checkpoint", after=_kept("random.pt")),
        BadInput("-c truncated checkpoint",
                 lambda w, run: w.train_cmd(run, w.base, "-c", _truncate_reference(w)),
                 r"^error: \S+truncated\.pt: truncated", after=_kept("truncated.pt"),
                 needs_reference=True),
        BadInput("-c a pickle with code", train("-c", _bad_path(ws, "code.pt")),
                 r"^error: \S+code\.pt: contains code \(blocked global `os\.system`\) and was "
                 r"refused", after=_no_code_ran),
        BadInput("--alignment= a text file",
                 lambda w, run: [sys.executable, DIAGNOSTICS,
                                 f"--alignment={_bad_path(w, 'notes.txt')}", "--no-plot"],
                 r"^alignment_diagnostics: error: \S+notes\.txt: not a NumPy file"),
        BadInput("audio longer than max_audio_seconds", data("long.txt"),
                 rf"(?m)^{re.escape(long_list)}:{n}: error: .*longer than max_audio_seconds",
                 where="output"),
        BadInput("text with no letters (?!...)", data("letterless.txt"),
                 rf"(?m)^{re.escape(letterless)}:{n}: error: .*has no letters",
                 where="output"),
        # not in the list: what the text fuzzing found, through the command line
        BadInput("a 40-digit number in a transcript (english_cleaners)",
                 lambda w, run: w.train_cmd(
                     run, f"preset=tiny,training_files={os.path.join(w.corpus, 'big_number.txt')},"
                          f"validation_files={w.val_list},text_cleaners=[english_cleaners]",
                     "--max_steps=2"),
                 rf"(?m)^{re.escape(os.path.join(ws.corpus, 'big_number.txt'))}:{n}: ",
                 where="output"),
        BadInput("learning_rate=1e400", train(hparams=",learning_rate=1e400"),
                 r"^error: hparam learning_rate=inf"),
        BadInput("learning_rate=1e38", train(hparams=",learning_rate=1e38"),
                 r"^error: hparam learning_rate=1e\+38: must be at most 1"),
    ]


QUICK_BAD = ("learning_rate=-1", "-o an existing file", "-c a pickle with code",
             "text with no letters (?!...)", "learning_rate=1e38")


def bad_input_try(ws: Workspace, index: int, bad: BadInput, ref_done: threading.Event,
                  ref: Reference) -> Dict[str, Any]:
    run_name = f"bad{index:02d}"
    if bad.needs_reference:
        ref_done.wait()
        if not ref.ok:
            return {"name": bad.name, "clean": False, "why": "no reference checkpoint"}
    result = ws.run(run_name, bad.build(ws, run_name), timeout=180)
    why = []
    if result.rc != 2:
        why.append(f"exit {result.rc}, expected 2")
    if bad.where == "stderr_line":
        lines = result.stderr.splitlines()
        if len(lines) != 1:
            why.append(f"{len(lines)} lines on stderr, expected one")
        if not re.search(bad.message, result.stderr):
            why.append(f"stderr does not match {bad.message!r}")
    elif not re.search(bad.message, result.stdout + result.stderr):
        why.append(f"output does not match {bad.message!r}")
    if TRACEBACK in result.stderr:
        why.append("traceback")
    if bad.after is not None:
        extra = bad.after(ws, run_name)
        if extra:
            why.append(extra)
            if "lost" in extra or "removed" in extra or "changed" in extra:
                ws.ledger.lost(f"{run_name} ({bad.name}): {extra}")
    check_run_files(ws.run_dir(run_name), ws.ledger, run_name, final=True)
    if why:
        ws.ledger.problem(f"bad input {bad.name!r} not rejected cleanly: {'; '.join(why)}: "
                          f"{' '.join(result.cmd)}"
                          + ("" if "traceback" in why else f"\n{result.tail()}"))
    return {"name": bad.name, "clean": not why, "exit": result.rc,
            "stderr": result.stderr.strip()[:300], "why": why}


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


# ---------------------------------------------------------------------------------- fuzzing
def _one_line(text: str) -> bool:
    return bool(text) and "\n" not in text and "\r" not in text


class FuzzTally:
    def __init__(self, target: str):
        self.target = target
        self.tried = 0
        self.accepted = 0
        self.rejected = 0
        self.unclean: List[str] = []
        self.tracebacks: List[str] = []
        self.examples: List[Tuple[Any, str]] = []  # (input, "accepted" | "rejected")

    def as_dict(self) -> Dict[str, Any]:
        return {"tried": self.tried, "accepted": self.accepted, "rejected": self.rejected,
                "unclean": len(self.unclean), "tracebacks": len(self.tracebacks),
                "unclean_examples": self.unclean[:5], "traceback_examples": self.tracebacks[:3]}

    @property
    def clean(self) -> int:
        return self.accepted + self.rejected


def _exception_line(err: BaseException) -> str:
    tb = traceback.extract_tb(err.__traceback__)
    where = f" at {os.path.basename(tb[-1].filename)}:{tb[-1].lineno}" if tb else ""
    return f"{type(err).__name__}: {' '.join(str(err).split())[:200]}{where}"


def _hypothesis_run(strategy, examples: int, seed: int, body: Callable[[Any], None]) -> None:
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import seed as hypothesis_seed

    @hypothesis_seed(seed)
    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    @given(strategy)
    def run(value):
        body(value)

    run()


def hparams_strategy():
    return _hparams_strategy(hparams_strategy_values())


def hparams_strategy_values():
    from hypothesis import strategies as st
    special = ["1e400", "-1e400", "nan", "inf", "-inf", "1e38", "1e-400", "0", "-0", "-1", "1",
               "true", "False", "yes", "off", "[]", "[a,b]", "[1,2,3]", "[0.1;0.2]", "['x']",
               '""', "''", "None", "0x10", "1_000", "\uff11\uff12", "\u0663", "2**53", "1e15",
               "9007199254740993", "tiny", "demo", "default", "english", "russian", "fp16",
               "bf16", "stop", "warn", "remediate", "constant", "[basic_cleaners]",
               "[english_cleaners,russian_cleaners]", "[nope]", "[", "]", "=", ",", " "]
    return st.one_of(
        st.sampled_from(special),
        st.integers(min_value=-10 ** 6, max_value=10 ** 6).map(str),
        st.integers().map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.text(max_size=12),
        st.lists(st.text(alphabet="abc01._ -", max_size=5), max_size=3).map(
            lambda xs: "[" + ",".join(xs) + "]"),
    )


def _hparams_strategy(value):
    from hypothesis import strategies as st
    names = [f.name for f in dataclasses.fields(HParams)]
    name = st.one_of(st.sampled_from(names), st.sampled_from(names).map(str.upper),
                     st.text(max_size=10))
    pair = st.tuples(name, st.sampled_from(["=", "=", "=", " = ", ":", "=="]), value).map(
        "".join)
    return st.one_of(
        st.lists(pair, max_size=5).map(",".join),
        st.tuples(st.sampled_from(["default", "tiny", "demo", "nvidia", "demo_ru", "x", ""]),
                  st.lists(pair, max_size=3)).map(
            lambda t: ",".join(["preset=" + t[0]] + t[1])),
        st.text(max_size=40),
    )


def fuzz_hparams(examples: int, seed: int) -> FuzzTally:
    tally = FuzzTally("hparams strings -> create_hparams")

    def body(text: str) -> None:
        tally.tried += 1
        try:
            hp = create_hparams(text)
        except HParamsError as err:
            if _one_line(str(err)):
                tally.rejected += 1
                tally.examples.append((text, "rejected"))
            else:
                tally.unclean.append(f"{text!r}: message of {len(str(err).splitlines())} lines")
            return
        except Exception as err:  # anything else is a traceback a user would see
            tally.tracebacks.append(f"create_hparams({text!r}): {_exception_line(err)}")
            return
        # accepted: it must also survive what a checkpoint does with it (to_dict -> from_dict)
        try:
            again = HParams.from_dict(json.loads(hp.to_json()))
        except Exception as err:
            tally.unclean.append(f"{text!r}: accepted, but its checkpoint copy is refused: "
                                 f"{_exception_line(err)}")
            return
        if again.to_dict() != hp.to_dict() and not _same_with_nan(again.to_dict(), hp.to_dict()):
            tally.unclean.append(f"{text!r}: accepted, but changes through to_json/from_dict")
            return
        tally.accepted += 1
        tally.examples.append((text, "accepted"))

    _hypothesis_run(hparams_strategy(), examples, seed, body)
    return tally


def _same_with_nan(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    return all(a[k] == b[k] or (isinstance(a[k], float) and isinstance(b[k], float)
                                and math.isnan(a[k]) and math.isnan(b[k])) for k in a)


def filelist_strategy(corpus: str):
    from hypothesis import strategies as st
    wav = "wavs/utt_0000.wav"
    good_path = st.sampled_from([f"wavs/utt_{i:04d}.wav" for i in range(18)])
    path = st.one_of(good_path, good_path,
                     st.sampled_from([os.path.join(corpus, wav), "wavs/missing.wav", "", " ",
                                      "DUMMY/LJ001-0001.wav", "wavs", wav + " ",
                                      "../corpus/" + wav]),
                     st.text(max_size=15))
    good_text = st.lists(st.sampled_from(["abc", "def", "gh", "bad", "cafe"]), min_size=1,
                         max_size=4).map(" ".join)
    text = st.one_of(good_text, good_text,
                     st.sampled_from(["?!...", "", " ", "a|b", "{HH AH0}", "1,000",
                                      "\u043f\u0440\u0438\u0432\u0435\u0442", "_", "\t"]),
                     st.text(max_size=30))
    speaker = st.one_of(st.none(), st.none(), st.sampled_from(["", "spk1", " "]),
                        st.text(max_size=5))
    line = st.tuples(path, text, speaker).map(
        lambda t: ("|".join([t[0], t[1]] + ([t[2]] if t[2] is not None else []))).encode(
            "utf-8", "surrogatepass"))
    raw = st.one_of(line, line, line, line, st.binary(max_size=30),
                    st.sampled_from([b"", b"# comment", b"\xef\xbb\xbf" + wav.encode() + b"|abc",
                                     b"\xff\xfe|abc", wav.encode() + b"|abc\r"]))
    return st.tuples(st.lists(raw, min_size=1, max_size=4), st.sampled_from([b"\n", b"\r\n"]),
                     st.booleans())


def fuzz_filelists(examples: int, seed: int, corpus: str, folder: str) -> FuzzTally:
    from check_data import check_filelists
    from data_utils import DataError, read_filelist
    tally = FuzzTally("filelists -> read_filelist, check_filelists")
    hp = create_hparams("preset=tiny,text_cleaners=[basic_cleaners]")
    path = os.path.join(folder, "fuzzed_filelist.txt")

    def body(value: Tuple[List[bytes], bytes, bool]) -> None:
        lines, newline, trailing = value
        data = newline.join(lines) + (newline if trailing else b"")
        with open(path, "wb") as f:
            f.write(data)
        tally.tried += 1
        shown = data[:120]
        try:
            entries, problems = read_filelist(path, collect_errors=True)
            bad = [p for p in problems if not _one_line(str(p))]
            if bad:
                tally.unclean.append(f"{shown!r}: collected problem not one line: {bad[0]}")
                return
            try:
                raised_entries = read_filelist(path)
                if problems:
                    tally.unclean.append(f"{shown!r}: raising mode accepted what collect mode "
                                         f"faulted: {problems[0]}")
                    return
                if raised_entries != entries:
                    tally.unclean.append(f"{shown!r}: the two modes read different entries")
                    return
            except DataError as err:
                if not problems:
                    tally.unclean.append(f"{shown!r}: raising mode faulted what collect mode "
                                         f"accepted: {err}")
                    return
                if not _one_line(str(err)):
                    tally.unclean.append(f"{shown!r}: DataError not one line")
                    return
            checked = check_filelists(path, None, hp, decode_audio=False)
            if any(not _one_line(str(p)) for p in checked):
                tally.unclean.append(f"{shown!r}: a check_data problem is not one line")
                return
        except Exception as err:
            tally.tracebacks.append(f"filelist {shown!r}: {_exception_line(err)}")
            return
        if problems or any(p.severity == "error" for p in checked):
            tally.rejected += 1
        else:
            tally.accepted += 1

    _hypothesis_run(filelist_strategy(corpus), examples, seed, body)
    return tally


def text_strategy():
    from hypothesis import strategies as st
    from text.cleaners import CLEANERS
    pieces = st.sampled_from([
        "1", "1,000", "3.14", "$5.50", "\u00a33", "1st", "22nd", "1990s", "10:30", "-7", "#1",
        "Mr.", "Dr.", "St.", "{HH AH0}", "{hh ah0 l ow1}", "{XX}", "{", "}", "{}", "_", "~",
        "\u043f\u0440\u0438\u0432\u0435\u0442", "\u0451\u0436", "\u0410\u0411", "9" * 50,
        "1" + "0" * 40, "1e100", "0.000000001", "\u00e9\u00e8", "\u00df", "\U0001f600",
        "\u0301", "\x00", "\t", "  ", "'", '"', "?!...", "...", "\u2026", "\u00bd", "\u2163",
        "\u0661\u0662"])
    text = st.one_of(st.text(max_size=40),
                     st.lists(st.one_of(pieces, st.text(max_size=6)), max_size=8).map(" ".join))
    cleaners = st.lists(st.one_of(st.sampled_from(list(CLEANERS)),
                                  st.sampled_from(["nope_cleaners"])), min_size=1, max_size=2)
    return st.tuples(text, cleaners, st.sampled_from(["english", "russian"]), st.booleans())


def fuzz_texts(examples: int, seed: int) -> FuzzTally:
    from text import (ArpabetError, UnknownCharacterError, UnknownCleanerError,
                      text_to_sequence)
    from text.symbols import get_symbols
    tally = FuzzTally("texts -> text_to_sequence")
    sizes = {s: len(get_symbols(s)) for s in ("english", "russian")}

    def body(value: Tuple[str, List[str], str, bool]) -> None:
        text, cleaners, symbol_set, drop = value
        tally.tried += 1
        try:
            ids = text_to_sequence(text, cleaners, symbol_set, drop_unknown=drop)
        except (UnknownCharacterError, ArpabetError, UnknownCleanerError) as err:
            if _one_line(str(err)):
                tally.rejected += 1
            else:
                tally.unclean.append(f"{text!r} {cleaners} {symbol_set}: "
                                     f"{type(err).__name__} message not one line")
            return
        except Exception as err:
            tally.tracebacks.append(f"text_to_sequence({text!r}, {cleaners}, {symbol_set!r}, "
                                    f"drop_unknown={drop}): {_exception_line(err)}")
            return
        if not all(isinstance(i, int) and 0 < i < sizes[symbol_set] for i in ids):
            tally.unclean.append(f"{text!r}: ids outside the symbol set")
            return
        tally.accepted += 1

    _hypothesis_run(text_strategy(), examples, seed, body)
    return tally


# hparams a fuzzed string may change and still train 2 steps of the tiny model in seconds
_CHEAP = {"seed", "learning_rate", "weight_decay", "grad_clip_thresh", "lr_schedule",
          "lr_decay_factor", "lr_patience_steps", "min_learning_rate", "gate_positive_weight",
          "divergence_factor", "divergence_window", "max_bad_steps", "divergence_lr_factor",
          "red_flag_start_step", "red_flag_diagonal", "red_flag_guided_term",
          "red_flag_max_attention", "red_flag_band_share", "red_flag_action",
          "red_flag_patience", "remedy_guide_loss_weight", "diagonal_band", "success_steps",
          "success_thresholds", "keep_checkpoints", "iters_per_log", "iters_per_checkpoint",
          "guide_loss_weight", "guide_sigma", "guide_scale", "guide_decay", "guide_lowbound",
          "guide_decay_start", "guide_decay_steps", "p_attention_dropout", "p_decoder_dropout",
          "p_encoder_dropout", "p_postnet_dropout", "p_prenet_dropout", "gate_threshold",
          "curriculum", "curriculum_start_quantile", "curriculum_steps", "min_audio_seconds",
          "max_audio_seconds", "drop_unknown_chars", "epochs", "max_steps",
          "iters_per_validation", "iters_per_audio", "free_running_every"}


def cheap_hparams_strategy():
    """Fuzzed "name=value" lists over the names in _CHEAP: strings train.py can be given
    with the tiny preset and still take 2 steps in seconds when they are accepted."""
    from hypothesis import strategies as st
    values = hparams_strategy_values()
    pair = st.tuples(st.sampled_from(sorted(_CHEAP)), values).map(lambda t: f"{t[0]}={t[1]}")
    return st.lists(pair, min_size=1, max_size=3).map(",".join)


def cli_candidates(base: str, n: int, seed: int) -> List[Tuple[str, str, str]]:
    """`n` fuzzed hparams strings for train.py: (string, expected "accepted" | "rejected",
    the in-process error or ""), half of each where the draw allows."""
    accepted: List[Tuple[str, str, str]] = []
    rejected: List[Tuple[str, str, str]] = []

    def body(text: str) -> None:
        if "\0" in text:
            return  # cannot be a command-line argument
        try:
            text.encode("utf-8")
        except UnicodeEncodeError:
            return  # (a lone surrogate) cannot be a command-line argument either
        try:
            create_hparams(f"{base},{text}")
        except HParamsError as err:
            rejected.append((text, "rejected", str(err)))
            return
        except Exception:
            return  # the in-process fuzz counts these
        accepted.append((text, "accepted", ""))

    _hypothesis_run(cheap_hparams_strategy(), max(20, 8 * n), seed, body)
    half = min(len(accepted), n // 2)
    chosen = accepted[:half] + rejected[: n - half]
    return chosen[:n]


def cli_fuzz_try(ws: Workspace, index: int, text: str, expected: str, error: str
                 ) -> Dict[str, Any]:
    run_name = f"fuzzcli{index:02d}"
    result = ws.run(run_name, ws.train_cmd(run_name, f"{ws.base},{text}", "--max_steps=2"),
                    timeout=240)
    why = []
    if expected == "rejected":
        if result.rc != 2:
            why.append(f"exit {result.rc}, expected 2")
        if result.stderr.strip() != f"error: {error}":
            why.append(f"stderr {result.stderr.strip()[:200]!r} is not the one line "
                       f"'error: {error[:100]}'")
    elif result.rc == 2:
        # accepted hparams the data check refuses (e.g. a too-low max_audio_seconds) are a
        # clean refusal too
        if "data check:" not in result.stdout:
            why.append(f"exit 2 for hparams create_hparams accepts: {result.stderr[:200]!r}")
    elif result.rc not in (0, 3):
        why.append(f"exit {result.rc}, expected 0 (or 3, a red flag)")
    if TRACEBACK in result.stderr:
        why.append("traceback")
    check_run_files(ws.run_dir(run_name), ws.ledger, run_name, final=True)
    if why:
        ws.ledger.problem(f"fuzzed hparams {text!r} through train.py: {'; '.join(why)}\n"
                          f"{result.tail()}")
    return {"hparams": text, "expected": expected, "exit": result.rc, "clean": not why,
            "why": why}


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
    _prepare_files(ws)
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
         "exit 2, one line, nothing lost, no code run"
         + ("; the issue's list + 1 from the text fuzzing (a 40-digit number)"
            if any(b["name"].startswith("a 40-digit") for b in f["bad_inputs"]["details"])
            else "")),
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
    parser = argparse.ArgumentParser(description=__doc__,
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
