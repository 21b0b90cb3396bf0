"""The norm registry: every normalisation layer of the book, built by name.

In the style of timm's ``create_norm_layer``: ``create_norm("rmsnorm", 64)``. Every layer takes
``(..., dim)`` inputs and an optional padding ``mask`` of shape ``x.shape[:-1]`` (True = a real
token); only layers whose statistics cross examples (batch norms) use it. Later chapters add
entries with :func:`register_norm`; the all-norms benchmark and the common tests iterate over
:func:`list_norms`, so a new entry is benchmarked and tested without being listed by hand.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from . import kernels

_REGISTRY: dict[str, type[nn.Module]] = {}
_EXACT_GRAD: dict[str, dict] = {}


def register_norm(name: str, *, exact_grad: dict | None = None
                  ) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register a norm class under ``name``.

    ``exact_grad``: for a norm whose default backward is an approximation by design (PowerNorm,
    Unified Normalization), the keyword arguments that build it with the exact autograd backward.
    The common float64 gradcheck uses them; the module's own tests check the approximation.
    """
    def add(cls: type[nn.Module]) -> type[nn.Module]:
        if name in _REGISTRY:
            raise ReplibError(f"norm {name!r} is already registered")
        _REGISTRY[name] = cls
        _EXACT_GRAD[name] = dict(exact_grad or {})
        return cls

    return add


def exact_grad_kwargs(name: str) -> dict:
    """Keyword arguments that give ``name`` an exact backward (empty: its default is exact)."""
    if name not in _REGISTRY:
        raise ReplibError(f"unknown norm {name!r}; valid: {', '.join(list_norms())}")
    return dict(_EXACT_GRAD[name])


def list_norms() -> list[str]:
    return sorted(_REGISTRY)


def create_norm(name: str, dim: int, **kwargs) -> nn.Module:
    """Build the norm registered as ``name`` over the last dimension of size ``dim``."""
    if name not in _REGISTRY:
        raise ReplibError(f"unknown norm {name!r}; valid: {', '.join(list_norms())}")
    return _REGISTRY[name](dim, **kwargs)


def real_positions(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The rows of ``x`` flattened to ``(positions, dim)`` that are real tokens (``mask`` True);
    all of them without a mask. Batch-statistics norms compute their statistics on these."""
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        return flat
    if mask.shape != x.shape[:-1]:
        raise ReplibError(f"mask shape {tuple(mask.shape)} does not match input {tuple(x.shape[:-1])}")
    return flat[mask.reshape(-1)]


@register_norm("identity")
class Identity(nn.Module):
    """No normalisation: the baseline every norm is compared with."""

    def __init__(self, dim: int, **_):
        super().__init__()
        self.dim = dim

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


@register_norm("layernorm")
class LayerNorm(nn.Module):
    r"""Layer normalisation (Ba, Kiros & Hinton 2016, arXiv 1607.06450).

    Per example, over the ``H`` features of the last dimension:

    .. math:: \mu = \tfrac1H\sum_i a_i,\quad \sigma = \sqrt{\tfrac1H\sum_i (a_i-\mu)^2 + \epsilon},
              \quad h = g \odot \frac{a-\mu}{\sigma} + b

    Biased variance, ``eps = 1e-5`` as in the authors' code; identical in training and test.
    """

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True, bias: bool = True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine and bias else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if kernels.use_kernels(x):  # the fused Triton kernel on CUDA; this eager line is its oracle
            return kernels.layer_norm(x, self.weight, self.bias, self.eps)
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)


@register_norm("rmsnorm")
class RMSNorm(nn.Module):
    r"""Root-mean-square normalisation (Zhang & Sennrich 2019): no re-centring.

    .. math:: h = g \odot \frac{x}{\sqrt{\tfrac1d\sum_i x_i^2 + \epsilon}}

    For zero-mean ``x`` it equals LayerNorm with the same ``eps``.
    """

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if kernels.use_kernels(x):
            return kernels.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, (self.dim,), self.weight, self.eps)


@register_norm("crmsnorm")
class CRMSNorm(nn.Module):
    r"""Compressed RMSNorm (Jiang et al. 2023, arXiv 2305.14858) on the first ``d-1`` coordinates.

    A zero-mean vector :math:`x\in\mathbb R^d` is stored without its last coordinate,
    :math:`x_d = -\sum_{i<d} x_i`; CRMSNorm adds that coordinate's square back analytically:

    .. math:: \mathrm{CRMSNorm}(\tilde x) = \frac{\tilde x}
              {\sqrt{\big(\sum_i \tilde x_i^2 + (\sum_i \tilde x_i)^2\big)/d + \epsilon}}

    ``dim`` is the stored size ``d-1``; the normaliser divides by ``d = dim + 1``.
    """

    def __init__(self, dim: int, eps: float = 1e-5, affine: bool = True):
        super().__init__()
        self.dim, self.eps = dim, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if kernels.use_kernels(x):
            return kernels.crms_norm(x, self.weight, self.eps)
        sq = x.pow(2).sum(-1, keepdim=True) + x.sum(-1, keepdim=True).pow(2)
        y = x * torch.rsqrt(sq / (self.dim + 1) + self.eps)
        return y * self.weight if self.weight is not None else y


@register_norm("batchnorm")
class MaskedBatchNorm(nn.Module):
    r"""Batch normalisation over every token of a batch, skipping padding.

    Statistics per feature over all real positions ``mask == True`` (all of them without a mask):

    .. math:: \mu_c = \mathbb E[x_{\cdot c}],\quad \sigma_c^2 = \mathrm{Var}[x_{\cdot c}],\quad
              h = \gamma \odot \frac{x-\mu}{\sqrt{\sigma^2+\epsilon}} + \beta

    Training normalises with the batch's biased variance and updates running estimates with the
    unbiased one (as ``torch.nn.BatchNorm1d``); evaluation uses the running estimates.
    Padding positions pass through normalised with the same statistics but never shape them.
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True):
        super().__init__()
        self.dim, self.eps, self.momentum = dim, eps, momentum
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.training:
            flat = real_positions(x, mask)
            n = flat.shape[0]
            if n < 2:
                raise ReplibError("batch norm needs at least 2 real positions in training")
            mean = flat.mean(0)
            var = flat.var(0, unbiased=False)
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(var.detach() * n / (n - 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.weight is not None else y
