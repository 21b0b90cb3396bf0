"""Runs for the LayerNorm-removal chapter (Baroni et al. 2025, arXiv 2507.02559).

A small GPT-2-style Pre-LN model is pre-trained on byte-level Python standard-library source with
a BOS token at position 0 of every window; from that one checkpoint three arms are compared:
vanilla fine-tuning, fine-tuning with the LN-removal schedule, and instant removal (every LN
frozen to its average std, no fine-tuning). Nothing here reads the validation windows to choose
anything; they are only evaluated.
"""
from __future__ import annotations

import copy
import itertools
import math
import time

import torch

from ..data import lm_batches
from ..nn import GPTConfig, TinyGPT
from ..nn.ln_removal import (
    FakeLayerNorm,
    apply_events,
    calibrate_std,
    convert_to_fake,
    is_ln_free,
    removal_schedule,
    remove_all_now,
)
from ..nn.norms import LayerNorm
from ..runtime import seed_everything
from ..train import lm_loss, train, warmup_cosine

BOS = 256  # one id past the 256 bytes
VOCAB = 257


def bos_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator,
                device="cpu"):
    """Random windows of ``seq_len`` with BOS at position 0 (its target: the window's first byte)."""
    for x, y in lm_batches(tokens, batch_size, seq_len - 1, generator, device):
        bos = torch.full_like(x[:, :1], BOS)
        yield torch.cat([bos, x], 1), torch.cat([x[:, :1], y], 1)


def bos_eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int, device="cpu"):
    """Fixed non-overlapping evaluation windows, each starting with BOS."""
    n = min(max_windows, (len(tokens) - 1) // (seq_len - 1))
    w = tokens[: n * (seq_len - 1) + 1]
    x = w[:-1].view(n, seq_len - 1)
    y = w[1:].view(n, seq_len - 1)
    bos = torch.full_like(x[:, :1], BOS)
    return torch.cat([bos, x], 1).to(device), torch.cat([x[:, :1], y], 1).to(device)


def val_ce(model, vx: torch.Tensor, vy: torch.Tensor, chunk: int = 32) -> float:
    """Mean validation cross-entropy (nats per byte) in eval mode."""
    was = model.training
    model.eval()
    ce = lm_loss(model, vx, vy, chunk)
    model.train(was)
    return ce


def pretrain(seed: int, train_tokens: torch.Tensor, *, n_layer: int, d_model: int, n_head: int,
             seq_len: int, steps: int, batch_size: int, lr: float, device, progress=False):
    """Pre-train a Pre-LN TinyGPT (AdamW, warm-up + cosine to lr/10, clip 1.0)."""
    gen = seed_everything(seed)
    model = TinyGPT(GPTConfig(vocab_size=VOCAB, seq_len=seq_len, n_layer=n_layer,
                              n_head=n_head, d_model=d_model, norm="layernorm",
                              placement="pre")).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_steps=max(1, steps // 20), min_ratio=0.1))
    hist = train(model, opt, bos_batches(train_tokens, batch_size, seq_len, gen, device),
                 lambda m, b: m(b[0], b[1])[1], steps, scheduler=sched, grad_clip=1.0,
                 desc=f"pretrain d{d_model} s{seed}", progress=progress)
    return model, hist


def finetune(model, train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor], *,
             steps: int, schedule=None, lr: float = 6e-4, min_lr: float = 3e-4, warmup: int = 20,
             weight_decay: float = 0.01, batch_size: int, seq_len: int, eval_every: int,
             generator: torch.Generator, device) -> dict:
    """Fine-tune ``model`` in place for ``steps`` (the paper's optimiser: AdamW 6e-4 cosine to
    3e-4, 20 warm-up steps, wd 0.01, clip 1.0). With a ``schedule`` (from
    :func:`~replib.nn.ln_removal.removal_schedule`) the model is converted to fake LNs and its
    events are applied at their steps. Returns the validation-CE curve and the final CE."""
    if schedule is not None and schedule.last_step >= steps:
        raise ValueError(f"schedule ends at step {schedule.last_step}, after {steps} steps")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95),
                            weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, warmup_cosine(steps, warmup_steps=warmup, min_ratio=min_lr / lr))
    batches = bos_batches(train_tokens, batch_size, seq_len, generator, device)

    def batches_with_events():  # the schedule's events for a step apply before its batch
        for step in itertools.count():
            if schedule is not None:
                apply_events(model, schedule, step)
            yield next(batches)

    curve = [(0, val_ce(model, *val))]
    hist = train(model, opt, batches_with_events(), lambda m, b: m(*b)[1], steps,
                 evaluate=lambda m: {"ce": val_ce(m, *val)}, eval_every=eval_every,
                 grad_clip=1.0, scheduler=sched, progress=False)
    curve += [(step, m["ce"]) for step, m in hist.evals]
    if hist.diverged:
        curve.append((hist.diverged_at, math.nan))
    return {"curve": curve, "ce": curve[-1][1]}


@torch.no_grad()
def direct_effect_error(model, idx: torch.Tensor) -> float:
    """Largest relative gap, over components, between direct logit attribution and direct effect.

    Components: the embeddings and every attention and MLP output. Direct effect of component
    ``c``: ``logits(x_L) - logits(x_L - c)`` (remove ``c`` from the final residual only). DLA:
    ``head(w * (c - mean c) / s)`` with ``s`` the final norm's scale for that token (the live
    per-token std for a real LN, the frozen scalar for a fake one). Runs in float64 on the CPU.
    """
    m = copy.deepcopy(model).double().cpu().eval()
    idx = idx.cpu()
    comps, final = [], []
    hooks = [b.attn.register_forward_hook(lambda mod, a, out: comps.append(out)) for b in m.blocks]
    hooks += [b.mlp.register_forward_hook(lambda mod, a, out: comps.append(out)) for b in m.blocks]
    hooks.append(m.norm_f.register_forward_pre_hook(lambda mod, a: final.append(a[0])))
    try:
        logits, _ = m(idx)
    finally:
        for h in hooks:
            h.remove()
    xL = final[0]
    emb = m.embed(idx)
    nf = m.norm_f
    if isinstance(nf, FakeLayerNorm) and nf.is_ln_free:
        s = nf.fake_std_main
    elif isinstance(nf, LayerNorm):
        s = torch.sqrt(xL.var(-1, unbiased=False, keepdim=True) + nf.eps)
    else:
        raise ValueError("final norm must be a LayerNorm or an LN-free FakeLayerNorm")
    errs = []
    for c in [emb] + comps:
        de = logits - m.head(nf(xL - c))
        dla = m.head((c - c.mean(-1, keepdim=True)) / s * nf.weight)
        errs.append(float((dla - de).norm() / de.norm()))
    return max(errs)


def run_seed(seed: int, train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor], *,
             n_layer: int, d_model: int, n_head: int, seq_len: int, pretrain_steps: int,
             pretrain_lr: float, batch_size: int, ft_steps: int, start: int, gaps: tuple,
             eval_every: int, calib_batches: int, device, dla_windows: int = 4,
             progress: bool = False) -> dict:
    """One seed: pre-train, then the three arms from the same checkpoint."""
    t0 = time.perf_counter()
    base, _ = pretrain(seed, train_tokens, n_layer=n_layer, d_model=d_model, n_head=n_head,
                       seq_len=seq_len, steps=pretrain_steps, batch_size=batch_size,
                       lr=pretrain_lr, device=device, progress=progress)
    out = {"pretrained": val_ce(base, *val), "params": sum(p.numel() for p in base.parameters())}
    sched = removal_schedule(n_layer, start, *gaps)
    ft = dict(steps=ft_steps, batch_size=batch_size, seq_len=seq_len, eval_every=eval_every,
              device=device)
    # (a) vanilla fine-tuning
    vanilla = copy.deepcopy(base)
    out["vanilla"] = finetune(vanilla, train_tokens, val, generator=seed_everything(seed + 1000), **ft)
    # (b) removal schedule: convert, start from the average std, fine-tune
    removed = convert_to_fake(copy.deepcopy(base))
    calibrate_std(removed, bos_batches(train_tokens, batch_size, seq_len,
                                       seed_everything(seed + 2000), device), calib_batches)
    out["removed"] = finetune(removed, train_tokens, val, schedule=sched,
                              generator=seed_everything(seed + 1000), **ft)
    assert is_ln_free(removed)
    # (c) instant removal: every LN frozen to its average std, no fine-tuning
    instant = convert_to_fake(copy.deepcopy(base))
    calibrate_std(instant, bos_batches(train_tokens, batch_size, seq_len,
                                       seed_everything(seed + 2000), device), calib_batches)
    out["instant"] = val_ce(remove_all_now(instant), *val)
    # C3: direct logit attribution vs direct effect
    idx = val[0][:dla_windows]
    out["dla_err_ln"] = direct_effect_error(vanilla, idx)
    out["dla_err_free"] = direct_effect_error(removed, idx)
    out["schedule"] = sched
    out["models"] = {"vanilla": vanilla, "removed": removed}
    out["seconds"] = time.perf_counter() - t0
    return out


def scaled_schedule(n_layer: int, budget: int, fraction: float = 0.4):
    """The official gaps (start 20; 2/2/3; ln_f +2; EOT +10) scaled so the schedule ends within
    ``fraction`` of a ``budget``-step fine-tune (GPT-2 small: 116 of 300 steps, 39%)."""
    k = fraction * budget / (20 + 7 * n_layer + 12)
    gaps = tuple(max(1, round(g * k)) for g in (2, 2, 3, 2, 10))
    sched = removal_schedule(n_layer, max(1, round(20 * k)), *gaps)
    if sched.last_step >= budget:
        raise ValueError(f"budget {budget} is too short for {n_layer} layers")
    return sched


def removal_budget(seed: int, train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
                   *, d_model: int, n_layer: int, n_head: int, seq_len: int, batch_size: int,
                   pretrain_steps: int, pretrain_lr: float, budgets: list[int],
                   calib_batches: int, tol: float = 0.1, device) -> dict:
    """Smallest removal fine-tuning budget (from ``budgets``) whose LN-free CE is within ``tol``
    of vanilla fine-tuning for the same number of steps; ``nan`` when none is."""
    base, _ = pretrain(seed, train_tokens, n_layer=n_layer, d_model=d_model, n_head=n_head,
                       seq_len=seq_len, steps=pretrain_steps, batch_size=batch_size,
                       lr=pretrain_lr, device=device)
    ft = dict(batch_size=batch_size, seq_len=seq_len, device=device)
    gaps = {}
    for b in sorted(budgets):
        ref = finetune(copy.deepcopy(base), train_tokens, val, steps=b, eval_every=b,
                       generator=seed_everything(seed + 1000), **ft)["ce"]
        m = convert_to_fake(copy.deepcopy(base))
        calibrate_std(m, bos_batches(train_tokens, batch_size, seq_len,
                                     seed_everything(seed + 2000), device), calib_batches)
        ce = finetune(m, train_tokens, val, steps=b, eval_every=b,
                      schedule=scaled_schedule(n_layer, b),
                      generator=seed_everything(seed + 1000), **ft)["ce"]
        gaps[b] = ce - ref
        if gaps[b] <= tol:
            break
    reached = [b for b, g in gaps.items() if g <= tol]
    return {"params": sum(p.numel() for p in base.parameters()), "gaps": gaps,
            "budget": float(min(reached)) if reached else math.nan}


def loglog_slope(x: list[float], y: list[float]) -> float:
    """Least-squares slope of log y against log x."""
    lx = torch.tensor(x, dtype=torch.float64).log()
    ly = torch.tensor(y, dtype=torch.float64).log()
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())
