"""The optimizer registry: every optimizer of the book, built by name for a model.

Like the norm registry: ``create_optimizer("sinkgd", model, lr=1e-2)`` returns a
``torch.optim.Optimizer`` over ``model``'s parameters with the book's parameter split for that
optimizer (the matrices of the attention/MLP sub-layers get the normalised update, embeddings,
head and norm gains Adam), at peak learning rate ``lr``. The all-optimizers page and the common
tests iterate over :func:`list_optimizers`, so a new entry is benchmarked and tested without being
listed by hand.

Wrappers that act on another optimizer's step (:class:`~replib.optim.NaP`) are not entries: they
need an architecture with a normalisation layer before every nonlinearity (chapter 12's MLP), which
the shared transformer does not have.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..errors import ReplibError
from .conda import Conda, conda_groups
from .sinkgd import SinkGD, sinkgd_groups

Factory = Callable[..., torch.optim.Optimizer]
_REGISTRY: dict[str, Factory] = {}


def register_optimizer(name: str) -> Callable[[Factory], Factory]:
    """Register ``factory(model, lr, **options) -> Optimizer`` under ``name``; its docstring's first
    line describes the entry on the all-optimizers page."""
    def add(factory: Factory) -> Factory:
        if name in _REGISTRY:
            raise ReplibError(f"optimizer {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return add


def list_optimizers() -> list[str]:
    return list(_REGISTRY)  # registration order: the baselines first


def describe_optimizer(name: str) -> str:
    """The first line of the entry's docstring."""
    return (_factory(name).__doc__ or "").strip().splitlines()[0]


def create_optimizer(name: str, model: nn.Module, lr: float, **options) -> torch.optim.Optimizer:
    """The optimizer registered as ``name`` over ``model`` at peak learning rate ``lr``."""
    return _factory(name)(model, lr, **options)


def _factory(name: str) -> Factory:
    if name not in _REGISTRY:
        raise ReplibError(f"unknown optimizer {name!r}; valid: {', '.join(list_optimizers())}")
    return _REGISTRY[name]


@register_optimizer("adamw")
def adamw(model, lr, betas=(0.9, 0.999), weight_decay=0.0):
    """AdamW (torch) on every parameter: the baseline."""
    return torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)


@register_optimizer("sgd-momentum")
def sgd_momentum(model, lr, momentum=0.9, weight_decay=0.0):
    """SGD with heavy-ball momentum 0.9 (torch) on every parameter: the stateful non-adaptive baseline."""
    return torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)


@register_optimizer("sinkgd")
def sinkgd(model, lr, alpha=0.05, sinkhorn_iters=5, betas=(0.9, 0.999), weight_decay=0.0):
    """SinkGD (chapter 06): stateless SR-Sinkhorn (L = 5) at alpha*lr on attn/MLP matrices, Adam at lr elsewhere."""
    return SinkGD(sinkgd_groups(model, lr, alpha), sinkhorn_iters=sinkhorn_iters, betas=betas,
                  weight_decay=weight_decay)


@register_optimizer("rownorm")
def rownorm(model, lr, alpha=0.05, betas=(0.9, 0.999), weight_decay=0.0):
    """Row-normalised SGD (chapter 06's ablation: one row step of SR-Sinkhorn), Adam elsewhere."""
    return sinkgd(model, lr, alpha, 0.5, betas, weight_decay)


@register_optimizer("conda")
def conda(model, lr, update_proj_gap=200, scale=0.25, betas=(0.9, 0.99), weight_decay=0.0):
    """Conda (chapter 30): column-normalised Adam in a projected basis on attn/MLP matrices, AdamW elsewhere."""
    return Conda(conda_groups(model, update_proj_gap=update_proj_gap, scale=scale), lr=lr,
                 betas=betas, weight_decay=weight_decay)


__all__ = ["create_optimizer", "describe_optimizer", "list_optimizers", "register_optimizer"]
