r"""Looking inside a residual network with hooks: the residual stream, gradients, layer importance.

Works on any model with a ``blocks`` ``ModuleList`` whose blocks map the residual stream to the
residual stream (``TinyGPT``). Nothing here copies a forward pass: forward hooks read (or, to skip
a block, replace) what the model's own forward computes.

- residual stream after block :math:`\ell` (index 0 is the stream entering block 1): its variance
  over features and its RMS, averaged over tokens;
- per-block gradient norm :math:`\lVert \nabla_{\theta_\ell} L \rVert_2` over the block's parameters;
- angular distance between consecutive hidden states (ShortGPT's block influence, used by the
  Mix-LN and LayerNorm Scaling papers): :math:`d(\ell) = \arccos(\cos(h_\ell, h_{\ell+1}))/\pi`;
- layer-drop :math:`\Delta L_\ell`: the loss with block :math:`\ell` skipped minus the full loss.
"""
from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
from torch import nn

from ..errors import ReplibError


def _blocks(model: nn.Module) -> nn.ModuleList:
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, nn.ModuleList) or not len(blocks):
        raise ReplibError(f"{type(model).__name__} has no `blocks` ModuleList to instrument")
    return blocks


@contextmanager
def capture_residuals(model: nn.Module) -> Iterator[list[torch.Tensor]]:
    """Collect the residual stream entering block 1 and leaving every block (detached)."""
    blocks = _blocks(model)
    states: list[torch.Tensor] = []
    handles = [blocks[0].register_forward_pre_hook(lambda m, args: states.append(args[0].detach()))]
    handles += [b.register_forward_hook(lambda m, args, out: states.append(out.detach()))
                for b in blocks]
    try:
        yield states
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def hidden_states(model: nn.Module, idx: torch.Tensor, **kw) -> list[torch.Tensor]:
    """``[h_0, h_1, ..., h_L]``: the residual stream before block 1 and after each block."""
    with capture_residuals(model) as states:
        model(idx, **kw)
    return list(states)


def residual_stats(model: nn.Module, idx: torch.Tensor, **kw) -> dict[str, list[float]]:
    """Per-layer variance (over features, mean over tokens) and RMS of the residual stream."""
    hs = hidden_states(model, idx, **kw)
    return {"variance": [float(h.float().var(-1, unbiased=False).mean()) for h in hs],
            "rms": [float(h.float().pow(2).mean().sqrt()) for h in hs]}


def block_grad_norms(model: nn.Module) -> list[float]:
    """L2 norm of each block's gradient over all its parameters (call after ``backward``)."""
    norms = []
    for block in _blocks(model):
        grads = [p.grad.detach().float().pow(2).sum() for p in block.parameters() if p.grad is not None]
        norms.append(float(torch.stack(grads).sum().sqrt()) if grads else math.nan)
    return norms


def angular_distances(model: nn.Module, idx: torch.Tensor, last_token: bool = True,
                      **kw) -> list[float]:
    """:math:`\\arccos(\\cos(h_\\ell, h_{\\ell+1}))/\\pi` for every block, averaged over sequences
    (``last_token=True``: ShortGPT's last position only; else averaged over all tokens too)."""
    hs = hidden_states(model, idx, **kw)
    out = []
    for a, b in zip(hs[:-1], hs[1:]):
        if last_token:
            a, b = a[:, -1], b[:, -1]
        # float64 on the CPU: arccos near 1 needs the precision, and MPS has no float64
        cos = torch.nn.functional.cosine_similarity(a.cpu().double(), b.cpu().double(), dim=-1)
        cos = cos.clamp(-1, 1)
        out.append(float((torch.arccos(cos) / math.pi).mean()))
    return out


@contextmanager
def skip_block(model: nn.Module, index: int) -> Iterator[None]:
    """Within the context, block ``index`` passes its input through unchanged."""
    blocks = _blocks(model)
    if not 0 <= index < len(blocks):
        raise ReplibError(f"block index {index} out of range 0..{len(blocks) - 1}")
    handle = blocks[index].register_forward_hook(lambda m, args, out: args[0])
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def layer_drop_deltas(model: nn.Module, loss_fn: Callable[[nn.Module], torch.Tensor]) -> list[float]:
    """Loss increase when each block in turn is skipped: ``loss_fn(model)`` with vs without it."""
    base = float(loss_fn(model))
    deltas = []
    for i in range(len(_blocks(model))):
        with skip_block(model, i):
            deltas.append(float(loss_fn(model)) - base)
    return deltas
