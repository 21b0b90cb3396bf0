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


# --------------------------------------------------------------------------------------------------
# Plasticity instruments (chapter 12, Normalize-and-Project): parameter norms, the effective
# learning rate they imply for scale-invariant layers, and dormant ReLU units.

def weight_norms(tensors) -> list[float]:
    r"""Frobenius norm :math:`\lVert W\rVert_F` of each tensor (or of each tuple, jointly)."""
    out = []
    for t in tensors:
        group = (t,) if isinstance(t, torch.Tensor) else tuple(t)
        # float64 stays float64 (exact checks); half precision is summed in float32
        out.append(float(sum((x.detach() if x.dtype == torch.float64 else x.detach().float()).pow(2).sum()
                             for x in group).sqrt()))
    return out


def effective_lr(lr: float, norms, kind: str = "sgd") -> list[float]:
    r"""The effective learning rate of a scale-invariant layer with weight norm :math:`\lVert W\rVert`:
    :math:`\eta/\lVert W\rVert^2` under SGD (the step on the unit sphere), :math:`\eta/\lVert W\rVert`
    under Adam (whose step does not scale with the gradient)."""
    powers = {"sgd": 2.0, "adam": 1.0}
    if kind not in powers:
        raise ReplibError(f"unknown optimizer kind {kind!r}; valid: {', '.join(powers)}")
    return [lr / float(n) ** powers[kind] for n in norms]


@contextmanager
def capture_activations(model: nn.Module, types: tuple[type, ...] = (nn.ReLU,)) -> Iterator[list[torch.Tensor]]:
    """Collect the (detached) outputs of every module of ``types`` in forward order."""
    acts: list[torch.Tensor] = []
    mods = [m for m in model.modules() if isinstance(m, types)]
    if not mods:
        raise ReplibError(f"{type(model).__name__} has no {', '.join(t.__name__ for t in types)} module to watch")
    handles = [m.register_forward_hook(lambda m, args, out: acts.append(out.detach())) for m in mods]
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


def dormant_units(acts: list[torch.Tensor], tau: float = 0.0) -> list[torch.Tensor]:
    r"""Per layer, a boolean per unit: dormant on the probe batch.

    ReDo's score (Sokar et al. 2023): :math:`s_i = \mathbb E_x|h_i(x)| \,/\, \tfrac1H\sum_j
    \mathbb E_x|h_j(x)|`; unit :math:`i` is :math:`\tau`-dormant when :math:`s_i\le\tau`. With
    ``tau=0`` a unit is dormant when it is zero on every probe input (a dead ReLU). Units are the
    last dimension; every other dimension (batch, positions) is averaged.
    """
    out = []
    for a in acts:
        score = a.abs().reshape(-1, a.shape[-1]).float().mean(0)
        if tau > 0:
            score = score / score.mean().clamp_min(1e-12)
        out.append(score <= tau)
    return out


def dormant_fraction(acts: list[torch.Tensor], tau: float = 0.0) -> float:
    """The fraction of all units (every layer together) that are dormant on the probe batch."""
    flags = dormant_units(acts, tau)
    total = sum(f.numel() for f in flags)
    if not total:
        raise ReplibError("no units to count")
    return float(sum(int(f.sum()) for f in flags)) / total
