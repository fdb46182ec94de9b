"""One trainer per run folder: an exclusive lock on `<run_dir>/.trainer.lock`.

Two trainers writing one run folder (a resubmitted job while the first still runs, a second
terminal with the same --run_name) overwrite each other's checkpoints and interleave their
diagnostics. The trainer takes the lock before it reads or writes anything there:

    with RunLock(run_dir):
        train(...)

The lock is an `fcntl.flock` on the lock file: the kernel drops it when the holder exits, however
it exits (SIGKILL and pre-emption included), so a lock file left behind by a dead trainer never
blocks. The holder's pid is written into the file only to name it in the error message. Linux
and macOS (fcntl); on NFS, flock works across clients on Linux >= 2.6.12.
"""
from __future__ import annotations

import errno
import fcntl
import os
import weakref
from types import TracebackType
from typing import Optional, Type

LOCK_NAME = ".trainer.lock"


class RunLockedError(ValueError):
    """Another process holds the run folder's lock; the message names the folder and its pid."""

    def __init__(self, message: str, run_dir: str, pid: Optional[int]):
        super().__init__(message)
        self.run_dir = run_dir
        self.pid = pid


def pid_is_alive(pid: int) -> bool:
    """Whether a process with this pid exists and has not exited (a zombie counts as exited)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)  # signal 0: only the existence and permission checks
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    except OverflowError:
        return False
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]  # the name in (...) may hold spaces
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) is all we know
    return state not in ("Z", "X")


# Locks held in this process. A forked child (a DataLoader worker) inherits the open lock file and,
# with it, the flock: were the trainer killed, a lingering worker would keep the run locked. The
# hook below closes the inherited descriptor in every forked child.
_held: "weakref.WeakSet[RunLock]" = weakref.WeakSet()


def _close_in_child() -> None:
    for lock in list(_held):
        lock._forget_in_child()


os.register_at_fork(after_in_child=_close_in_child)


class RunLock:
    """Exclusive, non-blocking lock of a run folder for one trainer.

    Use as a context manager, or call `acquire()` and `release()`. Not re-entrant: a second
    RunLock on the same folder, in this process or another, raises RunLockedError.
    """

    def __init__(self, run_dir: str | os.PathLike):
        self.run_dir = os.fspath(run_dir)
        self.path = os.path.join(self.run_dir, LOCK_NAME)
        self._fd: Optional[int] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "RunLock":
        """Takes the lock (creating the folder if needed) and writes this pid into the file.

        Raises:
            RunLockedError: another process holds it: "another trainer (pid 1234) is using
                output/trial_0; wait for it, stop it, or choose another --run_name".
            RuntimeError: this RunLock already holds it.
            OSError: the folder or the lock file cannot be created.
        """
        if self._fd is not None:
            raise RuntimeError(f"{self.path}: this RunLock is already held")
        os.makedirs(self.run_dir, exist_ok=True)
        # O_CLOEXEC (Python's default): a program started with exec never inherits the lock.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise self._locked_error() from None
        try:
            # The flock is the lock; the pid is for the message a second trainer prints. A pid
            # left by a dead holder is simply overwritten.
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode("ascii"))
            os.fsync(fd)
        except OSError:
            os.close(fd)  # closing drops the flock too
            raise
        self._fd = fd
        _held.add(self)
        return self

    def release(self) -> None:
        """Empties the lock file and lets go of the lock; a no-op when not held.

        The file stays: deleting it would let a process that opened the old file and one that
        creates a new file both hold "the" lock.
        """
        fd, self._fd = self._fd, None
        _held.discard(self)
        if fd is None:
            return
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass  # the lock still goes with the close below
        os.close(fd)

    def _forget_in_child(self) -> None:
        # In a forked child: drop the inherited descriptor without unlocking (LOCK_UN on the
        # shared open file would unlock the parent too) and without truncating the parent's pid.
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass

    def holder_pid(self) -> Optional[int]:
        """The pid written in the lock file, or None when it is empty or unreadable."""
        try:
            with open(self.path, "rb") as f:
                text = f.read(32).decode("ascii", errors="replace").strip()
        except OSError:
            return None
        return int(text) if text.isdigit() else None

    def _locked_error(self) -> RunLockedError:
        pid = self.holder_pid()
        if pid is not None and pid_is_alive(pid):
            message = (f"another trainer (pid {pid}) is using {self.run_dir}; wait for it, stop "
                       f"it, or choose another --run_name")
        elif pid is not None:
            # flock held, but the pid that took it has exited: a child it forked outside our
            # fork hook still has the lock file open
            message = (f"{self.run_dir} is locked by a leftover process of trainer pid {pid}, "
                       f"which has exited; stop that process (fuser -v {self.path}) or choose "
                       f"another --run_name")
        else:
            message = (f"another trainer is using {self.run_dir} (its pid is not written yet); "
                       f"wait for it, stop it, or choose another --run_name")
        return RunLockedError(message, self.run_dir, pid)

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, exc_type: Optional[Type[BaseException]],
                 exc: Optional[BaseException], tb: Optional[TracebackType]) -> None:
        self.release()

    def __del__(self) -> None:
        # a forgotten lock is still released when the object goes (and the kernel does it at
        # exit anyway)
        try:
            self.release()
        except Exception:
            pass
