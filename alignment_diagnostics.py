"""Alignment diagnostics: the command line and the report of a run's attention.

    python alignment_diagnostics.py                # newest checkpoint or snapshot of output/trial_0
    python alignment_diagnostics.py --step=1200    # checkpoint_1200, else alignments/step_1200.npz
    python alignment_diagnostics.py --checkpoint=output/trial_0/checkpoint_LATEST [--inference]
    python alignment_diagnostics.py --alignment=attention.npy   # a (decoder steps, tokens) matrix
    python alignment_diagnostics.py --history      # diagonality over the run (diagnostics.jsonl)
    python alignment_diagnostics.py --step=1200 --json   # for machines; --lang ru: in Russian

This module finds a run's checkpoints and snapshots, evaluates a checkpoint, and writes the report
and its pictures. The scores are `alignment_metrics` (one implementation), their judgement is
`guardrails` (criteria, red flags), the words are `messages` (locale/*.json) and the pictures
`plotting`. The file formats are in docs/run_layout.md.

Exit status: 0 a report, 2 bad input (one line on stderr), 3 a red flag with --fail-on-red-flag.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import zipfile
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from alignment_metrics import (FAILURE_MODES, HEALTHY, METRIC_NAMES, ROW_SUM_TOLERANCE, RUNS_ON,
                               STUCK_SECONDS, DiagnosticsError, batch_metrics, check_lengths,
                               free_running_metrics, pack_alignments, step_seconds)
from guardrails import (FlagKind, criterion_for_step, next_milestone, red_flags, remediated_hparams,
                        status_line)
from hparams import HParams
from messages import UnknownLanguageError, check_language, message, one_line, LANGUAGES
import plotting
from run_files import (DIAGNOSTICS, LATEST, SNAPSHOTS, RunFilesError, RunFolder, ValidationRecord, is_latest,
                       snapshot_step)

TRAIN_COMMAND = "python train.py --output_directory=output --log_directory=logs"
_step_in_name_re = re.compile(r"step_?(\d+)")  # a step number in a loose file's name


# ============================================================================ run folder
def _run_dir(output_directory: str, run_name: str) -> str:
    return os.path.join(output_directory, run_name)


def load_run_hparams(run_dir: Optional[str]) -> Tuple[HParams, str, Optional[Dict[str, str]]]:
    """The run's hparams.json, else the defaults.

    Returns:
        (hp, "run" | "defaults", None or {"path", "error"} when hparams.json exists but cannot
        be used: the report says so and goes on with the defaults).
    """
    if not run_dir:
        return HParams(), "defaults", None
    folder = RunFolder(run_dir)
    try:
        text = folder.read_hparams_text()
        if text is None:
            return HParams(), "defaults", None
        return HParams.from_dict(json.loads(text)), "run", None
    except (OSError, ValueError, TypeError) as err:  # HParamsError and JSON errors are ValueErrors
        return HParams(), "defaults", {"path": folder.hparams_path, "error": one_line(err)}


def read_records(run_dir: Optional[str], step: Optional[int] = None) -> List[ValidationRecord]:
    """The run's validation records (up to `step`), DiagnosticsError for an unreadable log."""
    if run_dir is None:
        return []
    try:
        return RunFolder(run_dir).records(up_to=step)
    except RunFilesError as err:
        raise DiagnosticsError(str(err)) from None


# ============================================================================ sources
def _check_rows(A: np.ndarray, text_lengths: np.ndarray, decoder_lengths: np.ndarray,
                path: str, names: Optional[Sequence[str]] = None) -> None:
    """Every un-padded row is a distribution over the item's tokens, else DiagnosticsError."""
    max_t, max_n = A.shape[1:]
    rows = np.arange(max_t)[None, :] < decoder_lengths[:, None]  # (B, T)
    cols = np.arange(max_n)[None, :] < text_lengths[:, None]  # (B, N)
    block = np.where(rows[:, :, None] & cols[:, None, :], A, 0.0)
    # A diverged model writes NaN or inf: such items are reported as `non_finite` by the
    # metrics, not refused, so the report of a diverged run can still be read.
    finite_item = np.isfinite(block).all(axis=(1, 2))
    block = np.where(finite_item[:, None, None], block, 0.0)
    if (block < 0).any():
        raise DiagnosticsError(f"{path}: the attention holds negative weights")
    sums = block.sum(axis=2)  # (B, T)
    bad = rows & (np.abs(sums - 1.0) > ROW_SUM_TOLERANCE) & finite_item[:, None]
    if not bad.any():
        return
    b, t = (int(i) for i in np.argwhere(bad)[0])
    where = f"decoder step {t}"
    if A.shape[0] > 1 or names is not None:  # a snapshot: name the utterance too
        where = f"item {b}" + (f" ({names[b]})" if names is not None else "") + f", {where}"
    hint = ""
    if A.shape[0] == 1:
        column_sums = block[0].sum(axis=0)[: int(text_lengths[0])]
        if np.all(np.abs(column_sums - 1.0) <= ROW_SUM_TOLERANCE):
            hint = ("; its columns sum to 1, so it looks transposed: pass it as (decoder steps, "
                    "tokens)")
    raise DiagnosticsError(
        f"{path}: {where}: the attention row sums to {sums[b, t]:.4f}, not 1 "
        f"(tolerance {ROW_SUM_TOLERANCE}); rows must be decoder steps, each a softmax over the "
        f"tokens{hint}")


def _load_array_file(path: str) -> Any:
    """np.load of a .npy or .npz, refusing pickles; one-line errors that say what the file is."""
    if not os.path.exists(path):
        raise DiagnosticsError(f"{path}: no such file")
    if os.path.isdir(path):
        raise DiagnosticsError(f"{path}: is a folder; give a .npy matrix or an alignments .npz")
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as err:
        raise DiagnosticsError(f"{path}: cannot read ({one_line(err)})") from None
    if magic != b"\x93NUMPY" and not magic.startswith(b"PK"):
        raise DiagnosticsError(f"{path}: not a NumPy file (a .npy matrix or an .npz snapshot "
                               f"starts differently); save the attention with numpy.save")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "allow_pickle" in str(err):
            raise DiagnosticsError(f"{path}: holds Python objects, not numbers; refused (object "
                                   f"arrays need pickle, which can run code)") from None
        raise DiagnosticsError(f"{path}: not a readable .npy or .npz file "
                               f"({one_line(err)})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as err:
        raise DiagnosticsError(f"{path}: truncated or corrupt NumPy file "
                               f"({one_line(err)})") from None


def load_alignment_file(path: str) -> Dict[str, Any]:
    """Reads a (T, N) .npy matrix or an `alignments/step_N.npz` snapshot, checked.

    A snapshot needs `alignments`, `text_lengths`, `decoder_lengths` (docs/run_layout.md); `step`,
    `n_frames_per_step`/`hop_length`/`sampling_rate`, `names` and the free-running
    `free_alignments`/`free_text_lengths`/`free_decoder_lengths` (+ `free_names`,
    `free_hit_max_steps`) are used when present. Name arrays must be str arrays (no pickle).

    Returns:
        {"kind": "matrix" | "snapshot", "alignments" (B, T, N) float32, "text_lengths",
        "decoder_lengths" (B,) int64, "names" list, "step" int | None, "seconds_per_step" float |
        None, "free" dict | None (free-running arrays of a snapshot)}.

    Raises:
        DiagnosticsError: missing, corrupt or foreign file, wrong shapes, rows not summing to 1.
    """
    data = _load_array_file(path)
    if isinstance(data, np.ndarray):
        if data.ndim != 2:
            raise DiagnosticsError(f"{path}: holds an array of shape {data.shape}; expected a 2-D "
                                   f"(decoder steps, tokens) attention matrix")
        if data.size == 0 or not np.issubdtype(data.dtype, np.number):
            raise DiagnosticsError(f"{path}: an empty or non-numeric {data.dtype} array")
        A = data.astype(np.float64)[None]
        T, N = data.shape
        out = {"kind": "matrix", "alignments": A, "text_lengths": np.array([N]),
               "decoder_lengths": np.array([T]), "names": [os.path.basename(path)],
               "step": None, "seconds_per_step": None, "free": None}
        match = _step_in_name_re.search(os.path.basename(path))
        if match:
            out["step"] = int(match.group(1))
        _check_rows(A, out["text_lengths"], out["decoder_lengths"], path)
        return out
    with data:
        keys = set(data.files)
        missing = {"alignments", "text_lengths", "decoder_lengths"} - keys
        if missing:
            raise DiagnosticsError(
                f"{path}: not an alignment snapshot (missing {', '.join(sorted(missing))}; has "
                f"{', '.join(sorted(keys)) or 'nothing'})")
        try:
            arrays = {k: data[k] for k in keys}
        except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
            raise DiagnosticsError(f"{path}: corrupt snapshot ({one_line(err)})") from None
    A = arrays["alignments"]
    if A.ndim != 3 or not np.issubdtype(A.dtype, np.number):
        raise DiagnosticsError(f"{path}: 'alignments' has shape {A.shape} ({A.dtype}); expected "
                               f"(B, T, N) numbers")
    if 0 in A.shape:
        raise DiagnosticsError(f"{path}: 'alignments' is empty (shape {A.shape})")
    try:
        text_lengths = check_lengths("text_lengths", arrays["text_lengths"].reshape(-1),
                                      A.shape[0], A.shape[2])
        decoder_lengths = check_lengths("decoder_lengths", arrays["decoder_lengths"].reshape(-1),
                                         A.shape[0], A.shape[1])
    except DiagnosticsError as err:
        raise DiagnosticsError(f"{path}: {err}") from None
    stored_names = ([str(x) for x in arrays["names"].reshape(-1)] if "names" in arrays
                    else None)
    _check_rows(A, text_lengths, decoder_lengths, path, stored_names)
    names = stored_names or [f"item {i}" for i in range(A.shape[0])]
    seconds = None
    if {"n_frames_per_step", "hop_length", "sampling_rate"} <= keys:
        seconds = (float(arrays["n_frames_per_step"]) * float(arrays["hop_length"])
                   / float(arrays["sampling_rate"]))
    free = None
    if {"free_alignments", "free_text_lengths", "free_decoder_lengths"} <= keys:
        free = {"alignments": arrays["free_alignments"],
                "text_lengths": arrays["free_text_lengths"].reshape(-1).astype(np.int64),
                "decoder_lengths": arrays["free_decoder_lengths"].reshape(-1).astype(np.int64),
                "names": ([str(x) for x in arrays["free_names"].reshape(-1)]
                          if "free_names" in keys
                          else [f"item {i}" for i in range(arrays["free_alignments"].shape[0])]),
                # optional Bool (B_free,): the gate never fired within max_decoder_steps
                "hit_max_steps": ([bool(x) for x in arrays["free_hit_max_steps"].reshape(-1)]
                                  if "free_hit_max_steps" in keys else None),
                # optional (B_free,): decoder steps of the recorded audio, for near_length
                "target_decoder_lengths": (arrays["free_target_decoder_lengths"].reshape(-1)
                                           if "free_target_decoder_lengths" in keys else None)}
    step = int(arrays["step"]) if "step" in arrays else snapshot_step(path)
    return {"kind": "snapshot", "alignments": A, "text_lengths": text_lengths,
            "decoder_lengths": decoder_lengths, "names": names, "step": step,
            "seconds_per_step": seconds, "free": free}


def evaluate_checkpoint(path: str, device: Optional[str] = None, filelist: Optional[str] = None,
                        inference: bool = False, batch_size: Optional[int] = None
                        ) -> Dict[str, Any]:
    """Teacher-forced (and optionally free-running) attention of a checkpoint on a filelist.

    The model is rebuilt from the checkpoint alone and run in eval mode on the validation
    filelist of its hparams (or `filelist`), in batches (`validation.collect_attention`).

    Args:
        path: a checkpoint file or `.../checkpoint_LATEST`.
        device: "cpu", "cuda", "cuda:1"...; None = cuda when available, else cpu.
        filelist: overrides `hp.validation_files`.
        inference: also decode every item from its text alone (`model.inference`).
        batch_size: None = `hp.batch_size`.

    Returns:
        The dict of `load_alignment_file` (kind "checkpoint") plus "path", "hp", "filelist" and
        "device".

    Raises:
        DiagnosticsError: an unreadable checkpoint, filelist or wav.
    """
    # torch and the model load in seconds; reports from snapshots and matrices need neither,
    # so they are imported only when a checkpoint is evaluated.
    import torch
    from torch.utils.data import DataLoader

    import checkpoint as checkpoint_module
    from devices import DeviceError, choose_device
    from data_utils import TextMelCollate, TextMelDataset, read_filelist
    from validation import collect_attention

    try:
        torch_device = choose_device(device)
        resolved = checkpoint_module.resolve_checkpoint(path)
        model, hp, ckpt = checkpoint_module.model_from_checkpoint(resolved, torch_device)
        filelist = filelist or hp.validation_files
        entries = read_filelist(filelist, hp.data_root)
        dataset = TextMelDataset(entries, hp, cache_dir=None)
    except (DeviceError, ValueError, OSError, RuntimeError) as err:  # Checkpoint/Data/AudioError
        raise DiagnosticsError(one_line(err)) from None
    if len(dataset) == 0:
        raise DiagnosticsError(f"{filelist}: no utterances")
    loader = DataLoader(dataset, batch_size=batch_size or hp.batch_size, shuffle=False,
                        collate_fn=TextMelCollate(hp.n_frames_per_step))
    fork_devices = [torch_device.index or 0] if torch_device.type == "cuda" else []
    # The prenet's dropout stays on in eval mode (as in the paper): a fixed seed, without
    # disturbing the caller's RNG, makes the report reproducible.
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(hp.seed)
        try:
            items = collect_attention(model, loader, torch_device, hp, free_running=inference)
        except (ValueError, OSError, RuntimeError) as err:
            raise DiagnosticsError(one_line(err)) from None
    names = [os.path.basename(entries[item.index].audio_path) for item in items]
    A, text_lengths, steps = pack_alignments([item.teacher for item in items])
    free_out = None
    if inference:
        FA, ftl, fdl = pack_alignments([item.free for item in items])
        free_out = {"alignments": FA, "text_lengths": ftl, "decoder_lengths": fdl,
                    "hit_max_steps": [item.free_hit_max for item in items], "names": names,
                    "target_decoder_lengths": steps}
    return {"kind": "checkpoint", "alignments": A, "text_lengths": text_lengths,
            "decoder_lengths": steps, "names": names,
            "step": int(ckpt.get("iteration", 0)), "seconds_per_step": step_seconds(hp),
            "free": free_out, "path": resolved, "hp": hp, "filelist": filelist,
            "device": str(torch_device)}


def guided_term_for(source: Dict[str, Any], hp: HParams) -> Tuple[float, float]:
    """(weight(step) x guided-attention loss of the source's teacher-forced maps, weight(step)).

    Uses `loss_function.guided_attention_weight` and `guided_attention_loss` (one implementation).
    """
    # torch takes seconds to load; only reports that need the guided term pay for it.
    import torch
    from loss_function import guided_attention_loss, guided_attention_weight

    weight = guided_attention_weight(int(source["step"]), hp)
    loss = guided_attention_loss(torch.as_tensor(np.asarray(source["alignments"],
                                                            dtype=np.float32)),
                                 torch.as_tensor(source["text_lengths"]),
                                 torch.as_tensor(source["decoder_lengths"]), hp.guide_sigma)
    return float(weight) * float(loss), float(weight)


# ============================================================================ analysis
def _select_source(step: Optional[int], checkpoint: Optional[str], alignment_path: Optional[str],
                   run_dir: str, device: Optional[str], filelist: Optional[str], inference: bool,
                   batch_size: Optional[int], notes: List[Tuple[str, Dict[str, Any]]]
                   ) -> Tuple[Dict[str, Any], Optional[str]]:
    """(source dict, run folder or None) for the arguments of `analyze_current_alignment`."""
    if checkpoint is not None and alignment_path is not None:
        raise DiagnosticsError("give either a checkpoint or an alignment file, not both")
    if checkpoint is not None:
        if step is not None:
            raise DiagnosticsError("--step and --checkpoint name two sources; give one")
        if not os.path.exists(checkpoint) and not is_latest(checkpoint):
            raise DiagnosticsError(f"{checkpoint}: no such checkpoint")
        source = evaluate_checkpoint(checkpoint, device, filelist, inference, batch_size)
        return source, os.path.dirname(os.path.abspath(source["path"]))
    if alignment_path is not None:
        source = load_alignment_file(alignment_path)
        if step is not None:
            source["step"] = int(step)
        source["path"] = alignment_path
        folder = os.path.dirname(os.path.abspath(alignment_path))
        run = os.path.dirname(folder) if os.path.basename(folder) == SNAPSHOTS else None
        return source, run

    checkpoints, snapshots = dict(RunFolder(run_dir).checkpoints()), RunFolder(run_dir).snapshots()
    if step is None:
        if not checkpoints and not snapshots:
            raise DiagnosticsError(
                f"{run_dir}: no checkpoints or alignment snapshots yet; train first: "
                f"{TRAIN_COMMAND} (a snapshot is written every iters_per_validation steps)")
        step = max(set(checkpoints) | set(snapshots))
    if step in checkpoints:
        try:
            source = evaluate_checkpoint(checkpoints[step], device, filelist, inference,
                                         batch_size)
            return source, run_dir
        except DiagnosticsError as err:
            if step not in snapshots:
                raise
            notes.append(("note_fallback", {"path": checkpoints[step], "error": str(err),
                                            "snapshot": snapshots[step]}))
    if step in snapshots:
        source = load_alignment_file(snapshots[step])
        source["path"] = snapshots[step]
        if source["step"] is None:
            source["step"] = step
        return source, run_dir
    available = sorted(set(checkpoints) | set(snapshots))
    if not available:
        raise DiagnosticsError(f"{run_dir}: no checkpoints or alignment snapshots; train first: "
                               f"{TRAIN_COMMAND}")
    folder = RunFolder(run_dir)
    raise DiagnosticsError(f"{run_dir}: no {os.path.basename(folder.checkpoint_path(step))} or "
                           f"{os.path.relpath(folder.snapshot_path(step), run_dir)}; available "
                           f"steps: {', '.join(str(s) for s in available)}")


def _representative(summary: Dict[str, Any]) -> int:
    """The item of median diagonal_score (the lower median): what a typical map looks like."""
    scores = [item["diagonal_score"] for item in summary["per_item"]]
    return int(np.argsort(scores, kind="stable")[(len(scores) - 1) // 2])


def recommendations(result: Dict[str, Any], hp: HParams, lang: str = "en") -> List[Dict[str, str]]:
    """Concrete next steps tied to the findings of `result` (see `analyze_current_alignment`)."""
    recs: List[Dict[str, str]] = []

    def add(rec_id: str, **fields: Any) -> None:
        if all(r["id"] != rec_id for r in recs):
            recs.append({"id": rec_id, "message": message(lang, f"rec_{rec_id}", **fields)})

    data = {"train": hp.training_files, "val": hp.validation_files}
    step, n = result["step"], max(1, result["n_items"])
    counts = result["failure_counts"]
    flag_kinds = {FlagKind(f["id"]) for f in result["red_flags"]}
    criterion = result["criterion"]
    failing = criterion is not None and not criterion["passed"]
    share = {m: counts.get(m, 0) / n for m in FAILURE_MODES}
    band_or_diffuse = share["horizontal_band"] >= 0.25 or share["diffuse"] >= 0.5

    if step is None:
        add("no_step")
    if FlagKind.GUIDANCE_WITHOUT_GRIP in flag_kinds:
        add("guidance_off", weight=hp.guide_loss_weight, start=hp.guide_decay_start,
            current=result.get("guided_weight") if result.get("guided_weight") is not None
            else float("nan"))
    if flag_kinds or failing:
        add("check_data", **data)
    skipping = counts.get("skipping", 0) + counts.get("collapse_to_end", 0)
    if skipping:
        # Word-to-word jumps of a still-coarse attention show on most utterances and stay
        # monotonic; transcripts that do not match their audio show on a few, whatever the step.
        monotonic = result["diagnostics"].get("monotonic_score", 0.0)
        if skipping / n >= 0.5 and monotonic >= 0.9:
            add("skipping_model", k=skipping, n=n)
        elif skipping / n >= 0.05 or skipping == 1:
            bad = [item["name"] for item in result.get("items", [])
                   if {"skipping", "collapse_to_end"} & set(item["failure_modes"])]
            add("skipping_data", k=skipping, n=n, names=", ".join(bad[:5]), **data)
    if share["stuck"] >= 0.25 and not hp.trim_silence:
        add("trim_silence", seconds=STUCK_SECONDS)
    if flag_kinds & {FlagKind.LOW_DIAGONALITY, FlagKind.ALL_WEIGHTS_LOW,
                     FlagKind.HORIZONTAL_BANDS} or failing or (band_or_diffuse and criterion is not None):
        if hp.guide_loss_weight < hp.remedy_guide_loss_weight:
            add("guide_weight", weight=hp.guide_loss_weight)
        if not hp.curriculum:
            add("curriculum")
    if flag_kinds or failing:
        add("warm_start")
    free = result.get("free_running")
    if free and free.get("runs_on"):
        add("runs_on", k=free["runs_on"], n=free["n_items"])
    elif free and free.get("hit_max_steps"):
        add("gate", k=len(free["hit_max_steps"]))
    if step is not None and not flag_kinds and not failing:
        first = next_milestone(-1, hp)
        if criterion is None and first is not None:
            add("too_early", step=first["step"], threshold=first["threshold"])
        else:
            add("keep_waiting", next=step + hp.iters_per_validation)
    return recs


def analyze_current_alignment(step: Optional[int] = None, checkpoint: Optional[str] = None,
                              alignment_path: Optional[str] = None,
                              output_directory: str = "output", run_name: str = "trial_0",
                              device: Optional[str] = None, plot: bool = True,
                              plot_path: Optional[str] = None, filelist: Optional[str] = None,
                              inference: bool = False, batch_size: Optional[int] = None,
                              lang: str = "en") -> Dict[str, Any]:
    """Analyses the attention of one step of a run, a checkpoint or an attention file.

    Sources: `checkpoint` (a file or `.../checkpoint_LATEST`: the model runs on the validation
    filelist); `alignment_path` (a (T, N) .npy or an `alignments/step_N.npz`); `step` (the run's
    checkpoint_<step> if it exists, else its alignments/step_<step>.npz); none of them: the newest
    checkpoint or snapshot of `output_directory/run_name`. An attention map is never simulated.

    Args:
        plot: write the PNG (`plot_path`, else `<run>/diagnostics/step_<N>.png`, else next to
            the attention file).
        filelist, inference, batch_size, device: for a checkpoint (see `evaluate_checkpoint`).
        lang: "en" or "ru" for the messages in the result.

    Returns:
        dict: "step", "source", "n_items", "diagnostics" (mean metrics, incl. diagonal_score),
        "failure_counts", "problems" ({mode: items} of the modes found), "criterion",
        "next_milestone", "red_flags", "guided_term", "recommendations", "plot_path", "items"
        (per utterance), "free_running", "hparams_source", "notes".

    Raises:
        DiagnosticsError: bad input (missing, corrupt or foreign file; malformed matrix; no
            run data).
    """
    try:
        check_language(lang)
    except UnknownLanguageError as err:
        raise DiagnosticsError(str(err)) from None
    notes: List[Tuple[str, Dict[str, Any]]] = []
    run_dir = _run_dir(output_directory, run_name)
    source, run = _select_source(step, checkpoint, alignment_path, run_dir, device, filelist,
                                 inference, batch_size, notes)
    if "hp" in source:
        hp, hp_source = source["hp"], "checkpoint"
    else:
        hp, hp_source, problem = load_run_hparams(run)
        if problem:
            notes.append(("note_hparams_bad", problem))
    seconds = source["seconds_per_step"] or step_seconds(hp)
    summary = batch_metrics(source["alignments"], source["text_lengths"],
                            source["decoder_lengths"], seconds_per_step=seconds,
                            band=hp.diagonal_band)
    step = source["step"]
    mean = summary["mean"]

    guided_term, guided_from, guided_weight = None, None, None
    records = read_records(run, step) if step is not None else []
    record = next((r for r in reversed(records) if r.step == step), None)
    if any(r.remediated for r in records):
        # The trainer already raised the guided weight and turned curriculum on (guardrails):
        # recommend what comes next, not the remedy it applied.
        hp = remediated_hparams(hp)
        notes.append(("note_remediated", {"weight": hp.guide_loss_weight}))
    if record is not None:
        guided_term, guided_from = float(record.guided_term), "log"
        guided_weight = record.guided_weight
    elif step is not None and source["kind"] != "matrix":
        guided_term, guided_weight = guided_term_for(source, hp)
        guided_from = "computed"

    flags = ([flag.to_dict() for flag in red_flags(step, summary, guided_term, hp, lang)]
             if step is not None else [])
    criterion = (criterion_for_step(step, hp, mean["diagonal_score"]) if step is not None
                 else None)
    free = None
    if source.get("free") is not None:
        f = source["free"]
        hit_flags = (f["hit_max_steps"] if f["hit_max_steps"] is not None
                     else [False] * len(f["names"]))
        scores = free_running_metrics(f["alignments"], f["text_lengths"], f["decoder_lengths"],
                                      hit_flags, f.get("target_decoder_lengths"),
                                      seconds_per_step=seconds, band=hp.diagonal_band)
        hit = [name for name, h in zip(f["names"], hit_flags) if h]
        free = {"n_items": scores["n_items"], "diagnostics": scores["whole"]["mean"],
                "reading": scores["reading"]["mean"],
                "failure_counts": scores["whole"]["failure_counts"], "hit_max_steps": hit,
                "gate_known": f["hit_max_steps"] is not None,
                "read_to_end": sum(i["read_to_end"] for i in scores["per_item"]),
                "stopped": sum(i["stopped"] for i in scores["per_item"]),
                "near_length": (None if scores["near_length_share"] is None
                                else sum(bool(i["near_length"]) for i in scores["per_item"])),
                "runs_on": sum(i["runs_on"] for i in scores["per_item"]),
                "max_decoder_steps": hp.max_decoder_steps}

    items = [{"name": name, **metrics, "failure_modes": modes}
             for name, metrics, modes in zip(source["names"], summary["per_item"],
                                             summary["failure_modes"])]
    counts = summary["failure_counts"]
    result: Dict[str, Any] = {
        "step": step,
        "source": {"kind": source["kind"], "path": source.get("path"),
                   "filelist": source.get("filelist"), "device": source.get("device")},
        "n_items": summary["n_items"],
        "diagnostics": mean,
        "failure_counts": counts,
        "healthy": summary["healthy"],
        "problems": {m: counts[m] for m in FAILURE_MODES if counts[m]},
        "criterion": criterion,
        "next_milestone": next_milestone(step, hp) if step is not None else None,
        "red_flags": flags,
        "red_flag_start_step": hp.red_flag_start_step,
        "guided_term": guided_term,
        "guided_term_source": guided_from,
        "guided_weight": guided_weight,
        "items": items,
        "free_running": free,
        "hparams_source": hp_source,
        "plot_path": None,
        "lang": lang,
        # speech quality scored by the trainer at this step (diagnostics.jsonl), if it was
        "quality": record.quality if record is not None else None,
        "status": (status_line(step, record.free_running, record.quality, lang)
                   if record is not None and record.free_running is not None else None),
    }
    result["recommendations"] = recommendations(result, hp, lang)
    if plot:
        path = plot_path or _default_plot_path(source, run, step, lang)
        result["plot_path"] = save_report_plot(source, summary, hp, step, path, lang)
    result["notes"] = [message(lang, key, **fields) for key, fields in notes]
    return result


def _default_plot_path(source: Dict[str, Any], run: Optional[str], step: Optional[int],
                       lang: str = "en") -> str:
    """`<run>/diagnostics/step_N.png` (English) or `step_N.<lang>.png`: reports in two languages
    do not overwrite each other."""
    suffix = "" if lang == "en" else f".{lang}"
    name = (f"step_{step}" if step is not None else "alignment") + f"{suffix}.png"
    if run is not None:
        return os.path.join(RunFolder(run).plot_folder, name)
    stem = os.path.splitext(source["path"])[0]
    return f"{stem}_diagnostics{suffix}.png"


def save_report_plot(source: Dict[str, Any], summary: Dict[str, Any], hp: HParams,
                     step: Optional[int], path: str, lang: str = "en") -> str:
    """PNG: the median-diagonality item's map and focus, and every item's diagonality."""
    i = _representative(summary)
    t, n = int(source["decoder_lengths"][i]), int(source["text_lengths"][i])
    A = np.asarray(source["alignments"][i, :t, :n], dtype=np.float64)
    item = summary["per_item"][i]
    modes = ", ".join(message(lang, "mode_" + m) for m in summary["failure_modes"][i])
    title = message(lang, "plot_title", step=step if step is not None else "?",
                    name=source["names"][i], diagonal=item["diagonal_score"], modes=modes)
    shown = message(lang, "plot_shown", name=source["names"][i],
                    reason=message(lang, "plot_median"))
    criterion = criterion_for_step(step, hp) if step is not None else None
    scores = [(name, it["diagonal_score"]) for name, it in zip(source["names"],
                                                             summary["per_item"])]
    try:
        return plotting.report_png(path, A, title, shown, hp.diagonal_band, scores,
                                   criterion["threshold"] if criterion else None, lang)
    except OSError as err:
        raise DiagnosticsError(f"{path}: cannot write the plot ({one_line(err)})") from None


# ============================================================================ report
def _label(text: str, name: str) -> str:
    """"focus (focus_score)": the words, then the name that JSON and the logs use."""
    return text if text == name else f"{text} ({name})"


def format_report(result: Dict[str, Any], lang: Optional[str] = None) -> str:
    """The human-readable report of an `analyze_current_alignment` result."""
    lang = lang or result.get("lang", "en")
    M = lambda key, **fields: message(lang, key, **fields)  # noqa: E731 - local shorthand
    step = result["step"]
    src = result["source"]
    lines = [M("title", step=step) if step is not None else M("title_nostep")]
    if src["kind"] == "checkpoint":
        lines.append(M("source_checkpoint", path=src["path"], filelist=src["filelist"],
                       device=src["device"]))
    else:
        lines.append(M(f"source_{src['kind']}", path=src["path"]))
    lines.append(M("n_items", n=result["n_items"]) + "; " + M(
        "hparams_from", where=M(f"hp_{result['hparams_source']}")))
    lines += ["", M("metrics_header")]
    for name in METRIC_NAMES:
        value = result["diagnostics"][name]
        shown = f"{value:.3f}" + (f"  ({value:.1%})" if name == "diagonal_score" else "")
        lines.append(f"  {_label(M('m_' + name), name):<44} {shown}")
    if result["guided_term"] is not None:
        where = M("guided_from_log" if result["guided_term_source"] == "log" else "guided_computed")
        lines.append("  " + M("guided_term", value=result["guided_term"], where=where))

    lines += ["", M("modes_header")]
    n = result["n_items"]
    lines.append(f"  {_label(M('healthy_line'), HEALTHY):<44} {result['healthy']}/{n}")
    for mode in FAILURE_MODES:
        count = result["failure_counts"].get(mode, 0)
        if count:
            lines.append(f"  {_label(M('mode_' + mode), mode):<44} {count}/{n}")

    lines += ["", M("criterion_header")]
    criterion = result["criterion"]
    if step is None:
        lines.append("  " + M("no_step"))
    elif criterion is None:
        first = result["next_milestone"]
        if first is not None:
            lines.append("  " + M("before_first", step=first["step"], threshold=first["threshold"]))
    else:
        verdict = M("pass" if criterion["passed"] else "fail")
        lines.append("  " + M("criterion_line", step=criterion["step"],
                              threshold=criterion["threshold"], value=criterion["value"],
                              verdict=verdict))
        free = result.get("free_running")
        if free:
            lines.append("  " + M("criterion_free", value=free["diagnostics"]["diagonal_score"],
                                  reading=free["reading"]["diagonal_score"],
                                  stopped=free["stopped"] / max(1, free["n_items"])))
        nxt = result["next_milestone"]
        lines.append("  " + (M("next_milestone", step=nxt["step"], threshold=nxt["threshold"])
                             if nxt else M("last_milestone")))

    lines += ["", M("flags_header")]
    if step is None:
        lines.append("  " + M("flags_no_step"))
    elif step < result["red_flag_start_step"]:
        lines.append("  " + M("flags_not_yet", start=result["red_flag_start_step"]))
    elif not result["red_flags"]:
        lines.append("  " + M("flags_none"))
    for flag in result["red_flags"]:
        lines.append("  " + M("flag_line", **flag))

    free = result.get("free_running")
    if free:
        k = free["n_items"]
        lines += ["", M("free_header", n=k),
                  "  " + M("free_reading", value=free["reading"]["diagonal_score"],
                           k=free["read_to_end"], n=k),
                  "  " + M("free_stopping", k=free["stopped"], n=k,
                           near="-" if free["near_length"] is None else f"{free['near_length']}/{k}",
                           r=f"{free['runs_on']}/{k}"),
                  "  " + M("free_whole", value=free["diagnostics"]["diagonal_score"])]
        for name in ("focus_score", "coverage"):
            lines.append(f"  {_label(M('m_' + name), name):<44} {free['diagnostics'][name]:.3f}")
        if free["hit_max_steps"]:
            lines.append("  " + M("free_hit_max", k=len(free["hit_max_steps"]), n=free["n_items"],
                                  names=", ".join(free["hit_max_steps"][:8])))

    quality = result.get("quality")
    if quality:
        refs = quality.get("references") or {}
        fmt = (lambda v: "-" if v is None else f"{v:.2f}")  # noqa: E731
        lines += ["", M("report_quality_header", step=step),
                  "  " + M("report_quality_mcd", mcd=quality["mean_mcd"],
                           ceiling=fmt(refs.get("griffin_lim_mcd")),
                           hum=fmt(refs.get("flat_mcd"))),
                  "  " + M("report_quality_wer", wer=fmt(quality.get("wer")),
                           ceiling=fmt(refs.get("griffin_lim_wer")))]
    if result.get("status"):
        lines += ["", result["status"]]

    lines += ["", M("recs_header")]
    lines += [f"  - {rec['message']}" for rec in result["recommendations"]]
    if result.get("notes"):
        lines += ["", M("notes_header")] + [f"  - {note}" for note in result["notes"]]
    if result.get("plot_path"):
        lines += ["", M("plot_line", path=result["plot_path"])]
    return "\n".join(lines)


def history_row(record: ValidationRecord) -> Dict[str, Any]:
    """One validation of the run as the history shows it: teacher-forced, free-running and
    quality scores side by side (None where the validation did not measure them)."""
    metrics = record.metrics
    free = record.free_running
    quality = record.quality or {}
    return {"step": record.step, "diagonal_score": record.diagonal_score,
            "focus_score": metrics.get("focus_score"), "coverage": metrics.get("coverage"),
            "guided_term": record.guided_term, "criterion": record.criterion,
            "red_flags": [flag.id for flag in record.red_flags],
            "free_diagonal_score": free.diagonal_score if free else None,
            "free_reading_diagonal_score": free.reading_diagonal_score if free else None,
            "free_end_reached_share": free.end_reached_share if free else None,
            "free_stopped_share": free.stopped_share if free else None,
            "free_near_length_share": free.near_length_share if free else None,
            "mcd_db": quality.get("mean_mcd"), "wer": quality.get("wer"),
            "mel_postnet_loss": record.losses.get("mel_postnet")}


def history(output_directory: str = "output", run_name: str = "trial_0",
            plot_path: Optional[str] = None, lang: str = "en") -> Dict[str, Any]:
    """A run over time from its diagnostics.jsonl: a table and a PNG.

    Returns:
        {"rows": [`history_row`], "plot_path": str, "table": str}.
    """
    run_dir = _run_dir(output_directory, run_name)
    folder = RunFolder(run_dir)
    log_path = folder.diagnostics_path
    if not os.path.isfile(log_path):
        raise DiagnosticsError(f"{log_path}: no such file; training writes it at every "
                               f"validation ({TRAIN_COMMAND})")
    records = read_records(run_dir)
    if not records:
        raise DiagnosticsError(f"{log_path}: no validation records yet")
    hp, _, _ = load_run_hparams(run_dir)
    for record in records:
        if "diagonal_score" not in record.metrics:
            raise DiagnosticsError(f"{log_path}: the record of step {record.step} has no "
                                   f"metrics.diagonal_score")
    rows = [history_row(record) for record in sorted(records, key=lambda r: r.step)]

    def fmt(value: Any, spec: str, width: int) -> str:
        text = format(value, spec) if isinstance(value, (int, float)) else "-"
        return f"{text:<{width}}"

    lines = [message(lang, "history_header", path=log_path), message(lang, "history_columns")]
    for row in rows:
        crit = row["criterion"]
        crit_text = (f">{crit['threshold']:.2f} " + message(lang, "pass" if crit["passed"] else "fail")
                     if crit else "-")
        flags = ",".join(str(i) for i in row["red_flags"]) or "-"
        lines.append(
            f"{row['step']:<8} {fmt(row['diagonal_score'], '.3f', 6)} "
            f"{fmt(row['focus_score'], '.3f', 6)} {fmt(row['guided_term'], '.4f', 7)} "
            f"{fmt(row['free_diagonal_score'], '.2f', 5)} "
            f"{fmt(row['free_reading_diagonal_score'], '.2f', 5)} "
            f"{fmt(row['free_end_reached_share'], '.0%', 5)} "
            f"{fmt(row['free_stopped_share'], '.0%', 5)} "
            f"{fmt(row['free_near_length_share'], '.0%', 5)} "
            f"{fmt(row['mcd_db'], '.2f', 6)} {fmt(row['wer'], '.2f', 5)} {crit_text:<14} {flags}")

    suffix = "" if lang == "en" else f".{lang}"
    path = plot_path or os.path.join(folder.plot_folder, f"history{suffix}.png")
    try:
        plotting.history_png(path, rows, hp.success_steps, hp.success_thresholds,
                             hp.red_flag_diagonal, hp.red_flag_start_step, lang)
    except OSError as err:
        raise DiagnosticsError(f"{path}: cannot write the plot ({one_line(err)})") from None
    lines.append(message(lang, "history_plot", path=path))
    return {"rows": rows, "plot_path": path, "table": "\n".join(lines)}


# ============================================================================ CLI
def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Alignment diagnostics of a Tacotron 2 run: metrics, failure modes, success "
                    "criteria, red flags, recommendations and plots.")
    source = parser.add_mutually_exclusive_group()
    snapshot = f"{SNAPSHOTS}/step_N.npz"
    source.add_argument("--checkpoint", help=f"a checkpoint file or .../{LATEST}: the model "
                        f"runs teacher-forced on the validation filelist")
    source.add_argument("--alignment", help=f"a (decoder steps, tokens) .npy matrix or an "
                        f"{snapshot} snapshot")
    source.add_argument("--history", action="store_true",
                        help=f"the run over time from {DIAGNOSTICS}: teacher-forced, free-running "
                        f"and quality scores (table and PNG)")
    parser.add_argument("--step", type=int, help=f"step of the run: its checkpoint_N, else its "
                        f"{snapshot} (with --alignment: the step of a .npy)")
    parser.add_argument("--output_directory", default="output")
    parser.add_argument("--run_name", default="trial_0")
    parser.add_argument("--filelist", help="with --checkpoint: instead of the hparams' "
                        "validation_files")
    parser.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--batch_size", type=int, help="with --checkpoint (default: hparams)")
    parser.add_argument("--inference", action="store_true",
                        help="with --checkpoint: also decode each item from its text alone")
    parser.add_argument("--plot", help="where to write the PNG")
    parser.add_argument("--no-plot", dest="no_plot", action="store_true", help="write no PNG")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--lang", default="en", choices=LANGUAGES, help="report language")
    parser.add_argument("--fail-on-red-flag", dest="fail_on_red_flag", action="store_true",
                        help="exit with status 3 when a red flag is up")
    return parser.parse_args(argv)


def _print(text: str) -> None:
    """print, quiet when the reader went away (`... | head`)."""
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; returns the exit status (0 report, 2 bad input, 3 red flag)."""
    try:
        args = _parse_args(argv)
    except SystemExit as stop:  # argparse: --help (0) or a usage error (2), already printed
        return int(stop.code or 0)
    try:
        if args.history:
            out = history(args.output_directory, args.run_name, args.plot, args.lang)
            _print(json.dumps({"rows": out["rows"], "plot_path": out["plot_path"]}, indent=2)
                   if args.json else out["table"])
            return 0
        result = analyze_current_alignment(
            step=args.step, checkpoint=args.checkpoint, alignment_path=args.alignment,
            output_directory=args.output_directory, run_name=args.run_name, device=args.device,
            plot=not args.no_plot, plot_path=args.plot, filelist=args.filelist,
            inference=args.inference, batch_size=args.batch_size, lang=args.lang)
    except DiagnosticsError as err:
        print(f"alignment_diagnostics: error: {err}", file=sys.stderr)
        return 2
    _print(json.dumps(result, indent=2, ensure_ascii=False) if args.json
           else format_report(result, args.lang))
    if args.fail_on_red_flag and result["red_flags"]:
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
