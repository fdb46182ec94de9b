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

from hparams import HParams, HParamsError, create_hparams
from model import Tacotron2
from runlock import pid_is_alive
from text.symbols import get_symbols

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
        return f"{path}: cannot read ({os_err.strerror or type(os_err).__name__})"
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
        return (f"{path}: damaged ({_first_sentence(err)}); copy it again or use an earlier "
                f"checkpoint")
    if head.startswith(_LEGACY_MAGIC):
        # the legacy stream has no directory to check: running out of bytes is the sign
        if isinstance(err, (EOFError, struct.error)) or "EOF" in str(err):
            return (f"{path}: truncated (torch's legacy format, ends after {size} bytes); copy "
                    f"it again or use an earlier checkpoint")
        return (f"{path}: damaged (torch's legacy format: {_first_sentence(err)}); copy it "
                f"again or use an earlier checkpoint")
    return (f"{path}: not a PyTorch checkpoint ({_describe_start(head)}); give a "
            f"checkpoint_<step> file or an NVIDIA .pt file")


def _first_sentence(err: BaseException) -> str:
    """torch's reason in a few words: its first sentence, never cut mid-word."""
    text = " ".join(str(err).split()) or type(err).__name__
    sentence = text.split(". ")[0].rstrip(".")
    if len(sentence) > 120:
        sentence = sentence[:120].rsplit(" ", 1)[0] + " ..."
    return sentence


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


# A temporary file of ours: `.tmp` then, for files written by save_checkpoint and _point_latest,
# the writer's pid ("checkpoint_400.tmp12345", "checkpoint_LATEST.tmp12345"); the alignment
# snapshots' temporaries ("step_400.npz.tmp.npz", or with a pid "step_400.tmp12345.npz") too.
_temporary_re = re.compile(r"\.tmp(\d*)")


def _temporaries(run_dir: str) -> List[str]:
    """Temporaries of the run folder (checkpoints, checkpoint_LATEST, hparams.json,
    diagnostics.jsonl: every writer there names its temporary `<target>.tmp<pid>`) and snapshot
    temporaries of its alignments/."""
    found = []
    for folder, prefix in ((run_dir, ""), (os.path.join(run_dir, "alignments"), "")):
        try:
            names = os.listdir(folder)
        except OSError:
            continue
        for name in names:
            path = os.path.join(folder, name)
            if name.startswith(prefix) and _temporary_re.search(name) and (
                    os.path.islink(path) or os.path.isfile(path)):
                found.append(path)
    return sorted(found)


def remove_orphan_temporaries(run_dir: str) -> List[str]:
    """Deletes temporary files that no running save will finish; returns their paths.

    A save writes `<target>.tmp<pid>` and renames it; a process killed in between (pre-emption,
    out of memory) leaves the temporary behind, a checkpoint's worth of disk each time. One is
    an orphan when its writer's pid is not a live process, or when it is older than the newest
    checkpoint (any save it belonged to has been overtaken; this also covers the snapshot
    temporaries that carry no pid, and pids reused by unrelated processes).

    This process's own pid counts as not writing: saves are synchronous, so none of this
    process's saves is under way while it runs this. That matters in containers, where a
    restarted trainer often gets the pid of the one that died. Call it at start-up, after
    taking the run lock (runlock.RunLock), never while another thread of this process saves.
    """
    checkpoints = list_checkpoints(run_dir)
    newest_ns = os.stat(checkpoints[-1][1]).st_mtime_ns if checkpoints else None
    removed = []
    for path in _temporaries(run_dir):
        digits = _temporary_re.search(os.path.basename(path)).group(1)
        pid = int(digits) if digits else None
        try:
            mtime_ns = os.lstat(path).st_mtime_ns
        except FileNotFoundError:
            continue  # its save just finished (renamed) or another cleaner took it
        overtaken = newest_ns is not None and mtime_ns < newest_ns
        writer_gone = pid is not None and (pid == os.getpid() or not pid_is_alive(pid))
        if overtaken or writer_gone:
            try:
                os.remove(path)
            except FileNotFoundError:
                continue
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

    if len(symbol) != 1 or symbol.isascii():
        return None
    latin = unidecode(symbol).lower()
    return latin[0] if latin and latin[0].isalpha() else None


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
            f"{' '.join(str(err).split())[:200]}") from None
    if ckpt.get("optimizer"):
        optimizer.load_state_dict(ckpt["optimizer"])
    if scheduler is not None and ckpt.get("scheduler"):
        scheduler.load_state_dict(ckpt["scheduler"])
    if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])
    restore_rng_state(ckpt.get("rng"))
    return dict(ckpt.get("extra") or {})
