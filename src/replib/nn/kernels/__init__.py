r"""Fused Triton kernels for the row-wise norms of the registry, the CUDA path of those entries.

One kernel pair (forward, backward) per norm, wrapped as a ``torch.autograd.Function``:
``rmsnorm`` and ``crmsnorm`` (:mod:`.rms`), ``layernorm`` (:mod:`.layernorm`), ``dyt`` and ``bhyt``
(:mod:`.tanh`), ``seednorm`` (:mod:`.seednorm_kernel`, named apart from the function). Each
computes the same equations as the eager module that calls it (``replib.nn.norms``, ``bhyt``, ``seednorm``); the eager PyTorch code stays the
fallback and the oracle the tests compare with (``tests/test_kernels.py``, on CPU under
``TRITON_INTERPRET=1``).

The design is the usual one for memory-bound row norms (Triton's layer-norm tutorial,
Liger-Kernel's ``rms_norm.py``): the forward runs one program per row (a token's ``dim`` features
in one block of registers, statistics in float32, the per-row ``1/RMS`` or ``1/std`` kept for the
backward); the backward runs one program per streaming multiprocessor over a contiguous slice
of rows, writes ``dx`` row by row and accumulates the parameter gradients in registers, one
partial row per program, summed by PyTorch at the end. Outputs have the input's dtype (as
Liger-Kernel; the eager modules promote to the weight's dtype), gradients the parameters' dtype.

Dispatch (:func:`use_kernels`): a module takes the fused path only for a CUDA tensor, when Triton
imports, when the environment does not say ``REPLIB_TRITON=0``, outside ``torch.compile`` (which
fuses the eager code itself) and for a hidden size up to ``MAX_HIDDEN``. Everything else runs
the eager code.
"""
from __future__ import annotations

import functools
import importlib.util
import os

import torch

MAX_HIDDEN = 65536  # one row in one block of registers (as Liger-Kernel's limit)
KERNEL_DEVICES = {"cuda"}  # the tests add "cpu" to run the dispatch under TRITON_INTERPRET=1


@functools.cache
def available() -> bool:
    """Triton importable (installed with the ``kernels`` extra; Linux only)."""
    return importlib.util.find_spec("triton") is not None


def enabled() -> bool:
    """False when the environment says ``REPLIB_TRITON=0`` (the switch back to eager)."""
    return os.environ.get("REPLIB_TRITON", "1") != "0" and available()


def use_kernels(x: torch.Tensor) -> bool:
    """Whether a norm module should run its fused kernel on ``x`` (see the module docstring)."""
    return (x.device.type in KERNEL_DEVICES and 0 < x.numel() and x.shape[-1] <= MAX_HIDDEN
            and not torch.compiler.is_compiling() and enabled())


def rms_norm(x, weight, eps: float):
    r""":math:`w \odot x / \sqrt{\mathrm{mean}(x^2) + \epsilon}` (``F.rms_norm``)."""
    from . import rms
    return rms.RMSNormFunction.apply(x, weight, eps, False)


def crms_norm(x, weight, eps: float):
    r"""CRMSNorm: :math:`w \odot x / \sqrt{(\sum x^2 + (\sum x)^2)/(d+1) + \epsilon}`."""
    from . import rms
    return rms.RMSNormFunction.apply(x, weight, eps, True)


def layer_norm(x, weight, bias, eps: float):
    r""":math:`w \odot (x-\mu)/\sqrt{\sigma^2+\epsilon} + b` (``F.layer_norm``)."""
    from . import layernorm
    return layernorm.LayerNormFunction.apply(x, weight, bias, eps)


def dyt(x, alpha, weight, bias):
    r""":math:`w \odot \tanh(\alpha x) + b` with a learnable scalar :math:`\alpha`."""
    from . import tanh
    return tanh.DyTFunction.apply(x, alpha, weight, bias)


def bhyt(x, weight, lam, rstd, kappa: float, eps: float):
    r""":math:`w \odot \tanh(\lambda r x)`, :math:`r = (1/\kappa)/\sqrt{\mathrm{mean}(x^2)+\epsilon}`
    computed per row, or the given ``rstd`` (shape ``x.shape[:-1] + (1,)``, differentiable)."""
    from . import tanh
    return tanh.BHyTFunction.apply(x, weight, lam, rstd, kappa, eps)


def seednorm(x, weight, alpha, beta, eps: float, heads: int):
    r"""SeeDNorm, per head :math:`k`:
    :math:`(\tanh(x_k\cdot\beta_k)\alpha_k + \gamma_k) \odot x_k/\mathrm{RMS}(x)`."""
    from . import seednorm_kernel
    return seednorm_kernel.SeeDNormFunction.apply(x, weight, alpha, beta, eps, heads)


__all__ = ["MAX_HIDDEN", "available", "enabled", "use_kernels", "rms_norm", "crms_norm",
           "layer_norm", "dyt", "bhyt", "seednorm"]
