r"""Pre-LN → Pre-RMSNorm → Pre-CRMSNorm: the exact conversion of Jiang et al. (2023, arXiv 2305.14858).

A Pre-LN transformer computes :math:`x_{l+1} = x_l + F_l(\mathrm{LN}(x_l))` and its logits as
:math:`\mathrm{Head}(\mathrm{LN}(x_L))`. Two facts make LayerNorm removable:

.. math:: \mathrm{LN}(x) = \mathrm{RMSNorm}(x - \bar x\,\mathbf 1),\qquad
          \mathrm{LN}(x + c\,\mathbf 1) = \mathrm{LN}(x)\quad\forall c.

So if every layer that *writes* into the residual stream writes zero-mean vectors, every
:math:`x_l` has zero mean and each LN may be replaced by RMSNorm. Three steps, each an exact
identity on the function the model computes (up to rounding):

1. :func:`fold_norm_affine`: move each LN's :math:`(\gamma, \beta)` into the linear layer that reads
   it, :math:`W' = W\,\mathrm{diag}(\gamma)`, :math:`b' = b + W\beta` (the final LN folds into the
   head, which gains a bias).
2. :func:`recenter_writers`: project every writer's output onto :math:`\mathbf 1^\perp`:
   for a linear writer :math:`W' = W - \mathbf 1\,\tfrac1d\mathbf 1^\top W` (each column minus
   its mean over the :math:`d` output rows), :math:`b' = b - \bar b\,\mathbf 1`; for the token
   and position embeddings each row (a written vector) minus its own mean.
3. :func:`to_pre_rmsnorm`: replace every LN by an affine-free RMSNorm.

A zero-mean :math:`x\in\mathbb R^d` is determined by :math:`\tilde x = x_{1..d-1}`, since
:math:`x_d = -\sum_{i<d}x_i`. :func:`to_pre_crmsnorm` therefore keeps only the first
:math:`d-1` output rows of every writer, and folds the dropped coordinate into each reader:

.. math:: W x = \sum_{i<d} W_{:,i}x_i + W_{:,d}x_d = \sum_{i<d}(W_{:,i} - W_{:,d})\,x_i
          = \big(W_{:,1..d-1} - W_{:,d}\mathbf 1^\top\big)\tilde x,

while :math:`\mathrm{CRMSNorm}(\tilde x) = \mathrm{RMSNorm}(x)_{1..d-1}` supplies the dropped square.
The compressed model has residual width ``d_model = d-1`` but still attends in ``d_attn = d``
and has MLP width ``d_ff`` unchanged.

Training: :func:`zero_mean_writers` swaps the writers for :class:`LinearZeroMeanOutput` and
:class:`EmbeddingZeroMean`, which re-centre their parameters inside ``forward`` (the paper's
``LinearZeroMeanOutput``). With them, a Pre-RMSNorm model computes *the same function of the
same raw parameters* as the affine-free Pre-LN model, so both have the same gradients and any
optimizer (AdamW included) follows the same trajectory. Without the reparameterisation, Adam's
per-coordinate updates move re-centred weights off the zero-mean subspace.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from .transformer import GPTConfig, TinyGPT


class LinearZeroMeanOutput(nn.Linear):
    r"""A linear layer whose every output has zero mean over its ``out_features`` coordinates.

    .. math:: y = (W - \mathbf 1\,\overline{W}) x + (b - \bar b\,\mathbf 1),\qquad
              \overline{W} = \tfrac1{d}\mathbf 1^\top W

    The stored ``weight`` and ``bias`` are unconstrained; the projection happens in ``forward``,
    so gradients are projected too (after Jiang et al.'s ``LinearZeroMeanOutput``).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight - self.weight.mean(dim=0, keepdim=True)
        b = self.bias - self.bias.mean() if self.bias is not None else None
        return F.linear(x, w, b)


class EmbeddingZeroMean(nn.Embedding):
    r"""An embedding table whose looked-up rows are re-centred: :math:`e_i - \bar e_i\mathbf 1`."""

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        e = super().forward(idx)
        return e - e.mean(dim=-1, keepdim=True)


def _check_pre_ln(model: TinyGPT) -> None:
    if not isinstance(model, TinyGPT):
        raise ReplibError(f"conversion needs a TinyGPT, got {type(model).__name__}")
    if model.cfg.placement != "pre" or model.cfg.norm != "layernorm":
        raise ReplibError(f"conversion starts from a Pre-LN model, got placement="
                          f"{model.cfg.placement!r}, norm={model.cfg.norm!r}")


def _layer_names(cfg: GPTConfig):
    """(norm, the linear layer reading it) pairs and the residual writers of a TinyGPT."""
    readers = []
    for i in range(cfg.n_layer):
        readers += [(f"blocks.{i}.norm1", f"blocks.{i}.attn.qkv"),
                    (f"blocks.{i}.norm2", f"blocks.{i}.mlp.fc")]
    readers.append(("norm_f", "head"))
    linear_writers = [f"blocks.{i}.{m}.proj" for i in range(cfg.n_layer) for m in ("attn", "mlp")]
    return readers, ["tok_emb", "pos_emb"], linear_writers


def _empty_gpt(cfg: GPTConfig, like: nn.Module, head_bias: bool) -> TinyGPT:
    """A TinyGPT with uninitialised parameters (built on the meta device: no RNG is consumed)."""
    p = next(like.parameters())
    with torch.device("meta"):
        model = TinyGPT(cfg)
        if head_bias:
            model.head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=True)
    return model.to_empty(device=p.device).to(p.dtype)


def _load(model: TinyGPT, state: dict[str, torch.Tensor]) -> TinyGPT:
    model.load_state_dict(state, strict=True)
    return model


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def fold_norm_affine(model: TinyGPT) -> TinyGPT:
    r"""An affine-free Pre-LN copy of ``model`` computing the same function.

    For a norm with gain :math:`\gamma` and shift :math:`\beta` read by ``Linear(W, b)``:

    .. math:: W(\gamma\odot n + \beta) + b = \underbrace{W\mathrm{diag}(\gamma)}_{W'}\,n
              + \underbrace{(b + W\beta)}_{b'}

    The head reads the final norm and gets a bias :math:`b' = W_\text{head}\beta_f`.
    """
    _check_pre_ln(model)
    cfg = model.cfg
    readers, _, _ = _layer_names(cfg)
    src = _state(model)
    out = {k: v for k, v in src.items()
           if not any(k.startswith(n + ".") for n, _ in readers)}
    for norm, lin in readers:
        w = src[f"{lin}.weight"]
        gamma = src.get(f"{norm}.weight", torch.ones(w.shape[1], dtype=w.dtype, device=w.device))
        beta = src.get(f"{norm}.bias")
        b = src.get(f"{lin}.bias", torch.zeros(w.shape[0], dtype=w.dtype, device=w.device))
        if beta is not None:
            if lin != "head" and f"{lin}.bias" not in src:
                raise ReplibError(f"{lin} has no bias to absorb {norm}'s shift (GPTConfig.bias=False)")
            b = b + w @ beta
        out[f"{lin}.weight"] = w * gamma
        if lin == "head" or f"{lin}.bias" in src:
            out[f"{lin}.bias"] = b
    new_cfg = GPTConfig(**{**cfg.__dict__, "norm": "layernorm",
                           "norm_kwargs": {**cfg.norm_kwargs, "affine": False}})
    return _load(_empty_gpt(new_cfg, model, head_bias=True), out)


def recenter_writers(model: TinyGPT) -> TinyGPT:
    r"""A copy of ``model`` whose residual writers output zero-mean vectors.

    .. math:: W' = \Big(I - \tfrac1d\mathbf 1\mathbf 1^\top\Big) W,\quad
              b' = b - \bar b\,\mathbf 1,\quad E'_{t} = E_t - \bar E_t\mathbf 1

    Before an LN (which ignores :math:`c\mathbf 1`) the function is unchanged.
    """
    _, embeddings, linears = _layer_names(model.cfg)
    state = _state(model)
    for name in embeddings:
        w = state[f"{name}.weight"]
        state[f"{name}.weight"] = w - w.mean(dim=-1, keepdim=True)
    for name in linears:
        w = state[f"{name}.weight"]
        state[f"{name}.weight"] = w - w.mean(dim=0, keepdim=True)
        if f"{name}.bias" in state:
            b = state[f"{name}.bias"]
            state[f"{name}.bias"] = b - b.mean()
    new = _empty_gpt(model.cfg, model, head_bias=model.head.bias is not None)
    return _load(new, state)


def to_pre_rmsnorm(model: TinyGPT, recenter: bool = True) -> TinyGPT:
    """Pre-LN (any affine parameters) → the equivalent affine-free Pre-RMSNorm model.

    Fold (:func:`fold_norm_affine`), re-centre (:func:`recenter_writers`), then swap every LN
    for RMSNorm: on a zero-mean stream :math:`\\mathrm{LN}(x) = \\mathrm{RMSNorm}(x)`.
    ``recenter=False`` skips step 2: the naive swap, which is *not* equivalent (a control).
    """
    ln = fold_norm_affine(model)
    ln = recenter_writers(ln) if recenter else ln
    eps = ln.blocks[0].norm1.eps if ln.cfg.n_layer else ln.norm_f.eps
    cfg = GPTConfig(**{**ln.cfg.__dict__, "norm": "rmsnorm",
                       "norm_kwargs": {"eps": eps, "affine": False}})
    return _load(_empty_gpt(cfg, ln, head_bias=True), _state(ln))


def to_pre_crmsnorm(model: TinyGPT) -> TinyGPT:
    r"""Pre-LN → the equivalent Pre-CRMSNorm model on a ``d-1``-dimensional residual stream.

    Writers keep their first ``d-1`` output rows (of the zero-mean versions); readers
    (QKV, MLP-in, head) take :math:`W_{:,1..d-1} - W_{:,d}\mathbf 1^\top`; the norms become
    affine-free CRMSNorm.
    """
    rms = to_pre_rmsnorm(model)
    cfg = rms.cfg
    d = cfg.d_model
    readers, embeddings, linears = _layer_names(cfg)
    state = _state(rms)
    for name in embeddings:
        state[f"{name}.weight"] = state[f"{name}.weight"][:, : d - 1]
    for name in linears:
        state[f"{name}.weight"] = state[f"{name}.weight"][: d - 1]
        if f"{name}.bias" in state:
            state[f"{name}.bias"] = state[f"{name}.bias"][: d - 1]
    for _, lin in readers:
        w = state[f"{lin}.weight"]
        state[f"{lin}.weight"] = w[:, : d - 1] - w[:, d - 1:]
    eps = cfg.norm_kwargs.get("eps", 1e-5)
    new_cfg = GPTConfig(**{**cfg.__dict__, "d_model": d - 1, "d_attn": cfg.d_attn,
                           "d_ff": cfg.d_ff, "norm": "crmsnorm",
                           "norm_kwargs": {"eps": eps, "affine": False}})
    return _load(_empty_gpt(new_cfg, rms, head_bias=True), state)


def zero_mean_writers(model: TinyGPT) -> TinyGPT:
    """Swap ``model``'s residual writers, in place, for their zero-mean reparameterisations.

    The new modules share the old ``Parameter`` objects (same names, same order), so an optimizer
    built afterwards sees exactly the parameters the plain model had.
    """
    _, embeddings, linears = _layer_names(model.cfg)
    for name in embeddings + linears:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        old = getattr(parent, attr)
        if isinstance(old, nn.Embedding):
            with torch.device("meta"):
                new = EmbeddingZeroMean(old.num_embeddings, old.embedding_dim)
        else:
            with torch.device("meta"):
                new = LinearZeroMeanOutput(old.in_features, old.out_features,
                                           bias=old.bias is not None)
            new.bias = old.bias
        new.weight = old.weight
        setattr(parent, attr, new)
    return model


def residual_stream(model: TinyGPT, idx: torch.Tensor) -> list[torch.Tensor]:
    """The residual stream ``x_0 .. x_L`` of ``model`` on tokens ``idx`` (for checks and plots)."""
    x = model.embed(idx)
    xs = [x]
    for block in model.blocks:
        x = block(x)
        xs.append(x)
    return xs


def randomize_affine_(model: nn.Module, generator: torch.Generator, gain: float = 0.5,
                      shift: float = 0.5, writer_offset: float = 0.0) -> nn.Module:
    """Give every LayerNorm a random affine map (``γ ~ 1 + U(-gain, gain)``, ``β ~ N(0, shift²)``),
    and optionally add a random constant ``c ~ N(0, writer_offset²)`` to each output row of the
    residual writers, so the stream has a large mean for the conversion to remove.
    Test models only: makes ``γ ≠ 1, β ≠ 0`` as the spec asks. Draws from ``generator`` (CPU)."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm) or type(m).__name__ == "LayerNorm":
                if getattr(m, "weight", None) is not None:
                    r = torch.rand(m.weight.shape, generator=generator, dtype=torch.float64)
                    m.weight.copy_(1 + gain * (2 * r - 1))
                if getattr(m, "bias", None) is not None:
                    m.bias.copy_(shift * torch.randn(m.bias.shape, generator=generator,
                                                     dtype=torch.float64))
        if writer_offset and isinstance(model, TinyGPT):
            _, embeddings, linears = _layer_names(model.cfg)
            for name in embeddings:
                w = model.get_submodule(name).weight
                w.add_(writer_offset * torch.randn(w.shape[0], 1, generator=generator,
                                                   dtype=torch.float64).to(w))
            for name in linears:
                lin = model.get_submodule(name)
                c = writer_offset * torch.randn(1, lin.weight.shape[1], generator=generator,
                                                dtype=torch.float64)
                lin.weight.add_(c.to(lin.weight) / lin.weight.shape[1] ** 0.5)
                if lin.bias is not None:
                    lin.bias.add_(writer_offset * torch.randn((), generator=generator,
                                                              dtype=torch.float64).to(lin.bias))
    return model
