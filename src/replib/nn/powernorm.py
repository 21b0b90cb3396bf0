r"""Power Normalization (Shen, Yao, Gholami, Mahoney & Keutzer 2020, arXiv 2003.07845).

PowerNorm ("PN") replaces LayerNorm in a Transformer with a *batch* normaliser that

1. drops the mean subtraction and divides by a quadratic mean (the second moment) instead of the
   variance,
2. divides by a *running* quadratic mean :math:`\psi^2` in the forward pass, not the current
   batch's, and
3. uses an approximate backward pass, because the running statistic has no exact gradient.

Two versions live here, selected with ``version=``:

``"code"`` (the default) follows the authors' released layer, ``MaskPowerNorm`` /
``PowerFunction`` in ``fairseq/modules/norms/mask_powernorm.py`` of github.com/sIncerass/powernorm
(re-read for this chapter). It differs from the paper's pseudocode in four ways:

- a *GroupScaling* pre-step divides every token by its own root mean square within ``group_num``
  channel groups (no parameters; with ``group_num = 1`` this is RMSNorm without its gain);
- for the first ``warmup_iters`` training steps the forward pass divides by the current batch's
  quadratic mean, and only afterwards by the running one;
- during warm-up the running statistic is a cumulative average followed by the EMA;
- the backward pass divides by the *current batch's* quadratic mean (even after warm-up, when the
  forward pass used :math:`\psi`), and its correction buffer is an accumulating sum.

``"paper"`` follows the paper's Algorithm 2 ("Power Normalization (Every Iteration)") as our spec
recalls it: no GroupScaling, no warm-up, the forward and backward both divide by
:math:`\psi_{B-1}`, and the correction :math:`\nu` is an EMA weighted by :math:`\Gamma`.
**UNVERIFIED:** the :math:`\nu` update (its :math:`1-\alpha` factors, and whether :math:`\Lambda`
uses :math:`\tilde g` or :math:`g`) was not read from the paper; treat that option as our reading.

``backward="exact"`` replaces the approximate backward by plain autograd through the forward
(gradients through the batch statistic during warm-up, none through :math:`\psi`); the common
registry tests use it for their float64 gradcheck.

``pn-v`` is the paper's ablation "PN-V": batch norm without mean subtraction, dividing by the
*batch* quadratic mean with exact autograd (a running estimate serves inference only).

Every layer takes ``(..., C)`` inputs (channels last, any leading shape) and an optional padding
``mask`` of shape ``x.shape[:-1]`` (True = a real token). Padding never shapes the forward
statistic; every position, padding included, is normalised.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ReplibError
from .norms import create_norm, register_norm

VERSIONS = ("code", "paper")
BACKWARDS = ("approx", "exact")


def group_scale(x: torch.Tensor, group_num: int, eps: float = 1e-5) -> torch.Tensor:
    r"""GroupScaling1D of the authors' code: each token divided by its RMS within each group.

    With the ``C`` channels split into ``group_num`` groups :math:`G` of ``C / group_num``:

    .. math:: \hat x_{c} = \frac{x_c}{\sqrt{\tfrac{1}{|G|}\sum_{c' \in G(c)} x_{c'}^2 + \epsilon}}

    No learnable parameters; plain autograd (the authors' code differentiates through it too).
    """
    C = x.shape[-1]
    if group_num < 1 or C % group_num:
        raise ReplibError(f"group_num={group_num} does not divide the {C} channels")
    g = x.reshape(*x.shape[:-1], group_num, C // group_num)
    return (g / torch.sqrt(g.pow(2).mean(-1, keepdim=True) + eps)).reshape(x.shape)


class GroupScaling(nn.Module):
    """:func:`group_scale` as a layer; what remains of code-version PN after folding (below)."""

    def __init__(self, group_num: int, eps: float = 1e-5):
        super().__init__()
        self.group_num, self.eps = group_num, eps

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return group_scale(x, self.group_num, self.eps)


def masked_quadratic_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    r"""Per channel, over all real positions: :math:`\sigma^2_{B,c} = \frac1{N}\sum_{i\ \mathrm{real}} x_{ic}^2`.

    A masked sum rather than boolean indexing, so that on a GPU it needs no host sync; a batch
    without a single real position is refused when the mask lives on the CPU (checking it on a GPU
    would cost that sync).
    """
    flat = x.reshape(-1, x.shape[-1])
    if mask is None:
        return flat.pow(2).mean(0)
    if mask.shape != x.shape[:-1]:
        raise ReplibError(f"mask shape {tuple(mask.shape)} does not match input "
                          f"{tuple(x.shape[:-1])}")
    if mask.device.type == "cpu" and not mask.any():
        raise ReplibError("power norm needs at least one real position in training")
    keep = mask.reshape(-1, 1)
    return flat.pow(2).masked_fill(~keep, 0).sum(0) / keep.sum().clamp_min(1).to(x.dtype)


class PowerFunction(torch.autograd.Function):
    r"""PN's forward with the approximate backward (both versions).

    Forward, with ``inv_fwd`` :math:`= 1/\sqrt{d+\epsilon}` (``d`` the batch or running statistic):

    .. math:: z = x \cdot \mathrm{inv\_fwd},\qquad y = \gamma \odot z + \beta

    Backward, with :math:`g = \gamma \odot \partial L/\partial y` and the correction buffer
    :math:`G` (``ema_gz``; :math:`\nu` in the paper), means taken over *all* positions:

    - code:  :math:`\tilde g = g - (1-\alpha_{bkw})\,G \odot z`,
      :math:`\partial L/\partial x = \tilde g / \sqrt{\sigma_B^2+\epsilon}`,
      then :math:`G \leftarrow G + \mathrm{mean}(\tilde g \odot z)`;
    - paper (UNVERIFIED update): :math:`\tilde g = g - \nu \odot z`,
      :math:`\partial L/\partial x = \tilde g / \psi_{B-1}`, then
      :math:`\nu \leftarrow \nu\,(1-(1-\alpha)\Gamma) + (1-\alpha)\Lambda` with
      :math:`\Gamma = \mathrm{mean}(z^2)`, :math:`\Lambda = \mathrm{mean}(\tilde g \odot z)`.

    Parameters get their exact gradients, :math:`\partial L/\partial\gamma = \sum \partial L/\partial y
    \odot z` and :math:`\partial L/\partial\beta = \sum \partial L/\partial y`; no gradient flows
    through either statistic. ``G`` is updated in place during the backward pass.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, inv_fwd, inv_bkw, ema_gz, version: str, alpha_bkw: float):
        z = x * inv_fwd
        ctx.save_for_backward(z, weight, inv_bkw)
        ctx.ema_gz, ctx.version, ctx.alpha_bkw = ema_gz, version, alpha_bkw
        return z * weight + bias

    @staticmethod
    def backward(ctx, grad_out):
        z, weight, inv_bkw = ctx.saved_tensors
        G, a = ctx.ema_gz, ctx.alpha_bkw
        dims = tuple(range(grad_out.dim() - 1))
        g = grad_out * weight
        with torch.no_grad():
            if ctx.version == "code":
                g_tilde = g - (1 - a) * G * z
                G.add_((g_tilde * z).mean(dims))
            else:
                g_tilde = g - G * z
                gamma, lam = z.pow(2).mean(dims), (g_tilde * z).mean(dims)
                G.mul_(1 - (1 - a) * gamma).add_((1 - a) * lam)
        grad_x = g_tilde * inv_bkw
        return grad_x, (grad_out * z).sum(dims), grad_out.sum(dims), None, None, None, None, None


class _RunningQuadraticMean(nn.Module):
    r"""What PowerNorm and PN-V share: the optional GroupScaling pre-step and inference as the
    fixed affine map :math:`(\gamma/\sqrt{\psi^2+\epsilon},\ \beta)` of the running quadratic mean."""

    def scale_input(self, x: torch.Tensor) -> torch.Tensor:
        return group_scale(x, self.group_num) if self.group_num else x

    def affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight * torch.rsqrt(self.running_phi + self.eps), self.bias


@register_norm("powernorm", exact_grad={"backward": "exact"})
class PowerNorm(_RunningQuadraticMean):
    r"""Power Normalization; the authors' code version by default (see the module docstring).

    Training step :math:`k` (counted from 1), code version, per channel :math:`c`:

    .. math::
        \hat x = \mathrm{GroupScaling}(x),\qquad
        \sigma_B^2 = \mathrm{mean}_{\text{real } i}\,\hat x_i^2,\qquad
        z = \begin{cases} \hat x/\sqrt{\sigma_B^2+\epsilon} & k \le k_w \\
                          \hat x/\sqrt{\psi^2+\epsilon} & k > k_w \end{cases},\qquad
        y = \gamma\odot z + \beta

    then :math:`\psi^2 \leftarrow \tfrac{k-1}{k}\psi^2 + \tfrac1k\sigma_B^2` if :math:`k < k_w`,
    and always :math:`\psi^2 \leftarrow \alpha_{fwd}\psi^2 + (1-\alpha_{fwd})\sigma_B^2`.
    Inference: :math:`y = \gamma\odot\hat x/\sqrt{\psi^2+\epsilon} + \beta`, a fixed affine map of
    :math:`\hat x` (of :math:`x` itself when GroupScaling is off), foldable into the next linear
    layer (:func:`fold_into_linear`).

    The paper version has no GroupScaling and no warm-up (:math:`k_w = 0`): the forward pass
    always divides by :math:`\psi_{B-1}` and the running statistic is the EMA alone.

    Defaults as in ``MaskPowerNorm``: ``eps = 1e-5``, ``alpha_fwd = alpha_bkw = 0.9``,
    ``warmup_iters = 10000``, ``group_num = 1`` (``NormSelect`` passes the number of attention
    heads; ``0`` turns GroupScaling off). Buffers: ``running_phi`` (:math:`\psi^2`, init 1),
    ``ema_gz`` (:math:`G`/:math:`\nu`, init 0), ``iters``.
    """

    def __init__(self, dim: int, eps: float = 1e-5, alpha_fwd: float = 0.9,
                 alpha_bkw: float = 0.9, warmup_iters: int | None = None,
                 group_num: int | None = None, version: str = "code", backward: str = "approx"):
        super().__init__()
        if version not in VERSIONS:
            raise ReplibError(f"unknown PowerNorm version {version!r}; valid: {', '.join(VERSIONS)}")
        if backward not in BACKWARDS:
            raise ReplibError(f"unknown backward {backward!r}; valid: {', '.join(BACKWARDS)}")
        code = version == "code"
        self.dim, self.eps, self.version, self.backward = dim, eps, version, backward
        self.alpha_fwd, self.alpha_bkw = alpha_fwd, alpha_bkw
        self.warmup_iters = (10000 if code else 0) if warmup_iters is None else warmup_iters
        self.group_num = (1 if code else 0) if group_num is None else group_num
        if self.group_num and dim % self.group_num:
            raise ReplibError(f"group_num={self.group_num} does not divide dim={dim}")
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_phi", torch.ones(dim))
        self.register_buffer("ema_gz", torch.zeros(dim))
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return (f"{self.dim}, version={self.version}, backward={self.backward}, "
                f"warmup_iters={self.warmup_iters}, group_num={self.group_num}")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        xs = self.scale_input(x)
        if not self.training:
            scale, shift = self.affine()
            return xs * scale + shift
        # The step counter stays on the device (no host sync): both branches are formed and
        # torch.where picks one per step; the vectors are C long, so this costs nothing.
        self.iters += 1
        k = self.iters.to(self.running_phi.dtype)
        warm = self.iters <= self.warmup_iters
        exact = self.backward == "exact"
        var = masked_quadratic_mean(xs if exact else xs.detach(), mask)
        phi_prev = self.running_phi.clone()
        denom = torch.where(warm, var, phi_prev)
        if exact:
            y = xs * torch.rsqrt(denom + self.eps) * self.weight + self.bias
        else:
            inv_fwd = torch.rsqrt(denom + self.eps)
            inv_bkw = torch.rsqrt(var + self.eps) if self.version == "code" else inv_fwd
            y = PowerFunction.apply(xs, self.weight, self.bias, inv_fwd, inv_bkw, self.ema_gz,
                                    self.version, self.alpha_bkw)
        with torch.no_grad():
            v = var.detach()
            if self.version == "code":  # cumulative average while k < k_w (strict)
                cumulative = phi_prev * (k - 1) / k + v / k
                self.running_phi.copy_(torch.where(self.iters < self.warmup_iters, cumulative, phi_prev))
            self.running_phi.mul_(self.alpha_fwd).add_((1 - self.alpha_fwd) * v)
        return y


@register_norm("pn-v")
class PowerNormV(_RunningQuadraticMean):
    r"""PN-V, the paper's ablation: batch norm without re-centring, exact autograd.

    Training, per channel over the real positions of the batch (gradients flow through
    :math:`\sigma_B^2`):

    .. math:: \sigma_B^2 = \mathrm{mean}_{\text{real } i}\, x_i^2,\qquad
              y = \gamma\odot\frac{x}{\sqrt{\sigma_B^2+\epsilon}} + \beta,\qquad
              \psi^2 \leftarrow \alpha\,\psi^2 + (1-\alpha)\,\sigma_B^2

    Inference: :math:`y = \gamma\odot x/\sqrt{\psi^2+\epsilon} + \beta`. ``group_num > 0`` adds the
    code's GroupScaling pre-step (off by default).
    """

    def __init__(self, dim: int, eps: float = 1e-5, alpha_fwd: float = 0.9, group_num: int = 0):
        super().__init__()
        if group_num and dim % group_num:
            raise ReplibError(f"group_num={group_num} does not divide dim={dim}")
        self.dim, self.eps, self.alpha_fwd, self.group_num = dim, eps, alpha_fwd, group_num
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_phi", torch.ones(dim))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        xs = self.scale_input(x)
        if not self.training:
            scale, shift = self.affine()
            return xs * scale + shift
        var = masked_quadratic_mean(xs, mask)
        with torch.no_grad():
            self.running_phi.mul_(self.alpha_fwd).add_((1 - self.alpha_fwd) * var.detach())
        return xs * torch.rsqrt(var + self.eps) * self.weight + self.bias


@torch.no_grad()
def fold_into_linear(norm: nn.Module, linear: nn.Linear) -> nn.Linear:
    r"""``Linear(PN(x))`` as one ``Linear'`` of the norm's (group-scaled) input, in eval mode:

    .. math:: W' = W\,\mathrm{diag}(\gamma/\sqrt{\psi^2+\epsilon}),\qquad b' = b + W\beta
    """
    scale, shift = norm.affine()
    out = nn.Linear(linear.in_features, linear.out_features, bias=True,
                    device=linear.weight.device, dtype=linear.weight.dtype)
    out.weight.copy_(linear.weight * scale)
    b = linear.bias if linear.bias is not None else torch.zeros_like(out.bias)
    out.bias.copy_(b + linear.weight @ shift)
    return out


def _residue(norm: nn.Module) -> nn.Module:
    """What stays of a folded norm: its GroupScaling pre-step, or nothing."""
    return GroupScaling(norm.group_num) if norm.group_num else create_norm("identity", norm.dim)


@torch.no_grad()
def fold_gpt(model: nn.Module) -> nn.Module:
    """An inference copy of a pre-norm ``TinyGPT`` whose PN/PN-V layers are folded into the linear
    layer each one feeds (``qkv``, ``fc``, the head); only GroupScaling (if on) remains."""
    if model.cfg.placement != "pre":
        raise ReplibError("folding needs placement 'pre' (each norm feeds one linear layer)")
    folded = copy.deepcopy(model).eval()
    for block in folded.blocks:
        if not isinstance(block.norm1, (PowerNorm, PowerNormV)):
            raise ReplibError(f"cannot fold {type(block.norm1).__name__}")
        block.attn.qkv = fold_into_linear(block.norm1, block.attn.qkv)
        block.mlp.fc = fold_into_linear(block.norm2, block.mlp.fc)
        block.norm1, block.norm2 = _residue(block.norm1), _residue(block.norm2)
    if isinstance(folded.norm_f, (PowerNorm, PowerNormV)):
        folded.head = fold_into_linear(folded.norm_f, folded.head)
        folded.norm_f = _residue(folded.norm_f)
    return folded
