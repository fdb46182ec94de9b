"""Filelists, the text-mel dataset with its on-disk mel cache, batching and batch samplers.

A filelist is NVIDIA's: UTF-8, one `audio_path|text` (or `audio_path|text|speaker`) per line.
Every error names the filelist and the line, so a bad line in a 13,000-line list is found at once.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import multiprocessing
import os
import signal
import tempfile
from typing import Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from audio import (AUDIO_HPARAMS, AudioError, audio_info, mel_from_file,
                   sample_rate_message)
import devices
from commons import decoder_lengths
from messages import one_line
from text import ArpabetError, UnknownCharacterError, text_to_sequence

# Bumped when the mel recipe changes in a way the hparams do not show, so old caches go stale.
_MEL_CACHE_FORMAT = 1


class DataError(ValueError):
    """A bad filelist line or audio file; the message starts with "<filelist>:<line>: ".

    Attributes:
        problem: the FilelistProblem when `read_filelist` raised it, else None.
    """

    def __init__(self, message: str, problem: Optional["FilelistProblem"] = None):
        super().__init__(message)
        self.problem = problem


class FilelistEntry(NamedTuple):
    audio_path: str  # absolute, resolved
    text: str
    speaker: Optional[str]
    filelist: str  # the filelist as given, for error messages
    line: int  # 1-based


# ---------------------------------------------------------------------------- filelists

def audio_candidates(audio: str, filelist: str, data_root: str) -> List[str]:
    """Where a filelist's audio path may live, in the order they are tried."""
    audio = os.path.expanduser(audio)
    if os.path.isabs(audio):
        return [audio]
    if data_root:
        return [os.path.abspath(os.path.join(os.path.expanduser(data_root), audio))]
    candidates = [os.path.join(os.path.dirname(os.path.abspath(filelist)), audio),
                  os.path.abspath(audio)]
    return list(dict.fromkeys(candidates))  # the two coincide when the filelist is in the cwd


class FilelistProblem(NamedTuple):
    """One fault of a filelist, as `read_filelist(..., collect_errors=True)` reports it.

    `kind` tells faults apart without reading the message:
      "bad_filelist"  the filelist is missing, unreadable or holds no utterance (line 0);
      "bad_line"      not UTF-8, not 2 or 3 '|' fields, an empty audio path or speaker;
      "empty_text"    nothing after the first '|';
      "missing_audio" the audio file does not exist (only when check_exists).
    """
    kind: str
    file: str  # the filelist as given
    line: int  # 1-based; 0 = the filelist as a whole
    message: str  # without the "<file>:<line>: " prefix

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


FILELIST_PROBLEM_KINDS = ("bad_filelist", "bad_line", "empty_text", "missing_audio")

_FILELIST_SUFFIXES = (".txt", ".csv", ".tsv", ".list", ".lst")
_MAX_LISTED = 8  # sibling filelists named in a "no such filelist" message


def _no_such_filelist(filelist: str) -> str:
    """"no such filelist; filelists in <folder>/: a.txt, b.txt": what the user may have meant."""
    folder = os.path.dirname(filelist)
    shown = (folder or ".") + "/"
    try:
        names = sorted(n for n in os.listdir(folder or ".") if not n.startswith(".")
                       and os.path.isfile(os.path.join(folder or ".", n)))
    except FileNotFoundError:
        return f"no such filelist; the folder {shown} does not exist"
    except OSError as err:
        return f"no such filelist; cannot list {shown}: {one_line(err)}"
    lists = [n for n in names if n.lower().endswith(_FILELIST_SUFFIXES)] or names
    if not lists:
        return f"no such filelist; {shown} holds no files"
    listed = ", ".join(lists[:_MAX_LISTED])
    more = f", ... ({len(lists) - _MAX_LISTED} more)" if len(lists) > _MAX_LISTED else ""
    what = "filelists" if lists is not names else "files"
    return f"no such filelist; {what} in {shown}: {listed}{more}"


def read_filelist(path: str | os.PathLike, data_root: str = "", check_exists: bool = True,
                  collect_errors: bool = False
                  ) -> List[FilelistEntry] | Tuple[List[FilelistEntry], List[FilelistProblem]]:
    """Parses a filelist.

    Blank lines and lines starting with '#' are skipped; a UTF-8 byte-order mark is accepted.
    Relative audio paths resolve against `data_root` when given, else against the filelist's
    folder and then the current directory (the first that exists).

    Args:
        path: the filelist.
        data_root: folder for relative audio paths; "" = the filelist's folder, then the cwd.
        check_exists: a missing audio file is a fault ("missing_audio").
        collect_errors: False = raise at the first fault (what training wants); True = go on
            and return every fault (what check_data.py wants, to list them all in one run).

    Returns:
        collect_errors=False: one FilelistEntry per utterance, in file order.
        collect_errors=True: (entries, problems): the entries of the good lines, exactly as the
            raising mode reads them, and one FilelistProblem per bad line (or one for the whole
            file), in line order.

    Raises:
        DataError (only when collect_errors=False): "<filelist>:<line>: ..." for a line that is
            not UTF-8, has the wrong number of '|' fields, an empty path, text or speaker, or
            names a missing audio file; "<filelist>: ..." for a missing, unreadable or empty
            filelist. Its `problem` attribute holds the FilelistProblem.
    """
    filelist = os.fspath(path)
    problems: List[FilelistProblem] = []

    def fault(kind: str, line: int, message: str) -> None:
        problem = FilelistProblem(kind, filelist, line, message)
        if not collect_errors:
            raise DataError(str(problem), problem=problem)
        problems.append(problem)

    try:
        with open(filelist, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        fault("bad_filelist", 0, _no_such_filelist(filelist))
        return [], problems
    except OSError as err:
        fault("bad_filelist", 0, f"cannot read filelist: {one_line(err)}")
        return [], problems
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark some editors write
        raw = raw[3:]

    entries: List[FilelistEntry] = []
    for number, raw_line in enumerate(raw.split(b"\n"), start=1):
        try:
            line = raw_line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as err:
            fault("bad_line", number, f"not UTF-8 ({err.reason} at byte {err.start}); "
                                      f"save the filelist as UTF-8")
            continue
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split("|")
        if len(fields) not in (2, 3):
            fault("bad_line", number, f"expected 'audio_path|text' or 'audio_path|text|speaker', "
                                      f"found {len(fields)} field(s) separated by '|'")
            continue
        audio, text = fields[0].strip(), fields[1].strip()
        speaker = fields[2].strip() if len(fields) == 3 else None
        if not audio:
            fault("bad_line", number, "empty audio path")
            continue
        if not text:
            fault("empty_text", number, f"empty text for {audio}")
            continue
        if speaker == "":
            fault("bad_line", number, "empty speaker name after the second '|'")
            continue
        candidates = audio_candidates(audio, filelist, data_root)
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None and check_exists:
            hint = (" (NVIDIA filelists say DUMMY/: set data_root to your wav folder and drop "
                    "the prefix, or link DUMMY to it)" if "DUMMY" in audio else "")
            fault("missing_audio", number, f"audio file {audio} not found; looked for "
                                            f"{' and '.join(candidates)}{hint}")
            continue
        entries.append(FilelistEntry(os.path.abspath(found or candidates[0]), text, speaker,
                                     filelist, number))
    if not entries and not problems:
        fault("bad_filelist", 0, "the filelist holds no utterances")
    return (entries, problems) if collect_errors else entries


# ---------------------------------------------------------------------------- dataset

def mel_cache_key(audio_path: str, hp) -> str:
    """Hash of the file's identity (absolute path, size, mtime) and every audio hparam.

    Any change to the file or to a setting that decides the mel's values gives a new key, so a
    cached mel is never used for settings it was not made with.
    """
    stat = os.stat(audio_path)
    payload = {"path": os.path.abspath(audio_path), "size": stat.st_size,
               "mtime_ns": stat.st_mtime_ns, "format": _MEL_CACHE_FORMAT}
    payload.update({name: getattr(hp, name) for name in AUDIO_HPARAMS})
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()[:32]


def _save_npy_atomic(path: str, array: np.ndarray) -> None:
    # Written beside the target and renamed: a crash or a second worker writing the same key
    # never leaves a torn file under the final name.
    folder = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".npy")
    try:
        with os.fdopen(fd, "wb") as f:
            np.save(f, array)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class TextMelDataset(Dataset):
    """(text ids, log-mel) pairs of a filelist.

    Texts are converted once here, so a character outside the symbol set is reported before
    training starts; audio headers are checked here too (sample rate, length) without decoding.

    Attributes:
        text_lengths: list[int], symbols per item.
        mel_lengths_estimate: list[int], 1 + samples // hop_length from the header (an upper
            bound when trim_silence is on), for length-bucketing samplers.
    """

    def __init__(self, entries: Sequence[FilelistEntry], hp, cache_dir: Optional[str] = None):
        """
        Args:
            entries: from `read_filelist`.
            hp: HParams (text_cleaners, symbol_set, drop_unknown_chars and the audio fields).
            cache_dir: folder for cached mels (.npy); None = compute every time.

        Raises:
            DataError: "<filelist>:<line>: ..." for an unknown character, a text that cleans to
                nothing, an unreadable audio header, a wrong sample rate or a clip too short
                for the STFT.
        """
        self.entries = list(entries)
        self.hp = hp
        self.cache_dir = os.fspath(cache_dir) if cache_dir else None
        if self.cache_dir:
            os.makedirs(self.cache_dir, exist_ok=True)
        self.sequences: List[List[int]] = [self._encode(e) for e in self.entries]
        self.text_lengths: List[int] = [len(s) for s in self.sequences]
        self.mel_lengths_estimate: List[int] = [self._frames_from_header(e) for e in self.entries]

    def _encode(self, entry: FilelistEntry) -> List[int]:
        try:
            ids = text_to_sequence(entry.text, list(self.hp.text_cleaners), self.hp.symbol_set,
                                   self.hp.drop_unknown_chars)
        except UnknownCharacterError as err:
            raise DataError(f"{entry.filelist}:{entry.line}: {one_line(err)}") from None
        except ArpabetError as err:
            raise DataError(f"{entry.filelist}:{entry.line}: {one_line(err)}") from None
        if not ids:
            raise DataError(f"{entry.filelist}:{entry.line}: the text {entry.text!r} is empty "
                            f"after cleaning")
        return list(ids)

    def _frames_from_header(self, entry: FilelistEntry) -> int:
        where = f"{entry.filelist}:{entry.line}"
        try:
            sr, n_samples, _ = audio_info(entry.audio_path)
        except AudioError as err:
            raise DataError(f"{where}: {err}") from None
        if sr != self.hp.sampling_rate:
            raise DataError(f"{where}: "
                            f"{sample_rate_message(entry.audio_path, sr, self.hp.sampling_rate)}")
        if n_samples <= self.hp.filter_length // 2:
            raise DataError(f"{where}: {entry.audio_path}: {n_samples} samples is too short "
                            f"(need more than filter_length // 2 = {self.hp.filter_length // 2})")
        return 1 + n_samples // self.hp.hop_length

    def __len__(self) -> int:
        return len(self.entries)

    def cache_path(self, index: int) -> Optional[str]:
        """The .npy file that holds (or will hold) item `index`'s mel; None without a cache."""
        if not self.cache_dir:
            return None
        entry = self.entries[index]
        stem = os.path.splitext(os.path.basename(entry.audio_path))[0]
        key = mel_cache_key(entry.audio_path, self.hp)
        return os.path.join(self.cache_dir, f"{stem}-{key}.npy")

    def get_mel(self, index: int) -> torch.Tensor:
        """float32 (n_mel, frames) of item `index`, from the cache when it holds it."""
        entry = self.entries[index]
        try:
            cached = self.cache_path(index)
        except OSError as err:  # the file vanished since the filelist was read
            raise DataError(f"{entry.filelist}:{entry.line}: {entry.audio_path}: "
                            f"{one_line(err)}") from None
        if cached and os.path.isfile(cached):
            try:
                mel = np.load(cached, allow_pickle=False)
            except (OSError, ValueError, EOFError):
                mel = None  # damaged outside our atomic writes: recompute and overwrite it
            if mel is not None and mel.ndim == 2 and mel.shape[0] == self.hp.n_mel_channels:
                return torch.from_numpy(mel)
        try:
            mel = mel_from_file(entry.audio_path, self.hp)
        except AudioError as err:
            raise DataError(f"{entry.filelist}:{entry.line}: {err}") from None
        if cached:
            _save_npy_atomic(cached, mel.numpy())
        return mel

    def __getitem__(self, index: int):
        """(LongTensor (N,), FloatTensor (n_mel, T))."""
        return torch.tensor(self.sequences[index], dtype=torch.long), self.get_mel(index)


# ---------------------------------------------------------------------------- batches

class Batch(NamedTuple):
    text: torch.Tensor  # Long (B, N_max), padded with 0 (the pad symbol)
    text_lengths: torch.Tensor  # Long (B,), descending
    mel: torch.Tensor  # Float (B, n_mel, T_max), T_max a multiple of r, padded with 0.0
    gate: torch.Tensor  # Float (B, T_max): 1 from frame mel_len - 1 on
    mel_lengths: torch.Tensor  # Long (B,), true lengths
    # Long (B,) on the CPU: row b holds the item that was order[b]-th in the list given to the
    # collate, which sorts by text length. `x[batch.order.argsort()]` puts rows back in input
    # order. None for a Batch built by hand with five fields.
    order: Optional[torch.Tensor] = None

    def to(self, device, non_blocking: bool = False) -> "Batch":
        """The tensors on `device`; `order` stays on the CPU.

        `order` indexes Python lists (file names, entries), so it is kept where reading it costs
        no device synchronisation.
        """
        moved = [t.to(device, non_blocking=non_blocking) for t in self[:-1]]
        return Batch(*moved, order=self.order)


class TextMelCollate:
    """Pads a list of dataset items into a `Batch`, sorted by text length (longest first)."""

    def __init__(self, n_frames_per_step: int):
        if n_frames_per_step < 1:
            raise ValueError(f"n_frames_per_step must be >= 1, got {n_frames_per_step}")
        self.n_frames_per_step = n_frames_per_step

    def __call__(self, items) -> Batch:
        """
        Args:
            items: list of (ids Long (N,), mel Float (n_mel, T)).

        Returns:
            Batch; the gate target is 0 before the last real frame and 1 from it onward,
            padding included, as NVIDIA's. `order[b]` is the index in `items` of row b.
        """
        n_mel = items[0][1].shape[0]
        for ids, mel in items:
            if mel.dim() != 2 or mel.shape[0] != n_mel:
                raise ValueError(f"mels in a batch must be (n_mel={n_mel}, T), got "
                                 f"{tuple(mel.shape)}")
        text_lengths, order_tensor = torch.sort(torch.tensor([len(it[0]) for it in items]),
                                                descending=True, stable=True)
        order = order_tensor.tolist()
        mel_lengths = torch.tensor([items[i][1].shape[1] for i in order], dtype=torch.long)
        r = self.n_frames_per_step
        t_max = decoder_lengths(int(mel_lengths.max()), r) * r  # rounded up to a multiple of r

        text = torch.zeros(len(items), int(text_lengths[0]), dtype=torch.long)
        mel = torch.zeros(len(items), n_mel, t_max, dtype=torch.float32)
        gate = torch.zeros(len(items), t_max, dtype=torch.float32)
        for row, i in enumerate(order):
            ids, item_mel = items[i][0], items[i][1]
            text[row, :len(ids)] = ids
            mel[row, :, :item_mel.shape[1]] = item_mel
            gate[row, item_mel.shape[1] - 1:] = 1.0
        return Batch(text, text_lengths.long(), mel, gate, mel_lengths, order_tensor.long())


# ---------------------------------------------------------------------------- samplers

def padding_share(batches: Sequence[Sequence[int]], lengths: Sequence[int]) -> float:
    """Share of the padded (batch x longest) area that is padding, over all `batches`."""
    lengths = np.asarray(lengths)
    padded = real = 0
    for batch in batches:
        item_lengths = lengths[np.asarray(batch, dtype=np.int64)]
        padded += int(item_lengths.max()) * len(item_lengths)
        real += int(item_lengths.sum())
    return 0.0 if padded == 0 else 1.0 - real / padded


def curriculum_max_text_length(step: int, hp, text_lengths: Sequence[int]) -> Optional[int]:
    """The longest text offered at `step` under curriculum learning; None = every text.

    The offered share of the training texts (by length quantile) grows linearly from
    hp.curriculum_start_quantile at step 0 to all of them at hp.curriculum_steps.
    """
    if not hp.curriculum or hp.curriculum_steps <= 0 or step >= hp.curriculum_steps:
        return None
    share = hp.curriculum_start_quantile + (1.0 - hp.curriculum_start_quantile) * (
        step / hp.curriculum_steps)
    return int(np.quantile(np.asarray(text_lengths), min(share, 1.0), method="higher"))


class SamplerStateError(ValueError):
    """A saved sampler state that does not fit this sampler (other data or settings)."""


# The settings that, with the epoch and the offered items, decide an epoch's batch list. A saved
# state is only continued by a sampler that agrees on all of them.
_ORDER_SETTINGS = ("seed", "batch_size", "shuffle", "num_replicas", "bucket_size_multiplier",
                   "drop_last", "bucket")


class LengthBucketSampler:
    """Batch sampler: batches of similar length, shuffled, seeded, shardable across ranks.

    Each epoch the offered items are shuffled (seed + epoch), cut into pools of
    `bucket_size_multiplier * batch_size`, each pool sorted by length and split into batches,
    and the batches shuffled. Every offered item appears exactly once per epoch (one replica).
    With `num_replicas > 1` every rank builds the same batch list and takes every
    `num_replicas`-th batch starting at `rank`; the list is first padded by repeating batches from
    its start (or cut, with drop_last) so every rank gets the same number.
    `bucket=False` skips the sorting: plain random batches, for comparison.

    The batch list of an epoch is a pure function of (the settings, the item lengths, the epoch,
    the offered items, the rank): no global RNG is read. So a run stopped after `k` batches of
    epoch `e` continues exactly where it was with `set_epoch(e, start_batch=k)` (or
    `load_state_dict(state_dict(position=k))`, which also restores the offered items).
    """

    STATE_VERSION = 1

    def __init__(self, lengths: Sequence[int], batch_size: int, shuffle: bool = True,
                 seed: int = 0, num_replicas: int = 1, rank: int = 0,
                 bucket_size_multiplier: int = 8, drop_last: bool = False, bucket: bool = True,
                 text_lengths: Optional[Sequence[int]] = None):
        """
        Args:
            lengths: one length per dataset item (mel frames), for bucketing.
            text_lengths: per item, for `set_max_text_length` (curriculum).
        """
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} outside 0..{num_replicas - 1}")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.text_lengths = None if text_lengths is None else np.asarray(text_lengths, np.int64)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.bucket_size_multiplier = max(1, bucket_size_multiplier)
        self.drop_last = drop_last
        self.bucket = bucket
        self.epoch = 0
        self.start_batch = 0  # where this epoch's iteration starts (a resumed epoch)
        self.allowed: Optional[np.ndarray] = None  # None = every item
        self.max_text_length: Optional[int] = None  # the curriculum cap behind `allowed`

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Selects the epoch's batch list; iteration starts at its `start_batch`-th batch.

        `start_batch` counts this rank's batches of the epoch (those already trained before a
        restart). It holds for every iteration until the next `set_epoch`, which resets it.
        """
        if epoch < 0 or start_batch < 0:
            raise ValueError(f"set_epoch({epoch}, start_batch={start_batch}): both must be >= 0")
        self.epoch = int(epoch)
        self.start_batch = int(start_batch)

    def set_allowed(self, indices: Optional[Sequence[int]]) -> None:
        """Offer only these item indices from the next epoch on; None = every item."""
        self.allowed = None if indices is None else np.unique(np.asarray(indices, np.int64))
        self.max_text_length = None

    def set_max_text_length(self, cap: Optional[int],
                            text_lengths: Optional[Sequence[int]] = None) -> int:
        """Curriculum: offer only items whose text length is <= cap (None = every item).

        When fewer than batch_size * num_replicas items fit, the shortest that many are offered
        instead, so an epoch is never empty.

        Returns:
            the number of items offered.
        """
        if cap is None:
            self.allowed = None
            self.max_text_length = None
            return len(self.lengths)
        lengths = self.text_lengths if text_lengths is None else np.asarray(text_lengths, np.int64)
        if lengths is None:
            raise ValueError("set_max_text_length needs text_lengths (here or in the constructor)")
        allowed = np.flatnonzero(lengths <= cap)
        least = min(len(lengths), self.batch_size * self.num_replicas)
        if len(allowed) < least:
            allowed = np.sort(np.argsort(lengths, kind="stable")[:least])
        self.allowed = allowed
        self.max_text_length = int(cap)
        return len(allowed)

    def _offered(self) -> np.ndarray:
        return np.arange(len(self.lengths)) if self.allowed is None else self.allowed

    def epoch_batches(self) -> List[List[int]]:
        """Every batch of this epoch, all ranks together, in order."""
        # A generator of its own, seeded by (seed, epoch): the global RNGs are neither read nor
        # advanced, so the order does not depend on what else the run drew from them.
        rng = np.random.default_rng(self.seed + self.epoch)
        items = self._offered()
        if self.shuffle:
            items = rng.permutation(items)
        size = self.batch_size
        batches: List[List[int]] = []
        pool_size = size * self.bucket_size_multiplier if self.bucket else len(items) or 1
        for start in range(0, len(items), pool_size):
            pool = items[start:start + pool_size]
            if self.bucket:
                pool = pool[np.argsort(self.lengths[pool], kind="stable")]
            batches.extend(pool[i:i + size].tolist() for i in range(0, len(pool), size))
        if self.drop_last:
            batches = [b for b in batches if len(b) == size]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def _rank_share(self, batches: List[List[int]]) -> List[List[int]]:
        replicas = self.num_replicas
        if replicas == 1:
            return batches
        if self.drop_last:
            batches = batches[:len(batches) // replicas * replicas]
        elif batches:
            total = math.ceil(len(batches) / replicas) * replicas
            batches = [batches[i % len(batches)] for i in range(total)]
        return batches[self.rank::replicas]

    def __iter__(self) -> Iterator[List[int]]:
        share = self._rank_share(self.epoch_batches())
        if self.start_batch > len(share):
            raise ValueError(f"sampler: start_batch {self.start_batch} is past the end of epoch "
                             f"{self.epoch}, which has {len(share)} batches on this rank")
        return iter(share[self.start_batch:])

    def batches_per_epoch(self) -> int:
        """This rank's batches in a whole epoch of the offered items, `start_batch` ignored."""
        n = len(self._offered())
        batches = n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
        if self.num_replicas == 1:
            return batches
        if self.drop_last:
            return batches // self.num_replicas
        return math.ceil(batches / self.num_replicas)

    def __len__(self) -> int:
        """Batches the next iteration yields: the epoch's batches from `start_batch` on."""
        return max(0, self.batches_per_epoch() - self.start_batch)

    # ------------------------------------------------------------------ resume
    def _lengths_digest(self) -> str:
        return hashlib.sha1(self.lengths.astype("<i8").tobytes()).hexdigest()

    def state_dict(self, position: Optional[int] = None) -> dict:
        """Everything that decides this epoch's order and where it stands, as JSON-able values.

        Args:
            position: this rank's batches of the epoch already trained (the index of the next
                batch to train on); None = `start_batch`. The sampler cannot count them
                itself: a DataLoader's workers draw batches ahead of the training loop.

        Returns:
            {"version", "epoch", "start_batch", "max_text_length" (curriculum cap or None),
            "allowed" (offered item indices or None = all), "n_items", "lengths_sha1", "rank",
            "batches_per_epoch", and the settings seed, batch_size, shuffle, num_replicas,
            bucket_size_multiplier, drop_last, bucket}.
        """
        start = self.start_batch if position is None else int(position)
        if start < 0:
            raise ValueError(f"sampler state_dict: position {start} must be >= 0")
        state = {name: getattr(self, name) for name in _ORDER_SETTINGS}
        state.update({
            "version": self.STATE_VERSION,
            "epoch": int(self.epoch),
            "start_batch": start,
            "max_text_length": self.max_text_length,
            "allowed": None if self.allowed is None else [int(i) for i in self.allowed],
            "n_items": int(len(self.lengths)),
            "lengths_sha1": self._lengths_digest(),
            "rank": int(self.rank),  # informational: every rank loads rank 0's state
            "batches_per_epoch": self.batches_per_epoch(),
        })
        state["seed"] = int(state["seed"])
        return state

    def load_state_dict(self, state: dict) -> None:
        """Continues a saved epoch: its number, its offered items and its position.

        The sampler keeps its own rank, so every rank can load the state rank 0 saved.

        Raises:
            SamplerStateError: the state was saved by a sampler over other item lengths (a
                changed filelist) or with other order settings (batch_size, seed, ...), or is
                malformed; nothing is changed then. The order cannot be continued exactly:
                start the epoch from its beginning with `set_epoch(epoch)` instead.
        """
        def refuse(why: str) -> None:
            raise SamplerStateError(f"sampler state: {why}; the saved data order cannot be "
                                    f"continued exactly (start the epoch afresh with set_epoch)")

        if not isinstance(state, dict) or state.get("version") != self.STATE_VERSION:
            refuse(f"not a version-{self.STATE_VERSION} sampler state")
        missing = [k for k in _ORDER_SETTINGS + ("epoch", "start_batch", "allowed", "n_items",
                                                 "lengths_sha1") if k not in state]
        if missing:
            refuse(f"missing {', '.join(missing)}")
        changed = [f"{name} {state[name]!r} saved, {getattr(self, name)!r} now"
                   for name in _ORDER_SETTINGS if state[name] != getattr(self, name)]
        if changed:
            refuse(", ".join(changed))
        if state["n_items"] != len(self.lengths):
            refuse(f"saved over {state['n_items']} items, now {len(self.lengths)} (the filelist "
                   f"changed)")
        if state["lengths_sha1"] != self._lengths_digest():
            refuse(f"the {len(self.lengths)} item lengths differ from the saved ones (the "
                   f"filelist or its audio changed)")
        allowed = state["allowed"]
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
            if allowed.ndim != 1 or (allowed.size and (allowed.min() < 0
                                                       or allowed.max() >= len(self.lengths))):
                refuse(f"offered item indices outside 0..{len(self.lengths) - 1}")
            allowed = np.unique(allowed)
        epoch, start = int(state["epoch"]), int(state["start_batch"])
        if epoch < 0 or start < 0:
            refuse(f"epoch {epoch} and start_batch {start} must be >= 0")
        previous = (self.epoch, self.start_batch, self.allowed, self.max_text_length)
        self.epoch, self.start_batch, self.allowed = epoch, start, allowed
        cap = state.get("max_text_length")
        self.max_text_length = None if cap is None else int(cap)
        if start > self.batches_per_epoch():
            self.epoch, self.start_batch, self.allowed, self.max_text_length = previous
            refuse(f"start_batch {start} is past the end of epoch {epoch} "
                   f"({self.batches_per_epoch()} batches on this rank)")


# ---------------------------------------------------------------------------- loaders

def loader_generator(seed: int) -> torch.Generator:
    """A CPU generator for a DataLoader, so creating its iterators leaves torch's global RNG alone.

    Each `iter(loader)` draws the workers' base seed from `loader.generator`, or from the global
    RNG when it has none; a resumed run then starts the global RNG from another state than the
    straight run had at the same step. Reseed it per epoch (`loader.generator.manual_seed(...)`)
    to make the workers' seeds a function of the epoch too.
    """
    generator = torch.Generator()
    generator.manual_seed(int(seed))
    return generator


def ignore_stop_signals(_worker_id: int) -> None:
    """DataLoader workers leave SIGINT and SIGTERM to the trainer.

    Ctrl-C, `timeout`, SLURM and container runtimes signal the whole process group: a worker
    that died of it would make the trainer raise "DataLoader worker is killed" in the middle of
    a step instead of finishing it, saving a checkpoint and exiting 128+signal. The workers end
    when the trainer shuts its loaders down, or when they see it gone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def worker_context() -> Optional[multiprocessing.context.BaseContext]:
    """The multiprocessing context of the loaders' workers (`devices.worker_start_method`).

    A fork server imports this module by name before it forks a worker, and Python's fork
    server does not pass on sys.path (only the environment): the folder of this module goes
    into PYTHONPATH before the server starts. None = the platform's default (fork on Linux).
    """
    method = devices.worker_start_method()
    if method is None:
        return None
    if method == "forkserver":
        root = os.path.dirname(os.path.abspath(__file__))
        paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
        if root not in paths:
            os.environ["PYTHONPATH"] = os.pathsep.join([root] + paths)
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["data_utils"])
        return context
    return multiprocessing.get_context(method)


def prepare_dataloaders(hp, mel_cache: Optional[str] = None, rank: int = 0, world_size: int = 1
                        ) -> Tuple[DataLoader, DataLoader, TextMelDataset, TextMelDataset]:
    """Datasets and loaders of hp.training_files and hp.validation_files.

    The training loader's batch_sampler is a `LengthBucketSampler` (length buckets when
    hp.bucket_batches, plain random batches otherwise; `rank`'s share under DDP): call its
    `set_epoch(epoch)` each epoch and `set_max_text_length` for curriculum learning. The
    validation loader is unshuffled and unsharded (every rank sees every item). Both loaders
    have a generator of their own (seeded from hp.seed), so `iter(loader)` does not draw from
    torch's global RNG.

    Args:
        mel_cache: the folder mels are cached in when hp.mel_cache (the run folder's,
            `run_files.RunFolder.mel_cache_folder`); None = no cache.

    Returns:
        (train_loader, val_loader, train_set, val_set)
    """
    cache_dir = mel_cache if hp.mel_cache else None
    train_set = TextMelDataset(read_filelist(hp.training_files, hp.data_root), hp, cache_dir)
    val_set = TextMelDataset(read_filelist(hp.validation_files, hp.data_root), hp, cache_dir)
    collate = TextMelCollate(hp.n_frames_per_step)
    sampler = LengthBucketSampler(
        train_set.mel_lengths_estimate, hp.batch_size, shuffle=True, seed=hp.seed,
        num_replicas=world_size, rank=rank, bucket_size_multiplier=hp.bucket_size_multiplier,
        bucket=hp.bucket_batches, text_lengths=train_set.text_lengths)
    pin = devices.pin_memory()
    workers = dict(num_workers=hp.num_workers, persistent_workers=hp.num_workers > 0,
                   worker_init_fn=ignore_stop_signals if hp.num_workers > 0 else None,
                   multiprocessing_context=worker_context() if hp.num_workers > 0 else None)
    train_loader = DataLoader(train_set, batch_sampler=sampler, collate_fn=collate,
                              pin_memory=pin, generator=loader_generator(hp.seed), **workers)
    val_loader = DataLoader(val_set, batch_size=hp.batch_size, shuffle=False,
                            collate_fn=collate, pin_memory=pin,
                            generator=loader_generator(hp.seed + 1), **workers)
    return train_loader, val_loader, train_set, val_set
