r"""Normalize-and-Project (NaP): Lyle, Zheng, Khetarpal, van Hasselt, Pascanu, Martens & Dabney,
"Normalization and effective learning rates in reinforcement learning" (NeurIPS 2024,
arXiv 2407.01800).

If a layer's pre-activations are normalised, :math:`z = \mathrm{LN}(Wh)`, the layer computes the
same function at :math:`cW` for every :math:`c>0`; its gradient is orthogonal to :math:`W` and
scales as :math:`\nabla_{cW} = \nabla_W / c`. So under SGD the norm only grows,
:math:`\lVert W_{t+1}\rVert^2 = \lVert W_t\rVert^2 + \eta^2\lVert g\rVert^2`, and the step on the
sphere, the *effective learning rate*, decays as :math:`\eta/\lVert W\rVert^2` (Adam:
:math:`\propto \eta/\lVert W\rVert`). NaP (the paper's Algorithm 1, restated in the spec):

1. *Normalise*: a normalisation layer before every nonlinearity (built by the model, not here).
2. *Project*: store :math:`\rho_l = \lVert W_l^{(0)}\rVert_F` at initialisation for every weight
   that feeds a normalisation layer, and after each optimiser step set

   .. math:: W_l \leftarrow \rho_l\, W_l / \lVert W_l\rVert_F .

   Entries may group several tensors that are projected *jointly* (a weight with a bias that the
   norm also makes redundant: :math:`\mathrm{LN}(cWh + cb) = \mathrm{LN}(Wh+b)`).
3. The norm's scale and offset :math:`(\gamma,\beta)` of one layer are, optionally, projected
   jointly back to their initial joint norm (:math:`\sqrt d` for :math:`\gamma=1,\beta=0`);
   with a homogeneous activation (ReLU) this only rescales the layer's output. UNVERIFIED (the
   spec takes it from a third-party audit and the Plasticine re-implementation; the paper's own
   algorithm text was not read). The output layer is never projected.

``per_row=True`` projects each output row (neuron) separately (an ablation; the paper's default is
per layer) and ``every=k`` projects after every ``k``-th step (the paper reports every step and
every 1,000 steps alike, UNVERIFIED). There is no official code (the spec found none); every detail
above beyond the paper's abstract and poster summary is UNVERIFIED.

:class:`NaP` wraps any ``torch.optim.Optimizer``: it shares the wrapped optimiser's
``param_groups`` and ``state`` (so learning-rate schedulers act on it), delegates the step and
closure, then projects. :func:`nap_targets` finds, in a model, the weights that feed a
normalisation layer and the norms' :math:`(\gamma,\beta)`.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import nn

from ..errors import ReplibError

Group = tuple[torch.Tensor, ...]

# modules whose statistics make the preceding layer's output scale-invariant (by class name, so
# the registry's norms and torch's count alike without importing the registry here)
SCALE_INVARIANT_NORMS = ("LayerNorm", "RMSNorm", "MaskedBatchNorm", "ChannelLayerNorm", "GroupNorm",
                         "BatchNorm1d", "BatchNorm2d")


def _as_group(entry: torch.Tensor | Sequence[torch.Tensor], what: str) -> Group:
    group = (entry,) if isinstance(entry, torch.Tensor) else tuple(entry)
    if not group or not all(isinstance(t, torch.Tensor) for t in group):
        raise ReplibError(f"each {what} entry must be a tensor or a tuple of tensors")
    return group


def _group_norm(group: Group, per_row: bool) -> torch.Tensor:
    if per_row:
        return torch.stack([t.detach().reshape(t.shape[0], -1).pow(2).sum(1) for t in group]).sum(0).sqrt()
    return torch.stack([t.detach().pow(2).sum() for t in group]).sum().sqrt()


class NaP(torch.optim.Optimizer):
    """Normalize-and-Project around ``optimizer``.

    ``projected``: weights (or tuples projected jointly) to keep at their initial Frobenius norm;
    ``scale_offset``: ``(gamma, beta)`` pairs kept at their initial joint norm. Their initial norms
    are recorded here, at construction (build the wrapper before the first step).
    """

    def __init__(self, optimizer: torch.optim.Optimizer,
                 projected: Iterable[torch.Tensor | Sequence[torch.Tensor]],
                 scale_offset: Iterable[Sequence[torch.Tensor]] = (), *, per_row: bool = False,
                 every: int = 1):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise ReplibError(f"NaP wraps a torch.optim.Optimizer, got {type(optimizer).__name__}")
        if every < 1:
            raise ReplibError(f"every must be >= 1 step, got {every}")
        self.optimizer = optimizer
        self.defaults = optimizer.defaults
        self.per_row, self.every = per_row, int(every)
        self.groups = [_as_group(e, "projected") for e in projected]
        self.scale_groups = [_as_group(e, "scale_offset") for e in scale_offset]
        if not self.groups and not self.scale_groups:
            raise ReplibError("NaP needs at least one tensor to project")
        updated = {id(p) for g in optimizer.param_groups for p in g["params"]}
        seen: set[int] = set()
        for g in self.groups + self.scale_groups:
            for t in g:
                if id(t) not in updated:
                    raise ReplibError(f"NaP projects a tensor of shape {tuple(t.shape)} that the wrapped "
                                      "optimizer does not update")
                if id(t) in seen:
                    raise ReplibError(f"a tensor of shape {tuple(t.shape)} is listed twice for projection")
                seen.add(id(t))
        if per_row:
            for g in self.groups:
                if len({t.shape[0] for t in g}) != 1:
                    raise ReplibError("per-row projection needs the tensors of a group to share their rows")
        self.rho = [_group_norm(g, per_row) for g in self.groups]
        self.rho_scale = [_group_norm(g, False) for g in self.scale_groups]
        for r in self.rho + self.rho_scale:
            if not bool((r > 0).all()):
                raise ReplibError("NaP cannot project a tensor (or row) whose initial norm is zero")
        self.steps = 0
        self._optimizer_step_pre_hooks = {}
        self._optimizer_step_post_hooks = {}

    # the wrapped optimiser's groups and state are ours (schedulers, zero_grad, repr see them)
    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value):
        self.optimizer.param_groups = value

    @property
    def state(self):
        return self.optimizer.state

    @state.setter
    def state(self, value):
        self.optimizer.state = value

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict) -> None:
        self.optimizer.add_param_group(param_group)

    @torch.no_grad()
    def project(self) -> None:
        """Put every projected group back on its initial norm (per layer, or per row)."""
        for g, rho in zip(self.groups, self.rho):
            norm = _group_norm(g, self.per_row)
            for t in g:
                scale = (rho / norm).to(t.dtype)
                t.mul_(scale.view(-1, *[1] * (t.dim() - 1)) if self.per_row else scale)
        for g, rho in zip(self.scale_groups, self.rho_scale):
            scale = rho / _group_norm(g, False)
            for t in g:
                t.mul_(scale.to(t.dtype))

    def step(self, closure: Callable[[], torch.Tensor] | None = None):
        loss = self.optimizer.step(closure)
        self.steps += 1
        if self.steps % self.every == 0:
            self.project()
        return loss

    def state_dict(self) -> dict:
        return {"optimizer": self.optimizer.state_dict(),
                "nap": {"rho": [r.clone() for r in self.rho], "rho_scale": [r.clone() for r in self.rho_scale],
                        "steps": self.steps, "per_row": self.per_row, "every": self.every}}

    def load_state_dict(self, state_dict: dict) -> None:
        if set(state_dict) != {"optimizer", "nap"}:
            raise ReplibError("not a NaP state dict (keys 'optimizer' and 'nap' expected)")
        nap = state_dict["nap"]
        if (len(nap["rho"]), len(nap["rho_scale"])) != (len(self.rho), len(self.rho_scale)):
            raise ReplibError(f"the state dict projects {len(nap['rho'])}+{len(nap['rho_scale'])} groups, "
                              f"this wrapper {len(self.rho)}+{len(self.rho_scale)}")
        self.optimizer.load_state_dict(state_dict["optimizer"])
        self.rho = [r.clone().to(a.device) for r, a in zip(nap["rho"], self.rho)]
        self.rho_scale = [r.clone().to(a.device) for r, a in zip(nap["rho_scale"], self.rho_scale)]
        self.steps, self.per_row, self.every = int(nap["steps"]), bool(nap["per_row"]), int(nap["every"])

    def __repr__(self) -> str:
        return (f"NaP({type(self.optimizer).__name__}, {len(self.groups)} projected groups, "
                f"{len(self.scale_groups)} scale/offset pairs, per_row={self.per_row}, every={self.every})")


def nap_targets(model: nn.Module, scale_offset: bool = True
                ) -> tuple[list[Group], list[Group]]:
    """The weights of ``model`` that feed a normalisation layer, and those norms' (gamma, beta).

    Walks the modules in registration order: a ``Linear``/``Conv`` whose next leaf module is a
    scale-invariant norm (``SCALE_INVARIANT_NORMS``) gives one projected group, its weight and its
    bias (if any) jointly. With ``scale_offset`` the norm's ``(weight, bias)`` (where both exist)
    is a scale/offset pair. Other layers (the output head) are left alone.
    """
    leaves = [m for m in model.modules() if not list(m.children())]
    projected, pairs = [], []
    for layer, nxt in zip(leaves[:-1], leaves[1:]):
        if not isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            continue
        if type(nxt).__name__ not in SCALE_INVARIANT_NORMS:
            continue
        projected.append(tuple(t for t in (layer.weight, layer.bias) if t is not None))
        w, b = getattr(nxt, "weight", None), getattr(nxt, "bias", None)
        if scale_offset and w is not None and b is not None:
            pairs.append((w, b))
    if not projected:
        raise ReplibError(f"{type(model).__name__} has no linear/conv layer followed by a normalisation layer")
    return projected, pairs
