"""Runs for the BHyT chapter (Byun et al. 2025, arXiv 2601.09719), with DyT as a baseline.

One LLaMA-flavoured byte-level decoder (Pre-norm, no biases, normal(0, 0.02) init, no scaled init)
in five variants that share every linear and embedding weight for a given seed (the DyT
variants add one scalar):

- ``RMSNorm``: Pre-RMSNorm, the paper's baseline;
- ``DyT a0=0.5`` and ``DyT a0=1.0``: every norm (final one too) replaced by DyT, and the token
  embeddings multiplied by a learnable scalar initialised to :math:`\\sqrt{d}`
  (``GPTConfig(embed_scale=True)``), as in the official DyT LLaMA code (jiachenzhu/DyT,
  ``other_tasks/LLaMA/fms_fsdp/models/llama.py``: ``shared_scale``); without it a
  statistics-free first norm sees embeddings of RMS 0.02;
- ``BHyT``: :class:`~replib.nn.bhyt.BHyTGPT` (lam_in 2, lam_post 1, kappa 10, approximate v2,
  c_l refreshed every N = clamp(steps/50, 1, 1000) steps), RMSNorm before the head;
- ``BHyT exact v2``: the same with the exact second statistic (ablation).

Training: AdamW (no weight decay), linear warm-up then cosine decay to 10 % of lr, gradient
clipping at 1 (LLaMA-Factory's default). The seed fixes the initial weights and the batch order.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import timing
from ..data import lm_batches
from ..nn import GPTConfig, TinyGPT
from ..nn.bhyt import BHyTGPT, refresh_interval, second_statistic_ratios
from ..nn.instrument import residual_stats
from ..runtime import seed_everything, torch_threads
from ..timing import Timing
from ..train import History, lm_loss, train, warmup_cosine

VARIANTS: dict[str, dict] = {
    "RMSNorm": dict(norm="rmsnorm"),
    # DyT: the official LLaMA recipe's learnable sqrt(d) embedding multiplier (embed_scale)
    "DyT a0=0.5": dict(norm="dyt", norm_kwargs={"alpha0": 0.5}, embed_scale=True),
    "DyT a0=1.0": dict(norm="dyt", norm_kwargs={"alpha0": 1.0}, embed_scale=True),
    "BHyT": dict(bhyt=True, exact_second=False),
    "BHyT exact v2": dict(bhyt=True, exact_second=True),
}


def llama_config(*, n_layer: int, d_model: int, n_head: int, seq_len: int, norm: str = "rmsnorm",
                 norm_kwargs: dict | None = None, vocab_size: int = 256,
                 embed_scale: bool = False) -> GPTConfig:
    """Pre-norm, bias-free, plain normal(0, 0.02) init (as LLaMA); GELU MLP and learned positions.
    ``embed_scale``: token embeddings times a learnable scalar initialised to sqrt(d_model)."""
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, norm=norm, norm_kwargs=dict(norm_kwargs or {}),
                     placement="pre", bias=False, scaled_init=False, embed_scale=embed_scale)


def build_model(variant: str, *, n_layer: int, d_model: int, n_head: int, seq_len: int) -> nn.Module:
    """The model of ``variant`` (a key of :data:`VARIANTS`); seed torch before calling it."""
    if variant not in VARIANTS:
        raise KeyError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    spec = VARIANTS[variant]
    shape = dict(n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len)
    if spec.get("bhyt"):
        return BHyTGPT(llama_config(**shape), exact_second=spec["exact_second"])
    return TinyGPT(llama_config(**shape, norm=spec["norm"], norm_kwargs=spec.get("norm_kwargs"),
                                embed_scale=spec.get("embed_scale", False)))


@dataclass
class Run:
    variant: str
    seed: int
    lr: float
    model: nn.Module
    history: History

    @property
    def final_loss(self) -> float:
        return self.history.final("loss")


def train_lm(variant: str, seed: int, train_tokens: torch.Tensor,
             val: tuple[torch.Tensor, torch.Tensor], *, n_layer: int, d_model: int, n_head: int,
             seq_len: int, batch_size: int, steps: int, lr: float, warmup_frac: float = 0.1,
             eval_every: int = 0, grad_clip: float | None = 1.0, device="cpu",
             progress: bool = True, threads: int | None = 1) -> Run:
    """Train one byte-level LM; ``History.evals`` holds the validation ``loss`` (nats/byte).

    BHyT models refresh their :math:`c_\\ell` every :func:`~replib.nn.bhyt.refresh_interval` steps
    (after the backward pass, before the optimizer step: the weights the next forward uses differ
    by one update from those c was computed from). ``threads``: torch's intra-op threads on a CPU
    device during the run (tiny models run fastest on one; restored afterwards).
    """
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        gen = seed_everything(seed)
        model = build_model(variant, n_layer=n_layer, d_model=d_model, n_head=n_head,
                            seq_len=seq_len).to(device)
        if isinstance(model, BHyTGPT):
            model.refresh_scalers()  # on the device
        every = refresh_interval(steps)
        on_backward: Callable | None = None
        if isinstance(model, BHyTGPT):
            def on_backward(step: int, m: nn.Module) -> None:
                if step % every == 0:
                    m.refresh_scalers()
        opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac,
                                                                     min_ratio=0.1))
        hist = train(model, opt, lm_batches(train_tokens, batch_size, seq_len, gen, device),
                     lambda m, b: m(b[0], b[1])[1], steps, scheduler=sched,
                     evaluate=lambda m: {"loss": lm_loss(m, *val)}, eval_every=eval_every,
                     grad_clip=grad_clip, on_backward=on_backward,
                     desc=f"{variant} lr={lr:g} s{seed}", progress=progress)
        model.eval()
        return Run(variant, seed, lr, model, hist)


def rms_profile(model: nn.Module, probe: torch.Tensor) -> list[float]:
    """RMS of the residual stream entering block 1 and leaving every block (``L + 1`` values)."""
    return residual_stats(model, probe)["rms"]


def rms_growth(rms: list[float]) -> float:
    """:math:`\\mathrm{RMS}(h_L)/\\mathrm{RMS}(h_1)`: the stream leaving the last block over the
    stream leaving the first one (``rms[L] / rms[1]``)."""
    return rms[-1] / rms[1]


def approximation_quality(model: BHyTGPT, probe: torch.Tensor) -> dict[str, list[float] | float]:
    """Per layer, the median over tokens of :math:`v_2/\\mathrm{mean}(a^2)`; the median over layers
    and the fraction of layers whose median lies in [0.5, 2]; and per layer the ratio of the mean
    predicted increment :math:`v_2 - v_1` to the mean actual one (``increment``, with its median)."""
    per_layer = [float(r.median()) for r in second_statistic_ratios(model, probe)]
    inc = [float(r) for r in second_statistic_ratios(model, probe, increments=True)]
    arr = np.asarray(per_layer)
    return {"per_layer": per_layer, "median": float(np.median(arr)),
            "frac_in_band": float(np.mean((arr >= 0.5) & (arr <= 2.0))),
            "increment": inc, "increment_median": float(np.median(inc))}


@torch.no_grad()
def generate(model: TinyGPT, idx: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding of ``new_tokens`` tokens (no KV cache: each step re-runs the window of the
    last ``seq_len`` tokens, as TinyGPT has no cache)."""
    T = model.cfg.seq_len
    for _ in range(new_tokens):
        logits, _ = model(idx[:, -T:])
        idx = torch.cat([idx, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    return idx


def efficiency(variants: list[str], seed: int, *, n_layer: int, d_model: int, n_head: int,
               seq_len: int, batch_size: int, new_tokens: int, decode_batches: list[int],
               warmup: int, reps: int, device, amp_dtype: torch.dtype | None = None,
               threads: int | None = 1) -> dict[str, dict[str, Timing]]:
    """Fair timings (:func:`replib.timing.compare`: one process, warm-up, interleaved, synchronised)
    of ``variants`` built from the same seed: ``"train"`` (one AdamW step on a fixed batch) and
    ``"decode b{B}"`` (greedy generation of ``new_tokens`` tokens from a ``seq_len // 2`` prompt,
    batch ``B``), on ``threads`` intra-op threads on a CPU. Returns ``{mode: {variant: Timing}}``."""
    device = torch.device(device)
    with torch_threads(threads if device.type == "cpu" else None):
        return _efficiency(variants, seed, n_layer=n_layer, d_model=d_model, n_head=n_head,
                           seq_len=seq_len, batch_size=batch_size, new_tokens=new_tokens,
                           decode_batches=decode_batches, warmup=warmup, reps=reps, device=device,
                           amp_dtype=amp_dtype)


def _efficiency(variants, seed, *, n_layer, d_model, n_head, seq_len, batch_size, new_tokens,
                decode_batches, warmup, reps, device, amp_dtype) -> dict[str, dict[str, Timing]]:
    models = {}
    for v in variants:
        seed_everything(seed)
        models[v] = build_model(v, n_layer=n_layer, d_model=d_model, n_head=n_head,
                                seq_len=seq_len).to(device)
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 256, (batch_size, seq_len + 1), generator=gen).to(device)
    x, y = idx[:, :-1], idx[:, 1:]
    out: dict[str, dict[str, Timing]] = {}
    steps = {}
    for v, m in models.items():
        steps[v] = timing.train_step(m, torch.optim.AdamW(m.parameters(), lr=1e-4),
                                     lambda m: m(x, y)[1], amp_dtype)
    out["train"] = timing.compare(steps, device, warmup=warmup, reps=reps)
    for b in decode_batches:
        prompt = torch.randint(0, 256, (b, max(1, seq_len // 2)), generator=gen).to(device)
        fns = {v: timing.inference_step(m, lambda m, p=prompt: generate(m, p, new_tokens), amp_dtype)
               for v, m in models.items()}
        out[f"decode b{b}"] = timing.compare(fns, device, warmup=max(1, warmup // 2),
                                             reps=max(3, reps // 3))
    return out
