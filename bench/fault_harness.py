"""The fault campaign's harness (bench/faults.py): running trainers and checking what they leave.

- `Ledger`: every problem, traceback and lost file of a campaign, shared by its threads.
- `Workspace`: a campaign's folders, generated corpus and base hparams, and the runner of its
  processes (`python SCRIPT ARGS`, forked from a server that imported train.py's modules once,
  or exec'd); `ProcResult` is the record of one process.
- `DirWatch`: new and vanished files in a run folder as they happen (inotify), and the names of
  the temporary files a trainer writes (`TEMPORARIES`, `temporary_pattern`).
- the run-folder integrity checks: `check_run_files` (every checkpoint loads, checkpoint_LATEST
  resolves, snapshots and hparams.json load, diagnostics.jsonl parses, no temporary left over,
  no file lost since the kill), `run_inventory`, and `checkpoint_difference` (the exact-resume
  comparison, bit for bit).
- `Reference`: the record of the uninterrupted run the kills are compared with.

Importing it puts the repository and tests/ on sys.path and gives this process, and every
trainer it starts, one thread.
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

from checkpoint import LATEST, resolve_checkpoint  # noqa: E402
from synthetic import write_token_corpus  # noqa: E402  (tests/synthetic.py)

TRACEBACK = "Traceback (most recent call last)"
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
    except BaseException:
        # The fork server stands in for the interpreter: an uncaught exception must reach stderr
        # exactly as `python train.py` would print it, so that the campaign can count it.
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


# ---------------------------------------------------------------------------------- reference run
# filled by faults.reference_run; the kills compare with it, a bad input cuts its checkpoint_2
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
