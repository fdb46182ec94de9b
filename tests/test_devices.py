"""The CUDA set-up on a CPU: `torch.cuda` replaced by a stand-in that applies PyTorch's own
argument checks, so a call that a real GPU refuses fails here too.

`torch.cuda._utils._get_device_index` is the check PyTorch runs on the device argument of
`set_device`, `synchronize`, the memory statistics and the RNG states; it is importable on a
CPU build. The stand-in answers like a machine with two GPUs and records what it was asked.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest
import torch
from torch.cuda._utils import _get_device_index

import devices
import train
from data_utils import prepare_dataloaders
from hparams import create_hparams

ROOT = Path(__file__).resolve().parents[1]


class CudaStandIn:
    """The parts of `torch.cuda` this project calls, with PyTorch's argument checks."""

    def __init__(self, count: int = 2):
        self.count = count
        self.current = 0
        self.calls: List[tuple] = []
        self.initialized = False

    def _index(self, device, optional: bool) -> int:
        if device is None and not optional:
            raise ValueError("a device is required")
        if device is None:
            return self.current
        if isinstance(device, torch.device) and device.type == "cuda" and device.index is None:
            if not optional:
                _get_device_index(device, optional=False)  # raises as the real call does
            return self.current
        index = _get_device_index(device, optional=optional)
        if not 0 <= index < self.count:
            raise RuntimeError(f"CUDA error: invalid device ordinal {index}")
        return index

    # the functions, each as `torch.cuda.NAME` checks its argument
    def is_available(self) -> bool:
        return True

    def device_count(self) -> int:
        return self.count

    def current_device(self) -> int:
        self.initialized = True
        return self.current

    def is_initialized(self) -> bool:
        return self.initialized

    def set_device(self, device) -> None:
        self.current = self._index(device, optional=False)
        self.initialized = True
        self.calls.append(("set_device", self.current))

    def synchronize(self, device=None) -> None:
        self.calls.append(("synchronize", self._index(device, optional=True)))

    def reset_peak_memory_stats(self, device=None) -> None:
        self.calls.append(("reset_peak_memory_stats", self._index(device, optional=True)))

    def max_memory_allocated(self, device=None) -> int:
        self.calls.append(("max_memory_allocated", self._index(device, optional=True)))
        return 3 * 2 ** 20

    def get_device_name(self, device=None) -> str:
        return f"stand-in GPU {self._index(device, optional=True)}"

    def get_rng_state_all(self) -> List[torch.Tensor]:
        return [torch.full((8,), i, dtype=torch.uint8) for i in range(self.count)]

    def set_rng_state_all(self, states) -> None:
        self.calls.append(("set_rng_state_all", len(states)))


@pytest.fixture
def cuda(monkeypatch) -> CudaStandIn:
    """torch.cuda's functions replaced by a two-GPU stand-in for the test."""
    stand_in = CudaStandIn()
    for name in ("is_available", "device_count", "current_device", "is_initialized", "set_device",
                 "synchronize", "reset_peak_memory_stats", "max_memory_allocated",
                 "get_device_name", "get_rng_state_all", "set_rng_state_all"):
        monkeypatch.setattr(torch.cuda, name, getattr(stand_in, name))
    # TF32 switches are plain attributes on a CPU build: put them back after the test
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32",
                        torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", torch.backends.cudnn.allow_tf32)
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    return stand_in


def test_the_stand_in_refuses_what_pytorch_refuses(cuda):
    with pytest.raises(ValueError, match="specified index"):
        cuda.set_device(torch.device("cuda"))
    with pytest.raises(RuntimeError, match="invalid device ordinal"):
        cuda.set_device(torch.device("cuda", 5))
    cuda.set_device(torch.device("cuda", 1))
    assert cuda.current == 1


@pytest.mark.parametrize("name", [None, "", "cuda"])
def test_training_sets_up_an_indexed_cuda_device(cuda, name):
    """`python train.py` and `--device cuda` on a machine with a GPU."""
    rank, world_size, device = train.setup_device(name)
    assert (rank, world_size) == (0, 1)
    assert device == torch.device("cuda", 0)
    assert ("set_device", 0) in cuda.calls
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32


def test_an_explicit_index_is_kept(cuda):
    assert train.setup_device("cuda:1")[2] == torch.device("cuda", 1)
    assert cuda.current == 1


def test_torchrun_takes_local_ranks_gpu(cuda, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert train.setup_device("cuda") == (3, 2, torch.device("cuda", 1))
    assert cuda.current == 1


def test_a_gpu_that_is_not_there_is_one_line(cuda):
    with pytest.raises(devices.DeviceError, match="2 CUDA device"):
        train.setup_device("cuda:5")


def test_every_helper_accepts_the_training_device(cuda):
    """What the benchmarks and checkpoints call, with the device training hands them."""
    device = train.setup_device("cuda")[2]
    devices.synchronize(device)
    devices.reset_peak_memory(device)
    assert devices.peak_memory_mb(device) == 3.0
    assert devices.device_name(device) == "stand-in GPU 0"
    states = devices.rng_states()
    assert len(states) == 2 and devices.set_rng_states(states)
    assert not devices.set_rng_states(states[:1])  # another GPU count: left alone


def test_checkpoints_carry_every_gpus_rng(cuda):
    import checkpoint

    state = checkpoint._rng_state()
    assert [int(s[0]) for s in state["cuda"]] == [0, 1]
    checkpoint.restore_rng_state(state)
    assert ("set_rng_state_all", 2) in cuda.calls


def test_cpu_devices_never_touch_cuda(cuda):
    device = torch.device("cpu")
    devices.synchronize(device)
    devices.reset_peak_memory(device)
    assert devices.peak_memory_mb(device) is None
    assert cuda.calls == []


def test_no_module_calls_torch_cuda_but_devices():
    """One place for CUDA calls: training, inference, tuning, data, graphs and the benchmarks
    reach `torch.cuda` and `torch.backends` only through devices.py."""
    offenders = []
    files = [p for p in ROOT.glob("*.py")] + list((ROOT / "bench").glob("*.py"))
    for path in files:
        if path.name == "devices.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id == "torch" and node.attr in ("cuda", "backends")):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert offenders == []


# ---------------------------------------------------------------------------------- workers
@pytest.fixture
def tiny_corpus(tmp_path, make_corpus):
    return make_corpus(tmp_path, 4)


def _tiny_loader_hp(corpus, workers: int):
    return create_hparams(f"preset=tiny,num_workers={workers},batch_size=2,"
                          f"training_files={corpus.filelist},validation_files={corpus.filelist}")


def test_workers_start_from_a_fork_server_where_cuda_is_available(cuda, tiny_corpus):
    """With a GPU the trainer initialises CUDA before its workers start: a forked worker would
    inherit that state and may crash; a fork server's worker does not."""
    train_loader, val_loader, _, _ = prepare_dataloaders(_tiny_loader_hp(tiny_corpus, 1))
    for loader in (train_loader, val_loader):
        assert loader.multiprocessing_context.get_start_method() == "forkserver"


def test_workers_keep_the_default_fork_on_a_cpu_machine(tiny_corpus):
    train_loader, _, _, _ = prepare_dataloaders(_tiny_loader_hp(tiny_corpus, 1))
    assert train_loader.multiprocessing_context is None


def test_fork_server_workers_deliver_batches(tiny_corpus, monkeypatch):
    """The dataset, collate and worker set-up survive the fork server's pickling, from another
    working directory too (the server does not inherit sys.path)."""
    monkeypatch.setattr(devices, "worker_start_method", lambda: "forkserver")
    monkeypatch.chdir(tiny_corpus.root)
    train_loader, _, train_set, _ = prepare_dataloaders(_tiny_loader_hp(tiny_corpus, 1))
    train_loader.batch_sampler.set_epoch(0)
    batches = list(train_loader)
    assert sum(len(b.text_lengths) for b in batches) == len(train_set)


def test_a_worker_never_initialises_cuda(tiny_corpus):
    """What a worker runs (dataset, collate) leaves CUDA alone: checked in a fresh interpreter
    whose torch.cuda.init would raise if anything called it."""
    script = f"""
import sys, torch
sys.path.insert(0, {str(ROOT)!r})
def refuse(*a, **k):
    raise SystemExit("a worker called into CUDA")
torch.cuda.init = refuse
torch.cuda._lazy_init = refuse
from hparams import create_hparams
from data_utils import TextMelCollate, TextMelDataset, read_filelist
hp = create_hparams("preset=tiny")
items = TextMelDataset(read_filelist({str(tiny_corpus.filelist)!r}), hp, None)
batch = TextMelCollate(hp.n_frames_per_step)([items[0], items[1]])
print("ok", tuple(batch.mel.shape)[0])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok 2")
