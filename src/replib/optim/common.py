r"""What the optimiser chapters share: a tiny LLaMA-style model, the matrix/rest parameter split,
the Adam update both normalised optimisers use for their non-matrix parameters, and
optimizer-state bytes *measured* from the tensors an optimiser holds.

The model (:class:`TinyLlama`) follows the LLaMA recipe the optimiser papers benchmark on (the
GaLore LLaMA/C4 benchmark: RMSNorm with eps 1e-6, SwiGLU MLP, rotary position embeddings, an untied
LM head, no biases), at byte level (vocabulary 256). Module names follow the official Conda LLaMA
script's convention (jie040109/Conda, ``examples/llama/torchrun_main.py``): every ``nn.Linear``
whose qualified name contains ``attn`` or ``mlp`` is a block matrix (:func:`matrix_params`).

:func:`adam_update_` is the Hugging Face-style AdamW step the official Conda code applies to every
parameter (``conda_torch/conda.py`` @ 449af71): bias correction folded into the step size,
:math:`\epsilon` outside the square root,

.. math:: m \leftarrow \beta_1 m + (1-\beta_1) g,\quad v \leftarrow \beta_2 v + (1-\beta_2) g^2,\quad
          w \leftarrow w - \eta\,\tfrac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\,\tfrac{m}{\sqrt v + \epsilon},
          \quad w \leftarrow w - \eta\lambda w .
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError

MATRIX_MODULES = ("attn", "mlp")  # the official Conda script's target_modules_list


# --------------------------------------------------------------------------- optimiser helpers
def check_grad(p: torch.Tensor, who: str) -> torch.Tensor:
    """The parameter's dense gradient; a clear error for sparse gradients."""
    g = p.grad
    if g.is_sparse:
        raise ReplibError(f"{who} does not support sparse gradients (parameter of shape "
                          f"{tuple(p.shape)}); use a dense embedding or torch.optim.SparseAdam")
    return g


def check_matrix(p: torch.Tensor, who: str) -> None:
    """A clear error for a parameter a matrix optimiser cannot handle (not 2-D, complex)."""
    if p.dim() != 2:
        raise ReplibError(f"{who} updates 2-D weight matrices only, got a parameter of shape "
                          f"{tuple(p.shape)}: put it in a group with the matrix flag off (Adam)")
    if p.is_complex():
        raise ReplibError(f"{who} does not support complex parameters")


def check_hparams(lr: float, betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    if lr < 0:
        raise ReplibError(f"learning rate must be >= 0, got {lr}")
    if not (0.0 <= betas[0] < 1.0 and 0.0 <= betas[1] < 1.0):
        raise ReplibError(f"betas must lie in [0, 1), got {betas}")
    if eps < 0 or weight_decay < 0:
        raise ReplibError(f"eps and weight_decay must be >= 0, got {eps}, {weight_decay}")


@torch.no_grad()
def adam_update_(p: torch.Tensor, grad: torch.Tensor, state: dict, *, lr: float,
                 betas: tuple[float, float], eps: float, weight_decay: float) -> None:
    """One HF-style AdamW step on ``p`` in place (state: ``step`` int, ``exp_avg``, ``exp_avg_sq``)."""
    if "exp_avg" not in state:
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
    b1, b2 = betas
    m, v = state["exp_avg"], state["exp_avg_sq"]
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    state["step"] += 1
    t = state["step"]
    step_size = lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)
    p.addcdiv_(m, v.sqrt().add_(eps), value=-step_size)
    if weight_decay > 0:
        p.add_(p, alpha=-lr * weight_decay)


def _tensors(obj: Any) -> Iterable[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Mapping):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def state_bytes(optimizer: torch.optim.Optimizer, params: Iterable[torch.Tensor] | None = None) -> int:
    """Bytes of every tensor the optimiser keeps in ``optimizer.state`` (``numel * element_size``,
    nested containers included; scalar step tensors count too), over ``params`` (default: all).
    Measured from the tensors themselves, not from a formula."""
    keys = list(optimizer.state) if params is None else list(params)
    seen: set[int] = set()
    total = 0
    for p in keys:
        for t in _tensors(optimizer.state.get(p, {})):
            if t.data_ptr() in seen and t.numel():
                continue
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


def param_bytes(params: Iterable[torch.Tensor]) -> int:
    return sum(p.numel() * p.element_size() for p in params)


# --------------------------------------------------------------------------- the model
@dataclass
class LlamaConfig:
    vocab_size: int = 256
    seq_len: int = 128
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 128
    d_ff: int | None = None  # SwiGLU hidden width; None: the LLaMA rule 8/3 d rounded up to 8
    norm_eps: float = 1e-6
    rope_base: float = 10000.0
    init_std: float = 0.02

    def __post_init__(self):
        if self.d_model % self.n_head or (self.d_model // self.n_head) % 2:
            raise ReplibError(f"d_model={self.d_model} must split into {self.n_head} heads of even width")
        if self.d_ff is None:
            self.d_ff = 8 * ((8 * self.d_model // 3 + 7) // 8)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., ::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


class LlamaAttention(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.n_head, d = cfg.n_head, cfg.d_model
        self.q, self.k, self.v, self.o = (nn.Linear(d, d, bias=False) for _ in range(4))
        hd = d // cfg.n_head
        inv = 1.0 / cfg.rope_base ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
        ang = torch.outer(torch.arange(cfg.seq_len, dtype=torch.float32), inv)
        self.register_buffer("cos", ang.cos(), persistent=False)
        self.register_buffer("sin", ang.sin(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, D = x.shape
        q, k, v = ((lin(x).view(B, T, self.n_head, -1).transpose(1, 2)) for lin in (self.q, self.k, self.v))
        cos, sin = self.cos[:T].to(x.dtype), self.sin[:T].to(x.dtype)
        y = F.scaled_dot_product_attention(_rope(q, cos, sin), _rope(k, cos, sin), v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, D))


class SwiGLU(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.gate = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.up = nn.Linear(cfg.d_model, cfg.d_ff, bias=False)
        self.down = nn.Linear(cfg.d_ff, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class LlamaBlock(nn.Module):
    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = LlamaAttention(cfg)
        self.mlp_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class TinyLlama(nn.Module):
    """A byte-level LLaMA-style decoder: ``model(idx, targets) -> (logits, mean cross-entropy)``."""

    def __init__(self, cfg: LlamaConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(LlamaBlock(cfg) for _ in range(cfg.n_layer))
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        for m in self.modules():  # the HF LLaMA init: N(0, 0.02) for every matrix, norms at 1
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.normal_(m.weight, std=cfg.init_std)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor | None = None):
        if idx.shape[1] > self.cfg.seq_len:
            raise ReplibError(f"sequence length {idx.shape[1]} exceeds seq_len={self.cfg.seq_len}")
        x = self.embed(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.norm(x))
        if targets is None:
            return logits, None
        return logits, F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def matrix_params(model: nn.Module, targets: tuple[str, ...] = MATRIX_MODULES
                  ) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """``(matrices, rest)``: the weights of ``nn.Linear`` modules whose qualified name contains one
    of ``targets`` (the official Conda LLaMA rule; SinkGD's re-implementations pick the same set:
    attention and MLP matrices), and every other parameter (embeddings, LM head, norm gains)."""
    mats = [m.weight for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and any(t in name for t in targets)]
    ids = {id(p) for p in mats}
    return mats, [p for p in model.parameters() if id(p) not in ids]


__all__ = ["LlamaConfig", "TinyLlama", "adam_update_", "check_grad", "check_hparams", "check_matrix",
           "matrix_params", "param_bytes", "state_bytes"]
