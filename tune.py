"""Hyperparameter trials with Optuna: which settings align fastest on your data?

    python tune.py --n_trials 20 --steps 2000
    python tune.py --n_trials 4 --steps 400 --hparams "preset=demo,iters_per_validation=100"
    python tune.py --n_trials 20 --steps 2000 --devices cuda:0,cuda:1       # one trial per GPU
    python tune.py --n_trials 20 --steps 2000 --n_jobs 2 --threads 1         # two CPU trials
    python tune.py --n_trials 40 --steps 2000 --storage postgresql://user:pw@host/db  # many machines
    python tune.py --space "guide_loss_weight=1:5:log,n_frames_per_step=2|3,p_prenet_dropout=off"

Every trial is a normal `train.py` run into OUTPUT/trial_<n> (checkpoints, diagnostics.jsonl),
LOGS/trial_<n>/train.log and RUNS/trial_<n> (TensorBoard), so every existing tool works on it.
The first trial of a new study runs the plan's own values (hparams.py defaults plus --hparams), so
the study never recommends something worse than what you had. The study lives in
OUTPUT/<study>.db (SQLite): run the same command again and it resumes; finished trials are never
repeated. `optuna-dashboard sqlite:///OUTPUT/<study>.db` watches it live. docs/tuning.md explains
the objective, the search space (both in tuning.py) and the parallel modes.

Exit status: 0 done (the table, PNG and the --hparams string are printed), 2 bad input (one line),
130/143 when interrupted by SIGINT/SIGTERM (running trials are stopped after their checkpoint and
will be retried with the same settings on the next start).
"""
from __future__ import annotations

import argparse
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
import warnings
from typing import Any, Dict, List, NoReturn, Optional, Sequence, Tuple

import optuna
from optuna.trial import TrialState

import plotting
from hparams import HParamsError, create_hparams
from messages import one_line
from run_files import RunFolder, ValidationRecord
from tuning import (ALIGNED, OBJECTIVES, Dimension, UsageError, check_space,
                    divergence_in_reports, format_value, join_hparams, parse_space, plan_values,
                    score_records, suggest)

try:
    import fcntl
except ImportError:  # not POSIX: no lock, RUNNING trials are then left to the user
    fcntl = None

ROOT = os.path.dirname(os.path.abspath(__file__))
TRAIN_PY = os.path.join(ROOT, "train.py")

EXIT_BAD_INPUT = 2
TRAIN_EXIT_BAD_INPUT = 2  # train.py's exit status for bad hparams / data / checkpoint
TRAIN_EXIT_RED_FLAG = 3  # train.py's exit status when a red flag stopped the run

POLL_SECONDS = 0.5  # how often a running trial's diagnostics.jsonl is read
TERMINATE_WAIT_SECONDS = 180  # a trial stopped with SIGTERM saves a checkpoint first


class TrialFailed(Exception):
    """A trial that ran but produced no usable result (diverged, rejected, crashed): Optuna FAIL."""


class TrialInterrupted(Exception):
    """tune.py was asked to stop while the trial ran; the trial is requeued for the next start."""


def last_line(path: str) -> str:
    """The last non-empty line of a file (the child's error message), or ''."""
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [l.strip() for l in f.read()[-20000:].splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


# ----------------------------------------------------------------------------------- trials
class DevicePool:
    """One device per running trial: a trial takes one and gives it back when it ends."""

    def __init__(self, devices: Sequence[Optional[str]]):
        self._queue: "queue.Queue[Optional[str]]" = queue.Queue()
        for d in devices:
            self._queue.put(d)

    def take(self) -> Optional[str]:
        return self._queue.get()

    def give(self, device: Optional[str]) -> None:
        self._queue.put(device)


class TrialRunner:
    """The Optuna objective: one train.py subprocess per trial, watched through its records."""

    def __init__(self, args: argparse.Namespace, space: Sequence[Dimension], devices: DevicePool,
                 stop: threading.Event):
        self.args = args
        self.space = list(space)
        self.devices = devices
        self.stop = stop
        self._requeued: set = set()  # trial numbers queued again after an interruption
        self._requeue_lock = threading.Lock()

    def __call__(self, trial: Any) -> float:
        if self.stop.is_set():
            trial.study.stop()
            trial.set_user_attr("outcome", "not started")
            trial.set_user_attr("note", "not started: tune.py was stopping")
            raise TrialInterrupted("tune.py is stopping")
        params = suggest(trial, self.space)
        hparams = join_hparams(self.args.hparams, params)
        name = f"trial_{trial.number}"
        run_dir = os.path.join(self.args.output_directory, name)
        log_dir = os.path.join(self.args.log_directory, name)
        for key, value in (("hparams", hparams), ("run_dir", run_dir), ("log_dir", log_dir),
                           ("steps", self.args.steps), ("curve", [])):
            trial.set_user_attr(key, value)
        try:
            create_hparams(hparams)
        except HParamsError as err:
            return self._fail(trial, f"invalid combination: {err}")
        if os.path.exists(RunFolder(run_dir).diagnostics_path):
            return self._fail(trial, f"{run_dir} already holds a run (from another study?)")

        device = self.devices.take()
        started = time.time()
        try:
            trial.set_user_attr("device", device or "default")
            return self._run(trial, hparams, run_dir, log_dir, device, optuna)
        finally:
            trial.set_user_attr("minutes", round((time.time() - started) / 60.0, 2))
            self.devices.give(device)

    def _fail(self, trial: Any, reason: str) -> NoReturn:
        trial.set_user_attr("outcome", "failed")
        trial.set_user_attr("note", reason)
        raise TrialFailed(reason)

    def _command(self, hparams: str, name: str, log_dir: str, device: Optional[str]) -> List[str]:
        cmd = [sys.executable, TRAIN_PY,
               f"--output_directory={self.args.output_directory}",
               f"--log_directory={log_dir}",
               f"--tensorboard_directory={self.args.tensorboard_directory}",
               f"--run_name={name}", f"--hparams={hparams}", f"--max_steps={self.args.steps}"]
        if device:
            cmd.append(f"--device={device}")
        return cmd

    def _run(self, trial: Any, hparams: str, run_dir: str, log_dir: str, device: Optional[str],
             optuna: Any) -> float:
        name = os.path.basename(run_dir)
        os.makedirs(log_dir, exist_ok=True)
        console = os.path.join(log_dir, "console.log")
        env = dict(os.environ)
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(self.args.threads)
        env["PYTHONUNBUFFERED"] = "1"
        follower = RunFolder(run_dir).follower()
        records: List[ValidationRecord] = []
        reported = 0  # the last step reported to Optuna
        with open(console, "ab") as out:
            proc = subprocess.Popen(self._command(hparams, name, log_dir, device),
                                    stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            while True:
                finished = proc.poll() is not None
                new, rewritten = follower.poll()
                if rewritten:  # a rollback: the history is the file's again
                    records = []
                for record in new:
                    records.append(record)
                    score = score_records(records, self.args.objective)
                    if score.diverged:
                        self._terminate(proc)
                        return self._fail(trial, f"diverged: {score.diverged}")
                    if score.value is not None and score.step > reported:
                        reported = score.step
                        trial.report(score.value, score.step)
                        trial.set_user_attr("curve", [list(p) for p in score.curve])
                        if not finished and trial.should_prune():
                            self._terminate(proc)
                            trial.set_user_attr("outcome", "pruned")
                            trial.set_user_attr("note", f"pruned at step {score.step}")
                            raise optuna.TrialPruned(f"objective {score.value:.4f} at step "
                                                     f"{score.step}")
                if finished:
                    break
                if self.stop.is_set():
                    self._terminate(proc)
                    return self._interrupted(trial)
                time.sleep(POLL_SECONDS)
        except KeyboardInterrupt:  # a second Ctrl-C: still stop the trainer and queue it again
            self._terminate(proc)
            self._mark_interrupted(trial)
            raise
        except BaseException:
            self._terminate(proc)  # never leave a trainer behind (a no-op when it has ended)
            raise
        return self._judge(trial, proc.returncode, records, run_dir, console, optuna)

    def _judge(self, trial: Any, status: int, records: List[ValidationRecord], run_dir: str,
               console: str, optuna: Any) -> float:
        """COMPLETE, PRUNED (red flag) or FAIL from the exit status and the records."""
        score = score_records(records, self.args.objective)
        trial.set_user_attr("curve", [list(p) for p in score.curve])  # the file's final history
        diverged = score.diverged or divergence_in_reports(run_dir)
        if diverged:
            return self._fail(trial, f"diverged: {diverged}")
        if self.stop.is_set() and status != 0:
            return self._interrupted(trial)
        if status == TRAIN_EXIT_RED_FLAG:
            trial.set_user_attr("outcome", "pruned")
            trial.set_user_attr("note", f"red flag stop at step {score.step or '?'}"
                                + (f" ({', '.join(score.red_flags)})" if score.red_flags else ""))
            raise optuna.TrialPruned("stopped by a red flag")
        if status == TRAIN_EXIT_BAD_INPUT:
            return self._fail(trial, f"train.py rejected the input: {last_line(console)}")
        if status != 0:
            return self._fail(trial, f"train.py exited with status {status}: {last_line(console)}")
        if score.value is None:
            return self._fail(trial, "no validation with free-running decoding ran; raise --steps "
                                     "or lower iters_per_validation")
        trial.set_user_attr("outcome", "complete")
        return float(score.value)

    def _interrupted(self, trial: Any) -> NoReturn:
        """Marks the trial interrupted, queues its settings again and stops the study."""
        self._mark_interrupted(trial)
        trial.study.stop()
        raise TrialInterrupted("stopped by a signal")

    def _mark_interrupted(self, trial: Any) -> None:
        """Marks the trial interrupted and queues its settings again for the next start."""
        trial.set_user_attr("outcome", "interrupted")
        trial.set_user_attr("note", "interrupted; retried on the next start")
        with self._requeue_lock:
            first_time = trial.number not in self._requeued
            self._requeued.add(trial.number)
        if first_time:
            user_attrs = {"retry_of": trial.number}
            if trial.user_attrs.get("defaults"):
                user_attrs["defaults"] = True
            trial.study.enqueue_trial(dict(trial.params), user_attrs=user_attrs)

    @staticmethod
    def _terminate(proc: subprocess.Popen) -> None:
        """SIGTERM (train.py saves a checkpoint and exits), SIGKILL if it does not."""
        if proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=TERMINATE_WAIT_SECONDS)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------------- set-up
class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        print(f"error: {message} (python tune.py --help)", file=sys.stderr)
        raise SystemExit(EXIT_BAD_INPUT)


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = _Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n_trials", type=int, default=20,
                        help="trials the study should hold when done (finished ones count)")
    parser.add_argument("--steps", type=int, default=2000, help="training steps per trial")
    parser.add_argument("--hparams", default="", help="base overrides for every trial, as train.py")
    parser.add_argument("--study", default="tune", help="study name; default storage OUTPUT/STUDY.db")
    parser.add_argument("-o", "--output_directory", default="output")
    parser.add_argument("-l", "--log_directory", default="logs")
    parser.add_argument("--tensorboard_directory", default="runs")
    parser.add_argument("--storage", default=None,
                        help="an Optuna database URL shared by several machines "
                             "(postgresql://..., mysql+pymysql://...); default sqlite in OUTPUT")
    parser.add_argument("--space", default=None,
                        help='search-space overrides "name=low:high[:log],name=a|b,name=off" '
                             'or a JSON file')
    parser.add_argument("--devices", default=None,
                        help="comma-separated devices, one running trial each (cuda:0,cuda:1)")
    parser.add_argument("--n_jobs", type=int, default=None,
                        help="trials at once on this machine (default: one per device, else 1)")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per trial")
    parser.add_argument("--pruner", default="median",
                        help="median (default), none, or threshold:X (prune below X)")
    parser.add_argument("--prune_warmup", type=int, default=None,
                        help="no pruning before this training step (default: steps // 4)")
    parser.add_argument("--prune_startup_trials", type=int, default=2,
                        help="median pruner: finished trials needed before it prunes")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed")
    parser.add_argument("--objective", default="alignment", choices=OBJECTIVES,
                        help="alignment: how early and well free-running decoding reads and "
                             "stops; quality: the speech's MCD between a hum and the "
                             "recordings' Griffin-Lim (needs iters_per_quality > 0)")
    return parser.parse_args(argv)


def check_args(args: argparse.Namespace) -> Tuple[List[Dimension], List[Optional[str]], List[str]]:
    """Validates everything that can be validated before a trial runs.

    Returns:
        (search space, device of each parallel slot, notices)
    """
    for name in ("n_trials", "steps", "threads"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name} must be at least 1")
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", args.study):
        raise UsageError(f"--study {args.study!r}: use letters, digits, '_', '-', '.'")
    try:
        plan = create_hparams(args.hparams)
    except HParamsError as err:
        raise UsageError(f"--hparams: {err}") from None
    if plan.free_running_every < 1:
        raise UsageError("--hparams: the objective scores free-running decoding; "
                         "free_running_every must be at least 1")
    if args.objective == "quality" and plan.iters_per_quality < 1:
        raise UsageError("--objective quality: the trials must score quality; "
                         "iters_per_quality must be at least 1")
    if args.steps < plan.iters_per_validation:
        raise UsageError(f"--steps {args.steps} is below iters_per_validation="
                         f"{plan.iters_per_validation}: no validation would run")
    space, notices = check_space(parse_space(args.space), args.hparams)
    if not space:
        raise UsageError("--space: nothing left to search")
    devices = check_devices(args.devices)
    n_jobs = args.n_jobs if args.n_jobs is not None else (len(devices) if devices else 1)
    if n_jobs < 1:
        raise UsageError("--n_jobs must be at least 1")
    if devices and n_jobs > len(devices):
        raise UsageError(f"--n_jobs {n_jobs} needs {n_jobs} entries in --devices (one running "
                         f"trial per device; name a device twice to share it)")
    slots: List[Optional[str]] = list(devices[:n_jobs]) if devices else [None] * n_jobs
    for folder in (args.output_directory, args.log_directory, args.tensorboard_directory):
        check_folder(folder)
    if args.pruner not in ("median", "none") and not re.fullmatch(r"threshold:[-+0-9.eE]+",
                                                                    args.pruner):
        raise UsageError(f"--pruner {args.pruner!r}: choose median, none or threshold:X")
    if args.prune_warmup is not None and args.prune_warmup < 0:
        raise UsageError("--prune_warmup must be >= 0")
    return space, slots, notices


def check_devices(text: Optional[str]) -> List[str]:
    """Parses --devices; UsageError for a device this machine does not have."""
    if not text:
        return []
    names = [d.strip() for d in text.split(",") if d.strip()]
    if not names:
        raise UsageError("--devices: name at least one device")
    import devices  # here, not at the top: it imports torch (seconds), and only --devices needs it

    for d in names:
        try:
            device = devices.choose_device(d)
        except devices.DeviceError as err:
            raise UsageError(str(err).replace("--device ", "--devices: ", 1)) from None
        if device.type not in ("cpu", "cuda", "mps"):
            raise UsageError(f"--devices: {d}: use cpu, cuda or cuda:N")
    return names


def check_folder(folder: str) -> None:
    """Creates `folder` and checks that files can be written in it."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".tune_write_test_{os.getpid()}")
        with open(probe, "w", encoding="utf-8") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as err:
        raise UsageError(f"cannot write in {folder}: {one_line(err)}") from None


def make_pruner(args: argparse.Namespace) -> Any:
    """Optuna's own pruners; warm-up and startup counts keep early noise from pruning."""
    warmup = args.prune_warmup if args.prune_warmup is not None else args.steps // 4
    if args.pruner == "none":
        return optuna.pruners.NopPruner()
    if args.pruner.startswith("threshold:"):
        return optuna.pruners.ThresholdPruner(lower=float(args.pruner.split(":", 1)[1]),
                                              n_warmup_steps=warmup)
    return optuna.pruners.MedianPruner(n_startup_trials=args.prune_startup_trials,
                                       n_warmup_steps=warmup)


def open_storage(args: argparse.Namespace) -> Tuple[Any, bool]:
    """The Optuna storage; (storage, private) where private means only this process uses it.

    The default SQLite file in the output folder is private: a lock file keeps a second tune.py
    out, so trials found RUNNING at start were left by a killed tune.py. A --storage URL may be
    shared by several machines: Optuna's heartbeat then fails a trial whose process stopped
    beating, and RetryFailedTrialCallback queues it again.
    """
    if args.storage:
        url = args.storage
        # Optuna 4.9 renamed the retry callback and its argument; older releases know the old names
        retry_class = getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None)
        if retry_class is not None:
            kwargs: Dict[str, Any] = {"heartbeat_stale_trial_callback": retry_class(max_retry=1)}
        else:
            kwargs = {"failed_trial_callback": optuna.storages.RetryFailedTrialCallback(max_retry=1)}
        kwargs.update(heartbeat_interval=60, grace_period=180)
        private = False
    else:
        path = os.path.abspath(os.path.join(args.output_directory, f"{args.study}.db"))
        url = f"sqlite:///{path}"
        kwargs = {}
        private = True
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else None
    try:
        storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **kwargs)
    except Exception as err:  # sqlalchemy and driver errors: a bad URL, a missing driver
        raise UsageError(f"--storage: cannot open {url}: {type(err).__name__}: "
                         f"{one_line(err)}") from None
    return storage, private


def lock_study(args: argparse.Namespace) -> Any:
    """An exclusive lock next to the default SQLite study; held until the process ends."""
    if fcntl is None:  # not POSIX: no lock, RUNNING trials are then left to the user
        return None
    path = os.path.join(args.output_directory, f"{args.study}.db.lock")
    handle = open(path, "a+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise UsageError(f"another tune.py is running study {args.study} in "
                         f"{args.output_directory} (lock {path})") from None
    return handle


def counts_as_done(trial: Any) -> bool:
    """A trial that used its turn: complete, pruned, or failed on its own (not interrupted)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and trial.user_attrs.get("outcome") == "failed"


def prepare_study(args: argparse.Namespace, space: Sequence[Dimension], storage: Any,
                  private: bool) -> Tuple[Any, List[str]]:
    """Creates or resumes the study; queues the plan's values first when it is new.

    Returns:
        (study, notices)
    """
    notices: List[str] = []
    study = optuna.create_study(storage=storage, study_name=args.study, direction="maximize",
                                load_if_exists=True)
    trials = study.get_trials(deepcopy=False)
    if not trials:
        leftovers = sorted(n for n in os.listdir(args.output_directory)
                           if re.fullmatch(r"trial_\d+", n)
                           and os.path.isdir(os.path.join(args.output_directory, n)))
        if leftovers:
            raise UsageError(f"{args.output_directory} already holds {', '.join(leftovers[:3])} "
                             f"from another run; a new study needs an output folder without "
                             f"trial_<n> folders (--output_directory)")
        study.set_user_attr("base_hparams", args.hparams)
        study.set_user_attr("steps", args.steps)
        study.enqueue_trial(plan_values(space, args.hparams), user_attrs={"defaults": True},
                            skip_if_exists=True)  # two machines starting a shared study at once
        notices.append(f"new study {args.study}: trial 0 runs the plan's values")
        return study, notices
    stored = study.user_attrs
    if stored.get("base_hparams", args.hparams) != args.hparams or \
            stored.get("steps", args.steps) != args.steps:
        raise UsageError(f"study {args.study} ran with --steps {stored.get('steps')} --hparams "
                         f"{stored.get('base_hparams')!r}; resume it with the same, or start "
                         f"another with --study")
    if private:
        for t in trials:
            if t.state == TrialState.RUNNING:  # its tune.py was killed: the lock says so
                study.tell(t.number, state=TrialState.FAIL)
                retry = {"retry_of": t.number, **({"defaults": True}
                                                   if t.user_attrs.get("defaults") else {})}
                study.enqueue_trial(dict(t.params), user_attrs=retry)
                notices.append(f"trial {t.number} was left running by a stopped tune.py: "
                               f"marked failed, its settings queued again")
    done = sum(counts_as_done(t) for t in study.get_trials(deepcopy=False))
    notices.append(f"resuming study {args.study}: {done} trial(s) done")
    return study, notices


# ----------------------------------------------------------------------------------- report
def trial_rows(study: Any) -> List[Dict[str, Any]]:
    """One dict per trial for the table (from the study alone: trials of other machines too)."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        attrs = t.user_attrs
        # (step, diagonality, reading diagonality); points of two values from older sessions
        curve = [(int(p[0]), float(p[1]), float(p[2] if len(p) > 2 else p[1]))
                 for p in attrs.get("curve", [])]
        aligned = next((s for s, d, _ in curve if d >= ALIGNED), None)
        notes = []
        if attrs.get("defaults"):
            notes.append("the plan's values")
        retry_of = attrs.get("retry_of")
        if retry_of is None:  # queued again by Optuna's heartbeat (a shared --storage)
            retry_of = t.system_attrs.get("failed_trial")
        if retry_of is not None:
            notes.append(f"retry of {retry_of}")
        if attrs.get("note"):
            notes.append(str(attrs["note"]))
        elif t.state.name == "FAIL" and "outcome" not in attrs:
            notes.append("interrupted (its tune.py stopped)")
        rows.append({"number": t.number, "state": t.state.name, "value": t.value,
                     "aligned_step": aligned, "last": curve[-1][1] if curve else None,
                     "last_reading": curve[-1][2] if curve else None,
                     "minutes": attrs.get("minutes"), "note": "; ".join(notes),
                     "curve": curve, "params": dict(t.params), "hparams": attrs.get("hparams"),
                     "defaults": bool(attrs.get("defaults"))})
    return rows


def format_table(rows: Sequence[Dict[str, Any]]) -> str:
    """A Markdown table of the trials."""
    def num(value: Any, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    lines = [f"| trial | status | objective | FR diagonality (last) | FR reading (last) "
             f"| step FR diag >= {ALIGNED} | minutes | note |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['number']} | {r['state']} | {num(r['value'], '.4f')} | "
                     f"{num(r['last'], '.3f')} | {num(r['last_reading'], '.3f')} | "
                     f"{num(r['aligned_step'], 'd')} | {num(r['minutes'], '.1f')} | {r['note']} |")
    return "\n".join(lines)


def format_comparison(best: Dict[str, Any], first: Optional[Dict[str, Any]]) -> str:
    """The best trial's values beside the plan's (the first trial's)."""
    lines = ["| hparam | plan (first trial) | best |", "|---|---|---|"]
    plan = first["params"] if first else {}
    for name, value in best["params"].items():
        mark = "" if plan.get(name) == value else " *"
        lines.append(f"| {name} | {format_value(plan.get(name, '-'))} | "
                     f"{format_value(value)}{mark} |")
    return "\n".join(lines)


def plot_curves(rows: Sequence[Dict[str, Any]], best: Dict[str, Any],
                first: Optional[Dict[str, Any]], path: str, title: str) -> str:
    """PNG: free-running diagonality (solid) and reading diagonality (dashed) against step, the
    best trial beside the first (the plan's values); the other trials faint."""
    fig, canvas = plotting.new_figure(8, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    highlighted = {best["number"]} | ({first["number"]} if first else set())
    for r in rows:
        if r["curve"] and r["number"] not in highlighted:
            steps, diag, _ = zip(*r["curve"])
            ax.plot(steps, diag, color="0.8", linewidth=0.8)
    shown = [(best, "tab:blue", "best")]
    if first and first["number"] != best["number"]:
        shown.append((first, "tab:gray", "the plan's values"))
    elif first:
        shown = [(best, "tab:blue", "best = the plan's values")]
    for row, color, what in shown:
        if not row["curve"]:
            continue
        steps, diag, reading = zip(*row["curve"])
        value = f"{row['value']:.3f}" if row["value"] is not None else "-"
        ax.plot(steps, diag, "o-", color=color,
                label=f"trial {row['number']} ({what}), objective {value}")
        ax.plot(steps, reading, "--", color=color, linewidth=1,
                label=f"trial {row['number']}: reading diagonality")
    ax.axhline(ALIGNED, color="tab:green", linestyle=":", linewidth=1, label=f"{ALIGNED} (aligned)")
    ax.set_xlabel("training step")
    ax.set_ylabel("free-running diagonality")
    ax.set_ylim(0, 1.02)
    ax.set_xlim(left=0)  # the objective's area starts at (0, 0)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    return plotting.save_png(canvas, path)


def summarize(study: Any, args: argparse.Namespace, seconds: float) -> str:
    """The end report: table, best against the plan, PNG, the --hparams string to train with."""
    rows = trial_rows(study)
    out = [f"study {args.study}: {len(rows)} trial(s), this session {seconds / 60:.1f} min", "",
           format_table(rows), ""]
    complete = [r for r in rows if r["state"] == "COMPLETE" and r["value"] is not None]
    plan_rows = [r for r in rows if r["defaults"]]
    first = next((r for r in plan_rows if r["state"] == "COMPLETE"),
                 plan_rows[0] if plan_rows else (rows[0] if rows else None))
    if not complete:
        out.append("no trial completed yet: nothing to recommend (see the notes above)")
        return "\n".join(out)
    best = max(complete, key=lambda r: r["value"])
    png = os.path.join(args.output_directory, f"{args.study}_diagonality.png")
    plot_curves(rows, best, first, png, f"study {args.study}: free-running diagonality")
    first_value = f"{first['value']:.4f}" if first and first["value"] is not None else "-"
    verdict = (["no trial beat the plan's values: keep them"]
               if first is not None and best["number"] == first["number"] else [])
    out += [f"best: trial {best['number']}, objective {best['value']:.4f} (first trial, the "
            f"plan's values: {first_value})", *verdict, "", format_comparison(best, first), "",
            f"diagonality curves: {png}", "", "train with:",
            f"  --hparams=\"{best['hparams']}\"",
            f"  python train.py --hparams=\"{best['hparams']}\""]
    return "\n".join(out)


# ----------------------------------------------------------------------------------- main
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    # tune.py prints one line per trial; Optuna's own INFO lines and experimental-API warnings
    # would drown them
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    try:
        space, slots, notices = check_args(args)
        storage, private = open_storage(args)
        lock = lock_study(args) if private else None
        study, more = prepare_study(args, space, storage, private)
    except UsageError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in notices + more:
        print(line)
    url = args.storage or f"sqlite:///{os.path.join(args.output_directory, args.study + '.db')}"
    print(f"study {args.study} in {url}; watch it with: optuna-dashboard {url}")

    done = sum(counts_as_done(t) for t in study.get_trials(deepcopy=False))
    remaining = max(0, args.n_trials - done)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failed trials: our line, no traceback
    sampler = optuna.samplers.TPESampler(seed=args.seed + len(study.get_trials(deepcopy=False)),
                                         n_startup_trials=5)
    study = optuna.load_study(study_name=args.study, storage=storage, sampler=sampler,
                              pruner=make_pruner(args))
    stop = threading.Event()
    runner = TrialRunner(args, space, DevicePool(slots), stop)
    received: List[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()
        print(f"signal {signum}: stopping the running trial(s) after their checkpoint; run the "
              f"same command again to resume", file=sys.stderr)
        # a second Ctrl-C raises KeyboardInterrupt (handled: exit 130), a second SIGTERM kills
        signal.signal(signum, signal.default_int_handler if signum == signal.SIGINT
                      else signal.SIG_DFL)

    def after_trial(study_: Any, frozen: Any) -> None:
        print(trial_line(frozen), flush=True)
        if stop.is_set():
            study_.stop()
        elif sum(counts_as_done(t) for t in study_.get_trials(deepcopy=False)) >= args.n_trials:
            study_.stop()  # other machines of a shared study finished the rest

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    started = time.time()
    try:
        if remaining:
            print(f"running {remaining} trial(s) of {args.steps} steps, {len(slots)} at a time")
            study.optimize(runner, n_trials=remaining, n_jobs=len(slots),
                           catch=(TrialFailed, TrialInterrupted), callbacks=[after_trial])
    except KeyboardInterrupt:  # a second Ctrl-C: stop at once; the next start retries the trial
        print("interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if lock is not None:
            lock.close()
    report = summarize(study, args, time.time() - started)
    print("\n" + report)
    with open(os.path.join(args.output_directory, f"{args.study}_summary.md"), "w",
              encoding="utf-8") as f:
        f.write(report + "\n")
    if received:
        return 128 + received[0]
    return 0


def trial_line(frozen: Any) -> str:
    """A finished trial in one line."""
    attrs = frozen.user_attrs
    value = f" objective {frozen.value:.4f}" if frozen.value is not None else ""
    note = f" ({attrs['note']})" if attrs.get("note") else ""
    minutes = f" in {attrs['minutes']:.1f} min" if attrs.get("minutes") is not None else ""
    return f"trial {frozen.number} {frozen.state.name}{value}{minutes}{note}"


if __name__ == "__main__":
    sys.exit(main())
