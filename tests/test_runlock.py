"""runlock: one trainer per run folder, across processes, and never blocked by a dead one."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from runlock import LOCK_NAME, RunLock, RunLockedError, pid_is_alive

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A second process: takes the lock, says "held", then waits for a line on stdin (or to be killed).
HOLDER = textwrap.dedent("""
    import sys
    sys.path.insert(0, sys.argv[2])
    from runlock import RunLock, RunLockedError
    try:
        lock = RunLock(sys.argv[1]).acquire()
    except RunLockedError as err:
        print("refused:", err, flush=True)
        sys.exit(3)
    print("held", flush=True)
    sys.stdin.readline()
    lock.release()
    print("released", flush=True)
""")


def _start_holder(run_dir) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(run_dir), ROOT],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"  # waits until the lock is taken
    return proc


def _try_in_another_process(run_dir) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", HOLDER, str(run_dir), ROOT], input="\n",
                          capture_output=True, text=True, timeout=60)


def test_lock_writes_the_pid_and_is_released_on_exit(tmp_path):
    run_dir = tmp_path / "output" / "trial_0"  # created by the lock
    with RunLock(run_dir) as lock:
        assert lock.held
        assert (run_dir / LOCK_NAME).read_text() == f"{os.getpid()}\n"
        assert lock.holder_pid() == os.getpid()
    assert not lock.held
    assert (run_dir / LOCK_NAME).read_text() == ""  # no stale pid left behind
    lock.release()  # a second release is a no-op
    with RunLock(run_dir):  # free again
        pass


def test_a_second_process_is_refused_while_the_first_holds_it(tmp_path):
    run_dir = tmp_path / "trial_0"
    with RunLock(run_dir):
        proc = _try_in_another_process(run_dir)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert proc.stdout.strip() == (f"refused: another trainer (pid {os.getpid()}) is using "
                                   f"{run_dir}; wait for it, stop it, or choose another "
                                   f"--run_name")
    # released: the other process gets it now
    proc = _try_in_another_process(run_dir)
    assert proc.returncode == 0 and proc.stdout.split() == ["held", "released"]


def test_this_process_is_refused_while_another_holds_it(tmp_path):
    run_dir = tmp_path / "trial_0"
    holder = _start_holder(run_dir)
    try:
        with pytest.raises(RunLockedError) as info:
            RunLock(run_dir).acquire()
        assert str(info.value) == (f"another trainer (pid {holder.pid}) is using {run_dir}; "
                                   f"wait for it, stop it, or choose another --run_name")
        assert isinstance(info.value, ValueError)
        assert (info.value.pid, info.value.run_dir) == (holder.pid, str(run_dir))
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        assert holder.stdout.readline().strip() == "released"
        holder.wait(timeout=60)
    with RunLock(run_dir):
        pass


def test_a_killed_holder_does_not_block(tmp_path):
    run_dir = tmp_path / "trial_0"
    holder = _start_holder(run_dir)
    holder.send_signal(signal.SIGKILL)  # no release: the kernel drops the flock
    holder.wait(timeout=60)
    assert (run_dir / LOCK_NAME).read_text() == f"{holder.pid}\n"  # a stale pid in the file
    with RunLock(run_dir) as lock:
        assert lock.holder_pid() == os.getpid()


def test_a_lock_file_naming_a_dead_or_live_pid_without_the_lock_does_not_block(tmp_path):
    run_dir = tmp_path / "trial_0"
    run_dir.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for text in (f"{dead.pid}\n", f"{os.getppid()}\n", "garbage", ""):
        (run_dir / LOCK_NAME).write_text(text)
        with RunLock(run_dir) as lock:
            assert lock.holder_pid() == os.getpid()


def test_two_locks_in_one_process_conflict(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLockedError, match=rf"another trainer \(pid {os.getpid()}\)"):
            RunLock(tmp_path).acquire()
    lock = RunLock(tmp_path).acquire()
    with pytest.raises(RuntimeError, match="already held"):
        lock.acquire()
    lock.release()


def test_forked_children_do_not_keep_the_lock(tmp_path):
    """A DataLoader worker forked by the trainer must not pin the lock after the trainer dies."""
    run_dir = tmp_path / "trial_0"
    script = textwrap.dedent("""
        import os, sys
        sys.path.insert(0, sys.argv[2])
        from runlock import RunLock
        lock = RunLock(sys.argv[1]).acquire()
        child = os.fork()
        if child == 0:  # the "worker": lives on after its parent
            # os.fork returned: the hooks have run. One write: lines of two processes on one
            # pipe do not interleave below PIPE_BUF bytes.
            os.write(1, f"worker {os.getpid()}\\n".encode())
            sys.stdin.readline()
            os._exit(0)
        os.write(1, b"trainer\\n")
        os._exit(0)  # the "trainer" dies without releasing
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(run_dir), ROOT],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    lines = sorted([proc.stdout.readline().split(), proc.stdout.readline().split()])
    assert lines[0] == ["trainer"] and lines[1][0] == "worker"
    child = int(lines[1][1])
    proc.wait(timeout=60)
    try:
        assert pid_is_alive(child)
        with RunLock(run_dir):  # the worker still runs, yet the folder is free
            pass
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()


def test_a_leftover_process_holding_the_lock_of_a_dead_trainer_is_named(tmp_path):
    """A process that got the lock file past the fork hook (passed to an exec'd program)."""
    run_dir = tmp_path / "trial_0"
    script = textwrap.dedent("""
        import subprocess, sys
        sys.path.insert(0, sys.argv[2])
        from runlock import RunLock
        lock = RunLock(sys.argv[1]).acquire()
        subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.readline()"],
                         pass_fds=[lock._fd])  # shares our stdin: ends on the test's line
        print("ready", flush=True)
        import os
        os._exit(0)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(run_dir), ROOT],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        proc.wait(timeout=60)
        with pytest.raises(RunLockedError) as info:
            RunLock(run_dir).acquire()
        lock_file = run_dir / LOCK_NAME
        assert str(info.value) == (f"{run_dir} is locked by a leftover process of trainer pid "
                                   f"{proc.pid}, which has exited; stop that process (fuser -v "
                                   f"{lock_file}) or choose another --run_name")
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()


def test_pid_is_alive():
    assert pid_is_alive(os.getpid())
    assert not pid_is_alive(0) and not pid_is_alive(-5) and not pid_is_alive(2 ** 62)
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])
    os.waitid(os.P_PID, zombie.pid, os.WEXITED | os.WNOWAIT)  # exited, not yet reaped
    assert not pid_is_alive(zombie.pid)
    zombie.wait()
    assert not pid_is_alive(zombie.pid)
