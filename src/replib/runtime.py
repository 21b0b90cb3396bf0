"""Device resolution and seeding: the ground floor every experiment stands on."""
from __future__ import annotations

import math
import os
import random
import re
from contextlib import contextmanager
from typing import Iterator

import numpy as np
import torch

from .errors import ReplibError

DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None)) and torch.backends.mps.is_available()


def available_devices() -> list[str]:
    """The concrete devices this machine offers, best first."""
    found = ["cuda"] if torch.cuda.is_available() else []
    found += ["mps"] if _mps_available() else []
    return found + ["cpu"]


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``auto|cpu|cuda|mps`` (or ``cuda:1``) into a device that exists here, or raise.

    ``auto`` picks CUDA, then Apple MPS, then CPU. Asking for a device this machine lacks is an
    error, never a silent fallback: a result labelled "cuda" must have run on CUDA.
    """
    device = str(device)
    m = re.fullmatch(r"(\w+)(?::(\d+))?", device)
    if not m or m.group(1) not in DEVICES or (m.group(1) == "auto" and m.group(2)):
        raise ReplibError(f"unknown device {device!r}; valid: {', '.join(DEVICES)} "
                          "(cuda:N for one GPU of several)")
    kind, index = m.groups()
    if kind == "auto":
        return torch.device(available_devices()[0])
    if kind not in available_devices():
        raise ReplibError(
            f"device {device!r} is not available on this machine; available: "
            f"{', '.join(['auto', *available_devices()])}"
        )
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise ReplibError(f"device {device!r} is not available on this machine; it has "
                          f"{torch.cuda.device_count()} CUDA devices, cuda:0 and up")
    return torch.device(device)


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch (all devices) and return a CPU generator seeded the same.

    Experiments should draw from explicit generators where they can; the global seeds cover
    what they cannot (weight init inside ``nn.Module`` constructors, dropout).
    """
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ReplibError(f"a seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.Generator().manual_seed(seed)


def synchronize(device: torch.device) -> None:
    """Wait for queued kernels, so wall-clock timings measure the work and not its launch."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def auto_jobs(device: torch.device) -> int:
    """How many chapters ``replib book`` executes at once by default (``--jobs auto``).

    On a CPU one per core, each training on one thread: the Performance page's 5-minute runs on
    2 cores found two chapters at once training more tokens than one chapter on one or on two
    threads, by its rule declared before those runs. At most one per 2 GiB of memory (a chapter's
    process peaks near 1 GiB). On a GPU one: chapters on one device would share it (several GPUs:
    ``--executor dask``, one chapter per GPU)."""
    if device.type != "cpu":
        return 1
    try:
        memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (AttributeError, ValueError, OSError):  # not POSIX: the cores alone
        memory_gib = math.inf
    return max(1, min(os.cpu_count() or 1, int(memory_gib // 2)))


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Use ``n`` intra-op CPU threads inside the block (None: leave torch's setting alone).

    Small models are bound by per-op overhead: one thread is often fastest, and on a busy
    machine two threads can be many times slower than one.
    """
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
