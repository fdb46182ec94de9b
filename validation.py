"""Running a model over validation data and scoring its attention.

One place collects per-item attention maps from a model over batches
(`collect_attention`): training's teacher-forced validation (`validate`), its free-running
validation (`free_running`) and the diagnostics' checkpoint evaluation all use it. Each map is cut
to its item's true size and put back in the order of the items (the collate sorts a batch by
text length and records the permutation in `Batch.order`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional

import numpy as np
import torch

from alignment_metrics import (RUN_ON_SLACK, FreeRunningScores, batch_metrics,
                               free_running_metrics, pack_alignments, step_seconds)
from commons import autocast_context, decoder_lengths
from data_utils import Batch, DataError, TextMelCollate
from hparams import HParams
from loss_function import Tacotron2Loss
from quality import QualityResult, evaluate_quality, mcd_references, wer_notice_for
from text import clean_text


class ItemAttention(NamedTuple):
    """The attention of one item, un-padded; `index` is its position in the data given."""
    index: int
    mel_length: int  # recorded mel frames
    teacher: Optional[np.ndarray]  # (ceil(mel_length / r), N) teacher-forced, or None
    free: Optional[np.ndarray]  # (decoded steps, N) free-running, or None
    free_hit_max: bool  # the gate never fired within max_decoder_steps
    free_mel: Optional[np.ndarray] = None  # (n_mel, decoded frames) postnet mel, when kept
    mel: Optional[np.ndarray] = None  # (n_mel, mel_length) the recording's mel, when kept


def collect_attention(model: torch.nn.Module, batches: Iterable[Batch], device: torch.device,
                      hp: HParams, teacher_forced: bool = True, free_running: bool = False,
                      on_batch: Optional[Callable[[Batch, Any], None]] = None,
                      keep_mels: bool = False) -> List[ItemAttention]:
    """Per-item attention of `model` over consecutive batches of a dataset, in item order.

    Args:
        batches: batches of consecutive items (an unshuffled loader): item i of the data is
            row `order.tolist().index(i - offset)` of its batch.
        teacher_forced: run the model on the recorded mels (`model(...)`).
        free_running: also decode each item from its text alone (`model.inference`).
        on_batch: called with (batch on the device, teacher-forced output) for each batch, for
            callers that need more than the attention (losses, an example item).
        keep_mels: keep each item's recorded mel and its free-running postnet mel (quality).

    Returns:
        One ItemAttention per item, sorted by `index`. The model is left in the mode it had.
    """
    was_training = model.training
    model.eval()
    r = hp.n_frames_per_step
    items: List[ItemAttention] = []
    offset = 0
    try:
        with torch.no_grad():
            for batch in batches:
                batch = batch.to(device)
                size = batch.text.size(0)
                order = batch.order.tolist()
                text_lengths = batch.text_lengths.tolist()
                mel_lengths = batch.mel_lengths.tolist()
                teacher = free = free_mels = None
                if teacher_forced:
                    with autocast_context(hp.precision, device):
                        out = model(batch.text, batch.text_lengths, batch.mel, batch.mel_lengths)
                    teacher = out.alignments.float().cpu().numpy()  # (B, T/r, N)
                    if on_batch is not None:
                        on_batch(batch, out)
                if free_running:
                    with autocast_context(hp.precision, device):
                        decoded = model.inference(batch.text, batch.text_lengths)
                    free = decoded.alignments.float().cpu().numpy()  # (B, steps, N)
                    free_steps = decoder_lengths(decoded.mel_lengths, r).clamp(min=1).tolist()
                    hit_max = decoded.hit_max_steps.tolist()
                    if keep_mels:
                        free_mels = decoded.mel_postnet.float().cpu().numpy()
                        free_frames = decoded.mel_lengths.clamp(min=1).tolist()
                mels = batch.mel.float().cpu().numpy() if keep_mels else None
                for b in range(size):
                    n = text_lengths[b]
                    items.append(ItemAttention(
                        index=offset + order[b], mel_length=mel_lengths[b],
                        teacher=(teacher[b, :decoder_lengths(mel_lengths[b], r), :n]
                                 if teacher is not None else None),
                        free=(free[b, :min(free_steps[b], free.shape[1]), :n]
                              if free is not None else None),
                        free_hit_max=bool(hit_max[b]) if free is not None else False,
                        free_mel=(free_mels[b, :, :free_frames[b]] if free_mels is not None
                                  else None),
                        mel=mels[b, :, :mel_lengths[b]] if mels is not None else None))
                offset += size
    finally:
        model.train(was_training)
    return sorted(items, key=lambda item: item.index)


def validate(model: torch.nn.Module, loader: Iterable[Batch], criterion: Tacotron2Loss,
             hp: HParams, device: torch.device, guide_weight: float) -> Dict[str, Any]:
    """Teacher-forced validation: mean losses and the alignment metrics of every item.

    Returns:
        {"losses": {part: mean over items}, "summary": batch_metrics of every item,
        "snapshot": arrays for alignments/step_N.npz, "example": the first item's arrays for the
        pictures}.
    """
    totals: Dict[str, float] = {}
    count = 0
    example: Dict[str, np.ndarray] = {}

    def on_batch(batch: Batch, out: Any) -> None:
        nonlocal count
        parts = criterion(out, batch, guide_weight)
        size = batch.text.size(0)
        for name, value in parts._asdict().items():
            totals[name] = totals.get(name, 0.0) + float(value) * size
        count += size
        if not example:
            row = batch.order.tolist().index(0)  # the set's first item, whatever the sort did
            m = int(batch.mel_lengths[row])
            example.update(
                mel_target=batch.mel[row, :, :m].float().cpu().numpy(),
                mel_predicted=out.mel_postnet[row, :, :m].float().cpu().numpy(),
                gate_target=batch.gate[row, :m].float().cpu().numpy(),
                gate_prob=torch.sigmoid(out.gate[row, :m]).float().cpu().numpy())

    items = collect_attention(model, loader, device, hp, on_batch=on_batch)
    if count == 0:
        raise DataError(f"{hp.validation_files}: the validation set is empty")
    example["alignment"] = items[0].teacher
    padded, text_lengths, steps = pack_alignments([item.teacher for item in items])
    snapshot = {"alignments": padded, "text_lengths": text_lengths, "decoder_lengths": steps,
                "mel_lengths": np.array([item.mel_length for item in items], dtype=np.int64)}
    summary = batch_metrics(padded, text_lengths, steps, seconds_per_step=step_seconds(hp),
                            band=hp.diagonal_band)
    return {"losses": {k: v / count for k, v in totals.items()}, "summary": summary,
            "snapshot": snapshot, "example": example}


@dataclass
class FreeRunningResult:
    """Free-running validation: the scores, and the arrays the pictures and the snapshot need."""
    scores: FreeRunningScores
    example: np.ndarray  # the first item's map (decoded steps, tokens)
    reading_end: int  # its steps up to where the text was read
    snapshot: Dict[str, np.ndarray]  # the free_* arrays of alignments/step_N.npz
    items: List[ItemAttention]  # per item, with its mels when they were kept
    reading_steps: List[int]  # per item: decoder steps up to where the text was read
    runs_on: List[bool]  # per item: read to the end, then the gate did not stop it

    def to_record(self) -> FreeRunningScores:
        """What diagnostics.jsonl keeps of it."""
        return self.scores


def free_running(model: torch.nn.Module, val_set: Any, hp: HParams,
                 device: torch.device, keep_mels: bool = False) -> FreeRunningResult:
    """Decodes the first `free_running_items` validation items from their text alone.

    The figures are split into reading (up to where the attention reaches the end of the text)
    and stopping (whether the gate fired, and how near the recorded length); see
    `alignment_metrics.free_running_metrics`.
    """
    n_items = min(hp.free_running_items, len(val_set))
    collate = TextMelCollate(hp.n_frames_per_step)
    batch = collate([val_set[i] for i in range(n_items)])
    items = collect_attention(model, [batch], device, hp, teacher_forced=False,
                              free_running=True, keep_mels=keep_mels)
    padded, text_lengths, steps = pack_alignments([item.free for item in items])
    hit_max = np.array([item.free_hit_max for item in items])
    targets = decoder_lengths(np.array([item.mel_length for item in items]), hp.n_frames_per_step)
    scores = free_running_metrics(padded, text_lengths, steps, hit_max, targets,
                                  seconds_per_step=step_seconds(hp), band=hp.diagonal_band)
    return FreeRunningResult(
        scores=FreeRunningScores.from_metrics(scores), example=items[0].free,
        reading_end=scores["per_item"][0]["reading_steps"],
        snapshot={"free_alignments": padded, "free_text_lengths": text_lengths,
                  "free_decoder_lengths": steps, "free_hit_max_steps": hit_max,
                  "free_target_decoder_lengths": targets.astype(np.int64)},
        items=items, reading_steps=[i["reading_steps"] for i in scores["per_item"]],
        runs_on=[i["runs_on"] for i in scores["per_item"]])


def spoken_part(free: FreeRunningResult, i: int, hp: HParams) -> np.ndarray:
    """Item i's free-running mel, cut after its reading (plus RUN_ON_SLACK steps) when the gate
    let it run on: the speech quality of what was read, apart from the stop (which the
    free-running figures judge)."""
    mel = free.items[i].free_mel
    if not free.runs_on[i]:
        return mel
    frames = (free.reading_steps[i] + RUN_ON_SLACK) * hp.n_frames_per_step
    return mel[:, :max(1, min(mel.shape[1], frames))]


def _quality_texts(items: List[ItemAttention], val_set: Any, hp: HParams) -> Optional[List[str]]:
    """The items' texts as spoken (after the cleaners: numbers in words) for the word error
    rate: English voices only (the recogniser's)."""
    if hp.symbol_set != "english":
        return None
    return [clean_text(val_set.entries[item.index].text, hp.text_cleaners) for item in items]


def score_quality(free: FreeRunningResult, val_set: Any, hp: HParams,
                  references: Optional[Dict[str, Any]]) -> QualityResult:
    """Speech quality of the first `quality_items` free-running decodes (`free_running(...,
    keep_mels=True)`, each cut where it ran on: `spoken_part`): MCD-DTW against their
    recordings, and for English the word error rate of their Griffin-Lim audio against the
    item's text (None without pocketsphinx)."""
    chosen = free.items[:hp.quality_items]
    spoken = [spoken_part(free, i, hp) for i in range(len(chosen))]
    transcripts = _quality_texts(chosen, val_set, hp)
    result = evaluate_quality(spoken, [item.mel for item in chosen], hp, transcripts=transcripts,
                              references=references,
                              griffin_lim_iters=hp.quality_griffin_lim_iters)
    if transcripts is None:
        result.wer_notice = wer_notice_for(hp.symbol_set)
    return result


def quality_references(free: FreeRunningResult, val_set: Any, hp: HParams) -> Dict[str, Any]:
    """`quality.mcd_references` of the recordings `score_quality` scores: once per run."""
    chosen = free.items[:hp.quality_items]
    return mcd_references([item.mel for item in chosen], hp,
                          griffin_lim_iters=hp.quality_griffin_lim_iters,
                          max_items=len(chosen), transcripts=_quality_texts(chosen, val_set, hp))
