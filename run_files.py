"""The run folder: the one module that knows its layout (docs/run_layout.md).

    OUTPUT/RUN_NAME/
      checkpoint_<step>                  checkpoint_LATEST (symlink to the newest)
      hparams.json                       diagnostics.jsonl (one `ValidationRecord` per line)
      alignments/step_<step>.npz         red_flag_report_step_<step>.txt
      mel_cache/                         .trainer.lock (runlock.py)

Every writer here writes `<target>.tmp<pid>` and renames it over the target, so a reader sees
the old file or the whole new one, and a killed writer's temporary can be told from a live one.
Training writes through `RunFolder`; the diagnostics, tuning's record follower, the benchmarks
and the tests read through it.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field, fields
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from alignment_metrics import FreeRunningScores
from guardrails import Action, RedFlag
from messages import one_line
from runlock import pid_is_alive

CHECKPOINT_PREFIX = "checkpoint_"
LATEST = "checkpoint_LATEST"
HPARAMS = "hparams.json"
DIAGNOSTICS = "diagnostics.jsonl"
SNAPSHOTS = "alignments"
MEL_CACHE = "mel_cache"
REPORTS = "diagnostics"  # alignment_diagnostics.py's PNGs
_checkpoint_re = re.compile(r"^checkpoint_(\d+)$")  # NVIDIA's naming, no extension
_snapshot_re = re.compile(r"^step_(\d+)\.npz$")
# A temporary of ours: `.tmp` then, for the writers here, the writer's pid ("checkpoint_400.tmp12345",
# "step_400.tmp12345.npz"); older snapshot temporaries ("step_400.npz.tmp.npz") carry none.
_temporary_re = re.compile(r"\.tmp(\d*)")


class RunFilesError(ValueError):
    """A run file that cannot be read; the message names the file (and line)."""


def temporary_path(target: str) -> str:
    """`<target>.tmp<pid>`: where a writer puts a file before renaming it over `target`."""
    return f"{target}.tmp{os.getpid()}"


def write_text_atomic(path: str, text: str) -> None:
    tmp = temporary_path(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def snapshot_step(path: str) -> Optional[int]:
    """The step in an `alignments/step_<step>.npz` name, or None."""
    match = _snapshot_re.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def is_latest(path: str) -> bool:
    return os.path.basename(path) == LATEST


def latest_in(folder: str) -> str:
    return os.path.join(folder, LATEST)


# ---------------------------------------------------------------------------------- records
@dataclass
class ValidationRecord:
    """One validation of a run: one line of diagnostics.jsonl.

    `to_dict`/`from_dict` keep the on-disk keys (docs/run_layout.md); keys this version does not
    know are kept in `extra` and written back unchanged.
    """
    step: int
    time: float = 0.0
    losses: Dict[str, float] = field(default_factory=dict)
    guided_weight: float = 0.0
    guided_term: float = 0.0
    learning_rate: float = 0.0
    metrics: Dict[str, float] = field(default_factory=dict)
    failure_counts: Dict[str, int] = field(default_factory=dict)
    healthy: int = 0
    n_items: int = 0
    criterion: Optional[Dict[str, Any]] = None
    milestone: Optional[Dict[str, Any]] = None
    red_flags: List[RedFlag] = field(default_factory=list)
    action: Action = Action.CONTINUE  # what the guard decided at this validation
    free_running: Optional[FreeRunningScores] = None
    quality: Optional[Dict[str, Any]] = None  # quality.QualityScores.to_dict(), when scored
    warnings: List[str] = field(default_factory=list)
    remediated: bool = False
    skipped_steps: int = 0
    extra: Dict[str, Any] = field(default_factory=dict)

    @property
    def diagonal_score(self) -> float:
        return float(self.metrics.get("diagonal_score", float("nan")))

    def to_dict(self) -> Dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        out["red_flags"] = [flag.to_dict() for flag in self.red_flags]
        out["action"] = self.action.value
        out["free_running"] = self.free_running.to_dict() if self.free_running else None
        if self.quality is None:
            del out["quality"]  # runs without quality scoring write the lines they always did
        out.update(self.extra)
        return out

    @classmethod
    def from_dict(cls, data: Dict[str, Any]) -> "ValidationRecord":
        known = {f.name for f in fields(cls)} - {"extra"}
        values = {k: v for k, v in data.items() if k in known}
        values["red_flags"] = [RedFlag.from_dict(f) for f in data.get("red_flags") or []]
        values["action"] = Action(data.get("action", Action.CONTINUE.value))
        free = data.get("free_running")
        values["free_running"] = FreeRunningScores.from_dict(free) if free else None
        values["step"] = int(data["step"])
        return cls(**values, extra={k: v for k, v in data.items() if k not in known})


def _json_default(value: Any) -> Any:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def record_line(record: ValidationRecord) -> str:
    return json.dumps(record.to_dict(), default=_json_default) + "\n"


def parse_records(text: str, path: str, strict: bool = True) -> List[ValidationRecord]:
    """The records of a diagnostics.jsonl's text, in file order.

    A last line that does not parse is a record still being written (or torn by a kill), and is
    skipped; with `strict`, any other bad line is a RunFilesError naming the line, else skipped.
    """
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            if not isinstance(data, dict) or not isinstance(data.get("step"), int):
                raise ValueError("a record needs an integer 'step'")
            records.append(ValidationRecord.from_dict(data))
        except (ValueError, TypeError, KeyError) as err:
            if number == len(lines) or not strict:
                continue
            why = (f"not a JSON object ({err.msg})" if isinstance(err, json.JSONDecodeError)
                   else one_line(err))
            raise RunFilesError(f"{path}:{number}: {why}") from None
    return records


class RecordFollower:
    """Reads the records a trainer appends to a diagnostics.jsonl, as they are written.

    The trainer appends whole lines, but a resume or a divergence rollback rewrites the file
    without the records newer than its step (a new file renamed over the old one): the follower
    then starts again from the top and says so.
    """

    def __init__(self, path: str):
        self.path = path
        self.offset = 0
        self.inode: Optional[int] = None

    def poll(self) -> Tuple[List[ValidationRecord], bool]:
        """(records completed since the last poll, whether the file was rewritten: then the
        records are the whole file's)."""
        try:
            f = open(self.path, "rb")
        except FileNotFoundError:
            return [], False
        with f:
            st = os.fstat(f.fileno())
            rewritten = self.inode is not None and (st.st_ino != self.inode
                                                    or st.st_size < self.offset)
            if rewritten:
                self.offset = 0
            self.inode = st.st_ino
            f.seek(self.offset)
            data = f.read()
        end = data.rfind(b"\n")
        if end < 0:
            return [], rewritten  # a line being written
        self.offset += end + 1
        text = data[:end].decode("utf-8", errors="replace") + "\n"
        return parse_records(text, self.path, strict=False), rewritten


# ---------------------------------------------------------------------------------- the folder
class RunFolder:
    """One run folder, `OUTPUT/RUN_NAME`: its paths, and reading and writing its files."""

    def __init__(self, path: str):
        self.path = path

    # ------------------------------------------------------------------ paths
    def checkpoint_path(self, step: int) -> str:
        return os.path.join(self.path, f"{CHECKPOINT_PREFIX}{int(step)}")

    @property
    def latest_path(self) -> str:
        return latest_in(self.path)

    @property
    def hparams_path(self) -> str:
        return os.path.join(self.path, HPARAMS)

    @property
    def diagnostics_path(self) -> str:
        return os.path.join(self.path, DIAGNOSTICS)

    @property
    def snapshot_folder(self) -> str:
        return os.path.join(self.path, SNAPSHOTS)

    def snapshot_path(self, step: int) -> str:
        return os.path.join(self.snapshot_folder, f"step_{int(step)}.npz")

    def report_path(self, step: int) -> str:
        return os.path.join(self.path, f"red_flag_report_step_{int(step)}.txt")

    def stop_reports(self) -> List[str]:
        try:
            names = sorted(n for n in os.listdir(self.path)
                           if n.startswith("red_flag_report_step_") and n.endswith(".txt"))
        except OSError:
            return []
        return [os.path.join(self.path, n) for n in names]

    @property
    def mel_cache_folder(self) -> str:
        return os.path.join(self.path, MEL_CACHE)

    @property
    def plot_folder(self) -> str:
        return os.path.join(self.path, REPORTS)

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self) -> List[Tuple[int, str]]:
        """Complete `checkpoint_<step>` files, oldest first."""
        if not os.path.isdir(self.path):
            return []
        found = []
        for name in os.listdir(self.path):
            match = _checkpoint_re.match(name)
            path = os.path.join(self.path, name)
            if match and os.path.isfile(path):
                found.append((int(match.group(1)), path))
        return sorted(found)

    def point_latest(self, checkpoint: str) -> None:
        """checkpoint_LATEST -> `checkpoint` (a relative symlink, renamed into place)."""
        tmp = temporary_path(self.latest_path)
        if os.path.lexists(tmp):
            os.remove(tmp)
        try:
            os.symlink(os.path.basename(checkpoint), tmp)
        except OSError:
            return  # no symlinks here (some filesystems): `resolve` scans the folder instead
        os.replace(tmp, self.latest_path)

    def prune(self, keep: int) -> List[str]:
        """Deletes all but the `keep` newest checkpoints (0 keeps all); never the newest."""
        if keep <= 0:
            return []
        removed = []
        for _, path in self.checkpoints()[:-max(keep, 1)]:
            os.remove(path)
            removed.append(path)
        return removed

    # ------------------------------------------------------------------ temporaries
    def temporaries(self) -> List[str]:
        """Temporaries in the folder and in its snapshot folder."""
        found = []
        for folder in (self.path, self.snapshot_folder):
            try:
                names = os.listdir(folder)
            except OSError:
                continue
            for name in names:
                path = os.path.join(folder, name)
                if _temporary_re.search(name) and (os.path.islink(path) or os.path.isfile(path)):
                    found.append(path)
        return sorted(found)

    def remove_orphan_temporaries(self) -> List[str]:
        """Deletes temporary files that no running save will finish; returns their paths.

        A save writes `<target>.tmp<pid>` and renames it; a process killed in between
        (pre-emption, out of memory) leaves the temporary behind, a checkpoint's worth of disk
        each time. One is an orphan when its writer's pid is not a live process, or when it is
        older than the newest checkpoint (any save it belonged to has been overtaken; this also
        covers temporaries that carry no pid, and pids reused by unrelated processes).

        This process's own pid counts as not writing: saves are synchronous, so none of this
        process's saves is under way while it runs this. That matters in containers, where a
        restarted trainer often gets the pid of the one that died. Call it at start-up, after
        taking the run lock (runlock.RunLock), never while another thread of this process saves.
        """
        checkpoints = self.checkpoints()
        newest_ns = os.stat(checkpoints[-1][1]).st_mtime_ns if checkpoints else None
        removed = []
        for path in self.temporaries():
            digits = _temporary_re.search(os.path.basename(path)).group(1)
            pid = int(digits) if digits else None
            try:
                mtime_ns = os.lstat(path).st_mtime_ns
            except FileNotFoundError:
                continue  # its save just finished (renamed) or another cleaner took it
            overtaken = newest_ns is not None and mtime_ns < newest_ns
            writer_gone = pid is not None and (pid == os.getpid() or not pid_is_alive(pid))
            if overtaken or writer_gone:
                try:
                    os.remove(path)
                except FileNotFoundError:
                    continue
                removed.append(path)
        return removed

    # ------------------------------------------------------------------ snapshots
    def snapshots(self) -> Dict[int, str]:
        """{step: alignments/step_<step>.npz}."""
        found = {}
        if os.path.isdir(self.snapshot_folder):
            for name in os.listdir(self.snapshot_folder):
                step = snapshot_step(name)
                if step is not None:
                    found[step] = os.path.join(self.snapshot_folder, name)
        return found

    def write_snapshot(self, step: int, arrays: Dict[str, np.ndarray]) -> str:
        os.makedirs(self.snapshot_folder, exist_ok=True)
        path = self.snapshot_path(step)
        # np.savez adds ".npz" to a name without it: the pid goes before the extension
        tmp = os.path.join(self.snapshot_folder, f"step_{int(step)}.tmp{os.getpid()}.npz")
        try:
            np.savez_compressed(tmp, **arrays)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return path

    # ------------------------------------------------------------------ hparams.json
    def write_hparams(self, text: str) -> None:
        write_text_atomic(self.hparams_path, text)

    def read_hparams_text(self) -> Optional[str]:
        """hparams.json's text, or None when the run has none."""
        if not os.path.isfile(self.hparams_path):
            return None
        with open(self.hparams_path, encoding="utf-8") as f:
            return f.read()

    # ------------------------------------------------------------------ diagnostics.jsonl
    def append_record(self, record: ValidationRecord) -> None:
        with open(self.diagnostics_path, "a", encoding="utf-8") as f:
            f.write(record_line(record))

    def records(self, strict: bool = True, up_to: Optional[int] = None
                ) -> List[ValidationRecord]:
        """The run's validation records in file order (none when it has no diagnostics.jsonl).

        Raises:
            RunFilesError: an unreadable file, or (strict) a bad line other than the last.
        """
        path = self.diagnostics_path
        if not os.path.isfile(path):
            return []
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as err:
            raise RunFilesError(f"{path}: cannot read ({one_line(err)})") from None
        except UnicodeDecodeError:
            raise RunFilesError(f"{path}: not a UTF-8 text file") from None
        records = parse_records(text, path, strict)
        return records if up_to is None else [r for r in records if r.step <= up_to]

    def last_record(self) -> Optional[ValidationRecord]:
        try:
            records = self.records(strict=False)
        except RunFilesError:
            return None
        return records[-1] if records else None

    def follower(self) -> RecordFollower:
        return RecordFollower(self.diagnostics_path)

    def truncate_after(self, step: int) -> int:
        """Drops diagnostics.jsonl records and snapshots newer than `step` (a resume or a
        rollback to it), so the history shows each step once; returns how many were dropped."""
        dropped = 0
        path = self.diagnostics_path
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                lines = f.read().splitlines()
            kept = []
            for line in lines:
                try:
                    keep = int(json.loads(line)["step"]) <= step
                except (ValueError, KeyError, TypeError):
                    keep = False  # a torn last line of a killed trainer
                if keep:
                    kept.append(line)
            dropped += len(lines) - len(kept)
            if dropped:
                write_text_atomic(path, "".join(line + "\n" for line in kept))
        for snapshot_at, snapshot in self.snapshots().items():
            if snapshot_at > step:
                os.remove(snapshot)
                dropped += 1
        return dropped


def resolve(path: str) -> str:
    """A checkpoint path as given, with `.../checkpoint_LATEST` turned into the newest
    complete checkpoint of its folder. FileNotFoundError / IsADirectoryError with one line."""
    if is_latest(path):
        folder = os.path.dirname(path) or "."
        if os.path.isfile(path):  # a symlink to the newest, normally
            return os.path.realpath(path)
        found = RunFolder(folder).checkpoints()
        if not found:
            raise FileNotFoundError(f"{path}: no {CHECKPOINT_PREFIX}<step> file in {folder}; "
                                    f"train first")
        return found[-1][1]
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such checkpoint")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path}: is a folder; give a checkpoint file or .../{LATEST}")
    return path

