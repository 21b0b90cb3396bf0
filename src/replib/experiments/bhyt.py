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

:func:`sweep_point` is one point of the chapter's learning-rate sweep (validation loss to choose
on, test loss to judge, the depth profile); :func:`c1_rule` and :func:`c2_rule` are the spec's rules
on paired per-seed differences.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

import math

from .. import claims as rc
from .. import timing
from ..data import lm_batches
from ..nn import GPTConfig, TinyGPT
from ..nn.bhyt import BHyTGPT, refresh_interval, second_statistic_ratios
from ..nn.instrument import residual_stats
from ..runtime import seed_everything, torch_threads
from ..timing import Timing
from ..train import History, lm_loss, train, warmup_cosine
from .seednorm import LMSplits, lm_splits  # noqa: F401  (the val/test halves of the held-out bytes)

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


# ----------------------------------------------------------------------------- the sweep and rules
def sweep_point(variant: str, lr: float, seed: int, splits: LMSplits, *, n_layer: int, d_model: int,
                n_head: int, seq_len: int, batch_size: int, steps: int, warmup_frac: float,
                eval_every: int, grad_clip: float | None, device="cpu", probe_windows: int = 16,
                progress: bool = False) -> dict:
    """One point of the learning-rate sweep: :func:`train_lm` on ``splits``' training bytes.

    Returns ``val`` (final loss on the validation windows, nats/byte: chooses the lr), ``test``
    (on the disjoint test windows: judged), the validation ``curve`` at ``steps``, the residual
    stream's ``rms`` profile and ``growth`` on the first ``probe_windows`` validation windows, and
    for BHyT the second-statistic ``approx``imation quality. A diverged run is NaN (never raised).
    """
    d = splits.data
    run = train_lm(variant, seed, d.train, (d.val_x, d.val_y), n_layer=n_layer, d_model=d_model,
                   n_head=n_head, seq_len=seq_len, batch_size=batch_size, steps=steps, lr=lr,
                   warmup_frac=warmup_frac, eval_every=eval_every, grad_clip=grad_clip, device=device,
                   progress=progress)
    ok = not run.history.diverged
    steps_, curve = run.history.eval_series("loss")
    out = {"val": run.final_loss, "test": math.nan, "curve": list(curve), "steps": list(steps_),
           "rms": None, "growth": math.nan, "approx": None}
    if ok:
        probe = d.val_x[:probe_windows]
        with torch_threads(1 if torch.device(device).type == "cpu" else None):
            out["test"] = lm_loss(run.model, splits.test_x, splits.test_y)
            out["rms"] = rms_profile(run.model, probe)
            out["growth"] = rms_growth(out["rms"])
            if isinstance(run.model, BHyTGPT):
                out["approx"] = _finite_or_none(approximation_quality(run.model, probe))
    return out


def _finite_or_none(d: dict) -> dict:
    """Non-finite numbers (in values or lists) as None, so the results record stays strict JSON."""
    fix = lambda v: v if math.isfinite(v) else None  # noqa: E731
    return {k: [fix(x) for x in v] if isinstance(v, list) else fix(v) for k, v in d.items()}


def c1_rule(lrs, *, unigram: float, margin: float = 0.05, dyt: str = "DyT",
            shallow: str = "DyT shallow", gap: float = 0.05, confidence: float = 0.95) -> rc.Rule:
    """The spec's C1 rule on paired per-seed values, per learning rate of the grid.

    Metrics: ``growth {arm} lr={lr:g}`` (RMS(h_L)/RMS(h_1)) and ``loss {arm} lr={lr:g}`` (test loss)
    for ``RMSNorm``, ``BHyT`` and ``dyt``; ``loss {shallow}`` (the shallow DyT control at its own
    best lr). See the rule's text for the decision.
    """
    lrs = list(lrs)
    text = (
        f"Settings: every lr of the grid {lrs}. Health gate per setting: RMSNorm and BHyT enter the "
        f"RMS-ratio comparison at an lr only if no seed diverged and every seed ends at least {margin:g} "
        f"nats below the byte-unigram loss ({unigram:.4g}); no such lr: inconclusive. Not replicated if "
        "any BHyT run diverges. Ratio part, at every gated lr, paired per-seed (Student-t "
        f"{confidence:.0%}): BHyT's growth − 0.5 x RMSNorm's growth must lie wholly below 0; not "
        "replicated if at some gated lr it lies wholly above 0 (BHyT's growth is more than half of "
        "RMSNorm's) or BHyT − RMSNorm lies wholly above 0 (a larger ratio); inconclusive otherwise. DyT "
        f"part (only once the ratio part holds): first a control, {dyt} in a shallow model with the "
        f"same recipe and grid at its own best lr, must pass the same unigram gate in every seed, else "
        f"the DyT part is excluded (a DyT that does not train at all says nothing about depth) and the "
        f"verdict is partially replicated. Then DyT is fragile at depth if at some lr a deep {dyt} run "
        f"diverged or {dyt} − BHyT (test loss) lies wholly above {gap:g} nats: replicated; if at every "
        f"lr {dyt} − BHyT lies wholly below {gap:g} with no divergence: partially replicated (only the "
        "ratio condition holds); otherwise partially replicated with the DyT part named inconclusive.")

    def gate_ok(s: rc.Stat) -> bool:
        return s.n_diverged == 0 and all(v <= unigram - margin for v in s.values)

    def decide(m):
        key = lambda kind, arm, lr: f"{kind} {arm} lr={lr:g}"  # noqa: E731
        if any(m[key("loss", "BHyT", lr)].n_diverged for lr in lrs):
            return rc.Verdict.NOT_REPLICATED, "a BHyT run diverged"
        gated = [lr for lr in lrs if gate_ok(m[key("loss", "BHyT", lr)]) and gate_ok(m[key("loss", "RMSNorm", lr)])]
        if not gated:
            return rc.Verdict.INCONCLUSIVE, ("health gate failed: at no lr did RMSNorm and BHyT both end "
                                            f"{margin:g} nats below the unigram loss in every seed")
        notes, parts = [], []
        for lr in gated:
            b, r = m[key("growth", "BHyT", lr)], m[key("growth", "RMSNorm", lr)]
            half = rc.paired(b, [0.5 * v for v in r.values], names=("BHyT growth", "0.5 x RMSNorm growth"),
                             confidence=confidence)
            larger = rc.paired(b, r, names=("BHyT growth", "RMSNorm growth"), confidence=confidence)
            v_half = rc.decide_side(half, claimed="below")
            if larger.interval[0] > 0:
                v_half = rc.Verdict.NOT_REPLICATED
            parts.append(v_half)
            notes.append(f"lr {lr:g}: {half:.3g}")
        skipped = [lr for lr in lrs if lr not in gated]
        if skipped:
            notes.append(f"lrs {skipped} left out of the ratio part (RMSNorm or BHyT failed the gate)")
        if (ratio := rc.all_of(*parts)) is not rc.Verdict.REPLICATED:
            return ratio, "; ".join(notes)
        ctrl = m[f"loss {shallow}"]
        if not gate_ok(ctrl):
            notes.append(f"DyT part excluded: the shallow control ({shallow}) did not end {margin:g} nats "
                         f"below the unigram loss in every seed ({ctrl:.4g})")
            return rc.Verdict.PARTIAL, "; ".join(notes)
        fragile, solid = False, True
        for lr in lrs:
            d_ = m[key("loss", dyt, lr)]
            p = rc.paired(d_, m[key("loss", "BHyT", lr)], names=(dyt, "BHyT"), confidence=confidence)
            lo, hi = p.interval
            fragile |= d_.n_diverged > 0 or lo > gap
            solid &= d_.n_diverged == 0 and hi < gap
            notes.append(f"lr {lr:g}: {p:.3g}" + (f" ({d_.n_diverged} {dyt} seed{'s' * (d_.n_diverged != 1)} diverged)"
                                                     if d_.n_diverged else ""))
        if fragile:
            return rc.Verdict.REPLICATED, "; ".join(notes)
        notes.append("DyT part: " + ("DyT within the gap at every lr" if solid else "inconclusive"))
        return rc.Verdict.PARTIAL, "; ".join(notes)

    return rc.Rule(text, decide)


def c2_rule(*, unigram: float, margin: float = 0.05, tol: float = 0.01, partial_tol: float = 0.03,
            confidence: float = 0.95) -> rc.Rule:
    """The spec's C2 rule (BHyT no worse than RMSNorm + ``tol``; partially within ``partial_tol``)
    on the paired per-seed difference of test losses, each arm at its own best lr."""
    text = (f"Claim: BHyT's test loss is no worse than RMSNorm's + {tol:g} nats/byte (the spec; partially "
            f"within + {partial_tol:g}), each arm at its own best lr. Paired per-seed difference BHyT − "
            f"RMSNorm with a {confidence:.0%} Student-t interval: replicated if the interval lies below "
            f"+{tol:g}; partially replicated if it lies below +{partial_tol:g}; not replicated if it lies "
            f"wholly at or above +{partial_tol:g}; inconclusive otherwise.")

    def decide(m):
        p = rc.paired(m["BHyT"], m["RMSNorm"], names=("BHyT", "RMSNorm"), confidence=confidence)
        lo, hi = p.interval
        v = (rc.Verdict.REPLICATED if hi < tol else rc.Verdict.PARTIAL if hi < partial_tol else
             rc.Verdict.NOT_REPLICATED if lo >= partial_tol else rc.Verdict.INCONCLUSIVE)
        return v, f"{p:.4f}"

    return rc.Rule(text, decide, rc.Health(reference=unigram, margin=margin), ("BHyT", "RMSNorm"))
