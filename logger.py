"""The run's two logs: the human-readable `logs/train.log` and TensorBoard in `runs/<run_name>`.

Only rank 0 writes; on other ranks every method is a no-op, so the loop needs no `if rank == 0`.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING, Any, Dict, Optional

import numpy as np

import plotting

if TYPE_CHECKING:  # types only: the logger needs neither module to run
    from run_files import ValidationRecord
    from validation import FreeRunningResult


class TrainLogger:
    """Text log + TensorBoard for one run.

    Args:
        log_directory: folder of `train.log` (created).
        tensorboard_directory: parent of the run's event folder (`<dir>/<run_name>`).
        enabled: False on every rank but 0.
    """

    def __init__(self, log_directory: str, tensorboard_directory: str, run_name: str,
                 enabled: bool = True):
        self.enabled = enabled
        self.log = logging.getLogger(f"taco_align.{run_name}.{id(self)}")
        self.log.propagate = False
        self.log.setLevel(logging.INFO)
        self.writer = None
        self.log_path = os.path.join(log_directory, "train.log")
        if not enabled:
            self.log.addHandler(logging.NullHandler())
            return
        os.makedirs(log_directory, exist_ok=True)
        file_handler = logging.FileHandler(self.log_path, encoding="utf-8")
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s",
                                                    "%Y-%m-%d %H:%M:%S"))
        console = logging.StreamHandler(sys.stdout)
        console.setFormatter(logging.Formatter("%(message)s"))
        self.log.addHandler(file_handler)
        self.log.addHandler(console)
        # TensorBoard's writer imports tensorflow-free protobuf code that takes a second to
        # load; ranks other than 0 never need it.
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(os.path.join(tensorboard_directory, run_name))

    # text log ----------------------------------------------------------------------------------
    def info(self, message: str) -> None:
        self.log.info(message)

    def warning(self, message: str) -> None:
        self.log.warning(message)

    # TensorBoard -------------------------------------------------------------------------------
    def scalars(self, values: Dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        for tag, value in values.items():
            if value is not None and np.isfinite(value):
                self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, image: np.ndarray, step: int) -> None:
        if self.writer is not None:
            self.writer.add_image(tag, image, step, dataformats="HWC")

    def text(self, tag: str, text: str, step: int) -> None:
        if self.writer is not None:
            self.writer.add_text(tag, text, step)

    def audio(self, tag: str, wav: np.ndarray, step: int, sample_rate: int) -> None:
        if self.writer is not None:
            self.writer.add_audio(tag, wav[None, :], step, sample_rate=sample_rate)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()
        for handler in self.log.handlers:
            handler.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        for handler in list(self.log.handlers):
            handler.close()
            self.log.removeHandler(handler)


def loss_parts_line(losses: Dict[str, float], guided_weight: float) -> str:
    """"T = mel a + postnet b + gate c + guided_weight w x attention_loss g": every part of the
    total, shown so that they add up (the guided term enters with its scheduled weight)."""
    return (f"{losses['total']:.4f} = mel {losses['mel']:.4f} + postnet "
            f"{losses['mel_postnet']:.4f} + gate {losses['gate']:.4f} + guided_weight "
            f"{guided_weight:.4g} x attention_loss {losses['guided_attn']:.4f}")


def log_training(logger: TrainLogger, step: int, losses: Dict[str, float], guided_weight: float,
                 learning_rate: float, grad_norm: float, seconds: float,
                 skipped_steps: int = 0) -> None:
    """One train.log line and the training scalars.

    Tags keep NVIDIA's dotted names (`training.loss`, `grad.norm`, `learning.rate`,
    `validation.loss`), and every other scalar follows the same `group.name` scheme.
    """
    logger.info(
        f"step {step}: total {loss_parts_line(losses, guided_weight)}; lr {learning_rate:.3g} "
        f"grad_norm {grad_norm:.3f} {seconds:.2f} s/step"
        + (f"; {skipped_steps} non-finite steps skipped so far" if skipped_steps else ""))
    logger.scalars({
        "training.loss": losses["total"], "grad.norm": grad_norm, "learning.rate": learning_rate,
        "duration.seconds_per_step": seconds, "training.mel_loss": losses["mel"],
        "training.mel_postnet_loss": losses["mel_postnet"], "training.gate_loss": losses["gate"],
        "training.attention_loss": losses["guided_attn"], "training.guided_weight": guided_weight,
        "training.guided_term": guided_weight * losses["guided_attn"],
        "training.skipped_steps": skipped_steps,
    }, step)


def log_validation(logger: TrainLogger, record: "ValidationRecord") -> None:
    """train.log lines and scalars of one validation (teacher-forced and free-running)."""
    step, losses, metrics = record.step, record.losses, record.metrics
    failures = {k: v for k, v in record.failure_counts.items() if v}
    logger.info(
        f"validation step {step}: loss {loss_parts_line(losses, record.guided_weight)}; "
        f"diagonality {metrics['diagonal_score']:.3f} focus {metrics['focus_score']:.3f} "
        f"coverage {metrics['coverage']:.3f} max_attention {metrics['max_attention']:.3f}; "
        f"healthy {record.healthy}/{record.n_items}, failures {failures or 'none'}")
    scalars = {"validation.loss": losses["total"], "validation.mel_loss": losses["mel"],
               "validation.mel_postnet_loss": losses["mel_postnet"],
               "validation.gate_loss": losses["gate"],
               "validation.attention_loss": losses["guided_attn"]}
    scalars.update({f"alignment.{k}": v for k, v in metrics.items()})
    free = record.free_running
    if free is not None:
        near = free.near_length_share
        logger.info(
            f"free-running step {step}: diagonality {free.diagonal_score:.3f}, reading "
            f"diagonality {free.reading_diagonal_score:.3f} (read to the end "
            f"{free.end_reached_share:.0%}); gate stopped {free.stopped_share:.0%}, near "
            f"the true length {near:.0%}, runs on after the text {free.runs_on_share:.0%} of "
            f"{free.items} items")
        scalars.update({f"alignment_free.{k}": getattr(free, k) for k in (
            "diagonal_score", "reading_diagonal_score", "focus_score", "end_reached_share",
            "stopped_share", "near_length_share", "runs_on_share")})
    if record.quality is not None:
        scalars.update(quality_scalars(record.quality))
    logger.scalars(scalars, step)


def quality_scalars(quality: Dict[str, Any]) -> Dict[str, float]:
    """TensorBoard's `quality.*` tags of a validation's quality scores and their references
    (None values, e.g. no recogniser, are left out)."""
    refs = quality.get("references") or {}
    values = {"quality.mcd_db": quality.get("mean_mcd"), "quality.wer": quality.get("wer"),
              "quality.mcd_griffin_lim_db": refs.get("griffin_lim_mcd"),
              "quality.mcd_hum_db": refs.get("flat_mcd"),
              "quality.wer_griffin_lim": refs.get("griffin_lim_wer")}
    return {k: float(v) for k, v in values.items() if v is not None}


def log_validation_images(logger: TrainLogger, step: int, example: Dict[str, np.ndarray],
                          diagonal: float, band: float,
                          free: Optional["FreeRunningResult"] = None) -> None:
    """NVIDIA's image tags for the validation set's first item (true lengths, no padding), the
    attention pictures titled with their step and score."""
    if not logger.enabled:
        return
    logger.image("alignment", plotting.alignment_image(
        example["alignment"], f"teacher-forced, step {step}: diagonality {diagonal:.2f}", band),
        step)
    logger.image("mel_target", plotting.spectrogram_image(example["mel_target"], "target"), step)
    logger.image("mel_predicted", plotting.spectrogram_image(example["mel_predicted"],
                                                             "predicted"), step)
    logger.image("gate", plotting.gate_image(example["gate_target"], example["gate_prob"]), step)
    if free is not None:
        logger.image("alignment_free", plotting.alignment_image(
            free.example, f"free-running, step {step}: diagonality "
            f"{free.scores.diagonal_score:.2f}, reading {free.scores.reading_diagonal_score:.2f}",
            band, reading_end=free.reading_end), step)
