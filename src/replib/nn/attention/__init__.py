"""The attention registry: every token mixer of the book, built by name.

Like the norm registry (:mod:`replib.nn.norms`): ``create_attention("softmax", d_model=128,
n_head=4)`` returns a module mapping a residual stream ``x`` of shape ``(B, T, d_model)`` to a
causal mix of its tokens of the same shape. TinyGPT takes the name as an option
(``GPTConfig(attention="softmax")``), so a chapter about an attention variant changes one argument.

Every entry subclasses :class:`Attention`: it projects ``x`` to ``q, k, v`` of shape
``(B, H, T, D)`` with one ``qkv`` linear layer, mixes them with :meth:`Attention.mix` (the idea a
paper changes), and writes back with ``proj``. Kernels that approximate or replace softmax are
compared on the same ``q, k, v`` through ``mix``; variants that need the input itself (gates) get
it as ``x``. The common tests iterate over :func:`list_attentions`, so a new entry is tested for
causality, shapes and gradients, and the attention zoo benchmarks it, without being listed by hand.
"""
from __future__ import annotations

from typing import Callable

from torch import nn

from ...errors import ReplibError
from .base import Attention

_REGISTRY: dict[str, type[Attention]] = {}


def register_attention(name: str) -> Callable[[type[Attention]], type[Attention]]:
    """Register an :class:`Attention` subclass under ``name``."""
    def add(cls: type[Attention]) -> type[Attention]:
        if name in _REGISTRY:
            raise ReplibError(f"attention {name!r} is already registered")
        if not issubclass(cls, Attention):
            raise ReplibError(f"attention {name!r} must subclass replib.nn.attention.Attention")
        _REGISTRY[name] = cls
        cls.registry_name = name
        return cls

    return add


def list_attentions() -> list[str]:
    return sorted(_REGISTRY)


def create_attention(name: str, d_model: int, n_head: int, **kwargs) -> nn.Module:
    """Build the attention registered as ``name`` (keyword arguments: see :class:`Attention`)."""
    if name not in _REGISTRY:
        raise ReplibError(f"unknown attention {name!r}; valid: {', '.join(list_attentions())}")
    return _REGISTRY[name](d_model, n_head, **kwargs)


# Modules that add entries on import (one module per idea).
from . import softmax, affine, gated, linear, nala, transnormer, hyper, regression  # noqa: E402,F401  isort: skip

__all__ = ["Attention", "create_attention", "list_attentions", "register_attention"]
