"""Checkpoints: atomic save, safe load, resume, warm start, `checkpoint_LATEST`.

A checkpoint is a plain dict that `torch.load(path, weights_only=True)` reads: NVIDIA's four keys
(`iteration`, `state_dict`, `optimizer`, `learning_rate`) plus `hparams`, `symbols`, `scheduler`,
`scaler`, RNG states, `extra` (e.g. remediation) and `format_version`. NVIDIA files holding only a
`state_dict`, and DeepLearningExamples files whose keys carry a `module.` prefix, load too.
"""
from __future__ import annotations

import codecs
import os
import pickle
import random
import re
import struct
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch

from unidecode import unidecode

import devices
import run_files
from hparams import HParams, HParamsError, create_hparams
from messages import one_line
from model import Tacotron2
from text.symbols import get_symbols

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A missing, corrupt or foreign checkpoint; the message names the file."""


def strip_module_prefix(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Drops the `module.` prefix that DistributedDataParallel adds to every key."""
    return {k[len("module."):] if k.startswith("module.") else k: v for k, v in state_dict.items()}


def resolve_checkpoint(path: str) -> str:
    """`run_files.resolve` (`.../checkpoint_LATEST` -> the newest checkpoint), CheckpointError
    when there is none."""
    try:
        return run_files.resolve(path)
    except OSError as err:
        raise CheckpointError(str(err)) from None


# torch.save's two formats: a zip archive (torch >= 1.6), or the legacy stream that starts with
# a pickled magic number (protocol 2, LONG1 of 10 bytes: 0x1950a86a20f9469cfc6c).
_ZIP_MAGIC = b"PK\x03\x04"
_LEGACY_MAGIC = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"
# the global that torch's weights-only unpickler refused, in its two wordings:
# "Trying to load unsupported GLOBAL posix.system whose module posix is blocked." and
# "Unsupported global: GLOBAL eval was not an allowed global by default." (builtins. dropped)
_blocked_global_re = re.compile(r"GLOBAL ([A-Za-z_][\w.]*)")


def _blocked_global(err: BaseException) -> Optional[str]:
    """The `module.name` that a weights-only load refused, or None for other failures."""
    if not isinstance(err, pickle.UnpicklingError):
        return None
    match = _blocked_global_re.search(str(err))
    if match is None:
        return None
    module, _, name = match.group(1).rpartition(".")
    if not module:
        module = "builtins"  # torch prints builtins.eval as plain "eval"
    elif module in ("posix", "nt"):
        module = "os"  # os.system pickles as posix.system (nt.system on Windows)
    return f"{module}.{name}"


def _describe_start(head: bytes) -> str:
    """What a file that is not a torch checkpoint looks like, from its first bytes."""
    if head.startswith(b"\x80"):
        return "a Python pickle without torch's header"
    # incremental: a character cut at the end of `head` is not a decoding error
    try:
        text = codecs.getincrementaldecoder("utf-8")().decode(head, final=False)
    except UnicodeDecodeError:
        text = ""
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        return f"text: {' '.join(text.split())[:40]!r}"
    return f"unknown binary data starting {head[:8].hex(' ')}"


def _refusal(path: str, err: BaseException) -> str:
    """One line saying why torch.load refused `path`: no code, truncation, or not a checkpoint.

    Told apart by the file itself (size, magic bytes, zip directory) rather than torch's wording,
    which changes between versions; only the blocked global's name is read from the message.
    """
    blocked = _blocked_global(err)
    if blocked is not None:
        return (f"{path}: contains code (blocked global `{blocked}`) and was refused; it was not "
                f"loaded")
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as os_err:
        return f"{path}: cannot read ({one_line(os_err)})"
    # Readable here: an OSError of torch's (EINVAL on some cut zip files) is about the content.
    if size == 0:
        return f"{path}: truncated (the file is empty); copy it again or use an earlier checkpoint"
    if head.startswith(_ZIP_MAGIC):
        if not zipfile.is_zipfile(path):
            return (f"{path}: truncated (a zip archive of {size} bytes without its closing "
                    f"directory: the save or copy was cut short); copy it again or use an "
                    f"earlier checkpoint")
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        if not any(n == "data.pkl" or n.endswith("/data.pkl") for n in names):
            return (f"{path}: not a PyTorch checkpoint (a zip archive without torch's data.pkl); "
                    f"give a checkpoint_<step> file or an NVIDIA .pt file")
        return (f"{path}: damaged ({one_line(err, limit=120, sentence=True)}); copy it again "
                f"or use an earlier checkpoint")
    if head.startswith(_LEGACY_MAGIC):
        # the legacy stream has no directory to check: running out of bytes is the sign
        if isinstance(err, (EOFError, struct.error)) or "EOF" in str(err):
            return (f"{path}: truncated (torch's legacy format, ends after {size} bytes); copy "
                    f"it again or use an earlier checkpoint")
        reason = one_line(err, limit=120, sentence=True)
        return (f"{path}: damaged (torch's legacy format: {reason}); copy it again or use an "
                f"earlier checkpoint")
    return (f"{path}: not a PyTorch checkpoint ({_describe_start(head)}); give a "
            f"checkpoint_<step> file or an NVIDIA .pt file")


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Reads a checkpoint with `weights_only=True`; normalises NVIDIA and DDP layouts.

    Returns:
        The dict, with `state_dict` stripped of `module.` prefixes. A bare state_dict file (keys
        are parameter names) is wrapped as `{"state_dict": ...}`.
    Raises:
        CheckpointError: one line: "<path>: not a PyTorch checkpoint (...)", "<path>: truncated
            (...)", "<path>: contains code (blocked global `os.system`) and was refused; it was
            not loaded", "<path>: damaged (...)", "<path>: cannot read (...)"; or a torch file
            that holds no state_dict.
    """
    resolved = resolve_checkpoint(path)
    try:
        data = torch.load(resolved, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, struct.error,
            ValueError, AttributeError, OSError) as err:
        raise CheckpointError(_refusal(resolved, err)) from None
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
    cuda_states = devices.rng_states()
    if cuda_states is not None:
        state["cuda"] = cuda_states
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
    if "cuda" in state:
        devices.set_rng_states(state["cuda"])  # left alone on a machine with another GPU count


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
    tmp = run_files.temporary_path(path)
    try:
        torch.save(data, tmp)
        os.replace(tmp, path)  # atomic: a reader sees the old file or the whole new one
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if update_latest:
        run_files.RunFolder(folder).point_latest(path)
    return path


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
    ckpt = load_checkpoint(path, map_location="cpu")
    hp = hparams_from_checkpoint(ckpt, hp_overrides, fallback)
    model = Tacotron2(hp)
    try:
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except RuntimeError as err:
        summary = one_line(err)
        raise CheckpointError(
            f"{ckpt['path']}: weights do not fit the model built from its hparams "
            f"({summary})") from None
    model.to(device).eval()
    return model, hp, ckpt


# The decoder's output layers: `n_mel x r` projection rows (frame k of a group = rows
# k*n_mel..(k+1)*n_mel) and `r` gate rows; a smaller r keeps the rows of the first frames.
OUTPUT_LAYERS = ("decoder.linear_projection.linear_layer.", "decoder.gate_layer.linear_layer.")


def carried_to(key: str, value: torch.Tensor, shape: torch.Size) -> Optional[torch.Tensor]:
    """An output layer's tensor trained for a larger reduction factor, cut to `shape` (the rows
    of the first frames of each group: what "gradual training" carries to a smaller r); None
    for any other key or shape."""
    if (not key.startswith(OUTPUT_LAYERS) or value.dim() != len(shape)
            or value.shape[1:] != shape[1:] or value.shape[0] <= shape[0]):
        return None
    return value[:shape[0]].clone()


def carry_to_model(state: Dict[str, torch.Tensor], model: torch.nn.Module
                   ) -> Dict[str, torch.Tensor]:
    """`state` (a model of reduction factor r) for `model` (the same model, a smaller r)."""
    target = model.state_dict()
    out = {}
    for key, value in state.items():
        out[key] = value if target[key].shape == value.shape else carried_to(
            key, value, target[key].shape)
        if out[key] is None:
            raise CheckpointError(f"{key}: shape {tuple(value.shape)} cannot become "
                                  f"{tuple(target[key].shape)}")
    return out


def carry_optimizer_state(state: Dict[str, Any], old: torch.nn.Module,
                          new: torch.nn.Module) -> Dict[str, Any]:
    """An optimizer state_dict of `old`'s parameters for `new` (same names, a smaller r): the
    moments of the output layers keep the rows of the first frames, like their weights."""
    names = [name for name, _ in old.named_parameters()]
    shapes = dict((name, p.shape) for name, p in new.named_parameters())
    carried = {}
    for index, values in state["state"].items():
        name = names[int(index)]
        carried[index] = {k: (v if not torch.is_tensor(v) or v.dim() == 0 or v.shape == shapes[name]
                              else carried_to(name, v, shapes[name]))
                          for k, v in values.items()}
    return {**state, "state": carried}


def warm_start_state(model: torch.nn.Module, ckpt: Dict[str, Any], ignore_layers: List[str],
                     new_symbols: List[str]) -> Dict[str, Any]:
    """Loads `ckpt["state_dict"]` into `model` for a warm start.

    Keys in `ignore_layers` are dropped. When the symbol sets differ, the embedding rows of
    symbols present in both sets (or whose transliteration matches, for a Russian set started from
    the English model) are copied instead of dropped, even when `embedding.weight` is ignored.
    The output layers of a model trained with a larger reduction factor keep the rows of the
    first frames of each group (`carried_to`). Other shapes that do not fit (another model
    size) are skipped and reported.

    Returns:
        {"loaded": [...], "skipped": [...], "carried": [...], "embedding_rows_copied": int}
    """
    source = ckpt["state_dict"]
    target = model.state_dict()
    report: Dict[str, Any] = {"loaded": [], "skipped": [], "carried": [],
                              "embedding_rows_copied": 0}
    for key, value in source.items():
        if key in ignore_layers or key not in target:
            report["skipped"].append(key)
            continue
        if target[key].shape != value.shape:
            carried = carried_to(key, value, target[key].shape)
            if carried is None:
                report["skipped"].append(key)
            else:
                target[key] = carried
                report["carried"].append(key)
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

    if len(symbol) != 1 or symbol.isascii():
        return None
    latin = unidecode(symbol).lower()
    return latin[0] if latin and latin[0].isalpha() else None


# An optimizer's kernel choice belongs to the machine it runs on, not to the checkpoint: a run
# saved with the fused Adam kernel resumes where there is none, and the other way round.
_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def _with_implementation_of(optimizer: torch.optim.Optimizer,
                            state: Dict[str, Any]) -> Dict[str, Any]:
    """`state` (an optimizer state_dict) with `optimizer`'s own kernel choices in its groups."""
    groups = [{**saved, **{k: current[k] for k in _IMPLEMENTATION_KEYS if k in current}}
              for saved, current in zip(state.get("param_groups", []), optimizer.param_groups)]
    return {**state, "param_groups": groups}


def restore_training_state(ckpt: Dict[str, Any], model: torch.nn.Module,
                           optimizer: torch.optim.Optimizer, scheduler: Any = None,
                           scaler: Any = None) -> Dict[str, Any]:
    """Puts a run's checkpoint back into a freshly built model, optimizer, scheduler and scaler,
    and restores every RNG, so training continues as if it had never stopped.

    Returns:
        The checkpoint's `extra` dict (guards, epoch and position in it, sampler state).

    Raises:
        CheckpointError: weights that do not fit the model of these hparams.
    """
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as err:
        raise CheckpointError(
            f"{ckpt['path']}: its weights do not fit the model of these hparams (a changed "
            f"model size? use --warm_start to load what fits): "
            f"{one_line(err, limit=200)}") from None
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(_with_implementation_of(optimizer, ckpt["optimizer"]))
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt.get("rng"))
    return dict(ckpt.get("extra") or {})
