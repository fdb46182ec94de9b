"""Train Tacotron 2 with guided attention and alignment guardrails.

    python train.py --output_directory=output --log_directory=logs
    python train.py --hparams=preset=demo                      # laptop CPU quick start
    python train.py -c output/trial_0/checkpoint_LATEST         # resume (exactly where it stopped)
    python train.py -c tacotron2_statedict.pt --warm_start      # NVIDIA weights, new alphabet
    torchrun --nproc_per_node=N train.py ...                    # DistributedDataParallel

Exit status: 0 done, 2 bad input (hparams, data, checkpoint, folders, a run folder in use),
3 stopped by a red flag (divergence included), 128+signal when stopped by SIGINT/SIGTERM (after
saving a checkpoint).
"""
from __future__ import annotations

import argparse
import enum
import json
import math
import os
import signal
import sys
import time
from typing import Any, Dict, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from check_data import check_filelists
from checkpoint import (CheckpointError, carry_optimizer_state, carry_to_model,
                        hparams_from_checkpoint, load_checkpoint, restore_training_state,
                        save_checkpoint, warm_start_state)
import devices
from commons import autocast_context
from data_utils import (DataError, SamplerStateError, curriculum_max_text_length,
                        prepare_dataloaders)
from guardrails import (MAX_ROLLBACKS, Action, AlignmentGuard, DivergenceGuard, FlagKind,
                        RedFlag, criterion_for_step, is_aligned, quality_line,
                        remediated_hparams, status_line)
from hparams import HParams, HParamsError, create_hparams
from logger import TrainLogger, log_training, log_validation, log_validation_images
from loss_function import LossParts, Tacotron2Loss, guided_attention_weight
from messages import one_line
from model import Tacotron2
from run_files import RunFolder, ValidationRecord
from runlock import RunLock, RunLockedError
from text.symbols import get_symbols
from validation import free_running, quality_references, score_quality, validate

EXIT_BAD_INPUT = 2
EXIT_RED_FLAG = 3


class StepOutcome(enum.Enum):
    """What the loop does after a step: go on, start a new epoch (a remediation's curriculum
    starts from the short texts), roll back (divergence), or stop (a red flag; exit 3)."""
    CONTINUE = "continue"
    NEW_EPOCH = "new_epoch"
    ROLLBACK = "rollback"
    STOP = "stop"


class RunSetupError(ValueError):
    """A folder the run cannot use, or a bad command-line value; the message names it."""


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--output_directory", default="output",
                        help="checkpoints and run files go to OUTPUT/RUN_NAME")
    parser.add_argument("-l", "--log_directory", default="logs", help="folder of train.log")
    parser.add_argument("-c", "--checkpoint_path", default=None,
                        help="resume from this checkpoint (or warm start with --warm_start)")
    parser.add_argument("--warm_start", action="store_true",
                        help="load only the weights of -c (minus ignore_layers); fresh optimizer, step 0")
    parser.add_argument("--hparams", default="", help='comma-separated "name=value" overrides')
    parser.add_argument("--run_name", default="trial_0")
    parser.add_argument("--tensorboard_directory", default="runs")
    parser.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    parser.add_argument("--max_steps", type=int, default=None, help="stop after this step")
    parser.add_argument("--max_minutes", type=float, default=None,
                        help="stop (and save) after this much wall time")
    parser.add_argument("--skip_data_check", action="store_true",
                        help="start even when the data check finds errors")
    return parser.parse_args(argv)


# ---------------------------------------------------------------------------------- set-up
def setup_device(device_arg: Optional[str]) -> Tuple[int, int, torch.device]:
    """(rank, world_size, device): `devices.setup_device`, an indexed CUDA device (under
    torchrun LOCAL_RANK's), TF32 on."""
    return tuple(devices.setup_device(device_arg))


def usable_folder(path: str, flag: str) -> str:
    """Creates `path` if needed and checks that files can be written in it."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise RunSetupError(f"{flag} {path}: exists and is not a folder; choose another {flag}")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test.tmp{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as err:
        raise RunSetupError(f"{flag} {path}: cannot be used ({one_line(err)}); choose a "
                            f"folder you can write to") from None
    return path


def make_scheduler(optimizer: torch.optim.Optimizer, hp: HParams):
    """ReduceLROnPlateau on the validation loss; its patience counts validations."""
    if hp.lr_schedule != "plateau":
        return None
    patience = max(1, math.ceil(hp.lr_patience_steps / hp.iters_per_validation))
    return torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="min", factor=hp.lr_decay_factor, patience=patience,
        min_lr=hp.min_learning_rate)


def data_check(hp: HParams, logger: TrainLogger) -> bool:
    """Fast check of both filelists before training; False when errors were found."""
    problems = check_filelists(hp.training_files, hp.validation_files, hp, decode_audio=False)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems[:50]:
        (logger.warning if problem.severity == "warning" else logger.info)(str(problem))
    if len(problems) > 50:
        logger.info(f"... and {len(problems) - 50} more problems; run check_data.py for all")
    if not errors:
        return True
    if not all(os.path.isfile(p) for p in (hp.training_files, hp.validation_files)):
        # --write-clean and --skip_data_check cannot help a filelist that is not there: the
        # error itself names the filelists that exist.
        advice = ("a filelist is missing; name yours with --hparams="
                  "\"training_files=...,validation_files=...\"")
    else:
        advice = (f"fix them (python check_data.py {hp.training_files} {hp.validation_files} "
                  f"--write-clean clean/) or start with --skip_data_check")
    logger.info(f"data check: {len(errors)} error(s) in {hp.training_files} / "
                f"{hp.validation_files}; {advice}")
    # the one line on stderr that every refusal gives; the list is in the log above
    print(f"error: data check: {len(errors)} error(s), the first: {errors[0]}; {advice}",
          file=sys.stderr)
    return False


# ---------------------------------------------------------------------------------- the run
class Run:
    """Everything one training run holds. `hp` is the one live hparams object: a remediation or
    a rollback replaces it, and every part of the loop reads it from here."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        if args.max_steps is not None and args.max_steps < 0:
            raise RunSetupError(f"--max_steps {args.max_steps}: must be >= 0")
        if args.max_minutes is not None and not args.max_minutes > 0:
            raise RunSetupError(f"--max_minutes {args.max_minutes}: must be > 0")
        self.rank, self.world_size, self.device = setup_device(args.device)
        self.run_dir = os.path.join(args.output_directory, args.run_name)
        self.folder = RunFolder(self.run_dir)
        self.stop_signal: Optional[int] = None
        self.started = time.time()
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of this epoch already trained (exact resume)
        self.validations = 0
        self.resume_from: Optional[Dict[str, Any]] = None
        self.warm_from: Optional[Dict[str, Any]] = None
        self.hp = self._hparams()
        self.lock: Optional[RunLock] = None
        if self.is_main:
            usable_folder(args.output_directory, "--output_directory")
            usable_folder(self.run_dir, "--run_name")
            # One trainer per run folder: a second one would interleave logs and overwrite
            # checkpoints. Taken before anything is written into the folder.
            self.lock = RunLock(self.run_dir)
            self.lock.acquire()
            usable_folder(args.log_directory, "--log_directory")
            usable_folder(os.path.join(args.tensorboard_directory, args.run_name),
                          "--tensorboard_directory")
        self.logger = TrainLogger(args.log_directory, args.tensorboard_directory, args.run_name,
                                  enabled=self.is_main)
        self.guard = AlignmentGuard()
        self.divergence = DivergenceGuard(self.hp)

    def _hparams(self) -> HParams:
        args = self.args
        hp = create_hparams(args.hparams)
        if args.checkpoint_path:
            ckpt = load_checkpoint(args.checkpoint_path, map_location="cpu")
            if args.warm_start:
                self.warm_from = ckpt
            else:
                self.resume_from = ckpt
                # the run's own hparams; a --hparams given now overrides them, except the
                # reduction factor that gradual training has already lowered (the same
                # command run again names the starting one)
                saved = hparams_from_checkpoint(ckpt, None, fallback=hp)
                hp = hparams_from_checkpoint(ckpt, args.hparams or None, fallback=hp)
                if (hp.reduce_r_to and saved.n_frames_per_step == hp.reduce_r_to
                        and hp.n_frames_per_step > saved.n_frames_per_step):
                    hp = hp.replace(n_frames_per_step=saved.n_frames_per_step)
        if args.max_steps is not None:
            hp = hp.replace(max_steps=args.max_steps)
        return hp

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def reached_max(self) -> bool:
        """max_steps reached, or --max_minutes of wall time spent."""
        if (self.args.max_minutes is not None
                and time.time() - self.started > 60 * self.args.max_minutes):
            return True
        return bool(self.hp.max_steps) and self.step >= self.hp.max_steps

    def close(self) -> None:
        self.logger.close()
        if self.lock is not None:
            self.lock.release()


class Trainer:
    """The model, optimizer and data of a run, and the steps of its loop."""

    def __init__(self, run: Run):
        self.run = run
        self.symbols = get_symbols(run.hp.symbol_set)
        self._build(run.hp)
        self.clock = time.perf_counter()
        self.quality_references: Optional[Dict[str, Any]] = None
        self.quality_notice_given = False

    def _build(self, hp: HParams) -> None:
        """The model, optimizer, scheduler, scaler, loss and data loaders of `hp`."""
        run, device = self.run, self.run.device
        self.model = Tacotron2(hp).to(device)  # the bare model: checkpoints and validation
        self.optimizer = make_optimizer(self.model, hp)
        self.scheduler = make_scheduler(self.optimizer, hp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "fp16")
        self.criterion = Tacotron2Loss(hp)
        self.train_loader, self.val_loader, self.train_set, self.val_set = prepare_dataloaders(
            hp, run.folder.mel_cache_folder, rank=run.rank, world_size=run.world_size)
        self.sampler = self.train_loader.batch_sampler
        self.stepper = self.model
        if run.world_size > 1:
            self.stepper = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)
        # Steps whose figures are still on the device: read together at the next log line,
        # checkpoint or validation (`settle`), never one host synchronisation per step.
        self.pending: List[Tuple[int, "StepTensors"]] = []

    def reduce_r(self, r: int) -> None:
        """Continues with reduction factor `r` (smaller): the same weights and optimizer
        moments, the output layers cut to the first `r` frames of each group; new loaders (a
        new epoch starts), the divergence guard's loss window starts afresh."""
        run = self.run
        old_model, old_r = self.model, run.hp.n_frames_per_step
        weights = self.model.state_dict()
        moments = self.optimizer.state_dict()
        schedule = self.scheduler.state_dict() if self.scheduler is not None else None
        scale = self.scaler.state_dict()  # {} unless fp16
        run.hp = run.hp.replace(n_frames_per_step=r)
        self._build(run.hp)
        if scale:
            self.scaler.load_state_dict(scale)
        self.model.load_state_dict(carry_to_model(weights, self.model))
        self.optimizer.load_state_dict(carry_optimizer_state(moments, old_model, self.model))
        if schedule is not None:
            self.scheduler.load_state_dict(schedule)
        self.model.train()
        run.divergence.window.clear()  # losses per frame of another r
        run.epoch += 1
        run.batch_in_epoch = 0
        write_hparams_json(run)
        message = (f"step {run.step}: reduction factor {old_r} -> {r} (n_frames_per_step), "
                   f"weights and optimizer carried; a new epoch starts")
        run.logger.info(message)
        run.logger.text("criterion", message, run.step)

    def reduce_r_due(self, record: ValidationRecord) -> int:
        """The smaller reduction factor to continue with after this validation, or 0."""
        hp = self.run.hp
        if not hp.reduce_r_to or hp.reduce_r_to >= hp.n_frames_per_step:
            return 0
        if hp.reduce_r_step:
            return hp.reduce_r_to if record.step >= hp.reduce_r_step else 0
        return hp.reduce_r_to if is_aligned(record.free_running) else 0

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int) -> None:
        run = self.run
        if not run.is_main:
            return
        path = run.folder.checkpoint_path(step)
        save_checkpoint(path, model=self.model, optimizer=self.optimizer, hp=run.hp, step=step,
                        scheduler=self.scheduler, scaler=self.scaler, symbols=self.symbols,
                        extra={"guard": run.guard.state_dict(),
                               "divergence": run.divergence.state_dict(),
                               "epoch": run.epoch, "batch_in_epoch": run.batch_in_epoch,
                               "sampler": self.sampler.state_dict(position=run.batch_in_epoch),
                               "validations": run.validations})
        run.folder.prune(run.hp.keep_checkpoints)
        run.logger.info(f"saved {path}")
        self.clock = time.perf_counter()

    def restore(self, ckpt: Dict[str, Any]) -> None:
        """The whole training state of `ckpt`: weights, optimizer, scheduler, scaler, RNGs,
        guards, the data order and the position in it; run files written after it are dropped."""
        run = self.run
        extra = restore_training_state(ckpt, self.model, self.optimizer, self.scheduler,
                                       self.scaler)
        run.guard = AlignmentGuard(extra.get("guard"))
        run.divergence = DivergenceGuard(run.hp, extra.get("divergence"))
        run.step = int(ckpt.get("iteration", 0))
        run.epoch = int(extra.get("epoch", 0))
        run.batch_in_epoch = int(extra.get("batch_in_epoch", 0))
        run.validations = int(extra.get("validations", 0))
        self.pending = []
        if extra.get("sampler"):
            try:
                self.sampler.load_state_dict(extra["sampler"])
            except SamplerStateError as err:
                # The data or its batching changed since the checkpoint (another filelist,
                # batch size or world size): the order cannot be replayed, so a new epoch starts.
                run.logger.warning(f"{ckpt['path']}: the data order cannot be resumed exactly "
                                   f"({err}); starting epoch {run.epoch + 1} afresh")
                run.epoch += 1
                run.batch_in_epoch = 0
        if run.is_main:
            dropped = run.folder.truncate_after(run.step)
            if dropped:
                run.logger.info(f"dropped {dropped} validation record(s) and snapshot(s) newer "
                                f"than step {run.step}")

    # ------------------------------------------------------------------ epochs
    def start_epoch(self) -> None:
        """Seeds the epoch's order and, at an epoch's start, applies the curriculum cap; a
        resumed epoch keeps the cap it started with (in the sampler's state)."""
        run = self.run
        if run.batch_in_epoch == 0:
            cap = curriculum_max_text_length(run.guard.curriculum_step(run.step, run.hp), run.hp,
                                             self.train_set.text_lengths)
            offered = self.sampler.set_max_text_length(cap)
            if cap is not None:
                run.logger.info(f"curriculum: epoch {run.epoch} offers {offered} texts of up to "
                                f"{cap} tokens")
                run.logger.scalars({"curriculum.max_text_length": cap}, run.step)
        self.sampler.set_epoch(run.epoch, start_batch=run.batch_in_epoch)
        # Worker seeds come from the loader's own generator: seeding it per epoch gives a resumed
        # epoch the same worker seeds as the straight run.
        self.train_loader.generator.manual_seed(run.hp.seed + run.epoch)

    def run_epochs(self) -> int:
        """The training loop; returns the exit status."""
        run = self.run
        self.model.train()
        last_saved = -1
        self.clock = time.perf_counter()
        outcome = StepOutcome.CONTINUE
        while run.epoch < run.hp.epochs and not run.reached_max():
            self.start_epoch()
            for batch in self.train_loader:
                run.step += 1
                run.batch_in_epoch += 1
                outcome = self.one_step(batch)
                if outcome is StepOutcome.STOP:
                    break
                if run.step % run.hp.iters_per_checkpoint == 0:
                    self.save(run.step)
                    last_saved = run.step
                if (outcome is not StepOutcome.CONTINUE or run.stop_signal is not None
                        or run.reached_max()):
                    break
            else:
                run.epoch += 1  # a whole epoch went through
                run.batch_in_epoch = 0
                outcome = self.settle()  # the figures of the epoch's last steps
            if outcome is StepOutcome.ROLLBACK:
                outcome = self.roll_back()
            if outcome is StepOutcome.STOP or run.stop_signal is not None:
                break
        if outcome is StepOutcome.STOP:
            return EXIT_RED_FLAG
        if last_saved != run.step:
            self.save(run.step)
        if run.stop_signal is not None:
            run.logger.info(f"stopped by signal {run.stop_signal} at step {run.step}; "
                            f"checkpoint saved. Resume with: python train.py -c "
                            f"{run.folder.latest_path}")
            return 128 + run.stop_signal
        run.logger.info(f"finished at step {run.step}")
        return 0

    def one_step(self, batch) -> StepOutcome:
        """A training step; at a log line, checkpoint, validation or the end, the figures of
        the steps since the last such point, their divergence check and the validation."""
        run = self.run
        hp, step = run.hp, run.step
        self.pending.append((step, train_step(self.stepper, batch, self.criterion,
                                              self.optimizer, self.scaler, run)))
        due = (step % hp.iters_per_log == 0 or step % hp.iters_per_validation == 0
               or step % hp.iters_per_checkpoint == 0 or run.stop_signal is not None
               or run.reached_max())
        if not due:
            return StepOutcome.CONTINUE
        outcome = self.settle()
        if outcome is StepOutcome.CONTINUE and step % hp.iters_per_validation == 0:
            outcome = self.validation_round()
            self.clock = time.perf_counter()
        return outcome

    def settle(self) -> StepOutcome:
        """Reads the pending steps' figures (one host synchronisation for all of them), gives
        each to the divergence guard in order, and writes the log lines that are due.

        A non-finite step has already been skipped on the device (`train_step`); what the
        guard decides here (a divergence red flag) is acted on at this step.
        """
        run = self.run
        if not self.pending:
            return StepOutcome.CONTINUE
        pending, self.pending = self.pending, []
        now = time.perf_counter()
        seconds, self.clock = (now - self.clock) / len(pending), now
        learning_rate = self.optimizer.param_groups[0]["lr"]
        for (step, tensors), (losses, grad_norm) in zip(pending, read_steps(
                [t for _, t in pending])):
            flag = run.divergence.observe(step, losses["total"],
                                          None if self.scaler.is_enabled() else grad_norm, run.hp)
            if step % run.hp.iters_per_log == 0 or flag is not None:
                log_training(run.logger, step, losses, tensors.weight, learning_rate, grad_norm,
                             seconds, run.divergence.skipped_total)
            if flag is None:
                continue
            run.logger.warning(f"step {step}: {flag.line()}")
            action = Action(run.hp.red_flag_action)
            if action is Action.REMEDIATE:
                return StepOutcome.ROLLBACK
            if action is Action.STOP:
                self.stop(run.step, [flag], f"step {step}: {flag.message}. Lower the learning "
                                            f"rate (now {learning_rate:g})")
                return StepOutcome.STOP
        return StepOutcome.CONTINUE

    def roll_back(self) -> StepOutcome:
        """Back to the newest checkpoint before this step with the learning rate lowered;
        STOP when there is none or rolling back has not helped."""
        run = self.run
        factor = run.hp.divergence_lr_factor
        older = [(s, p) for s, p in run.folder.checkpoints() if s < run.step]
        if not older or not run.divergence.can_roll_back():
            why = ("no checkpoint to roll back to" if not older
                   else f"{MAX_ROLLBACKS} rollbacks did not help")
            flag = RedFlag(FlagKind.DIVERGENCE, why, FlagKind.DIVERGENCE.display_name())
            self.stop(run.step, [flag], f"step {run.step}: divergence: {why}. Lower the "
                      f"learning rate (now {run.hp.learning_rate:g}, e.g. "
                      f"learning_rate={run.hp.learning_rate * factor:g}) and start again")
            return StepOutcome.STOP
        step, path = older[-1]
        diverged_at, before = run.step, run.divergence
        self.restore(load_checkpoint(path, map_location="cpu"))
        run.divergence.continue_after_rollback(before)
        run.hp = run.hp.replace(learning_rate=run.hp.learning_rate * factor,
                                min_learning_rate=min(run.hp.min_learning_rate,
                                                      run.hp.learning_rate * factor))
        for group in self.optimizer.param_groups:
            group["lr"] *= factor
        write_hparams_json(run)
        if self.scheduler is not None:
            self.scheduler.min_lrs = [run.hp.min_learning_rate] * len(self.scheduler.min_lrs)
        message = (f"divergence at step {diverged_at}: rolled back to {path} (step {step}), "
                   f"learning rate x{factor:g} -> {self.optimizer.param_groups[0]['lr']:.3g} "
                   f"(rollback {run.divergence.rollbacks} of at most {MAX_ROLLBACKS})")
        run.logger.warning(message)
        run.logger.text("red_flags", message, run.step)
        self.clock = time.perf_counter()
        return StepOutcome.CONTINUE

    def stop(self, step: int, flags: List[RedFlag], message: str) -> None:
        """A red-flag stop: checkpoint (unless it diverged) and report; the run exits 3."""
        run = self.run
        if run.is_main:
            if not any(f.kind is FlagKind.DIVERGENCE for f in flags):
                self.save(step)
            path = write_stop_report(run, step, flags, message)
            run.logger.info(f"RED FLAG STOP. {message}")
            run.logger.info(f"report: {path}")
            print(f"RED FLAG STOP at step {step}: {message}", file=sys.stderr)

    # ------------------------------------------------------------------ validation
    def validation_round(self) -> StepOutcome:
        """Validation, diagnostics, milestones and red flags on rank 0; every rank follows its
        decision."""
        run = self.run
        hp, step = run.hp, run.step
        actions = list(Action)
        # [action, reduction factor to continue with or 0]; NCCL wants the GPU
        decision_code = torch.zeros(2, dtype=torch.long, device=run.device)
        if run.is_main:
            decision, record = self._validate_and_judge()
            decision_code[0] = actions.index(decision.action)
            decision_code[1] = self.reduce_r_due(record)
            if decision.action is Action.STOP:
                self.stop(step, decision.flags, decision.message)
        if run.world_size > 1:
            dist.broadcast(decision_code, src=0)  # every rank takes rank 0's decision
        code, new_r = decision_code.tolist()
        action = actions[code]
        if action is Action.STOP:
            return StepOutcome.STOP
        if new_r:
            self.reduce_r(new_r)  # a new epoch starts with the new loaders
        if action is Action.REMEDIATE:
            run.hp = remediated_hparams(run.hp)
            if not run.is_main and not hp.curriculum:
                run.guard.curriculum_from = step  # rank 0's guard set it; the others learn it here
            write_hparams_json(run)
            if not new_r:
                # The curriculum takes effect at once: a new epoch starts from the short texts.
                run.epoch += 1
                run.batch_in_epoch = 0
            return StepOutcome.NEW_EPOCH
        return StepOutcome.NEW_EPOCH if new_r else StepOutcome.CONTINUE

    def quality_due(self) -> bool:
        """Whether this free-running validation scores speech quality: the first one, every
        `iters_per_quality`-th, and the one that reaches a milestone (its verdict shows the
        speech beside the alignment)."""
        hp, run = self.run.hp, self.run
        if not hp.iters_per_quality:
            return False
        n = run.validations // max(1, hp.free_running_every)
        return (n == 1 or n % hp.iters_per_quality == 0
                or run.guard.milestone_due(run.step, hp))

    def score_quality(self, free) -> Dict[str, Any]:
        """Quality of the free-running decodes, with the recordings' references (measured at
        the first quality validation of this trainer); its diagnostics.jsonl form."""
        run = self.run
        if self.quality_references is None:
            self.quality_references = quality_references(free, self.val_set, run.hp)
        result = score_quality(free, self.val_set, run.hp, self.quality_references)
        if result.wer_notice and not self.quality_notice_given:
            run.logger.info(f"quality: {result.wer_notice}")
            self.quality_notice_given = True
        return result.to_dict()

    def _validate_and_judge(self):
        run = self.run
        hp, step, logger = run.hp, run.step, run.logger
        weight = guided_attention_weight(step, hp)
        result = validate(self.model, self.val_loader, self.criterion, hp, run.device, weight)
        run.validations += 1
        losses, summary = result["losses"], result["summary"]
        metrics = summary["mean"]
        if self.scheduler is not None:
            # the reconstruction losses only: the guided term falls with its schedule, which
            # would look like progress
            self.scheduler.step(losses["mel"] + losses["mel_postnet"] + losses["gate"])
        free = quality = None
        if hp.free_running_every and run.validations % hp.free_running_every == 0:
            scored = self.quality_due()
            free = free_running(self.model, self.val_set, hp, run.device, keep_mels=scored)
            if scored:
                quality = self.score_quality(free)
        free_scores = free.to_record() if free is not None else None
        milestone = run.guard.milestone(step, metrics["diagonal_score"], hp, free_scores,
                                        quality)
        gap = run.guard.free_running_gap(step, metrics["diagonal_score"],
                                         free_scores.diagonal_score if free_scores else None, hp)
        guided_term = weight * losses["guided_attn"]
        advice = run.guard.quality_plateau(step, free_scores, quality, hp)
        decision = run.guard.check(step, summary, guided_term, hp, advice)
        record = ValidationRecord(
            step=step, time=time.time(), losses=losses, guided_weight=weight,
            guided_term=guided_term, learning_rate=self.optimizer.param_groups[0]["lr"],
            metrics={k: float(v) for k, v in metrics.items()},
            failure_counts=summary["failure_counts"], healthy=summary["healthy"],
            n_items=summary["n_items"],
            criterion=criterion_for_step(step, hp, metrics["diagonal_score"]),
            milestone=({k: v for k, v in milestone.items() if k != "line"} if milestone
                       else None),
            red_flags=decision.flags, action=decision.action, free_running=free_scores,
            quality=quality, warnings=[gap] if gap else [],
            remediated=run.guard.remediated_at is not None,
            skipped_steps=run.divergence.skipped_total)
        write_validation_files(run, result, free, record)
        log_validation(logger, record)
        if quality is not None:
            logger.info(quality_line(step, quality))
            logger.info(status_line(step, free_scores, quality))
        if milestone:
            logger.info(milestone["line"])
            logger.text("criterion", milestone["line"], step)
        if gap:
            logger.warning(f"step {step}: {gap}")
        if logger.enabled:
            log_validation_images(logger, step, result["example"], metrics["diagonal_score"],
                                  hp.diagonal_band, free)
            # The first validation already carries a sample, so a new run can be listened to
            # long before iters_per_audio validations have passed.
            if hp.iters_per_audio and (run.validations == 1
                                       or run.validations % hp.iters_per_audio == 0):
                from audio import griffin_lim  # librosa's Griffin-Lim loads slowly; needed here only
                wav = griffin_lim(result["example"]["mel_predicted"], hp, n_iters=30)
                logger.audio("audio_predicted", wav, step, hp.sampling_rate)
        logger.flush()
        if decision.action in (Action.WARN, Action.REMEDIATE):
            logger.warning(decision.message)
        if decision.action is Action.REMEDIATE:
            logger.text("red_flags", decision.message, step)
        return decision, record


# ---------------------------------------------------------------------------------- the step
class StepTensors(NamedTuple):
    """One training step's figures, still on the device (`read_steps` brings them over)."""
    losses: torch.Tensor  # float32 (parts,), averaged over ranks, in `names` order
    grad_norm: torch.Tensor  # () before clipping; not finite for a skipped step
    weight: float  # the step's guided-attention weight
    names: Tuple[str, ...] = LossParts._fields

    def read(self) -> Tuple[Dict[str, float], float, bool]:
        """(losses, grad norm, skipped) on the host: a synchronisation, for tests and tools."""
        (losses, grad_norm), = read_steps([self])
        return losses, grad_norm, not math.isfinite(grad_norm)


def read_steps(steps: Sequence[StepTensors]) -> List[Tuple[Dict[str, float], float]]:
    """(losses, grad norm) of each step, read in one device-to-host copy."""
    if not steps:
        return []
    table = torch.stack([torch.cat([s.losses, s.grad_norm.reshape(1).float()])
                         for s in steps]).tolist()
    return [(dict(zip(s.names, row[:-1])), row[-1]) for s, row in zip(steps, table)]


def make_optimizer(model: torch.nn.Module, hp: HParams) -> torch.optim.Adam:
    """Adam, with its fused kernel where this torch has one for the model's device.

    The fused kernel takes a skip flag on the device (`found_inf`), so a non-finite step is
    skipped without the host reading anything; elsewhere (older torch on a CPU) the host
    decides, which costs nothing there.
    """
    try:
        return torch.optim.Adam(model.parameters(), lr=hp.learning_rate,
                                weight_decay=hp.weight_decay, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(model.parameters(), lr=hp.learning_rate,
                                weight_decay=hp.weight_decay)


def apply_update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                 skip: torch.Tensor) -> None:
    """The optimizer step, left out where `skip` (a device bool) is True, then the scaler's
    update. Weights and optimizer state stay exactly as they were on a skipped step."""
    if scaler.is_enabled():
        scaler.step(optimizer)  # fp16: the scaler's own found-inf flag (fused Adam: on device)
    elif optimizer.defaults.get("fused"):
        # the protocol GradScaler itself uses with fused optimizers
        optimizer.grad_scale, optimizer.found_inf = None, skip.to(torch.float32)
        try:
            optimizer.step()
        finally:
            del optimizer.grad_scale, optimizer.found_inf
    elif not bool(skip):
        optimizer.step()
    scaler.update()


def train_step(model: torch.nn.Module, batch, criterion: Tacotron2Loss,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               run: Any) -> StepTensors:
    """One optimizer step, with no host synchronisation on an accelerator.

    A step whose total loss (averaged over ranks) or gradient norm is not finite changes
    nothing: the gradients of a non-finite loss are made non-finite, the update is skipped on
    the device (`apply_update`) and the batch-norm statistics of its forward pass are put back;
    the caller's `DivergenceGuard` counts it when the figures are read (`read_steps`).
    """
    hp, device = run.hp, run.device
    text_lengths = batch.text_lengths  # on the host: the encoder packs with them, no sync
    batch = batch.to(device, non_blocking=device.type != "cpu")  # pinned host memory on accelerators
    weight = guided_attention_weight(run.step, hp)
    optimizer.zero_grad(set_to_none=True)
    # Batch-norm running statistics change in the forward pass; a skipped step puts them back
    # (a few kB), so a non-finite batch leaves no trace in the model.
    buffers = [b.detach().clone() for b in model.buffers()]
    with autocast_context(hp.precision, device):
        out = model(batch.text, text_lengths, batch.mel, batch.mel_lengths)
    parts = criterion(out, batch, weight)  # losses in float32, outside autocast
    values = torch.stack([p.detach().float() for p in parts])
    if run.world_size > 1:
        dist.all_reduce(values)  # every rank sees the same losses: they skip steps together
        values /= run.world_size
    scaler.scale(parts.total).backward()
    with torch.no_grad():
        # A non-finite loss whose gradients came out finite must not be applied either; the
        # averaged loss is the same on every rank, so every rank poisons alike.
        poison = torch.where(torch.isfinite(values[0]), 0.0, float("nan"))
        next(p for p in model.parameters() if p.grad is not None).grad.add_(poison)
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip_thresh)
    skip = ~torch.isfinite(grad_norm)
    apply_update(optimizer, scaler, skip)
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(torch.where(skip, saved, buffer))
    return StepTensors(values, grad_norm.detach(), weight)


# ---------------------------------------------------------------------------------- run files
def write_validation_files(run: Run, result: Dict[str, Any], free: Optional[Any],
                           record: ValidationRecord) -> None:
    """alignments/step_N.npz and a line of diagnostics.jsonl."""
    hp = run.hp
    arrays = dict(result["snapshot"])
    arrays.update(step=np.int64(run.step), n_frames_per_step=np.int64(hp.n_frames_per_step),
                  hop_length=np.int64(hp.hop_length), sampling_rate=np.int64(hp.sampling_rate))
    if free is not None:
        arrays.update(free.snapshot)
    run.folder.write_snapshot(run.step, arrays)
    run.folder.append_record(record)


def write_stop_report(run: Run, step: int, flags: List[RedFlag], message: str) -> str:
    """red_flag_report_step_N.txt: what stopped the run, its last scores, what to change."""
    path = run.folder.report_path(step)
    lines = [f"Training stopped by a red flag at step {step}.", message, ""]
    lines += [flag.line() for flag in flags]
    last = run.folder.last_record()
    if last is not None:
        m = last.metrics
        lines += ["", f"last validation (step {last.step}): diagonality "
                      f"{m['diagonal_score']:.3f}, focus {m['focus_score']:.3f}, coverage "
                      f"{m['coverage']:.3f}, max attention {m['max_attention']:.3f}; failure "
                      f"modes {last.failure_counts}"]
    lines += ["", "Full report: python alignment_diagnostics.py "
                  f"--output_directory={run.args.output_directory} --run_name={run.args.run_name}"
                  + (f" --step={last.step}" if last is not None else "")]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


# ---------------------------------------------------------------------------------- entry
def train(args: argparse.Namespace) -> int:
    """Runs training; returns the exit status."""
    run = Run(args)
    try:
        return _train(run)
    finally:
        run.close()


def _train(run: Run) -> int:
    hp, logger = run.hp, run.logger
    torch.manual_seed(hp.seed + run.rank)
    np.random.seed(hp.seed + run.rank)
    if run.world_size > 1:
        dist.init_process_group(backend=hp.dist_backend or ("nccl" if run.device.type == "cuda"
                                                            else "gloo"))
    try:
        if not _data_ok(run):
            return EXIT_BAD_INPUT
        trainer = Trainer(run)
        if run.is_main:
            removed = run.folder.remove_orphan_temporaries()
            if removed:
                logger.info(f"removed {len(removed)} temporary file(s) left by a killed trainer")
        if run.resume_from is not None:
            trainer.restore(run.resume_from)
            logger.info(f"resumed from {run.resume_from['path']} at step {run.step} (epoch "
                        f"{run.epoch}, batch {run.batch_in_epoch} of it), learning rate "
                        f"{trainer.optimizer.param_groups[0]['lr']:.3g}"
                        + (f"; overrides given now: {run.args.hparams}" if run.args.hparams else "")
                        + (f"; remediated at step {run.guard.remediated_at}"
                           if run.guard.remediated_at is not None else ""))
        elif run.warm_from is not None:
            report = warm_start_state(trainer.model, run.warm_from, hp.ignore_layers,
                                      trainer.symbols)
            logger.info(f"warm start from {run.warm_from['path']}: {len(report['loaded'])} "
                        f"tensors loaded, {len(report['skipped'])} skipped "
                        f"({', '.join(report['skipped'][:6])}), "
                        f"{report['embedding_rows_copied']} embedding rows copied from shared "
                        f"symbols")
        _banner(run, trainer)
        previous = {s: signal.signal(s, lambda signum, _frame: setattr(run, "stop_signal", signum))
                    for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return trainer.run_epochs()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
    finally:
        if run.world_size > 1 and dist.is_initialized():
            dist.barrier()  # rank 0 may still be writing its last checkpoint
            dist.destroy_process_group()


def _data_ok(run: Run) -> bool:
    """The data check on rank 0, its verdict shared with every rank."""
    ok = torch.ones(1, dtype=torch.long, device=run.device)
    if run.is_main and not run.args.skip_data_check and not data_check(run.hp, run.logger):
        ok[0] = 0
    if run.world_size > 1:
        dist.broadcast(ok, src=0)  # every rank stops when rank 0's data check failed
    return bool(ok.item())


def _banner(run: Run, trainer: Trainer) -> None:
    hp, logger = run.hp, run.logger
    logger.info(f"taco-align training: run {run.run_dir}, device {run.device}, world size "
                f"{run.world_size}, precision {hp.precision}")
    logger.info(f"hparams differing from defaults: {json.dumps(hp.differences(), sort_keys=True)}")
    logger.info(f"data: {len(trainer.train_set)} training items ({hp.training_files}), "
                f"{len(trainer.val_set)} validation items ({hp.validation_files})")
    write_hparams_json(run)


def write_hparams_json(run: Run) -> None:
    """hparams.json: the live hparams, rewritten whenever a remediation or rollback changes them."""
    if run.is_main:
        run.folder.write_hparams(run.hp.to_json())


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (HParamsError, CheckpointError, DataError, RunSetupError,
            RunLockedError, devices.DeviceError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
