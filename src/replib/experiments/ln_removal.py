"""Runs for the LayerNorm-removal chapter (Baroni et al. 2025, arXiv 2507.02559).

A small GPT-2-style Pre-LN model is pre-trained on byte-level Python standard-library source with
a BOS token at position 0 of every window; from that one checkpoint the arms are compared:
vanilla fine-tuning, fine-tuning with the LN-removal schedule (our procedure, and the official
code's default flags as a side arm), and instant removal (every LN frozen to its average std, no
fine-tuning). The fine-tuning arms share one learning-rate grid (:func:`ft_runner` for
:func:`replib.train.lr_sweep`), chosen on validation windows and judged on separate test windows
(:func:`replib.data.lm_splits` with ``windows=bos_eval_windows``).
"""
from __future__ import annotations

import copy
import itertools
import math

import torch

from ..claims import loglog_slope
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


FT_ARMS = ("vanilla FT", "removal FT", "removal FT, official default flags")


def removal_model(base, arm: str, train_tokens: torch.Tensor, *, seed: int, batch_size: int,
                  seq_len: int, calib_batches: int, device):
    """A converted copy of ``base`` with its std estimates calibrated on ``calib_batches``
    training batches: our procedure (``"removal FT"``) or the official default flags
    (``"removal FT, official default flags"``: frozen at this calibration, no BOS scalar)."""
    official = arm == FT_ARMS[2]
    m = convert_to_fake(copy.deepcopy(base), freeze="initial" if official else "running",
                        bos_special=not official)
    calibrate_std(m, bos_batches(train_tokens, batch_size, seq_len, seed_everything(seed + 2000), device),
                  calib_batches)
    return m


def ft_runner(bases: dict, train_tokens: torch.Tensor, val, test, *, schedule, steps: int,
              batch_size: int, seq_len: int, eval_every: int, calib_batches: int, device,
              keep: dict):
    """``run(arm, lr, seed)`` for :func:`replib.train.lr_sweep`: fine-tune a copy of
    ``bases[seed]`` (an arm of :data:`FT_ARMS`) at peak ``lr`` (cosine to ``lr/2``, as the
    paper's 6e-4 to 3e-4) on the batches of ``seed`` (the same for every arm). Returns the final
    validation and test CE (NaN when diverged) and the validation curve; the model goes into
    ``keep[(arm, lr, seed)]``."""
    def run(arm: str, lr: float, seed: int) -> dict:
        if arm == FT_ARMS[0]:
            m, sched = copy.deepcopy(bases[seed]), None
        else:
            m = removal_model(bases[seed], arm, train_tokens, seed=seed, batch_size=batch_size,
                              seq_len=seq_len, calib_batches=calib_batches, device=device)
            sched = schedule
        r = finetune(m, train_tokens, val, steps=steps, schedule=sched, lr=lr, min_lr=lr / 2,
                     batch_size=batch_size, seq_len=seq_len, eval_every=eval_every,
                     generator=seed_everything(seed + 1000), device=device)
        ok = math.isfinite(r["ce"])
        if sched is not None and ok and not is_ln_free(m):
            raise RuntimeError("the removal schedule did not leave the model LN-free")
        keep[(arm, lr, seed)] = m if ok else None
        return {"val": r["ce"], "test": val_ce(m, *test) if ok else math.nan,
                "curve": [v for _, v in r["curve"]], "curve_steps": [st for st, _ in r["curve"]]}
    return run


def instant_removal_ce(base, train_tokens: torch.Tensor, data, *, seed: int, batch_size: int,
                       seq_len: int, calib_batches: int, device) -> float:
    """CE on ``data`` after freezing every LN of ``base`` at once to its calibrated average std
    (no BOS scalar, no fine-tuning): the spec's instant-removal baseline."""
    m = removal_model(base, FT_ARMS[1], train_tokens, seed=seed, batch_size=batch_size,
                      seq_len=seq_len, calib_batches=calib_batches, device=device)
    return val_ce(remove_all_now(m), *data)


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


def max_slope(params: list[float], budgets: list[int]) -> float:
    """The largest log-log slope the budget grid can show over these parameter counts
    (largest over smallest budget, against largest over smallest model): a rule "slope < 1" can
    fail only when this is at least 1."""
    return math.log(max(budgets) / min(budgets)) / math.log(max(params) / min(params))


def findings_markdown(claims: dict, *, ce: dict, pretrained: list[float], best: dict,
                      err_free: list[float], err_ln: list[float], official: str, scale: str) -> str:
    """"What we learned", written from the measured test CEs (per seed, per arm) and verdicts."""
    from ..claims import Stat, paired

    def d(a: str, b: str) -> Stat:
        return Stat.of([x - y for x, y in zip(ce[a], ce[b])])

    v = {cid: c.verdict.value for cid, c in claims.items()}
    gap, inst, off = d("removal FT", "vanilla FT"), d("instant", "vanilla FT"), d(official, "vanilla FT")
    worse = sum(x > 0 for x in gap.finite)
    lines = [
        f"- **Removal by fine-tuning (C1: {v.get('C1', '—')}).** Fine-tuning with the removal schedule ends "
        f"{gap.mean:+.3f} nats/byte from vanilla fine-tuning on average (seeds {', '.join(f'{x:+.3f}' for x in gap.values)}; "
        f"worse in {worse} of {gap.n}), each arm at its own learning rate (vanilla {best.get('vanilla FT')}, "
        f"removal {best.get('removal FT')}). The paper's gaps are +0.014 to +0.067 nats per token.",
        f"- **Without fine-tuning (C4: {v.get('C4', '—')}).** Freezing every LN at once costs {inst.mean:+.3f} "
        f"nats/byte against vanilla fine-tuning ({inst.mean / gap.mean:.1f}x the removal-FT gap)" if gap.mean > 0 else
        f"- **Without fine-tuning (C4: {v.get('C4', '—')}).** Freezing every LN at once costs {inst.mean:+.3f} "
        "nats/byte against vanilla fine-tuning, while removal fine-tuning costs nothing on average",
    ]
    inst_pre = Stat.of([x - p for x, p in zip(ce["instant"], pretrained)])
    lines[-1] += (f", and {inst_pre.mean:+.3f} against the checkpoint it starts from"
                  + (": one scalar per LN does not do without adaptation." if inst_pre.mean > 0.05 else
                     ": on our small models one scalar per LN does almost as well without adaptation."))
    p = paired(ce[official], ce["removal FT"], names=("official flags", "ours"))
    lo, hi = p.interval
    lines.append(
        f"- **Which std to freeze to.** With the official code's default flags (every path frozen at the std "
        f"measured before fine-tuning, no position-0 scalar) the gap is {off.mean:+.3f} nats/byte, against "
        f"{gap.mean:+.3f} with the running estimate and BOS scalar we follow; paired, {p}: "
        + ("the official default is worse on our models." if lo > 0 else
           "the official default is better on our models." if hi < 0 else
           "the interval cannot tell the two apart on our models."))
    lines.append(
        f"- **Attribution (C3: {v.get('C3', '—')}).** In every LN-free model DLA matches the direct effect to "
        f"{max(err_free):.0e} (float64 rounding), as it must once the final norm is a constant map; with LN the "
        f"relative error is {Stat.of(err_ln).mean:.2g} on average. This is why the paper removes LN, not a "
        "finding about training.")
    if scale == "smoke":
        lines.insert(0, "*Smoke scale: a pipeline check; these sentences are written from its numbers but are "
                        "not results.*")
    return "\n".join(lines)
