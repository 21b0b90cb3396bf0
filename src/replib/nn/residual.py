"""Residual networks of ``n`` modules with scaled branches, and their explicit path expansion.

Dherin & Munn, *On residual network depth* (arXiv 2510.03470, 2025), write a depth-``n`` residual
tower ``x_k = x_{k-1} + lambda * f_k(x_{k-1})`` as a hierarchical sum over its ``2^n``
computation paths. For linear branches ``f_k(x) = A_k x`` the expansion is exact and elementary::

    y = (I + lam A_n) ... (I + lam A_1) x = sum_{S subset {1..n}} lam^|S| A_S x,

with ``A_S`` the product of the ``A_k``, ``k in S``, later indices on the left. There are
``C(n, j)`` paths of length ``j``, each weighted ``lam^j``; the weighted path mass is
``(1 + lam)^n``. Scaling the branches by ``lam = 1/n`` or ``1/sqrt(n)`` keeps that mass (and the
output norm) bounded as ``n`` grows. The general (nonlinear) form of the paper's theorem is not
implemented here; only the linear expansion and the first-order (``lam^1``) term.
"""
from __future__ import annotations

import itertools
import math
from typing import Callable, Sequence

import torch
from torch import nn

from ..errors import ReplibError
from .mlp import init_linear
from .norms import Identity, create_norm

SCALINGS = ("none", "1/n", "1/sqrt(n)")


def branch_scale(scaling: str | float, n: int) -> float:
    """The branch multiplier ``lambda`` for ``n`` residual modules.

    ``"none"`` -> 1, ``"1/n"`` -> 1/n, ``"1/sqrt(n)"`` -> 1/sqrt(n); a number is used as it is.
    """
    if n < 1:
        raise ReplibError(f"need at least one residual module, got n={n}")
    if isinstance(scaling, (int, float)) and not isinstance(scaling, bool):
        return float(scaling)
    if scaling == "none":
        return 1.0
    if scaling == "1/n":
        return 1.0 / n
    if scaling == "1/sqrt(n)":
        return 1.0 / math.sqrt(n)
    raise ReplibError(f"unknown branch scaling {scaling!r}; valid: {', '.join(SCALINGS)} or a number")


class ResidualBlock(nn.Module):
    """``x + lam * alpha * f(norm_pre(x))``, one residual module.

    ``branch``: ``"linear"`` (``f(x) = A x``, no bias) or ``"mlp"`` (``W2 relu(W1 x)``, He init).
    ``norm`` (a registry name) sits before the branch (``norm_at="pre"``, Pre-LN style) or inside
    it after each linear layer (``norm_at="branch"``, the BatchNorm-in-branch ResNet).
    ``skipinit=True`` adds a learnable scalar ``alpha`` initialised at 0 (SkipInit).
    """

    def __init__(self, width: int, lam: float = 1.0, *, branch: str = "mlp", norm: str = "identity",
                 norm_at: str = "pre", skipinit: bool = False, bias: bool = True,
                 init: str = "he", linear_std: float = 1.0):
        super().__init__()
        if branch not in ("linear", "mlp"):
            raise ReplibError(f"unknown branch {branch!r}; valid: linear, mlp")
        if norm_at not in ("pre", "branch"):
            raise ReplibError(f"unknown norm position {norm_at!r}; valid: pre, branch")
        self.lam, self.branch, self.norm_at = float(lam), branch, norm_at
        inner = norm if norm_at == "branch" else "identity"
        self.pre = create_norm(norm if norm_at == "pre" else "identity", width)
        if branch == "linear":
            self.fc1 = nn.Linear(width, width, bias=False)
            nn.init.normal_(self.fc1.weight, std=linear_std / math.sqrt(width))
            self.n1 = create_norm(inner, width)
        else:
            self.fc1, self.fc2 = nn.Linear(width, width, bias=bias), nn.Linear(width, width, bias=bias)
            init_linear(self.fc1, init)
            init_linear(self.fc2, init)
            self.n1, self.n2 = create_norm(inner, width), create_norm(inner, width)
        self.alpha = nn.Parameter(torch.zeros(())) if skipinit else None

    def f(self, x: torch.Tensor) -> torch.Tensor:
        """The branch ``f_k`` (without ``lam``), applied to the block's input."""
        h = self.n1(self.fc1(self.pre(x)))
        if self.branch == "mlp":
            h = self.n2(self.fc2(torch.relu(h)))
        return h if self.alpha is None else self.alpha * h

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.lam * self.f(x)


class ResidualTower(nn.Module):
    """``n`` residual modules ``x_k = x_{k-1} + lam f_k(x_{k-1})`` with ``lam = branch_scale(scaling, n)``."""

    def __init__(self, width: int, n: int, scaling: str | float = "none", **block_kw):
        super().__init__()
        self.lam = branch_scale(scaling, n)
        self.blocks = nn.ModuleList(ResidualBlock(width, self.lam, **block_kw) for _ in range(n))

    @property
    def homogeneous(self) -> bool:
        """True when ``tower(c x) = c tower(x)`` for ``c > 0`` (no norm, no nonzero bias)."""
        for b in self.blocks:
            norms = [b.pre, b.n1] + ([b.n2] if b.branch == "mlp" else [])
            if not all(isinstance(m, Identity) for m in norms):
                return False
            linears = [b.fc1] + ([b.fc2] if b.branch == "mlp" else [])
            if any(m.bias is not None and bool(m.bias.detach().abs().max() > 0) for m in linears):
                return False
        return True

    def states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``[x_0, x_1, ..., x_n]``."""
        out = [x]
        for b in self.blocks:
            x = b(x)
            out.append(x)
        return out

    @torch.no_grad()
    def log_growth(self, x: torch.Tensor) -> torch.Tensor:
        """``log(||x_k|| / ||x_0||)`` for ``k = 0..n``, per sample: shape ``(n + 1, batch)``.

        A positively homogeneous tower is renormalised after every module and the logs add up, so
        an exponential growth that would overflow float32 is still measured exactly.
        """
        renorm = self.homogeneous
        logs = [torch.zeros(x.shape[0], device=x.device, dtype=x.dtype)]
        acc = torch.zeros_like(logs[0])
        n0 = x.norm(dim=-1)
        for b in self.blocks:
            x = b(x)
            nrm = x.norm(dim=-1)
            if renorm:
                acc = acc + nrm.log()
                x = x / nrm[:, None]
                logs.append(acc.clone())
            else:
                logs.append(nrm.log() - n0.log())
        if renorm:  # the first step measured ||x_1||, not ||x_1|| / ||x_0||
            logs = [logs[0]] + [lg - n0.log() for lg in logs[1:]]
        return torch.stack(logs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for b in self.blocks:
            x = b(x)
        return x


class ResidualNet(nn.Module):
    """A classifier: ``Linear(d_in, width)`` stem, a :class:`ResidualTower`, ``Linear(width, d_out)`` head."""

    def __init__(self, d_in: int, width: int, n: int, d_out: int, scaling: str | float = "none",
                 **block_kw):
        super().__init__()
        self.stem = nn.Linear(d_in, width)
        init_linear(self.stem, "lecun")
        self.tower = ResidualTower(width, n, scaling, **block_kw)
        self.head = nn.Linear(width, d_out)
        init_linear(self.head, "lecun")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(self.stem(x)))


# ---- the residual expansion, explicit, for linear branches ------------------------------------

def linear_product(As: Sequence[torch.Tensor], x: torch.Tensor, lam: float) -> torch.Tensor:
    """The direct forward pass ``(I + lam A_n) ... (I + lam A_1) x`` (``x``: ``(..., d)``)."""
    for A in As:
        x = x + lam * x @ A.T
    return x


def subset_expansion(As: Sequence[torch.Tensor], x: torch.Tensor, lam: float) -> torch.Tensor:
    """The same output as the sum over all ``2^n`` subsets ``S`` of ``lam^|S| A_S x`` (brute force).

    ``A_S`` multiplies the chosen ``A_k`` in increasing ``k`` order (later indices on the left).
    """
    n = len(As)
    if n > 16:
        raise ReplibError(f"brute force over 2^{n} subsets refused; use order_terms for n > 16")
    y = torch.zeros_like(x)
    for size in range(n + 1):
        for S in itertools.combinations(range(n), size):
            term = x
            for k in S:  # increasing k: A_k applied after A_j for j < k
                term = term @ As[k].T
            y = y + lam ** size * term
    return y


def order_terms(As: Sequence[torch.Tensor], x: torch.Tensor, lam: float) -> list[torch.Tensor]:
    """The expansion grouped by order: ``T_j = lam^j sum_{|S| = j} A_S x`` for ``j = 0..n``.

    Computed by the recursion ``T_j^(k) = T_j^(k-1) + lam A_k T_{j-1}^(k-1)`` (``O(n^2)``
    products instead of ``2^n``); ``sum_j T_j`` is the network's output.
    """
    n = len(As)
    T = [x] + [torch.zeros_like(x) for _ in range(n)]
    for k, A in enumerate(As, start=1):
        for j in range(k, 0, -1):  # descending j so T[j-1] is still the previous step's
            T[j] = T[j] + lam * T[j - 1] @ A.T
    return T


def path_counts(n: int) -> list[int]:
    """Number of computation paths of each length ``j = 0..n`` through ``n`` modules: ``C(n, j)``."""
    return [math.comb(n, j) for j in range(n + 1)]


def subset_path_lengths(n: int) -> list[int]:
    """The length of every one of the ``2^n`` paths, enumerated by brute force (for checking counts)."""
    return [sum(bits) for bits in itertools.product((0, 1), repeat=n)]


def path_mass(n: int, lam: float, a: float = 1.0) -> float:
    """Weighted path mass ``sum_j C(n, j) (lam a)^j = (1 + lam a)^n``, the bound on ``||y|| / ||x||``
    when every ``||A_k|| <= a``."""
    return sum(c * (lam * a) ** j for j, c in enumerate(path_counts(n)))


def first_order(fs: Sequence[Callable[[torch.Tensor], torch.Tensor]], x: torch.Tensor,
                lam: float) -> torch.Tensor:
    """The expansion up to ``lam^1`` for any branches: ``x + lam sum_k f_k(x)``."""
    return x + lam * sum(f(x) for f in fs)
