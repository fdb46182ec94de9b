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
import json
import math
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from check_data import check_filelists
from checkpoint import (CheckpointError, hparams_from_checkpoint, list_checkpoints,
                        load_checkpoint, prune_checkpoints, remove_orphan_temporaries,
                        restore_training_state, save_checkpoint, warm_start_state)
from commons import DeviceError, autocast_context, choose_device
from data_utils import (DataError, SamplerStateError, curriculum_max_text_length,
                        prepare_dataloaders)
from guardrails import (DIVERGENCE_FLAG, AlignmentGuard, DivergenceGuard, criterion_for_step,
                        remediated_hparams)
from hparams import HParams, HParamsError, create_hparams
from logger import TrainLogger, log_training, log_validation, log_validation_images
from loss_function import Tacotron2Loss, guided_attention_weight
from model import Tacotron2
from runlock import RunLock, RunLockedError
from text.symbols import get_symbols
from validation import free_running, validate

EXIT_BAD_INPUT = 2
EXIT_RED_FLAG = 3
MAX_ROLLBACKS = 3  # divergence rollbacks before the run stops: lowering the rate did not help
CONTINUE, NEW_EPOCH, ROLLBACK, DONE = "continue", "new_epoch", "rollback", "done"


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
    """(rank, world_size, device); under torchrun each rank takes its LOCAL_RANK's GPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = choose_device(device_arg)
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: same accuracy class as fp32 for us
        torch.backends.cudnn.allow_tf32 = True
    return rank, world_size, device


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
        raise RunSetupError(f"{flag} {path}: cannot be used ({err.strerror or err}); choose a "
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
                # the run's own hparams; a --hparams given now overrides them
                hp = hparams_from_checkpoint(ckpt, args.hparams or None, fallback=hp)
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
        hp, device = run.hp, run.device
        self.symbols = get_symbols(hp.symbol_set)
        self.model = Tacotron2(hp).to(device)  # the bare model: checkpoints and validation
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=hp.learning_rate,
                                          weight_decay=hp.weight_decay)
        self.scheduler = make_scheduler(self.optimizer, hp)
        self.scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "fp16")
        self.criterion = Tacotron2Loss(hp)
        self.train_loader, self.val_loader, self.train_set, self.val_set = prepare_dataloaders(
            hp, run.run_dir, rank=run.rank, world_size=run.world_size)
        self.sampler = self.train_loader.batch_sampler
        self.stepper = self.model
        if run.world_size > 1:
            self.stepper = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[device.index] if device.type == "cuda" else None)

    # ------------------------------------------------------------------ checkpoints
    def save(self, step: int) -> None:
        run = self.run
        if not run.is_main:
            return
        path = os.path.join(run.run_dir, f"checkpoint_{step}")
        save_checkpoint(path, model=self.model, optimizer=self.optimizer, hp=run.hp, step=step,
                        scheduler=self.scheduler, scaler=self.scaler, symbols=self.symbols,
                        extra={"guard": run.guard.state_dict(),
                               "divergence": run.divergence.state_dict(),
                               "epoch": run.epoch, "batch_in_epoch": run.batch_in_epoch,
                               "sampler": self.sampler.state_dict(position=run.batch_in_epoch),
                               "validations": run.validations})
        prune_checkpoints(run.run_dir, run.hp.keep_checkpoints)
        run.logger.info(f"saved {path}")

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
            dropped = truncate_run_files(run.run_dir, run.step)
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
        status, last_saved = 0, -1
        while run.epoch < run.hp.epochs and not run.reached_max():
            self.start_epoch()
            event = CONTINUE
            for batch in self.train_loader:
                run.step += 1
                run.batch_in_epoch += 1
                event, status = self.one_step(batch)
                if event == DONE or status:
                    break
                if run.step % run.hp.iters_per_checkpoint == 0:
                    self.save(run.step)
                    last_saved = run.step
                if event != CONTINUE or run.stop_signal is not None or run.reached_max():
                    break
            else:
                run.epoch += 1  # a whole epoch went through
                run.batch_in_epoch = 0
                continue
            if status or run.stop_signal is not None:
                break
            if event == ROLLBACK:
                status = self.roll_back()
                if status:
                    break
        if status == 0:
            if last_saved != run.step:
                self.save(run.step)
            if run.stop_signal is not None:
                run.logger.info(f"stopped by signal {run.stop_signal} at step {run.step}; "
                                f"checkpoint saved. Resume with: python train.py -c "
                                f"{os.path.join(run.run_dir, 'checkpoint_LATEST')}")
                status = 128 + run.stop_signal
            else:
                run.logger.info(f"finished at step {run.step}")
        return status

    def one_step(self, batch) -> Tuple[str, int]:
        """A training step, its divergence check, log line and validation: (event, status)."""
        run = self.run
        tick = time.perf_counter()
        losses, grad_norm, weight = train_step(self.stepper, batch, self.criterion,
                                               self.optimizer, self.scaler, run)
        seconds = time.perf_counter() - tick
        flag = run.divergence.observe(run.step, losses["total"],
                                      None if self.scaler.is_enabled() else grad_norm, run.hp)
        if run.step % run.hp.iters_per_log == 0 or flag is not None:
            log_training(run.logger, run.step, losses, weight,
                         self.optimizer.param_groups[0]["lr"], grad_norm, seconds,
                         run.divergence.skipped_total)
        if flag is not None:
            run.logger.warning(f"step {run.step}: red flag {flag['id']} ({flag['name']}): "
                               f"{flag['message']}")
            if run.hp.red_flag_action == "remediate":
                return ROLLBACK, 0
            if run.hp.red_flag_action == "stop":
                return DONE, self.stop(run.step, [flag], f"step {run.step}: {flag['message']}. "
                                       f"Lower the learning rate (now "
                                       f"{self.optimizer.param_groups[0]['lr']:g})")
        if run.step % run.hp.iters_per_validation == 0:
            return self.validation_round()
        return CONTINUE, 0

    def roll_back(self) -> int:
        """Back to the newest checkpoint before this step with the learning rate lowered; 0, or
        the red-flag status when there is none or rolling back has not helped."""
        run = self.run
        factor = run.hp.divergence_lr_factor
        older = [(s, p) for s, p in list_checkpoints(run.run_dir) if s < run.step]
        rollbacks = run.divergence.rollbacks + 1
        if not older or rollbacks > MAX_ROLLBACKS:
            why = ("no checkpoint to roll back to" if not older
                   else f"{MAX_ROLLBACKS} rollbacks did not help")
            flag = {"id": DIVERGENCE_FLAG, "name": "divergence", "message": why}
            return self.stop(run.step, [flag], f"step {run.step}: divergence: {why}. Lower the "
                             f"learning rate (now {run.hp.learning_rate:g}, e.g. "
                             f"learning_rate={run.hp.learning_rate * factor:g}) and start again")
        step, path = older[-1]
        diverged_at = run.step
        self.restore(load_checkpoint(path, map_location="cpu"))
        run.divergence.rollbacks = rollbacks - 1
        run.divergence.reset_after_rollback()
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
        return 0

    def stop(self, step: int, flags: List[Dict[str, Any]], message: str) -> int:
        """A red-flag stop: checkpoint (unless it diverged), report, EXIT_RED_FLAG."""
        run = self.run
        if run.is_main:
            if not any(f["id"] == DIVERGENCE_FLAG for f in flags):
                self.save(step)
            path = write_stop_report(run, step, flags, message)
            run.logger.info(f"RED FLAG STOP. {message}")
            run.logger.info(f"report: {path}")
            print(f"RED FLAG STOP at step {step}: {message}", file=sys.stderr)
        return EXIT_RED_FLAG

    # ------------------------------------------------------------------ validation
    def validation_round(self) -> Tuple[str, int]:
        """Validation, diagnostics, milestones and red flags: (event, status)."""
        run = self.run
        hp, step = run.hp, run.step
        decision_code = torch.zeros(1, dtype=torch.long, device=run.device)  # NCCL wants the GPU
        if run.is_main:
            decision = self._validate_and_judge()
            decision_code[0] = {"remediate": 1, "stop": 2}.get(decision.action, 0)
            if decision.action == "stop":
                self.stop(step, decision.flags, decision.message)
        if run.world_size > 1:
            dist.broadcast(decision_code, src=0)  # every rank takes rank 0's decision
        code = int(decision_code.item())
        if code == 2:
            return DONE, EXIT_RED_FLAG
        if code == 1:
            run.hp = remediated_hparams(hp)
            if not run.is_main and not hp.curriculum:
                run.guard.curriculum_from = step  # rank 0's guard set it; the others learn it here
            write_hparams_json(run)
            # The curriculum takes effect at once: a new epoch starts from the short texts.
            run.epoch += 1
            run.batch_in_epoch = 0
            return NEW_EPOCH, 0
        return CONTINUE, 0

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
        free = None
        if hp.free_running_every and run.validations % hp.free_running_every == 0:
            free = free_running(self.model, self.val_set, hp, run.device)
        milestone = run.guard.milestone(step, metrics["diagonal_score"], hp, free)
        gap = run.guard.free_running_gap(step, metrics["diagonal_score"],
                                         free["diagonal_score"] if free else None, hp)
        guided_term = weight * losses["guided_attn"]
        decision = run.guard.check(step, summary, guided_term, hp)
        record = {
            "step": step, "time": time.time(), "losses": losses, "guided_weight": weight,
            "guided_term": guided_term,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "metrics": {k: float(v) for k, v in metrics.items()},
            "failure_counts": summary["failure_counts"], "healthy": summary["healthy"],
            "n_items": summary["n_items"],
            "criterion": criterion_for_step(step, hp, metrics["diagonal_score"]),
            "milestone": {k: v for k, v in milestone.items() if k != "line"} if milestone else None,
            "red_flags": decision.flags,
            "free_running": ({k: v for k, v in free.items()
                              if k not in ("example", "snapshot", "reading_end")}
                             if free else None),
            "warnings": [gap] if gap else [],
            "remediated": run.guard.remediated_at is not None,
            "skipped_steps": run.divergence.skipped_total,
        }
        write_validation_files(run, result, free, record)
        log_validation(logger, step, losses, weight, record, free)
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
        if decision.action in ("warn", "remediate"):
            logger.warning(decision.message)
        if decision.action == "remediate":
            logger.text("red_flags", decision.message, step)
        return decision


def train_step(model: torch.nn.Module, batch, criterion: Tacotron2Loss,
               optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               run: Any) -> Tuple[Dict[str, float], float, float]:
    """One optimizer step; returns (losses averaged over ranks, grad norm, guided weight).

    A step whose loss is not finite runs no backward, and one whose gradient norm is not
    finite applies no update (fp16: the GradScaler skips it): weights and optimizer state stay
    as they were, and the caller's `DivergenceGuard` counts the step.
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
    losses = dict(zip(parts._fields, values.tolist()))
    if not math.isfinite(losses["total"]):
        _put_back(model, buffers)
        return losses, float("nan"), weight
    scaler.scale(parts.total).backward()
    scaler.unscale_(optimizer)
    grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip_thresh))
    if math.isfinite(grad_norm) or scaler.is_enabled():
        scaler.step(optimizer)  # the scaler skips non-finite gradients itself
    else:
        _put_back(model, buffers)
    scaler.update()
    return losses, grad_norm, weight


def _put_back(model: torch.nn.Module, buffers: List[torch.Tensor]) -> None:
    with torch.no_grad():
        for buffer, saved in zip(model.buffers(), buffers):
            buffer.copy_(saved)


# ---------------------------------------------------------------------------------- run files
def write_validation_files(run: Run, result: Dict[str, Any], free: Optional[Dict[str, Any]],
                           record: Dict[str, Any]) -> None:
    """alignments/step_N.npz and a line of diagnostics.jsonl."""
    hp = run.hp
    folder = os.path.join(run.run_dir, "alignments")
    os.makedirs(folder, exist_ok=True)
    arrays = dict(result["snapshot"])
    arrays.update(step=np.int64(run.step), n_frames_per_step=np.int64(hp.n_frames_per_step),
                  hop_length=np.int64(hp.hop_length), sampling_rate=np.int64(hp.sampling_rate))
    if free is not None:
        arrays.update(free["snapshot"])
    path = os.path.join(folder, f"step_{run.step}.npz")
    tmp = os.path.join(folder, f"step_{run.step}.tmp{os.getpid()}.npz")  # the writer's pid
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    with open(os.path.join(run.run_dir, "diagnostics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def truncate_run_files(run_dir: str, step: int) -> int:
    """Drops diagnostics.jsonl records and alignment snapshots newer than `step` (a resume or a
    rollback to it), so the history shows each step once; returns how many were dropped."""
    dropped = 0
    log = os.path.join(run_dir, "diagnostics.jsonl")
    if os.path.isfile(log):
        with open(log, encoding="utf-8") as f:
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
            tmp = f"{log}.tmp{os.getpid()}"
            with open(tmp, "w", encoding="utf-8") as f:
                f.write("".join(line + "\n" for line in kept))
            os.replace(tmp, log)
    folder = os.path.join(run_dir, "alignments")
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            stem = name[len("step_"):-len(".npz")] if name.startswith("step_") else ""
            if name.endswith(".npz") and stem.isdigit() and int(stem) > step:
                os.remove(os.path.join(folder, name))
                dropped += 1
    return dropped


def _json_default(value: Any) -> Any:
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, (np.bool_,)):
        return bool(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_stop_report(run: Run, step: int, flags: List[Dict[str, Any]], message: str) -> str:
    """red_flag_report_step_N.txt: what stopped the run, its last scores, what to change."""
    path = os.path.join(run.run_dir, f"red_flag_report_step_{step}.txt")
    lines = [f"Training stopped by a red flag at step {step}.", message, ""]
    lines += [f"red flag {f['id']} ({f['name']}): {f['message']}" for f in flags]
    last = _last_record(run.run_dir)
    if last is not None:
        m = last["metrics"]
        lines += ["", f"last validation (step {last['step']}): diagonality "
                      f"{m['diagonal_score']:.3f}, focus {m['focus_score']:.3f}, coverage "
                      f"{m['coverage']:.3f}, max attention {m['max_attention']:.3f}; failure "
                      f"modes {last['failure_counts']}"]
    lines += ["", "Full report: python alignment_diagnostics.py "
                  f"--output_directory={run.args.output_directory} --run_name={run.args.run_name}"
                  + (f" --step={last['step']}" if last is not None else "")]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def _last_record(run_dir: str) -> Optional[Dict[str, Any]]:
    log = os.path.join(run_dir, "diagnostics.jsonl")
    if not os.path.isfile(log):
        return None
    with open(log, encoding="utf-8") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    try:
        return json.loads(lines[-1]) if lines else None
    except ValueError:
        return None


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
            removed = remove_orphan_temporaries(run.run_dir)
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
        path = os.path.join(run.run_dir, "hparams.json")
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(run.hp.to_json())
        os.replace(tmp, path)


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (HParamsError, CheckpointError, DataError, DeviceError, RunSetupError,
            RunLockedError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
