"""Train Tacotron 2 with guided attention and alignment guardrails.

    python train.py --output_directory=output --log_directory=logs
    python train.py --hparams=preset=demo                      # laptop CPU quick start
    python train.py -c output/trial_0/checkpoint_LATEST         # resume
    python train.py -c tacotron2_statedict.pt --warm_start      # NVIDIA weights, new alphabet
    torchrun --nproc_per_node=N train.py ...                    # DistributedDataParallel

Exit status: 0 done, 2 bad input (hparams, data, checkpoint), 3 stopped by a red flag,
128+signal when stopped by SIGINT/SIGTERM (after saving a checkpoint).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import time
from typing import Any, Dict, List, Optional

import numpy as np
import torch
import torch.distributed as dist

import alignment_diagnostics as diag
from checkpoint import (CheckpointError, hparams_from_checkpoint, load_checkpoint,
                        prune_checkpoints, restore_rng_state, save_checkpoint, warm_start_state)
from data_utils import DataError, TextMelCollate, curriculum_max_text_length, prepare_dataloaders
from guardrails import AlignmentGuard, remediated_hparams
from hparams import HParams, HParamsError, create_hparams
from logger import TrainLogger, log_training, log_validation_images
from loss_function import Tacotron2Loss, guided_attention_weight
from model import Tacotron2
from text.symbols import get_symbols

EXIT_BAD_INPUT = 2
EXIT_RED_FLAG = 3


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


# ---------------------------------------------------------------------------------- set-up helpers
def setup_device(device_arg: Optional[str]):
    """(rank, world_size, device); joins the torchrun process group when there is one."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device_arg:
        device = torch.device(device_arg)
    else:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: same accuracy class as fp32 for us
        torch.backends.cudnn.allow_tf32 = True
    return rank, world_size, device


def autocast_context(hp: HParams, device: torch.device):
    """torch.autocast on the device's type for bf16/fp16; a no-op for fp32."""
    if hp.precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if hp.precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


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
    from check_data import check_filelists

    problems = check_filelists(hp.training_files, hp.validation_files, hp, decode_audio=False)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems[:50]:
        (logger.warning if problem.severity == "warning" else logger.info)(str(problem))
    if len(problems) > 50:
        logger.info(f"... and {len(problems) - 50} more problems; run check_data.py for all")
    if errors:
        logger.info(f"data check: {len(errors)} error(s) in {hp.training_files} / "
                    f"{hp.validation_files}; fix them (python check_data.py "
                    f"{hp.training_files} {hp.validation_files} --write-clean clean/) or start "
                    f"with --skip_data_check")
    return not errors


# ---------------------------------------------------------------------------------- validation
def validate(model: Tacotron2, val_loader, criterion: Tacotron2Loss, hp: HParams, step: int,
             device: torch.device, guide_weight: float) -> Dict[str, Any]:
    """Teacher-forced validation: mean losses and the alignment metrics of every item.

    Returns:
        dict with `losses`, `summary` (batch_metrics output), `snapshot` (arrays for the npz)
        and `example` (one item's arrays for the pictures).
    """
    model.eval()
    totals: Dict[str, float] = {}
    count = 0
    maps, mel_lens = [], []  # un-padded (T_i, N_i) maps; mel lengths
    example = None
    with torch.no_grad():
        for batch in val_loader:
            batch = batch.to(device)
            with autocast_context(hp, device):
                out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)
            parts = criterion(out, batch, guide_weight)
            size = batch.text.size(0)
            for name, value in parts._asdict().items():
                totals[name] = totals.get(name, 0.0) + float(value) * size
            count += size
            r = hp.n_frames_per_step
            steps = torch.div(batch.mel_lengths + r - 1, r, rounding_mode="floor")
            alignments = out.alignments.float().cpu().numpy()  # (B, T/r, N)
            for b in range(size):
                maps.append(alignments[b, :int(steps[b]), :int(batch.text_lengths[b])])
            mel_lens.append(batch.mel_lengths.cpu().numpy())
            if example is None:
                m = int(batch.mel_lengths[0])
                example = {
                    "alignment": maps[0],  # the first batch's first item
                    "mel_target": batch.mel[0, :, :m].float().cpu().numpy(),
                    "mel_predicted": out.mel_postnet[0, :, :m].float().cpu().numpy(),
                    "gate_target": batch.gate[0, :m].float().cpu().numpy(),
                    "gate_prob": torch.sigmoid(out.gate[0, :m]).float().cpu().numpy(),
                }
    model.train()
    if count == 0:
        raise DataError(f"{hp.validation_files}: the validation set is empty")
    padded, text_lengths, decoder_lengths = diag.pack_alignments(maps)
    snapshot = {"alignments": padded, "text_lengths": text_lengths,
                "decoder_lengths": decoder_lengths,
                "mel_lengths": np.concatenate(mel_lens).astype(np.int64)}
    summary = diag.batch_metrics(snapshot["alignments"], snapshot["text_lengths"],
                                 snapshot["decoder_lengths"],
                                 seconds_per_step=diag.step_seconds(hp),
                                 band=hp.diagonal_band)
    return {"losses": {k: v / count for k, v in totals.items()}, "summary": summary,
            "snapshot": snapshot, "example": example}


def free_running(model: Tacotron2, val_set, hp: HParams, device: torch.device) -> Dict[str, Any]:
    """Decodes the first `free_running_items` validation items from text alone.

    An item "stopped" when its gate fired before max_decoder_steps; it stopped "near its length"
    when the decoded length is within 20% of the recorded one.
    """
    n_items = min(hp.free_running_items, len(val_set))
    collate = TextMelCollate(hp.n_frames_per_step)
    batch = collate([val_set[i] for i in range(n_items)]).to(device)
    model.eval()
    with torch.no_grad(), autocast_context(hp, device):
        out = model.inference(batch.text, batch.text_lengths)
    model.train()
    r = hp.n_frames_per_step
    steps = torch.div(out.mel_lengths + r - 1, r, rounding_mode="floor").clamp(min=1)
    alignments = out.alignments.float().cpu().numpy()
    summary = diag.batch_metrics(alignments, batch.text_lengths.cpu().numpy(), steps.cpu().numpy(),
                                 seconds_per_step=diag.step_seconds(hp),
                                 band=hp.diagonal_band)
    stopped = ~out.hit_max_steps.cpu()
    ratio = out.mel_lengths.cpu().float() / batch.mel_lengths.cpu().float()
    near = stopped & (ratio - 1).abs().le(0.2)
    first_t, first_n = int(steps[0]), int(batch.text_lengths[0])
    return {
        "diagonal_score": float(summary["mean"]["diagonal_score"]),
        "focus_score": float(summary["mean"]["focus_score"]),
        "stopped_share": float(stopped.float().mean()),
        "near_length_share": float(near.float().mean()),
        "items": n_items,
        "length_ratio": [round(float(x), 3) for x in ratio],
        "example": alignments[0, :first_t, :first_n],
        "snapshot": {"free_alignments": alignments.astype(np.float32),
                     "free_text_lengths": batch.text_lengths.cpu().numpy().astype(np.int64),
                     "free_decoder_lengths": steps.cpu().numpy().astype(np.int64)},
    }


# ---------------------------------------------------------------------------------- the run
class Run:
    """Everything one training run holds; `train()` below drives it."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.rank, self.world_size, self.device = setup_device(args.device)
        self.run_dir = os.path.join(args.output_directory, args.run_name)
        self.stop_signal: Optional[int] = None
        self.started = time.time()
        self.step = 0
        self.epoch = 0
        self.validations = 0
        self.resume_from: Optional[Dict[str, Any]] = None
        self.warm_from: Optional[Dict[str, Any]] = None
        self.hp = self._hparams()
        self.logger = TrainLogger(args.log_directory, args.tensorboard_directory, args.run_name,
                                  enabled=self.rank == 0)

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

    def banner(self, train_set, val_set) -> None:
        changed = self.hp.differences()
        self.logger.info(f"taco-align training: run {self.run_dir}, device {self.device}, "
                         f"world size {self.world_size}, precision {self.hp.precision}")
        self.logger.info(f"hparams differing from defaults: {json.dumps(changed, sort_keys=True)}")
        self.logger.info(f"data: {len(train_set)} training items ({self.hp.training_files}), "
                         f"{len(val_set)} validation items ({self.hp.validation_files})")


def train(args: argparse.Namespace) -> int:
    """Runs training; returns the exit status."""
    run = Run(args)
    hp, logger, device = run.hp, run.logger, run.device
    torch.manual_seed(hp.seed + run.rank)
    np.random.seed(hp.seed + run.rank)

    if run.world_size > 1:
        backend = hp.dist_backend or ("nccl" if device.type == "cuda" else "gloo")
        dist.init_process_group(backend=backend)

    data_ok = torch.ones(1, dtype=torch.long, device=device)
    if run.is_main:
        os.makedirs(run.run_dir, exist_ok=True)
        if not args.skip_data_check and not data_check(hp, logger):
            data_ok[0] = 0
    if run.world_size > 1:
        dist.broadcast(data_ok, src=0)  # every rank stops when rank 0's data check failed
    if not bool(data_ok.item()):
        logger.close()
        if run.world_size > 1:
            dist.destroy_process_group()
        return EXIT_BAD_INPUT

    symbols = get_symbols(hp.symbol_set)
    model = Tacotron2(hp).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=hp.learning_rate,
                                 weight_decay=hp.weight_decay)
    scheduler = make_scheduler(optimizer, hp)
    scaler = torch.amp.GradScaler(device.type, enabled=hp.precision == "fp16")
    guard = AlignmentGuard(hp)

    if run.resume_from is not None:
        ckpt = run.resume_from
        try:
            model.load_state_dict(ckpt["state_dict"])
        except RuntimeError as err:
            raise CheckpointError(
                f"{ckpt['path']}: its weights do not fit the model of these hparams (a changed "
                f"model size? use --warm_start to load what fits): "
                f"{' '.join(str(err).split())[:200]}") from None
        if ckpt.get("optimizer"):
            optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler"):
            scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler") and scaler.is_enabled():
            scaler.load_state_dict(ckpt["scaler"])
        extra = ckpt.get("extra") or {}
        guard = AlignmentGuard(hp, extra.get("guard"))
        run.step = int(ckpt.get("iteration", 0))
        run.epoch = int(extra.get("epoch", 0))
        run.validations = int(extra.get("validations", 0))
        restore_rng_state(ckpt.get("rng"))
        logger.info(f"resumed from {ckpt['path']} at step {run.step}, learning rate "
                    f"{optimizer.param_groups[0]['lr']:.3g}"
                    + (f"; overrides given now: {args.hparams}" if args.hparams else "")
                    + (f"; remediated at step {guard.remediated_at}"
                       if guard.remediated_at is not None else ""))
    elif run.warm_from is not None:
        report = warm_start_state(model, run.warm_from, hp.ignore_layers, symbols)
        logger.info(f"warm start from {run.warm_from['path']}: {len(report['loaded'])} tensors "
                    f"loaded, {len(report['skipped'])} skipped ({', '.join(report['skipped'][:6])}), "
                    f"{report['embedding_rows_copied']} embedding rows copied from shared symbols")

    train_loader, val_loader, train_set, val_set = prepare_dataloaders(
        hp, run.run_dir, rank=run.rank, world_size=run.world_size)
    run.banner(train_set, val_set)
    if run.is_main:
        with open(os.path.join(run.run_dir, "hparams.json"), "w", encoding="utf-8") as f:
            f.write(hp.to_json())

    bare_model = model
    if run.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = Tacotron2Loss(hp)

    def on_signal(signum, _frame):
        run.stop_signal = signum
    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def save(step: int) -> None:
        if not run.is_main:
            return
        path = os.path.join(run.run_dir, f"checkpoint_{step}")
        save_checkpoint(path, model=bare_model, optimizer=optimizer, hp=run.hp, step=step,
                        scheduler=scheduler, scaler=scaler, symbols=symbols,
                        extra={"guard": guard.state_dict(), "epoch": run.epoch,
                               "validations": run.validations})
        prune_checkpoints(run.run_dir, run.hp.keep_checkpoints)
        logger.info(f"saved {path}")

    status = 0
    progress = _progress_bar(run)
    try:
        model.train()
        last_saved = -1
        while status == 0 and run.epoch < run.hp.epochs and not _reached_max(run):
            _start_epoch(train_loader, train_set, run)
            tick = time.perf_counter()
            for batch in train_loader:
                run.step += 1
                losses, grad_norm, weight = train_step(model, batch, criterion, optimizer, scaler,
                                                       run)
                seconds = time.perf_counter() - tick
                tick = time.perf_counter()
                if progress is not None:
                    progress.update(1)
                    progress.set_postfix(loss=f"{losses['total']:.3f}",
                                         attn=f"{losses['guided_attn']:.3f}")
                if run.step % run.hp.iters_per_log == 0:
                    log_training(logger, run.step, losses, weight,
                                 optimizer.param_groups[0]["lr"], grad_norm, seconds)
                if run.step % run.hp.iters_per_validation == 0:
                    status = validation_round(run, bare_model, val_loader, val_set, criterion,
                                              scheduler, optimizer, guard, save)
                    tick = time.perf_counter()
                if run.step % run.hp.iters_per_checkpoint == 0 and status == 0:
                    save(run.step)
                    last_saved = run.step
                if status != 0 or run.stop_signal is not None or _reached_max(run):
                    break
            else:
                run.epoch += 1  # a whole epoch went through
                continue
            break
        if status == 0:
            if last_saved != run.step:
                save(run.step)
            if run.stop_signal is not None:
                logger.info(f"stopped by signal {run.stop_signal} at step {run.step}; "
                            f"checkpoint saved. Resume with: python train.py -c "
                            f"{os.path.join(run.run_dir, 'checkpoint_LATEST')}")
                status = 128 + run.stop_signal
            else:
                logger.info(f"finished at step {run.step}")
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if progress is not None:
            progress.close()
        logger.close()
        if run.world_size > 1 and dist.is_initialized():
            dist.barrier()  # rank 0 may still be writing its last checkpoint
            dist.destroy_process_group()
    return status


def _reached_max(run: Run) -> bool:
    """max_steps reached, or --max_minutes of wall time spent."""
    if run.args.max_minutes is not None and time.time() - run.started > 60 * run.args.max_minutes:
        return True
    return bool(run.hp.max_steps) and run.step >= run.hp.max_steps


def _progress_bar(run: Run):
    """A tqdm bar on a terminal (rank 0 only); None when output goes to a file."""
    if not run.is_main or not sys.stderr.isatty():
        return None
    from tqdm import tqdm
    return tqdm(total=run.hp.max_steps or None, initial=run.step, unit="step", dynamic_ncols=True)


def _start_epoch(train_loader, train_set, run: Run) -> None:
    """Seeds the epoch's shuffle and applies the curriculum cap."""
    sampler = train_loader.batch_sampler
    sampler.set_epoch(run.epoch)
    cap = curriculum_max_text_length(run.step, run.hp, train_set.text_lengths)
    offered = sampler.set_max_text_length(cap)
    if cap is not None:
        run.logger.info(f"curriculum: epoch {run.epoch} offers {offered} texts of up to {cap} tokens")
        run.logger.scalars({"curriculum.max_text_length": cap}, run.step)


def train_step(model, batch, criterion: Tacotron2Loss, optimizer, scaler, run: Run):
    """One optimizer step; returns (losses averaged over ranks, grad norm, guided weight)."""
    hp, device = run.hp, run.device
    batch = batch.to(device, non_blocking=device.type != "cpu")  # pinned host memory on accelerators
    weight = guided_attention_weight(run.step, hp)
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(hp, device):
        out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)
    parts = criterion(out, batch, weight)  # losses in float32, outside autocast
    scaler.scale(parts.total).backward()
    scaler.unscale_(optimizer)
    grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip_thresh)
    scaler.step(optimizer)
    scaler.update()
    values = torch.stack([p.detach().float() for p in parts])
    if run.world_size > 1:
        dist.all_reduce(values)
        values /= run.world_size
    losses = dict(zip(parts._fields, values.tolist()))
    if not math.isfinite(losses["total"]):
        run.logger.warning(f"step {run.step}: non-finite loss {losses}; the step was skipped "
                           f"by the scaler" if scaler.is_enabled() else
                           f"step {run.step}: non-finite loss {losses}")
    return losses, float(grad_norm), weight


def validation_round(run: Run, model: Tacotron2, val_loader, val_set, criterion, scheduler,
                     optimizer, guard: AlignmentGuard, save) -> int:
    """Validation, diagnostics, milestones and red flags; returns an exit status (0 = go on)."""
    hp, logger, step = run.hp, run.logger, run.step
    decision_code = torch.zeros(1, dtype=torch.long, device=run.device)  # NCCL wants it on the GPU
    if run.is_main:
        weight = guided_attention_weight(step, hp)
        result = validate(model, val_loader, criterion, hp, step, run.device, weight)
        run.validations += 1
        losses, summary = result["losses"], result["summary"]
        metrics = summary["mean"]
        guided_term = weight * losses["guided_attn"]
        if scheduler is not None:
            # the reconstruction losses only: the guided term falls with its schedule, which
            # would look like progress
            scheduler.step(losses["mel"] + losses["mel_postnet"] + losses["gate"])

        free = None
        if hp.free_running_every and run.validations % hp.free_running_every == 0:
            free = free_running(model, val_set, hp, run.device)

        milestone = guard.milestone(step, metrics["diagonal_score"], hp)
        decision = guard.check(step, summary, guided_term, hp)
        record = {
            "step": step, "time": time.time(), "losses": losses, "guided_weight": weight,
            "guided_term": guided_term, "learning_rate": optimizer.param_groups[0]["lr"],
            "metrics": {k: float(v) for k, v in metrics.items()},
            "failure_counts": summary.get("failure_counts", {}),
            "n_items": int(len(result["snapshot"]["text_lengths"])),
            "criterion": diag.criterion_for_step(step, hp, metrics["diagonal_score"]),
            "milestone": {k: v for k, v in milestone.items() if k != "line"} if milestone else None,
            "red_flags": decision.flags,
            "free_running": {k: v for k, v in free.items() if k not in ("example", "snapshot")}
            if free else None,
            "remediated": guard.remediated_at is not None or decision.action == "remediate",
        }
        write_validation_files(run, result, free, record)
        log_validation(run, result, free, record, milestone)

        if decision.action == "warn":
            logger.warning(decision.message)
        elif decision.action == "remediate":
            logger.warning(decision.message)
            run.hp = remediated_hparams(hp)
            logger.text("red_flags", decision.message, step)
            decision_code[0] = 1
        elif decision.action == "stop":
            decision_code[0] = 2
            save(step)
            report_path = write_stop_report(run, step, decision.message)
            logger.info(f"RED FLAG STOP. {decision.message}")
            logger.info(f"report: {report_path}")
            print(f"RED FLAG STOP at step {step}: {decision.message}", file=sys.stderr)
    if run.world_size > 1:
        dist.broadcast(decision_code, src=0)  # every rank takes rank 0's decision
        if run.rank != 0 and int(decision_code.item()) == 1:
            run.hp = remediated_hparams(run.hp)
    if int(decision_code.item()) == 2:
        return EXIT_RED_FLAG
    return 0


def write_validation_files(run: Run, result, free, record) -> None:
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
    tmp = path + ".tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, path)
    with open(os.path.join(run.run_dir, "diagnostics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def log_validation(run: Run, result, free, record, milestone) -> None:
    """train.log lines and TensorBoard tags of one validation."""
    hp, logger, step = run.hp, run.logger, run.step
    losses, metrics = result["losses"], record["metrics"]
    logger.info(
        f"validation step {step}: loss {losses['total']:.4f} (mel {losses['mel']:.4f} gate "
        f"{losses['gate']:.4f} attention {losses['guided_attn']:.4f}); diagonality "
        f"{metrics['diagonal_score']:.3f} focus {metrics['focus_score']:.3f} coverage "
        f"{metrics['coverage']:.3f} max_attention {metrics['max_attention']:.3f}; failures "
        f"{record['failure_counts']}")
    scalars = {"validation.loss": losses["total"], "validation.mel_loss": losses["mel"],
               "validation.gate_loss": losses["gate"],
               "validation.attention_loss": losses["guided_attn"]}
    scalars.update({f"alignment/{k}": v for k, v in metrics.items()})
    if free is not None:
        logger.info(f"free-running step {step}: diagonality {free['diagonal_score']:.3f} focus "
                    f"{free['focus_score']:.3f}; stopped on gate {free['stopped_share']:.0%}, "
                    f"near true length {free['near_length_share']:.0%} of {free['items']} items")
        scalars.update({"alignment_free/diagonal_score": free["diagonal_score"],
                        "alignment_free/focus_score": free["focus_score"],
                        "alignment_free/stopped_share": free["stopped_share"],
                        "alignment_free/near_length_share": free["near_length_share"]})
    logger.scalars(scalars, step)
    if milestone:
        logger.info(milestone["line"])
        logger.text("criterion", milestone["line"], step)
    example = result["example"]
    if logger.enabled and example is not None:
        band = hp.diagonal_band
        log_validation_images(
            logger, step, diag.plot_alignment_to_numpy(example["alignment"], "teacher-forced", band),
            example["mel_target"], example["mel_predicted"], example["gate_target"],
            example["gate_prob"],
            diag.plot_alignment_to_numpy(free["example"], "free-running", band) if free else None)
        if hp.iters_per_audio and run.validations % hp.iters_per_audio == 0:
            from audio import griffin_lim
            wav = griffin_lim(example["mel_predicted"], hp, n_iters=30)
            logger.audio("audio_predicted", wav, step, hp.sampling_rate)
    logger.flush()


def write_stop_report(run: Run, step: int, message: str) -> str:
    """The diagnostics report of the step, written into the run folder."""
    path = os.path.join(run.run_dir, f"red_flag_report_step_{step}.txt")
    snapshot = os.path.join(run.run_dir, "alignments", f"step_{step}.npz")
    try:
        report = diag.analyze_current_alignment(
            alignment_path=snapshot, output_directory=run.args.output_directory,
            run_name=run.args.run_name)
        text = diag.format_report(report)
    except diag.DiagnosticsError as err:
        text = f"(diagnostics report unavailable: {err})"
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"Training stopped by a red flag at step {step}.\n{message}\n\n{text}\n")
    return path


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    try:
        return train(args)
    except (HParamsError, CheckpointError, DataError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
