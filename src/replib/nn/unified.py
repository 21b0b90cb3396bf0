r"""Unified Normalization (UN; Yang et al. 2022, arXiv 2208.01313, ACM MM 2022).

An *offline* replacement for LayerNorm: per-channel statistics over every token of the batch
(like BatchNorm), so that at inference the layer is a fixed per-channel affine map that can be
folded into the next linear layer. Three devices make batch statistics behave inside a
Transformer; this module follows the official code (``hikvision-research/Unified-Normalization``,
``UN2dFunction`` / ``UN1d``) line by line where the paper and the code differ.

For an input :math:`x` of shape :math:`(\dots, C)`, step :math:`t = 1, 2, \dots` (the counter is
incremented *before* each training forward), window sizes :math:`W_f, W_b`, warm-up
:math:`T_w`, momentum :math:`m` and :math:`\epsilon`:

**Fluctuation smoothing, forward.** The current batch's second moment, with no mean subtraction,

.. math:: \sigma^2_t = \tfrac1n \textstyle\sum_{\text{real tokens}} x^2 \qquad (\text{per channel})

enters a ring buffer ``buffer_x2[t mod W_f]``. After the warm-up the layer normalises with the
*geometric mean* of the window, else with the current batch:

.. math:: v_t = \Big(\prod_{j=1}^{W_f} \text{buffer}_j\Big)^{1/W_f}
          \ \text{if } t > W_f,\ t \ge T_w,\ \text{not skipped};\qquad v_t = \sigma^2_t \ \text{otherwise}

.. math:: z = \frac{x}{\sqrt{v_t+\epsilon}},\qquad y = \gamma\odot z + \beta,\qquad
          \hat\sigma^2 \leftarrow m\,\hat\sigma^2 + (1-m)\, v_t

**Adaptive outlier filtration** (optional; the authors turn it on for vision, off for NLP).
With :math:`\rho` the (unbiased, scalar) variance of :math:`\sqrt{\text{buffer}}` *before* the
insertion, after the warm-up a batch is an outlier when for any channel the gap between the
arithmetic and the geometric mean of the window exceeds :math:`W_f\,\rho`; it is then skipped:
its buffer slot is overwritten by the running statistic :math:`\hat\sigma^2`, the current-batch
statistic is used, and the skip counter grows. With :math:`W_f = 1` every step is *treated* as
skipped (current-batch statistic, :math:`r = 1`, the exact current-batch projection in the
backward), but the skip counter counts only what the outlier test flags, and with one slot the
arithmetic and geometric means are equal, so the test does not fire once the buffer holds a
previous statistic (``skip = False if fp_buffer_size > 1 else True`` sets the flag, and only the
outlier branch increments ``skip_counter``: ``image_classification/models/unified_normalization/
unified_normalization.py``, ``UN2dFunction.forward``, commit
``0ce9bf26837f94c58ae5dd0d206ad3aa32d82d07``). We compute the test as the code does, rounding
included (at :math:`t = 1` with no warm-up the pre-insertion buffer is all zeros, so a one-ulp
gap between ``exp(log(v))`` and ``v`` could fire it, there as here).

**Fluctuation smoothing, backward** (custom, approximate by design). A compensation ratio

.. math:: r = \frac{\sqrt{v_t+\epsilon}}{\sqrt{\hat\sigma^2+\epsilon}}, \qquad
          r \leftarrow 1 \ \text{if } t \le \max(1000, T_w) \text{ or skipped, else }
          \mathrm{clamp}(r, \tfrac15, 5)

(with :math:`\hat\sigma^2` before this step's update) scales the incoming gradient,
:math:`g = \partial L/\partial y \odot \gamma \odot r`. The exact gradient of
:math:`x/\sqrt{\sigma^2+\epsilon}` through the statistic would subtract
:math:`\overline{g z}\,z`; UN subtracts a *smoothed* version of that projection instead:

.. math:: \overline{gz}_t = \mathrm{mean}_{\text{tokens}}(g\odot z),\quad
          \mu_t = \begin{cases}\overline{gz}_t & t\le W_b,\ t<T_w \text{ or skipped}\\
          \mathrm{mean}(\text{buffer\_gz}) & \text{otherwise}\end{cases},\quad
          \bar\mu \leftarrow m\,\bar\mu + (1-m)\,\mu_t

.. math:: \frac{\partial L}{\partial x} = \frac{g - \bar\mu \odot z}{\sqrt{v_t+\epsilon}}
          \quad(\mu_t \text{ instead of } \bar\mu \text{ when skipped}),\qquad
          \frac{\partial L}{\partial \gamma} = \textstyle\sum \frac{\partial L}{\partial y}\odot r\odot z,
          \qquad \frac{\partial L}{\partial \beta} = \textstyle\sum\frac{\partial L}{\partial y}

``buffer_gz[t mod W_b]`` receives :math:`\overline{gz}_t` (or :math:`\bar\mu` when skipped).

**Inference.** :math:`y = \gamma\odot x/\sqrt{\hat\sigma^2+\epsilon} + \beta`: a per-channel affine
map :math:`a\odot x + \beta`, which :func:`fold_into_linear` folds into the linear layer that reads
it, :math:`W' = W\,\mathrm{diag}(a)`, :math:`b' = b + W\beta`; :func:`fold_unified` does this for
every norm of a Pre-norm :class:`~replib.nn.TinyGPT` or :class:`~replib.nn.vit.TinyViT`, leaving no norm op.

``exact_grad=True`` builds the same forward with plain autograd through the current batch's
statistic (the exact gradient; the BP buffers are then left alone): the registry's float64
gradcheck uses it. The module also holds :class:`~replib.nn.vit.TinyViT`, the small vision Transformer of the
chapter's vision analog.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ReplibError
from .norms import create_norm, real_positions, register_norm


class _UNBackward(torch.autograd.Function):
    r""":math:`y = \gamma\odot z + \beta` with :math:`z = x/\sqrt{v+\epsilon}` and UN's smoothed,
    compensated backward (see the module docstring). ``state`` carries the module (for its BP
    buffers) and this step's flags; the buffers are updated in place during the backward pass."""

    @staticmethod
    def forward(ctx, x, weight, bias, var, r, state):
        z = x * torch.rsqrt(var + state["eps"])
        ctx.save_for_backward(z, var, weight, r)
        ctx.state = state
        return z * weight + bias

    @staticmethod
    def backward(ctx, grad_y):
        z, var, weight, r = ctx.saved_tensors
        s = ctx.state
        un, t, skip, m = s["module"], s["t"], s["skip"], s["momentum"]
        C = z.shape[-1]
        g = grad_y * weight * r  # gradient compensation: g = dL/dy * gamma * r
        gz = (g * z).reshape(-1, C).mean(0)  # mean over every token (padding included, as the code)
        with torch.no_grad():
            slot = t % un.bp_window
            # the skipped batch leaves the *old* EMA in the window
            un.buffer_gz[slot].copy_(un.ema_gz if skip else gz)
            early = t <= un.bp_window or t < un.warmup_iters or skip
            mu = gz if early else un.buffer_gz.mean(0)
            un.ema_gz.mul_(m).add_((1 - m) * mu)
            proj = mu if skip else un.ema_gz
        grad_x = (g - proj * z) * torch.rsqrt(var + s["eps"])
        dims = tuple(range(grad_y.dim() - 1))
        grad_w = (grad_y * r * z).sum(dims)  # note r * z, not z
        grad_b = grad_y.sum(dims)
        return grad_x, grad_w, grad_b, None, None, None


@register_norm("unified", exact_grad={"exact_grad": True})
class UnifiedNorm(nn.Module):
    r"""Unified Normalization over the last dimension (the official ``UN1d``).

    Args: ``window`` (:math:`W_f = W_b`, or a pair ``(W_f, W_b)``), ``warmup_iters`` (the
    official default 4000), ``outlier_filtration`` (official default False: the authors' advice is
    False for NLP, True for vision), ``eps``, ``momentum`` (0.9, for both the forward and backward
    EMAs), ``compensation_after`` (the 1000 in the gate :math:`t\le\max(1000, T_w)` that holds
    :math:`r` at 1; exposed so a scaled-down run can scale it), ``exact_grad`` (plain autograd
    through the current statistic instead of the custom backward).

    ``forward(x, mask=None)``: ``mask`` (``x.shape[:-1]``, True = a real token) keeps padding
    out of the statistics. Buffers: ``running_var``, ``ema_gz``, ``buffer_x2``, ``buffer_gz``,
    ``iters``, ``skip_counter`` (all in the state dict). To rerun the warm-up after loading
    pretrained weights (the authors' fine-tuning tip), call :meth:`reset_iters`.
    """

    def __init__(self, dim: int, window: int | tuple[int, int] = 4, warmup_iters: int = 4000,
                 outlier_filtration: bool = False, eps: float = 1e-5, momentum: float = 0.9,
                 compensation_after: int = 1000, exact_grad: bool = False):
        super().__init__()
        fp, bp = (window, window) if isinstance(window, int) else tuple(window)
        if fp < 1 or bp < 1:
            raise ReplibError(f"UN windows must be >= 1, got {window!r}")
        self.dim, self.fp_window, self.bp_window = dim, int(fp), int(bp)
        self.warmup_iters, self.outlier_filtration = int(warmup_iters), bool(outlier_filtration)
        self.eps, self.momentum = eps, momentum
        self.compensation_after, self.exact_grad = int(compensation_after), bool(exact_grad)
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("ema_gz", torch.zeros(dim))
        self.register_buffer("buffer_x2", torch.zeros(self.fp_window, dim))
        self.register_buffer("buffer_gz", torch.zeros(self.bp_window, dim))
        self.register_buffer("iters", torch.zeros(1, dtype=torch.long))
        self.register_buffer("skip_counter", torch.zeros(1, dtype=torch.long))
        self._t: int | None = None  # host copy of ``iters`` (no device sync per step)

    def extra_repr(self) -> str:
        return (f"{self.dim}, window=({self.fp_window}, {self.bp_window}), "
                f"warmup_iters={self.warmup_iters}, outlier_filtration={self.outlier_filtration}, "
                f"eps={self.eps}, momentum={self.momentum}, "
                f"compensation_after={self.compensation_after}, exact_grad={self.exact_grad}")

    # -- the step counter ------------------------------------------------------------------
    def _load_from_state_dict(self, *args, **kwargs):
        super()._load_from_state_dict(*args, **kwargs)
        self._t = None  # re-read from the loaded buffer

    def reset_iters(self) -> None:
        """Set the step counter to 0, so the warm-up phase runs again (fine-tuning)."""
        self.iters.zero_()
        self._t = 0

    def _tick(self) -> int:
        if self._t is None:
            self._t = int(self.iters.item())
        self._t += 1
        self.iters.fill_(self._t)
        return self._t

    @property
    def step(self) -> int:
        """Training forwards done so far (:math:`t` of the last one)."""
        return int(self.iters.item()) if self._t is None else self._t

    # -- the forward statistic -------------------------------------------------------------
    @torch.no_grad()
    def _statistic(self, t: int, sigma2: torch.Tensor) -> tuple[torch.Tensor, bool]:
        r"""Insert :math:`\sigma^2_t` in the window, filter outliers, pick :math:`v_t`."""
        W = self.fp_window
        skip = W == 1  # one slot: current-batch statistic, r = 1 (the official code), not counted
        slot = t % W
        check = self.outlier_filtration and t >= self.warmup_iters
        if check:  # the variance of sqrt(buffer) over all W*C entries, before the insertion
            recorded = (self.buffer_x2.sqrt().var() if self.buffer_x2.numel() > 1
                        else self.buffer_x2.new_tensor(float("nan")))  # one entry: no variance
        self.buffer_x2[slot].copy_(sigma2)
        if check:
            am = self.buffer_x2.mean(0)
            gm = self.buffer_x2.log().mean(0).exp()
            if bool(((am - gm) > recorded * W).any()):  # W = 1: am == gm, so (rounding aside) never
                self.buffer_x2[slot].copy_(self.running_var)
                skip = True
                self.skip_counter += 1
        if t <= W or t < self.warmup_iters or skip:
            return sigma2, skip
        return self.buffer_x2.log().mean(0).exp(), skip  # geometric mean of the window

    def _ratio(self, t: int, var: torch.Tensor, skip: bool) -> torch.Tensor:
        r = torch.sqrt(var + self.eps) / torch.sqrt(self.running_var + self.eps)
        if t <= max(self.compensation_after, self.warmup_iters) or skip:
            return torch.ones_like(r)
        return r.clamp(0.2, 5.0)

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        r"""The inference map :math:`y = a\odot x + b`: ``a = γ/sqrt(running_var+eps)``, ``b = β``."""
        return self.weight * torch.rsqrt(self.running_var + self.eps), self.bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.dim:
            raise ReplibError(f"expected last dimension {self.dim}, got {tuple(x.shape)}")
        if not self.training:  # the official order of operations (bit-exact with the formula)
            return self.weight * (x / torch.sqrt(self.running_var + self.eps)) + self.bias
        real = real_positions(x, mask)
        if real.shape[0] < 1:
            raise ReplibError("UN needs at least one real token in training")
        t = self._tick()
        sigma2_grad = real.pow(2).mean(0) if self.exact_grad else None
        sigma2 = sigma2_grad.detach() if self.exact_grad else real.detach().pow(2).mean(0)
        var, skip = self._statistic(t, sigma2)
        r = self._ratio(t, var, skip)
        with torch.no_grad():
            self.running_var.mul_(self.momentum).add_((1 - self.momentum) * var)
        if self.exact_grad:  # the same forward, differentiated through this batch's statistic
            if var is not sigma2:  # geometric mean: this batch's slot carries the gradient
                slot = t % self.fp_window
                logs = self.buffer_x2.log()
                var = torch.exp((logs.sum(0) - logs[slot] + sigma2_grad.log()) / self.fp_window)
            else:
                var = sigma2_grad
            return x * torch.rsqrt(var + self.eps) * self.weight + self.bias
        state = {"module": self, "t": t, "skip": skip, "momentum": self.momentum, "eps": self.eps}
        return _UNBackward.apply(x, self.weight, self.bias, var, r, state)


# -- folding into the next linear layer ----------------------------------------------------------

@torch.no_grad()
def fold_into_linear(norm: UnifiedNorm, linear: nn.Linear) -> nn.Linear:
    r"""A linear layer equal to ``linear(norm(x))`` with ``norm`` in inference mode.

    With :math:`\mathrm{UN}(x) = a\odot x + \beta`, :math:`a = \gamma/\sqrt{\hat\sigma^2+\epsilon}`:

    .. math:: W(a\odot x + \beta) + b = \underbrace{W\,\mathrm{diag}(a)}_{W'}\,x
              + \underbrace{b + W\beta}_{b'}

    The new layer always has a bias (``b'`` is non-zero even when ``linear`` has none).
    """
    if not isinstance(norm, UnifiedNorm):
        raise ReplibError(f"only UnifiedNorm folds into a linear layer, not {type(norm).__name__}")
    a, beta = norm.affine()
    W = linear.weight
    out = nn.Linear(linear.in_features, linear.out_features, bias=True,
                    device=W.device, dtype=W.dtype)
    out.weight.copy_(W * a)
    out.bias.copy_(W @ beta + (linear.bias if linear.bias is not None else 0))
    return out


def _fold_pairs(model: nn.Module):
    """(owner, norm attribute, linear owner, linear attribute) for every foldable norm."""
    cfg = getattr(model, "cfg", None)
    if cfg is not None and (getattr(cfg, "placement", "pre") != "pre"
                            or getattr(cfg, "layer_scaling", False)):
        raise ReplibError("folding needs Pre-norm blocks (placement 'pre', no layer_scaling)")
    if not hasattr(model, "blocks"):
        raise ReplibError(f"{type(model).__name__} has no transformer blocks to fold")
    for block in model.blocks:
        yield block, "norm1", block.attn, "qkv"
        yield block, "norm2", block.mlp, "fc"
    yield model, "norm_f", model, "head"


@torch.no_grad()
def fold_unified(model: nn.Module) -> nn.Module:
    """A copy of a Pre-norm :class:`~replib.nn.TinyGPT` or :class:`~replib.nn.vit.TinyViT` in which every UN
    layer is folded into the linear layer that reads it and replaced by the identity.

    In eval mode the copy computes the same function with no normalisation op at all."""
    folded = copy.deepcopy(model).eval()
    for owner, norm_name, lin_owner, lin_name in _fold_pairs(folded):
        norm = getattr(owner, norm_name)
        if not isinstance(norm, UnifiedNorm):
            raise ReplibError(f"{norm_name} is a {type(norm).__name__}, not a UnifiedNorm")
        setattr(lin_owner, lin_name, fold_into_linear(norm, getattr(lin_owner, lin_name)))
        setattr(owner, norm_name, create_norm("identity", norm.dim))
    return folded


def un_layers(model: nn.Module) -> list[UnifiedNorm]:
    return [m for m in model.modules() if isinstance(m, UnifiedNorm)]


def skip_count(model: nn.Module) -> int:
    """Batches skipped by outlier filtration, summed over every UN layer of ``model``."""
    return sum(int(m.skip_counter.item()) for m in un_layers(model))


__all__ = ["UnifiedNorm", "fold_into_linear", "fold_unified", "skip_count", "un_layers"]
