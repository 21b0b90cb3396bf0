"""Fair wall-clock timing of competing variants: same process, warm-up, median of many runs.

Speed claims ("RMSNorm is 1-10 % faster") are ratios of small differences, so the measurement must
not favour one variant. :func:`compare` makes the conditions the same for every variant:

- one process, one device, the same inputs; the caller builds every variant before timing starts;
- ``warmup`` untimed calls of each variant first (allocator caches, lazy initialisation, cuDNN/
  cuBLAS heuristics, ``torch.compile`` if the caller uses it, for all variants alike);
- the timed calls are *interleaved* round-robin, with the order rotated each round, so slow drift
  of the machine (other processes, clock boost, thermals) hits every variant equally;
- each call is bracketed by :func:`replib.runtime.synchronize`, so queued GPU kernels are counted
  in the call that launched them, not in the next one;
- the summary is the median and the inter-quartile range of ``reps`` calls, robust to the
  occasional preempted call; :func:`paired_ratio` uses the per-round ratios, which cancel drift
  even better than a ratio of medians.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import torch

from .errors import ReplibError
from .runtime import synchronize


@dataclass(frozen=True)
class Timing:
    """Seconds per call of one variant: ``seconds`` holds every timed repetition."""

    label: str
    seconds: tuple[float, ...]
    warmup: int

    @property
    def n(self) -> int:
        return len(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    @property
    def q1(self) -> float:
        return float(np.percentile(self.seconds, 25))

    @property
    def q3(self) -> float:
        return float(np.percentile(self.seconds, 75))

    @property
    def iqr(self) -> float:
        return self.q3 - self.q1

    def __str__(self) -> str:
        return (f"{self.label}: {1e3 * self.median:.3g} ms (IQR {1e3 * self.iqr:.2g} ms, "
                f"n={self.n}, warm-up {self.warmup})")


def _timed(fn: Callable[[], Any], device: torch.device) -> float:
    synchronize(device)
    t0 = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - t0


def compare(fns: Mapping[str, Callable[[], Any]], device: torch.device | str = "cpu", *,
            warmup: int = 10, reps: int = 50) -> dict[str, Timing]:
    """Time every callable in ``fns`` fairly (see the module docstring); ``{label: Timing}``."""
    if not fns:
        raise ReplibError("nothing to time")
    if reps < 1 or warmup < 0:
        raise ReplibError(f"need reps >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    device = torch.device(device)
    labels = list(fns)
    for label in labels:
        for _ in range(warmup):
            fns[label]()
        synchronize(device)
    seconds: dict[str, list[float]] = {label: [] for label in labels}
    for r in range(reps):
        k = r % len(labels)
        for label in labels[k:] + labels[:k]:
            seconds[label].append(_timed(fns[label], device))
    return {label: Timing(label, tuple(s), warmup) for label, s in seconds.items()}


def time_call(fn: Callable[[], Any], device: torch.device | str = "cpu", *, warmup: int = 10,
              reps: int = 50, label: str = "") -> Timing:
    """One variant alone: ``warmup`` untimed calls, then ``reps`` synchronised timed calls."""
    return compare({label: fn}, device, warmup=warmup, reps=reps)[label]


def ratio(t: Timing, baseline: Timing) -> float:
    """Ratio of medians ``t / baseline`` (< 1: ``t`` is faster)."""
    return t.median / baseline.median


def paired_ratio(t: Timing, baseline: Timing) -> float:
    """Median of the per-round ratios ``t_i / baseline_i`` of two interleaved timings."""
    if t.n != baseline.n:
        raise ReplibError(f"paired ratio needs equally many repetitions, got {t.n} and {baseline.n}")
    return statistics.median(a / b for a, b in zip(t.seconds, baseline.seconds))


def ratios(timings: Mapping[str, Timing], baseline: str, paired: bool = True) -> dict[str, float]:
    """Every variant's time relative to ``baseline`` (paired per round by default)."""
    if baseline not in timings:
        raise ReplibError(f"baseline {baseline!r} is not among {sorted(timings)}")
    f = paired_ratio if paired else ratio
    return {k: f(t, timings[baseline]) for k, t in timings.items() if k != baseline}


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
               loss_fn: Callable[[torch.nn.Module], torch.Tensor],
               amp_dtype: torch.dtype | None = None) -> Callable[[], None]:
    """A callable doing one full training step (zero grad, forward, backward, optimizer step) on
    the fixed batch inside ``loss_fn``; ``amp_dtype`` (e.g. ``torch.bfloat16``) runs the forward
    under autocast on the model's device."""
    device_type = next(model.parameters()).device.type

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=amp_dtype or torch.float32,
                            enabled=amp_dtype is not None):
            loss = loss_fn(model)
        loss.backward()
        optimizer.step()

    model.train()
    return step


def inference_step(model: torch.nn.Module, forward: Callable[[torch.nn.Module], Any],
                   amp_dtype: torch.dtype | None = None) -> Callable[[], None]:
    """A callable running ``forward(model)`` in eval and inference mode (optionally autocast)."""
    device_type = next(model.parameters()).device.type

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device_type, dtype=amp_dtype or torch.float32,
                                                    enabled=amp_dtype is not None):
            forward(model)

    model.eval()
    return step


def saved_for_backward_bytes(fn: Callable[[], Any]) -> int:
    """Bytes of the distinct tensor storages autograd saves for backward while ``fn`` runs: the
    activation memory a training step holds between forward and backward (exact on any device,
    where a CPU has no allocator statistics)."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return int(sum(seen.values()))


def peak_cuda_bytes(fn: Callable[[], Any], device: torch.device | str) -> float:
    """Peak CUDA memory allocated above the starting allocation while ``fn`` runs; NaN off CUDA."""
    device = torch.device(device)
    if device.type != "cuda":
        return math.nan
    synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    synchronize(device)
    return float(torch.cuda.max_memory_allocated(device) - base)
