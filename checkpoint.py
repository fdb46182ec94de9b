"""Checkpoints: atomic save, safe load, resume, warm start, `checkpoint_LATEST`.

A checkpoint is a plain dict that `torch.load(path, weights_only=True)` reads: NVIDIA's four keys
(`iteration`, `state_dict`, `optimizer`, `learning_rate`) plus `hparams`, `symbols`, `scheduler`,
`scaler`, RNG states, `extra` (e.g. remediation) and `format_version`. NVIDIA files holding only a
`state_dict`, and DeepLearningExamples files whose keys carry a `module.` prefix, load too.
"""
from __future__ import annotations

import os
import pickle
import random
import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from hparams import HParams, HParamsError, create_hparams

FORMAT_VERSION = 1
LATEST = "checkpoint_LATEST"
_checkpoint_name_re = re.compile(r"^checkpoint_(\d+)$")  # checkpoint_<step>, NVIDIA's naming


class CheckpointError(ValueError):
    """A missing, corrupt or foreign checkpoint; the message names the file."""


def strip_module_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drops the `module.` prefix that DistributedDataParallel adds to every key."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def list_checkpoints(run_dir: str) -> List[Tuple[int, str]]:
    """Complete `checkpoint_<step>` files of a run folder, oldest first."""
    if not os.path.isdir(run_dir):
        return []
    found = []
    for name in os.listdir(run_dir):
        match = _checkpoint_name_re.match(name)
        path = os.path.join(run_dir, name)
        if match and os.path.isfile(path):
            found.append((int(match.group(1)), path))
    return sorted(found)


def resolve_checkpoint(path: str) -> str:
    """Turns `.../checkpoint_LATEST` into the newest complete checkpoint of its folder."""
    if os.path.basename(path) == LATEST:
        run_dir = os.path.dirname(path) or "."
        if os.path.isfile(path):  # a symlink to the newest, normally
            return os.path.realpath(path)
        found = list_checkpoints(run_dir)
        if not found:
            raise CheckpointError(f"{path}: no checkpoint_<step> file in {run_dir}; train first")
        return found[-1][1]
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: no such checkpoint")
    if os.path.isdir(path):
        raise CheckpointError(f"{path}: is a folder; give a checkpoint file or .../{LATEST}")
    return path


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Reads a checkpoint with `weights_only=True`; normalises NVIDIA and DDP layouts.

    Returns:
        The dict, with `state_dict` stripped of `module.` prefixes. A bare state_dict file (keys
        are parameter names) is wrapped as `{"state_dict": ...}`.
    Raises:
        CheckpointError: missing, unreadable, not a torch file, or holding no state_dict.
    """
    resolved = resolve_checkpoint(path)
    try:
        data = torch.load(resolved, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile,
            ValueError, AttributeError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{resolved}: not a readable PyTorch checkpoint (corrupt, truncated or unsafe to "
            f"load: {first[:200]})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{resolved}: holds a {type(data).__name__}, not a checkpoint dict")
    if "state_dict" not in data:
        if data and all(isinstance(v, torch.Tensor) for v in data.values()):
            data = {"state_dict": data}  # a bare state_dict
        elif isinstance(data.get("model"), dict):
            data = {**data, "state_dict": data["model"]}
        else:
            raise CheckpointError(
                f"{resolved}: no 'state_dict' in this file (keys: {', '.join(list(data)[:8])})")
    data["state_dict"] = strip_module_prefix(data["state_dict"])
    data["path"] = resolved
    return data


def _rng_state() -> Dict[str, Any]:
    """RNG states as tensors, numbers and lists only, so `weights_only=True` can read them."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, py_state, gauss_next = random.getstate()
    state: Dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": list(py_state), "gauss_next": gauss_next},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Optional[Dict[str, Any]]) -> None:
    """Puts back the RNG states saved by `save_checkpoint` (missing ones are left alone)."""
    if not state:
        return
    if "torch" in state:
        torch.set_rng_state(state["torch"].cpu())
    if "numpy" in state:
        npy = state["numpy"]
        np.random.set_state((npy["kind"], npy["keys"].numpy().astype(np.uint32), npy["pos"],
                             npy["has_gauss"], npy["cached_gaussian"]))
    if "python" in state:
        py = state["python"]
        random.setstate((py["version"], tuple(py["state"]), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = state["cuda"]
        if len(cuda_states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda_states)


def save_checkpoint(path: str, *, model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                    hp: HParams, step: int, scheduler: Any = None, scaler: Any = None,
                    symbols: Optional[List[str]] = None, extra: Optional[Dict[str, Any]] = None,
                    update_latest: bool = True) -> str:
    """Writes a checkpoint atomically (temporary file, then rename) and points LATEST at it.

    Args:
        path: target file, normally `<run>/checkpoint_<step>`.
        model: the bare model (unwrap DistributedDataParallel before calling).
        extra: small plain values to carry (e.g. {"remediated_at": 2400}).
    Returns:
        `path`.
    """
    if symbols is None:
        from text.symbols import get_symbols
        symbols = get_symbols(hp.symbol_set)
    learning_rate = optimizer.param_groups[0]["lr"] if optimizer is not None else hp.learning_rate
    data = {
        "iteration": int(step),
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "learning_rate": float(learning_rate),
        "hparams": hp.to_dict(),
        "symbols": list(symbols),
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "rng": _rng_state(),
        "extra": dict(extra or {}),
        "format_version": FORMAT_VERSION,
    }
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if update_latest:
        _point_latest(folder, os.path.basename(path))
    return path


def _point_latest(folder: str, name: str) -> None:
    latest = os.path.join(folder, LATEST)
    tmp = f"{latest}.tmp{os.getpid()}"
    if os.path.lexists(tmp):
        os.remove(tmp)
    try:
        os.symlink(name, tmp)
    except OSError:
        return  # no symlinks here (some filesystems): resolve_checkpoint scans the folder instead
    os.replace(tmp, latest)


def prune_checkpoints(run_dir: str, keep: int) -> List[str]:
    """Deletes all but the `keep` newest checkpoints (0 keeps all); never the newest."""
    if keep <= 0:
        return []
    found = list_checkpoints(run_dir)
    removed = []
    for _, path in found[:-max(keep, 1)]:
        os.remove(path)
        removed.append(path)
    return removed


def hparams_from_checkpoint(ckpt: Dict[str, Any], overrides: Optional[str] = None,
                            fallback: Optional[HParams] = None) -> HParams:
    """The run's hparams stored in `ckpt` (then `overrides` on top).

    NVIDIA files carry none: `fallback` (or the defaults) is used, then `overrides`.
    """
    stored = ckpt.get("hparams")
    if isinstance(stored, dict):
        try:
            base = HParams.from_dict(stored)
        except HParamsError as err:
            raise CheckpointError(f"{ckpt.get('path', 'checkpoint')}: stored hparams: {err}") from None
    else:
        base = fallback or HParams()
    return create_hparams(overrides, base=base) if overrides else base


def model_from_checkpoint(path: str, device: Any = "cpu", hp_overrides: Optional[str] = None,
                          fallback: Optional[HParams] = None):
    """Rebuilds the model from a checkpoint alone.

    Returns:
        (model in eval mode on `device`, hparams, checkpoint dict).
    Raises:
        CheckpointError: unreadable file, or weights that do not fit the hparams.
    """
    from model import Tacotron2

    ckpt = load_checkpoint(path, map_location="cpu")
    hp = hparams_from_checkpoint(ckpt, hp_overrides, fallback)
    model = Tacotron2(hp)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        summary = " ".join(str(err).split())[:300]
        raise CheckpointError(
            f"{ckpt['path']}: weights do not fit the model built from its hparams "
            f"({summary})") from None
    model.to(device).eval()
    return model, hp, ckpt


def warm_start_state(model: torch.nn.Module, ckpt: Dict[str, Any], ignore_layers: List[str],
                     new_symbols: List[str]) -> Dict[str, Any]:
    """Loads `ckpt["state_dict"]` into `model` for a warm start.

    Keys in `ignore_layers` are dropped. When the symbol sets differ, the embedding rows of
    symbols present in both sets (or whose transliteration matches, for a Russian set started from
    the English model) are copied instead of dropped, even when `embedding.weight` is ignored.
    Shapes that do not fit (another model size) are skipped and reported.

    Returns:
        {"loaded": [...], "skipped": [...], "embedding_rows_copied": int}
    """
    from text.symbols import get_symbols

    source = ckpt["state_dict"]
    target = model.state_dict()
    report: Dict[str, Any] = {"loaded": [], "skipped": [], "embedding_rows_copied": 0}
    for key, value in source.items():
        if key in ignore_layers or key not in target:
            report["skipped"].append(key)
            continue
        if target[key].shape != value.shape:
            report["skipped"].append(key)
            continue
        target[key] = value
        report["loaded"].append(key)

    old_emb = source.get("embedding.weight")
    if old_emb is not None and "embedding.weight" in target:
        old_symbols = ckpt.get("symbols")
        if not old_symbols:
            old_symbols = get_symbols("english") if old_emb.shape[0] == 148 else None
        same_set = old_symbols == list(new_symbols)
        # Another alphabet: keep what the old embedding knows of the shared symbols.
        if old_symbols and not same_set and old_emb.shape[1] == target["embedding.weight"].shape[1]:
            emb = target["embedding.weight"].clone()
            index = {s: i for i, s in enumerate(old_symbols)}
            copied = 0
            for new_id, symbol in enumerate(new_symbols):
                old_id = index.get(symbol)
                if old_id is None:
                    old_id = index.get(_transliterate_symbol(symbol))
                if old_id is not None and old_id < old_emb.shape[0]:
                    emb[new_id] = old_emb[old_id]
                    copied += 1
            target["embedding.weight"] = emb
            report["embedding_rows_copied"] = copied
    model.load_state_dict(target)
    return report


def _transliterate_symbol(symbol: str) -> Optional[str]:
    """The English symbol that a Cyrillic letter sounds most like (first letter of unidecode)."""
    from unidecode import unidecode

    if len(symbol) != 1 or symbol.isascii():
        return None
    latin = unidecode(symbol).lower()
    return latin[0] if latin and latin[0].isalpha() else None
