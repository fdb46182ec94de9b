"""Every figure of the toolkit, in one style: matplotlib's object API on an Agg canvas.

No pyplot: a figure here is a `Figure` with its own `FigureCanvasAgg`, so nothing depends on a
global backend or a display, and importing this module changes no matplotlib state. Used by the
logger (TensorBoard images), the diagnostics (report and history PNGs), inference (mel and
attention PNG) and the benchmarks and scripts (curves).

Attention maps are drawn in NVIDIA's orientation: decoder steps left to right, text tokens
bottom to top, with the diagonal band of `diagonal_score` and the argmax path.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from messages import message

GOOD_DIAGONAL = 0.5  # bar colours of the per-utterance diagonality
POOR_DIAGONAL = 0.1


def new_figure(width: float, height: float) -> Tuple[Figure, FigureCanvasAgg]:
    """A Figure on its own Agg canvas (no pyplot state, no display needed)."""
    fig = Figure(figsize=(width, height), dpi=100)
    return fig, FigureCanvasAgg(fig)


def to_image(canvas: FigureCanvasAgg) -> np.ndarray:
    """Renders a canvas to an uint8 (H, W, 3) RGB array (TensorBoard's HWC images)."""
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[:, :, :3].copy()


def save_png(canvas: FigureCanvasAgg, path: str) -> str:
    """Writes the canvas as a PNG, creating its folder; OSError when it cannot."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.print_png(path)
    return path


# ---------------------------------------------------------------------------------- attention
def draw_alignment(ax: Any, A: np.ndarray, band: float, title: Optional[str] = None,
                   lang: str = "en", reading_end: Optional[int] = None) -> Any:
    """Attention map (T, N) with the diagonal band and the argmax path on `ax`.

    Args:
        reading_end: free-running maps: the step where the attention reached the end of the
            text (a vertical line), so reading and stopping are told apart at a glance.

    Returns:
        The image, for a colour bar.
    """
    T, N = A.shape
    image = ax.imshow(A.T, aspect="auto", origin="lower", interpolation="none", cmap="viridis",
                      extent=(-0.5, T - 0.5, -0.5, N - 0.5), vmin=0.0,
                      vmax=max(float(np.nanmax(A)) if np.isfinite(A).any() else 0.0, 1e-6))
    x = np.array([-0.5, T - 0.5])
    centre = (x + 0.5) / T * N - 0.5  # token index of the ideal diagonal at step x
    for sign in (-1, 1):
        ax.plot(x, centre + sign * band * N, color="white", linestyle="--", linewidth=1.0,
                label=message(lang, "plot_band") if sign < 0 else None)
    ax.plot(np.arange(T), np.nan_to_num(A).argmax(axis=1), color="red", linewidth=0.8,
            alpha=0.8, label=message(lang, "plot_path"))
    if reading_end is not None and reading_end < T:
        ax.axvline(reading_end - 0.5, color="orange", linestyle=":", linewidth=1.2,
                   label=message(lang, "plot_reading_end"))
    ax.set_xlim(-0.5, T - 0.5)
    ax.set_ylim(-0.5, N - 0.5)
    ax.set_xlabel(message(lang, "plot_decoder"))
    ax.set_ylabel(message(lang, "plot_token"))
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(loc="upper left", fontsize=7, framealpha=0.5)
    return image


def alignment_image(A: np.ndarray, title: Optional[str] = None, band: float = 0.15,
                    lang: str = "en", reading_end: Optional[int] = None) -> np.ndarray:
    """One utterance's un-padded (T, N) attention as an uint8 (H, W, 3) picture."""
    fig, canvas = new_figure(6, 4)
    ax = fig.add_subplot(1, 1, 1)
    fig.colorbar(draw_alignment(ax, np.asarray(A, dtype=np.float64), band, title, lang,
                                reading_end), ax=ax)
    fig.tight_layout()
    return to_image(canvas)


def spectrogram_image(mel: np.ndarray, title: str = "") -> np.ndarray:
    """(n_mel, frames) log-mel -> uint8 (H, W, 3) picture."""
    fig, canvas = new_figure(10, 3)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(mel, aspect="auto", origin="lower", interpolation="none")
    fig.colorbar(image, ax=ax)
    ax.set_xlabel("frames")
    ax.set_ylabel("mel channel")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return to_image(canvas)


def gate_image(gate_target: np.ndarray, gate_prob: np.ndarray) -> np.ndarray:
    """(frames,) target and predicted stop probability -> uint8 (H, W, 3) picture."""
    fig, canvas = new_figure(10, 2.5)
    ax = fig.add_subplot(1, 1, 1)
    frames = np.arange(len(gate_target))
    ax.scatter(frames, gate_target, alpha=0.5, color="green", marker="+", s=4, label="target")
    ax.scatter(np.arange(len(gate_prob)), gate_prob, alpha=0.5, color="red", marker=".", s=4,
               label="predicted")
    ax.set_xlabel("frames")
    ax.set_ylabel("gate (stop) probability")
    ax.legend(loc="upper left", fontsize=7)
    fig.tight_layout()
    return to_image(canvas)


def mel_and_alignment_png(path: str, mel: np.ndarray, alignment: np.ndarray, title: str,
                          band: float = 0.15) -> str:
    """Inference's PNG: the mel (n_mel, frames) above the attention (T, N) on its true grid."""
    fig, canvas = new_figure(10, 7)
    ax_mel, ax_att = fig.subplots(2, 1)
    image = ax_mel.imshow(mel, aspect="auto", origin="lower", interpolation="none")
    ax_mel.set_xlabel("mel frame")
    ax_mel.set_ylabel("mel channel")
    fig.colorbar(image, ax=ax_mel)
    fig.colorbar(draw_alignment(ax_att, np.asarray(alignment, dtype=np.float64), band), ax=ax_att)
    fig.suptitle(title, fontsize=9)
    # fixed margins: tight_layout costs a third of a second per figure
    fig.subplots_adjust(left=0.07, right=0.98, bottom=0.08, top=0.9, hspace=0.35)
    return save_png(canvas, path)


# ---------------------------------------------------------------------------------- reports
def report_png(path: str, A: np.ndarray, title: str, shown: str, band: float,
               item_scores: Sequence[Tuple[str, float]], threshold: Optional[float],
               lang: str = "en") -> str:
    """The diagnostics report's PNG.

    Args:
        A: the shown utterance's (T, N) attention.
        title: its title (step, name, diagonality, failure modes).
        shown: why this utterance is the one shown (a line under the map).
        item_scores: (name, diagonal_score) of every utterance, for the bars.
        threshold: the success criterion of the step (a dashed line), or None.
    """
    fig, canvas = new_figure(9, 9.5)
    grid = fig.add_gridspec(3, 2, height_ratios=[3, 1, 1.4], width_ratios=[40, 1])
    ax_map = fig.add_subplot(grid[0, 0])
    image = draw_alignment(ax_map, A, band, title, lang)
    fig.colorbar(image, cax=fig.add_subplot(grid[0, 1]))

    ax_focus = fig.add_subplot(grid[1, 0], sharex=ax_map)
    ax_focus.plot(np.arange(A.shape[0]), A.max(axis=1), color="tab:blue", linewidth=1.0)
    ax_focus.set_ylim(0, 1.05)
    ax_focus.set_ylabel(message(lang, "plot_focus"))
    ax_focus.set_xlabel(message(lang, "plot_decoder"))
    ax_focus.set_title(shown, fontsize=8)

    ax_items = fig.add_subplot(grid[2, 0])
    ordered = sorted(item_scores, key=lambda item: item[1])
    scores = np.array([score for _, score in ordered])
    for lo, hi, color, key in ((GOOD_DIAGONAL, np.inf, "tab:green", "plot_good"),
                               (POOR_DIAGONAL, GOOD_DIAGONAL, "tab:orange", "plot_fair"),
                               (-np.inf, POOR_DIAGONAL, "tab:red", "plot_poor")):
        pick = np.flatnonzero((scores >= lo) & (scores < hi))
        if pick.size:
            ax_items.bar(pick, scores[pick], color=color, width=0.9, label=message(lang, key))
    if threshold is not None:
        ax_items.axhline(threshold, color="black", linestyle="--", linewidth=0.8,
                         label=message(lang, "plot_criterion"))
    if len(ordered) <= 40:  # names stay readable up to about this many bars
        ax_items.set_xticks(np.arange(len(ordered)))
        ax_items.set_xticklabels([name for name, _ in ordered], rotation=90, fontsize=6)
    ax_items.set_ylim(0, 1.0)
    ax_items.set_xlabel(message(lang, "plot_items_x"))
    ax_items.set_ylabel(message(lang, "m_diagonal_score"))
    ax_items.set_title(message(lang, "plot_items"), fontsize=9)
    ax_items.legend(loc="upper left", fontsize=7, framealpha=0.6)
    fig.tight_layout()
    return save_png(canvas, path)


def history_png(path: str, rows: List[Dict[str, Any]], success_steps: Sequence[int],
                success_thresholds: Sequence[float], red_flag_diagonal: float,
                red_flag_start_step: int, lang: str = "en") -> str:
    """Diagonality over a run (teacher-forced and free-running) against the criteria.

    The x axis ends just after the last record, not at the last milestone: a short run keeps
    its curve readable; milestones beyond it are not drawn.
    """
    scored = [r for r in rows if r.get("mcd_db") is not None]
    fig, canvas = new_figure(9, 7.5 if scored else 5)
    ax = fig.add_subplot(2 if scored else 1, 1, 1)
    steps = np.array([r["step"] for r in rows])
    last = max(float(steps.max()) * 1.05, float(steps.max()) + 1.0)
    ax.plot(steps, [r["diagonal_score"] for r in rows], marker="o", markersize=3,
            label=message(lang, "plot_teacher"))
    free_rows = [r for r in rows if r.get("free_diagonal_score") is not None]
    if free_rows:
        ax.plot([r["step"] for r in free_rows], [r["free_diagonal_score"] for r in free_rows],
                marker=".", linestyle=":", label=message(lang, "plot_free"))
    shown = [(s, t) for s, t in zip(success_steps, success_thresholds) if s <= last]
    if shown:  # each threshold holds from its milestone to the next
        ax.step([s for s, _ in shown] + [last], [t for _, t in shown] + [shown[-1][1]],
                where="post", color="green", linestyle="--", label=message(lang, "plot_criteria"))
    if red_flag_start_step <= last:
        ax.hlines(red_flag_diagonal, red_flag_start_step, last, color="red", linestyle=":",
                  label=message(lang, "plot_red_flag"))
    flagged = [r for r in rows if r["red_flags"]]
    if flagged:
        ax.scatter([r["step"] for r in flagged], [r["diagonal_score"] for r in flagged],
                   color="red", zorder=3, label=message(lang, "plot_flagged"))
    ax.set_ylim(0, 1.0)
    ax.set_xlim(0, last)
    ax.set_xlabel(message(lang, "plot_history_step"))
    ax.set_ylabel(message(lang, "m_diagonal_score"))
    ax.set_title(message(lang, "plot_history_title"))
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    if scored:
        _quality_history(fig.add_subplot(2, 1, 2, sharex=ax), scored, lang)
    fig.tight_layout()
    return save_png(canvas, path)


def _quality_history(ax: Any, rows: List[Dict[str, Any]], lang: str) -> None:
    """MCD-DTW of the quality validations (left axis) and the word error rate (right axis)."""
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["mcd_db"] for r in rows], marker="o", markersize=3, color="tab:purple",
            label=message(lang, "plot_mcd"))
    ax.set_ylabel(message(lang, "plot_mcd"))
    ax.set_xlabel(message(lang, "plot_history_step"))
    ax.grid(alpha=0.3)
    with_wer = [r for r in rows if r.get("wer") is not None]
    if with_wer:
        right = ax.twinx()
        right.plot([r["step"] for r in with_wer], [r["wer"] for r in with_wer], marker=".",
                   linestyle=":", color="tab:red", label=message(lang, "plot_wer"))
        right.set_ylim(0, 1.05)
        right.set_ylabel(message(lang, "plot_wer"))
        right.legend(loc="upper right", fontsize=8)
    ax.legend(loc="upper left", fontsize=8)
