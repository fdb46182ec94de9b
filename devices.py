"""Every call this project makes into `torch.cuda`, in one place.

Training, inference, tuning, the checkpoints, the data loaders, the CUDA-graph decoder loop and
the benchmarks ask this module, never `torch.cuda` itself, so that one set of CPU tests can run
all of it against a stand-in for `torch.cuda` that applies PyTorch's own argument checks
(`torch.cuda._utils._get_device_index`, importable on a CPU build): a call that a real GPU
would refuse fails CI on a machine without one (tests/test_devices.py).

The rule this module exists for: a CUDA device handed to training always carries its index
(`cuda:0`, or LOCAL_RANK's GPU under torchrun): `torch.cuda.set_device` raises on every PyTorch
for a CUDA device without an index, so an index-less device must never reach it.
"""
from __future__ import annotations

import os
import re
from typing import Any, ContextManager, Dict, List, NamedTuple, Optional

import torch


class DeviceError(ValueError):
    """A device name that cannot be used on this machine."""


class Placement(NamedTuple):
    """Where this process trains: its rank, the number of processes and its device."""
    rank: int
    world_size: int
    device: torch.device


# ---------------------------------------------------------------------------------- queries
def cuda_available() -> bool:
    return torch.cuda.is_available()


def cuda_device_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def choose_device(name: Optional[str] = None, local_rank: Optional[int] = None) -> torch.device:
    """The device to run on, a CUDA device always with its index.

    Args:
        name: "cpu", "cuda", "cuda:1", "mps"; None or "" = CUDA when available, else the CPU.
        local_rank: under torchrun, the GPU of this process when `name` names no index.

    Raises:
        DeviceError: a name torch does not know, or a CUDA device this machine does not have.
    """
    if not name:
        name = "cuda" if cuda_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"--device {name}: not a device name (cpu, cuda, cuda:1 ...)") from None
    if device.type == "mps" and not mps_available():
        raise DeviceError(f"--device {name}: MPS is not available here; use --device cpu")
    if device.type != "cuda":
        return device
    if not cuda_available():
        raise DeviceError(f"--device {name}: CUDA is not available here; use --device cpu")
    index = device.index
    if index is None:
        index = local_rank if local_rank is not None else torch.cuda.current_device()
    count = cuda_device_count()
    if index >= count:
        raise DeviceError(f"--device {name}: this machine has {count} CUDA device(s), "
                          f"cuda:0 to cuda:{count - 1}")
    return torch.device("cuda", index)


def setup_device(name: Optional[str], environ: Optional[Dict[str, str]] = None) -> Placement:
    """The device set-up of a training process: rank, world size, an indexed device.

    Under torchrun (WORLD_SIZE > 1) a CUDA run takes LOCAL_RANK's GPU. CUDA devices become the
    process's current device, with TF32 matmuls and convolutions (same accuracy class as fp32
    for this model).
    """
    env = os.environ if environ is None else environ
    world_size = int(env.get("WORLD_SIZE", "1"))
    rank = int(env.get("RANK", "0"))
    local_rank = int(env.get("LOCAL_RANK", "0")) if world_size > 1 else None
    device = choose_device(name, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    return Placement(rank, world_size, device)


# ---------------------------------------------------------------------------------- timing, memory
def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> Optional[float]:
    """The most memory tensors held on a CUDA device since the last reset; None elsewhere."""
    if device.type != "cuda":
        return None
    return torch.cuda.max_memory_allocated(device) / 2 ** 20


def total_memory_mb(device: torch.device) -> Optional[float]:
    if device.type != "cuda":
        return None
    return torch.cuda.get_device_properties(device).total_memory / 2 ** 20


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else device.type


# CUDA's allocator raises torch.cuda.OutOfMemoryError; a CUDA library call that cannot get memory
# ("CUDA error: out of memory") and the CPU allocator ("can't allocate memory") raise plain
# RuntimeErrors.
_out_of_memory_re = re.compile(r"out of memory|can't allocate memory", re.IGNORECASE)


def is_out_of_memory(error: BaseException) -> bool:
    """True for an allocation that did not fit (a benchmark row too big for the device)."""
    oom = getattr(torch.cuda, "OutOfMemoryError", None)
    return (oom is not None and isinstance(error, oom)) or bool(
        _out_of_memory_re.search(str(error)))


# ---------------------------------------------------------------------------------- RNG states
def rng_states() -> Optional[List[torch.Tensor]]:
    """The RNG state of every CUDA device, or None without CUDA."""
    return torch.cuda.get_rng_state_all() if cuda_available() else None


def set_rng_states(states: List[torch.Tensor]) -> bool:
    """Puts back `rng_states()`; False (nothing done) when the device count differs."""
    if not cuda_available() or len(states) != cuda_device_count():
        return False
    torch.cuda.set_rng_state_all(states)
    return True


# ---------------------------------------------------------------------------------- data loading
def pin_memory() -> bool:
    """Whether loaders should pin host memory: only when batches will be copied to a GPU."""
    return cuda_available()


def worker_start_method() -> Optional[str]:
    """The multiprocessing start method for DataLoader workers.

    A worker forked from a process that has initialised CUDA may crash (segmentation fault,
    abort) the first time anything touches the inherited CUDA state, and the trainer
    initialises CUDA before its loaders start their workers. Where CUDA is available the
    workers therefore start from a fork server (a clean single-threaded process that never
    touches CUDA); on CPU-only machines the default fork stays, which starts workers fastest.
    """
    return "forkserver" if cuda_available() else None


# ---------------------------------------------------------------------------------- CUDA graphs
def current_stream(device: torch.device) -> Any:
    return torch.cuda.current_stream(device)


def new_stream(device: torch.device) -> Any:
    return torch.cuda.Stream(device)


def on_stream(stream: Any) -> ContextManager:
    return torch.cuda.stream(stream)


def on_device(device: torch.device) -> ContextManager:
    return torch.cuda.device(device)


def graph_pool() -> Any:
    return torch.cuda.graph_pool_handle()


def new_graph() -> Any:
    return torch.cuda.CUDAGraph()


def capture(graph: Any, pool: Any, stream: Any) -> ContextManager:
    """Captures the kernels launched inside the block into `graph`.

    thread_local: the DataLoader's pin-memory thread may call CUDA while we capture.
    """
    return torch.cuda.graph(graph, pool=pool, stream=stream, capture_error_mode="thread_local")
