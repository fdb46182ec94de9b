"""The run's two logs: the human-readable `logs/train.log` and TensorBoard in `runs/<run_name>`.

Only rank 0 writes; on other ranks every method is a no-op, so the loop needs no `if rank == 0`.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Dict, Optional

import numpy as np

# Agg: training runs on servers without a display.
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def figure_to_numpy(fig) -> np.ndarray:
    """Renders a matplotlib figure to an (H, W, 3) uint8 array and closes it."""
    fig.canvas.draw()
    image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    plt.close(fig)
    return image


def plot_spectrogram_to_numpy(mel: np.ndarray, title: str = "") -> np.ndarray:
    """(n_mel, frames) log-mel -> (H, W, 3) uint8 picture."""
    fig, ax = plt.subplots(figsize=(10, 3))
    im = ax.imshow(mel, aspect="auto", origin="lower", interpolation="none")
    fig.colorbar(im, ax=ax)
    ax.set_xlabel("frames")
    ax.set_ylabel("mel channel")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return figure_to_numpy(fig)


def plot_gate_to_numpy(gate_target: np.ndarray, gate_prob: np.ndarray) -> np.ndarray:
    """(frames,) target and predicted stop probability -> (H, W, 3) uint8 picture."""
    fig, ax = plt.subplots(figsize=(10, 2.5))
    ax.scatter(range(len(gate_target)), gate_target, alpha=0.5, color="green", marker="+", s=4,
               label="target")
    ax.scatter(range(len(gate_prob)), gate_prob, alpha=0.5, color="red", marker=".", s=4,
               label="predicted")
    ax.set_xlabel("frames (green target, red predicted)")
    ax.set_ylabel("gate state")
    fig.tight_layout()
    return figure_to_numpy(fig)


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


def log_training(logger: TrainLogger, step: int, losses: Dict[str, float], guided_weight: float,
                 learning_rate: float, grad_norm: float, seconds: float) -> None:
    """One train.log line and NVIDIA's training tags (plus the loss parts and guided weight)."""
    logger.info(
        f"step {step}: total {losses['total']:.4f} mel {losses['mel']:.4f} "
        f"postnet {losses['mel_postnet']:.4f} gate {losses['gate']:.4f} "
        f"attention_loss {losses['guided_attn']:.4f} guided_weight {guided_weight:.4g} "
        f"lr {learning_rate:.3g} grad_norm {grad_norm:.3f} {seconds:.2f}s/step")
    logger.scalars({
        "training.loss": losses["total"], "grad.norm": grad_norm, "learning.rate": learning_rate,
        "duration": seconds, "training.mel_loss": losses["mel"],
        "training.mel_postnet_loss": losses["mel_postnet"], "training.gate_loss": losses["gate"],
        "training.attention_loss": losses["guided_attn"], "training.guided_weight": guided_weight,
        "training.guided_term": guided_weight * losses["guided_attn"],
    }, step)


def log_validation_images(logger: TrainLogger, step: int, alignment_image: np.ndarray,
                          mel_target: np.ndarray, mel_predicted: np.ndarray,
                          gate_target: np.ndarray, gate_prob: np.ndarray,
                          free_alignment_image: Optional[np.ndarray] = None) -> None:
    """NVIDIA's image tags for one validation item (true lengths, no padding)."""
    if not logger.enabled:
        return
    logger.image("alignment", alignment_image, step)
    logger.image("mel_target", plot_spectrogram_to_numpy(mel_target, "target"), step)
    logger.image("mel_predicted", plot_spectrogram_to_numpy(mel_predicted, "predicted"), step)
    logger.image("gate", plot_gate_to_numpy(gate_target, gate_prob), step)
    if free_alignment_image is not None:
        logger.image("alignment_free", free_alignment_image, step)
