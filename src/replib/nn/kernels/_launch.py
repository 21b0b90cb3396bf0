"""Shared launch arithmetic and device helpers of the norm kernels."""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl


def as_rows(x: torch.Tensor) -> torch.Tensor:
    """``x`` as a contiguous ``(rows, dim)`` matrix (a view when it already is one)."""
    return x.reshape(-1, x.shape[-1]).contiguous()


def block_size(n: int) -> int:
    """The power of two that holds one row of ``n`` features."""
    return triton.next_power_of_2(n)


def num_warps(block: int) -> int:
    """More warps for wider rows, so each thread keeps few elements (Liger-Kernel's heuristic)."""
    return 4 if block < 2048 else 8 if block < 8192 else 16 if block < 32768 else 32


@functools.cache
def _multiprocessors(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


def grad_programs(x: torch.Tensor) -> tuple[int, int]:
    """Programs for a backward pass over ``x``'s rows, and rows per program: one program per
    streaming multiprocessor on a GPU, at most 2 under the interpreter (so the tests cover the
    row loop and the sum of partial gradients)."""
    rows = x.shape[0]
    programs = _multiprocessors(x.device.index or 0) if x.is_cuda else 2
    programs = max(1, min(programs, rows))
    per = triton.cdiv(rows, programs)
    return triton.cdiv(rows, per), per


def scratch(programs: int, n: int, like: torch.Tensor, needed: bool) -> torch.Tensor:
    """Float32 partial gradients, one row per program (a 1-element placeholder when unneeded)."""
    return torch.empty((programs, n) if needed else (1,), dtype=torch.float32, device=like.device)


@triton.jit
def tanh(z):
    r"""tanh from one exp, stable for large :math:`|z|`:
    :math:`\mathrm{sign}(z)(1-e^{-2|z|})/(1+e^{-2|z|})`
    (``tl`` has no tanh; libdevice's is CUDA-only and not in the interpreter)."""
    t = tl.exp(-2.0 * tl.abs(z))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(z >= 0, y, -y)
