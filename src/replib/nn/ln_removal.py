r"""Removing LayerNorm from a pre-trained Pre-LN transformer by fine-tuning
(Baroni et al. 2025, "Transformers Don't Need LayerNorm at Inference Time", arXiv 2507.02559;
official code: github.com/submarat/removing-layer-norm, ``FakeLayerNorm`` in ``train.py``).

A :class:`FakeLayerNorm` is a LayerNorm that can be switched, one path at a time, from the exact
per-token standard deviation to a *fixed* scalar :math:`s`:

.. math:: \mathrm{LN}(x) = \frac{x-\mu(x)}{\sigma(x)}\odot w + b
          \quad\longrightarrow\quad
          \mathrm{LN}'(x) = \frac{x-\mu(x)}{s}\odot w + b ,

with :math:`\sigma(x)=\sqrt{\mathrm{Var}(x)+\epsilon}` per token. :math:`s` is an exponential moving
average of the mean per-token :math:`\sigma` seen in training, :math:`s \leftarrow m\,s + (1-m)\,\bar\sigma`,
frozen at the moment the path is switched to fake. Once fake, :math:`\mathrm{LN}'` is an affine
map of :math:`x` (centring is linear), so it folds into the next linear layer
(:func:`fold_ln_free`).

The attention LN has two paths, queries/keys and values, switched at different steps.
:func:`convert_to_fake` swaps a replib ``TinyGPT``'s norms for these modules in place;
:func:`removal_schedule` reproduces the official schedule arithmetic (``config.py``).

**Which of the official code's options this follows.** Read in ``train.py`` and ``config.py`` of
the official repository (newest snapshot, commit 583a9e6):

- *Default flags* (no ``EXP_*`` environment variable set): a fake path divides by
  ``average_std_buffer``, filled when the model is converted from the precomputed per-layer
  ``std_dicts`` (``generate_std_dict.py``: the std of the residual stream over positions 1 onwards
  of one training sample) and never updated afterwards: ``sync_std`` runs only under
  ``EXP_RECOMPUTE_STD_ON_REAL`` or ``EXP_RECOMPUTE_STD_ON_FAKE``. The running estimate
  ``real_average_std`` (momentum ``config.momentum``, default 0.9) is updated on every forward,
  over all positions (``std.mean()``; ``EXP_NON_BOS_AVERAGE_STD`` excludes position 0), but the
  forward does not use it. ``bos_special_treatment`` defaults to False and
  ``replace_layernorm_with_fake_layernorm`` does not pass it (``EXP_BOS_SPECIAL_TREATMENT`` is
  documented and printed, and read nowhere else in ``train.py``), so there is no position-0 scalar;
  the BOS removal event is scheduled only under ``EXP_CORRECT_BOS``. ``ln_1`` is called three times
  per block forward (Q/K, V, and the EOT-V path), so its running estimate moves three times per
  forward, and under ``EXP_RECOMPUTE_STD_ON_REAL`` its Q/K and V paths share one buffer.
- *What we follow by default* (``freeze="running"``, ``bos_special=True``): the combination
  ``EXP_RECOMPUTE_STD_ON_REAL`` + ``EXP_NON_BOS_AVERAGE_STD`` + BOS special treatment with
  ``EXP_CORRECT_BOS``. Each path is frozen, at its own switch step, to the running average
  (momentum 0.9, one update per *training* forward, none on evaluation forwards, for ``ln_1`` too)
  of the mean per-token σ over positions ≥ 1; position 0 (the BOS token, whose residual norm is
  atypical) keeps its own running scalar until the schedule's last event drops it, so every LN ends
  as one scalar for all positions. Why: the spec describes this procedure; our models are trained
  by us, so there is no GPT-2 std dictionary to copy and the starting estimate is an average over a
  few calibration batches (:func:`calibrate_std`); and the value a path is frozen to is then the
  σ the model produces at the moment it switches, after the earlier removals it has adapted to.
- ``freeze="initial"`` with ``bos_special=False`` reproduces the official *default* flags on our
  models: every path divides, from its switch on, by the calibration average taken before
  fine-tuning (positions ≥ 1, like the std dictionaries), and position 0 never gets its own
  scalar. Chapter 26 measures both.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from .norms import LayerNorm, create_norm


class FakeLayerNorm(nn.Module):
    """A LayerNorm whose per-token std can be frozen to a fixed scalar, per path.

    ``paths`` names the outputs that can be switched separately (``("main",)``; the attention LN
    uses ``("qk", "v")``). ``bos_position``: inputs are ``(B, T, d)`` and position 0 is tracked
    (and, while ``bos_special``, scaled) with its own scalar. ``freeze``: a path switched to fake
    divides by the running estimate at that moment (``"running"``) or by the estimate taken before
    fine-tuning (``"initial"``, the official code's default flags; see the module docstring).
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.9,
                 paths: tuple[str, ...] = ("main",), bos_position: bool = True,
                 freeze: str = "running"):
        super().__init__()
        if freeze not in ("running", "initial"):
            raise ReplibError(f"freeze must be 'running' or 'initial', not {freeze!r}")
        self.dim, self.eps, self.momentum, self.freeze = dim, eps, momentum, freeze
        self.paths, self.bos_position = tuple(paths), bos_position
        self.weight = nn.Parameter(torch.ones(dim))
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("real_std", torch.tensor(1.0))  # EMA of mean sigma, positions >= 1
        self.register_buffer("real_bos_std", torch.tensor(1.0))  # the same, position 0
        # the estimate before fine-tuning (set by calibrate_std): what freeze="initial" uses
        self.register_buffer("init_std", torch.tensor(1.0))
        self.register_buffer("init_bos_std", torch.tensor(1.0))
        for p in self.paths:
            self.register_buffer(f"fake_std_{p}", torch.tensor(1.0))
            self.register_buffer(f"fake_bos_std_{p}", torch.tensor(1.0))
        self.fake = {p: False for p in self.paths}
        self.bos_special = bos_position
        self.track = True  # update the EMA on training forwards
        self._avg: list[float] | None = None  # calibration: [sum, count, bos_sum]

    @classmethod
    def from_layernorm(cls, ln: nn.Module, **kw) -> "FakeLayerNorm":
        dim = ln.weight.shape[0]
        new = cls(dim, eps=getattr(ln, "eps", 1e-5), **kw).to(ln.weight.device, ln.weight.dtype)
        with torch.no_grad():
            new.weight.copy_(ln.weight)
            if ln.bias is not None:
                new.bias.copy_(ln.bias)
        return new

    # --- statistics -------------------------------------------------------------------------
    def sigma(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(x.var(-1, unbiased=False) + self.eps)

    @torch.no_grad()
    def observe(self, x: torch.Tensor) -> None:
        """Update the std estimate from ``x`` (training forwards, or calibration)."""
        if not ((self.training and self.track) or self._avg is not None):
            return
        sig = self.sigma(x.detach())
        if self.bos_position and x.dim() == 3 and x.shape[1] > 1:
            main, bos = sig[:, 1:].mean(), sig[:, 0].mean()
        else:
            main = bos = sig.mean()
        if self._avg is not None:  # plain average over calibration batches
            self._avg[0] += float(main)
            self._avg[1] += 1
            self._avg[2] += float(bos)
            self.real_std.fill_(self._avg[0] / self._avg[1])
            self.real_bos_std.fill_(self._avg[2] / self._avg[1])
            return
        m = self.momentum
        self.real_std.mul_(m).add_((1 - m) * main)
        self.real_bos_std.mul_(m).add_((1 - m) * bos)

    # --- switching --------------------------------------------------------------------------
    def make_fake(self, path: str | None = None) -> None:
        """Freeze ``path`` (default: all) to the current std estimate (``freeze="running"``) or to
        the estimate taken before fine-tuning (``freeze="initial"``)."""
        main, bos = ((self.real_std, self.real_bos_std) if self.freeze == "running" else
                     (self.init_std, self.init_bos_std))
        for p in self.paths if path is None else (path,):
            if p not in self.fake:
                raise ReplibError(f"unknown path {p!r}; this LN has {self.paths}")
            if not self.fake[p]:
                getattr(self, f"fake_std_{p}").copy_(main)
                getattr(self, f"fake_bos_std_{p}").copy_(bos)
                self.fake[p] = True

    @property
    def is_ln_free(self) -> bool:
        return all(self.fake.values()) and not self.bos_special

    # --- forward ----------------------------------------------------------------------------
    def normalise(self, x: torch.Tensor, path: str) -> torch.Tensor:
        if not self.fake[path]:  # exact LayerNorm
            return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)
        s = getattr(self, f"fake_std_{path}")
        xc = x - x.mean(-1, keepdim=True)
        if self.bos_special and self.bos_position and x.dim() == 3:
            scale = s.expand(x.shape[1]).clone()
            scale[0] = getattr(self, f"fake_bos_std_{path}")
            return xc / scale[:, None] * self.weight + self.bias
        return xc / s * self.weight + self.bias

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        self.observe(x)
        return self.normalise(x, self.paths[0])

    def extra_repr(self) -> str:
        return f"{self.dim}, fake={self.fake}, bos_special={self.bos_special}"


class Passthrough(nn.Module):
    """Stands where ``block.norm1`` was: the attention wrapper normalises its own input."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return x


class SplitLNAttention(nn.Module):
    """Causal self-attention whose queries/keys and values read separate paths of one LN."""

    def __init__(self, attn: nn.Module, ln: FakeLayerNorm):
        super().__init__()
        if set(ln.paths) != {"qk", "v"}:
            raise ReplibError("SplitLNAttention needs a FakeLayerNorm with paths ('qk', 'v')")
        self.attn, self.ln = attn, ln

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.attn
        self.ln.observe(x)
        h_qk, h_v = self.ln.normalise(x, "qk"), self.ln.normalise(x, "v")
        W, b = a.qkv.weight, a.qkv.bias
        n = W.shape[0] // 3
        qk = F.linear(h_qk, W[: 2 * n], None if b is None else b[: 2 * n])
        v = F.linear(h_v, W[2 * n:], None if b is None else b[2 * n:])
        B, T, _ = x.shape
        q, k = qk.split(n, dim=-1)
        q, k, v = (t.view(B, T, a.n_head, -1).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return a.proj(y.transpose(1, 2).reshape(B, T, -1))


def convert_to_fake(model: nn.Module, momentum: float = 0.9, freeze: str = "running",
                    bos_special: bool = True) -> nn.Module:
    """Swap every LayerNorm of a Pre-LN ``TinyGPT`` for a :class:`FakeLayerNorm`, in place.

    ``block.norm1`` becomes a :class:`Passthrough` and ``block.attn`` a :class:`SplitLNAttention`
    holding the attention LN (paths ``qk`` and ``v``); ``block.norm2`` and ``model.norm_f`` become
    single-path fake LNs. All start real: the model computes exactly what it computed before.
    ``freeze`` and ``bos_special`` choose between our procedure (the defaults) and the official
    code's default flags (``freeze="initial", bos_special=False``); see the module docstring.
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or cfg.norm != "layernorm" or cfg.placement != "pre" or not cfg.final_norm:
        raise ReplibError("convert_to_fake needs a TinyGPT with norm='layernorm', placement='pre'")
    if cfg.layer_scaling or cfg.dropout:
        raise ReplibError("convert_to_fake supports neither layer_scaling nor dropout")
    for block in model.blocks:
        if not isinstance(block.norm1, LayerNorm):
            raise ReplibError("model is already converted")
        ln1 = FakeLayerNorm.from_layernorm(block.norm1, momentum=momentum, paths=("qk", "v"),
                                           freeze=freeze)
        block.attn = SplitLNAttention(block.attn, ln1)
        block.norm1 = Passthrough()
        block.norm2 = FakeLayerNorm.from_layernorm(block.norm2, momentum=momentum, freeze=freeze)
    model.norm_f = FakeLayerNorm.from_layernorm(model.norm_f, momentum=momentum, freeze=freeze)
    for ln in fake_norms(model).values():
        ln.bos_special = bos_special
    return model


def fake_norms(model: nn.Module) -> dict[str, FakeLayerNorm]:
    """Every FakeLayerNorm of a converted model, by name: ``ln1.i``, ``ln2.i``, ``lnf``."""
    out = {}
    for i, block in enumerate(model.blocks):
        out[f"ln1.{i}"] = block.attn.ln
        out[f"ln2.{i}"] = block.norm2
    out["lnf"] = model.norm_f
    return out


@torch.no_grad()
def calibrate_std(model: nn.Module, batches, n_batches: int) -> None:
    """Set every FakeLN's std estimate (and ``init_std``, what ``freeze="initial"`` freezes to)
    to its plain average over ``n_batches`` inputs.

    The official code starts from precomputed per-layer averages (``*_std_dicts.json``).
    """
    norms = fake_norms(model).values()
    was = model.training
    model.eval()
    for ln in norms:
        ln._avg = [0.0, 0, 0.0]
    try:
        for _ in range(n_batches):
            model(next(batches)[0])
    finally:
        for ln in norms:
            ln._avg = None
            ln.init_std.copy_(ln.real_std)
            ln.init_bos_std.copy_(ln.real_bos_std)
        model.train(was)


@dataclass
class Schedule:
    """Which LN path turns fake at which fine-tuning step (the official ``config.py`` arithmetic)."""

    n_layer: int
    start_ln2: int
    start_ln1qk: int
    start_ln1v: int
    start_lnf: int
    start_eot: int
    start_bos: int
    events: dict[int, list[tuple[str, int | None]]] = field(default_factory=dict)

    @property
    def last_step(self) -> int:
        return self.start_bos


def removal_schedule(n_layer: int, start: int = 20, gap_ln2: int = 2, gap_ln1qk: int = 2,
                     gap_ln1v: int = 3, gap_lnf: int = 2, gap_eot: int = 10) -> Schedule:
    """ln2 of layers 0..L-1 one every ``gap_ln2`` steps from ``start``, then the attention LN's
    Q/K path, then its V path, then ln_f, then EOT and BOS special stds are removed.

    GPT-2 small (12 layers, defaults): ln2 20, ln1qk 44, ln1v 68, lnf 104, eot 106, bos 116.
    """
    s_ln1qk = start + n_layer * gap_ln2
    s_ln1v = s_ln1qk + n_layer * gap_ln1qk
    s_lnf = s_ln1v + n_layer * gap_ln1v
    s_eot = s_lnf + gap_lnf
    s_bos = s_eot + gap_eot
    ev: dict[int, list] = {}
    for i in range(n_layer):
        ev.setdefault(start + i * gap_ln2, []).append(("ln2", i))
        ev.setdefault(s_ln1qk + i * gap_ln1qk, []).append(("ln1qk", i))
        ev.setdefault(s_ln1v + i * gap_ln1v, []).append(("ln1v", i))
    ev.setdefault(s_lnf, []).append(("lnf", None))
    ev.setdefault(s_eot, []).append(("eot", None))
    ev.setdefault(s_bos, []).append(("bos", None))
    return Schedule(n_layer, start, s_ln1qk, s_ln1v, s_lnf, s_eot, s_bos, ev)


def apply_events(model: nn.Module, schedule: Schedule, step: int) -> list[tuple[str, int | None]]:
    """Apply the schedule's events for ``step`` to a converted model; returns them.

    ``eot`` is a no-op here: our byte-level corpus has no end-of-text token.
    """
    done = schedule.events.get(step, [])
    for kind, i in done:
        if kind == "ln2":
            model.blocks[i].norm2.make_fake()
        elif kind == "ln1qk":
            model.blocks[i].attn.ln.make_fake("qk")
        elif kind == "ln1v":
            model.blocks[i].attn.ln.make_fake("v")
        elif kind == "lnf":
            model.norm_f.make_fake()
        elif kind == "bos":
            for ln in fake_norms(model).values():
                ln.bos_special = False
    return done


def remove_all_now(model: nn.Module) -> nn.Module:
    """Every LN path fake at its current std estimate, no BOS special case (no fine-tuning)."""
    for ln in fake_norms(model).values():
        ln.make_fake()
        ln.bos_special = False
    return model


def is_ln_free(model: nn.Module) -> bool:
    """True when every norm of the model is a constant affine map of its input."""
    if any(isinstance(m, (LayerNorm, nn.LayerNorm)) for m in model.modules()):
        return False
    return all(ln.is_ln_free for ln in model.modules() if isinstance(ln, FakeLayerNorm))


def fold_linear(ln: FakeLayerNorm, linear: nn.Linear, path: str | None = None,
                rows: slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
    r"""``(W', b')`` with ``W' x + b' = linear(ln'(x))`` for a fake path of ``ln``:
    :math:`W' = W\,\mathrm{diag}(w)/s\,(I - \tfrac1d 11^\top)`, :math:`b' = b_{lin} + W b`."""
    path = path or ln.paths[0]
    if not ln.fake[path] or ln.bos_special:
        raise ReplibError("only an LN-free path (fake, no BOS special case) can be folded")
    W = linear.weight[rows]
    b_lin = torch.zeros(W.shape[0], dtype=W.dtype, device=W.device) if linear.bias is None \
        else linear.bias[rows]
    s = getattr(ln, f"fake_std_{path}")
    Wd = W * (ln.weight / s)
    Wf = Wd - Wd.mean(-1, keepdim=True)  # right-multiplying by I - 11^T/d
    return Wf, b_lin + W @ ln.bias


@torch.no_grad()
def fold_ln_free(model: nn.Module) -> nn.Module:
    """A copy of an LN-free converted model with every LN folded into the next linear layer:
    the norms become identities and the head gains a bias. Same logits, no normalisation."""
    if not is_ln_free(model):
        raise ReplibError("fold_ln_free needs an LN-free model (run the whole schedule first)")
    m = copy.deepcopy(model)
    d = m.cfg.d_model
    for block in m.blocks:
        split: SplitLNAttention = block.attn
        attn, ln = split.attn, split.ln
        n = attn.qkv.out_features // 3
        Wqk, bqk = fold_linear(ln, attn.qkv, "qk", slice(0, 2 * n))
        Wv, bv = fold_linear(ln, attn.qkv, "v", slice(2 * n, 3 * n))
        qkv = nn.Linear(d, 3 * n, bias=True).to(Wqk)
        qkv.weight.copy_(torch.cat([Wqk, Wv]))
        qkv.bias.copy_(torch.cat([bqk, bv]))
        attn.qkv = qkv
        block.attn, block.norm1 = attn, create_norm("identity", d)
        W, b = fold_linear(block.norm2, block.mlp.fc)
        block.mlp.fc.weight.copy_(W)
        if block.mlp.fc.bias is None:
            block.mlp.fc.bias = nn.Parameter(b.clone())
        else:
            block.mlp.fc.bias.copy_(b)
        block.norm2 = create_norm("identity", d)
    W, b = fold_linear(m.norm_f, m.head)
    head = nn.Linear(d, W.shape[0], bias=True).to(W)
    head.weight.copy_(W)
    head.bias.copy_(b)
    m.head, m.norm_f = head, create_norm("identity", d)
    return m


__all__ = ["FakeLayerNorm", "Passthrough", "SplitLNAttention", "Schedule", "apply_events",
           "calibrate_std", "convert_to_fake", "fake_norms", "fold_linear", "fold_ln_free",
           "is_ln_free", "remove_all_now", "removal_schedule"]
