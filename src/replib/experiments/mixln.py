"""Training runs for the Mix-LN chapter (Li et al. 2024, arXiv 2412.13795; ICLR 2025).

Mix-LN itself is a placement of :class:`~replib.nn.TinyGPT` (``GPTConfig(placement="mix")``):
Post-LN in the first :math:`\\lfloor \\alpha L \\rfloor` blocks, Pre-LN after. This module trains
Pre-LN, Post-LN and Mix-LN models with the paper's recipe (Adam, 10% linear warm-up then cosine,
gradient clipping) and measures what the claims need:

- validation loss (perplexity) at the end of training;
- per-block gradient norms taken after ``backward`` and *before* clipping, every ``log_every``
  steps (through :func:`replib.train.train`'s ``on_backward`` hook);
- angular distance between consecutive hidden states and the layer-drop loss increase, on
  validation windows (:mod:`replib.nn.instrument`).

The MixLN repository's defaults are kept as this module's defaults: RMSNorm, every variant with a
final norm before the head, Linear weights drawn from N(0, 0.02) (no depth scaling) and the
embedding drawn with the repo's unusually large std :data:`REPO_EMBED_STD` = sqrt(2/5).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..claims import Health, Rule, Verdict, all_of, decide_side, gate_note, graded, log_paired, paired
from ..data import lm_batches, load_tabular, minibatches
from ..nn import (
    GPTConfig,
    TinyGPT,
    angular_distances,
    block_grad_norms,
    layer_drop_deltas,
)
from ..nn.vit import TinyViT
from ..runtime import seed_everything, torch_threads
from ..train import History, Sweep, adamw, train, warmup_cosine
from ..train import lr_sweep as _lr_sweep
from .layernorm import TrainValTest, carve_validation

REPO_EMBED_STD = math.sqrt(2 / 5)  # nn.Embedding init std in pixeli99/MixLN (0.632)
VARIANTS = {  # name -> GPTConfig placement keywords
    "Pre-LN": dict(placement="pre"),
    "Post-LN": dict(placement="post"),
    "Mix-LN": dict(placement="mix"),
}


def mix_config(variant: str, *, n_layer: int, d_model: int, n_head: int, seq_len: int,
               vocab_size: int = 256, mix_alpha: float | None = None,
               embed_std: float = REPO_EMBED_STD, norm: str = "rmsnorm") -> GPTConfig:
    """The chapter's GPT for ``variant`` (a key of :data:`VARIANTS`), with the repo's setup:
    a final norm for every variant (Post-LN included), plain N(0, 0.02) Linear init."""
    kw = dict(VARIANTS[variant])
    if kw["placement"] == "mix":
        kw["mix_alpha"] = mix_alpha
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, norm=norm, final_norm=True, scaled_init=False,
                     embed_std=embed_std, **kw)


@dataclass
class MixRun:
    variant: str
    seed: int
    history: History
    grad_log: list[tuple[int, list[float]]]
    init_loss: float  # validation loss before training
    final_loss: float  # validation loss after training (nan if diverged)
    diverged: bool
    angular_last: list[float] = field(default_factory=list)  # ShortGPT: last token only
    angular_all: list[float] = field(default_factory=list)  # all tokens
    drop_deltas: list[float] = field(default_factory=list)
    test_loss: float = math.nan  # loss on the test windows after training (run_variant's ``test``)

    @property
    def ppl(self) -> float:
        return math.exp(self.final_loss) if math.isfinite(self.final_loss) else math.nan

    def late_grad_norms(self, last_frac: float = 0.1) -> np.ndarray:
        """Per-block gradient norm averaged over logs in the last ``last_frac`` of training."""
        if not self.grad_log:
            return np.full(len(self.angular_last) or 1, np.nan)
        last = self.grad_log[-1][0]
        cut = last - last_frac * last
        rows = [g for s, g in self.grad_log if s >= cut] or [self.grad_log[-1][1]]
        return np.asarray(rows, dtype=float).mean(0)


def grad_balance(norms) -> dict[str, float]:
    """Coefficient of variation across blocks, last/first and first/last block ratios."""
    g = np.asarray(norms, dtype=float)
    return {"cv": float(g.std() / g.mean()), "last_over_first": float(g[-1] / g[0]),
            "first_over_last": float(g[0] / g[-1])}


def deep_mean(values, frac: float = 1 / 3) -> float:
    """Mean over the last ``ceil(frac * L)`` layers (the "deep" layers)."""
    v = np.asarray(values, dtype=float)
    k = max(1, math.ceil(frac * len(v)))
    return float(v[-k:].mean())


def run_variant(variant: str, seed: int, train_tokens: torch.Tensor,
                val: tuple[torch.Tensor, torch.Tensor], *, n_layer: int, d_model: int, n_head: int,
                seq_len: int, batch_size: int, steps: int, lr: float = 1e-3,
                warmup_frac: float = 0.1, grad_clip: float | None = 1.0, log_every: int = 10,
                eval_every: int = 0, mix_alpha: float | None = None,
                embed_std: float = REPO_EMBED_STD, device="cpu", progress: bool = True,
                test: tuple[torch.Tensor, torch.Tensor] | None = None,
                threads: int | None = None) -> MixRun:
    """Train one variant for one seed and measure it (validation windows ``val``; with ``test``
    windows, also the test loss after training). ``threads``: torch's intra-op threads on a CPU
    device during the run (restored afterwards; ``None`` leaves the setting alone)."""
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        return _run_variant(variant, seed, train_tokens, val, n_layer=n_layer, d_model=d_model,
                            n_head=n_head, seq_len=seq_len, batch_size=batch_size, steps=steps, lr=lr,
                            warmup_frac=warmup_frac, grad_clip=grad_clip, log_every=log_every,
                            eval_every=eval_every, mix_alpha=mix_alpha, embed_std=embed_std,
                            device=device, progress=progress, test=test)


def _run_variant(variant, seed, train_tokens, val, *, n_layer, d_model, n_head, seq_len, batch_size,
                 steps, lr, warmup_frac, grad_clip, log_every, eval_every, mix_alpha, embed_std,
                 device, progress, test) -> MixRun:
    gen = seed_everything(seed)
    cfg = mix_config(variant, n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len,
                     mix_alpha=mix_alpha, embed_std=embed_std)
    model = TinyGPT(cfg).to(device)
    vx, vy = val

    def val_loss(m):
        return m(vx, vy)[1]

    with torch.no_grad():
        model.eval()
        init_loss = float(val_loss(model))
        model.train()
    grad_log: list[tuple[int, list[float]]] = []

    def log_grads(step: int, m: TinyGPT) -> None:  # after backward, before clipping
        if log_every and step % log_every == 0:
            grad_log.append((step, block_grad_norms(m)))

    adam = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        adam, warmup_cosine(steps, warmup_frac=warmup_frac, min_ratio=0.1))  # MixLN repo's min-lr ratio
    hist = train(model, adam, lm_batches(train_tokens, batch_size, seq_len, gen, device),
                 lambda m, b: m(*b)[1], steps,
                 evaluate=lambda m: {"loss": float(val_loss(m))}, eval_every=eval_every,
                 grad_clip=grad_clip, scheduler=sched, on_backward=log_grads,
                 desc=f"{variant} s{seed}", progress=progress)
    final = hist.final("loss")
    # the spec's divergence: a non-finite loss, or a final loss above the initial one
    diverged = hist.diverged or not math.isfinite(final) or final > init_loss
    run = MixRun(variant, seed, hist, grad_log, init_loss, math.nan if diverged else final, diverged)
    if not hist.diverged:
        model.eval()
        run.angular_last = angular_distances(model, vx, last_token=True)
        run.angular_all = angular_distances(model, vx, last_token=False)
        run.drop_deltas = layer_drop_deltas(model, val_loss)
        if test is not None:
            with torch.no_grad():
                run.test_loss = float(model(*test)[1])
    return run


# ------------------------------------------------------------- the learning-rate sweep (issue 10)
def sweep_record(run: MixRun) -> dict:
    """What :class:`~replib.train.Sweep` keeps of one run: validation and test loss (nats/byte;
    ``nan`` for a diverged run), the validation curve, divergence."""
    return {"val": run.final_loss, "test": run.test_loss if not run.diverged else math.nan,
            "curve": [run.init_loss] + run.history.eval_series("loss")[1],
            "diverged": bool(run.diverged), "seconds": round(run.history.seconds, 2)}


def variant_sweep(variants, grid, seeds, train_tokens: torch.Tensor, val, test, *,
                  progress: bool = True, **kw) -> tuple[Sweep, dict[tuple[str, float, int], MixRun]]:
    """Every variant at every learning rate of one ``grid`` for every seed, selected on the
    validation loss (:func:`replib.train.lr_sweep`); ``kw`` go to :func:`run_variant`. Returns the
    sweep and every run keyed ``(variant, lr, seed)``."""
    runs: dict[tuple[str, float, int], MixRun] = {}

    def one(variant: str, lr: float, seed: int) -> dict:
        runs[(variant, lr, seed)] = r = run_variant(variant, seed, train_tokens, val, lr=lr, test=test,
                                                    progress=False, **kw)
        return sweep_record(r)

    return _lr_sweep(list(variants), list(grid), list(seeds), one, select_on="val",
                     progress=progress), runs


def at_best(sweep: Sweep, runs: dict, variant: str) -> list:
    """The variant's runs at its own best learning rate, in the sweep's seed order."""
    lr = sweep.best_lr(variant)
    lr = sweep.grid[0] if lr is None else lr  # every grid point diverged somewhere: all NaN anyway
    return [runs[(variant, lr, s)] for s in sweep.seeds]


# ------------------------------------------------------------------- chapter 25's verdict rules
def ppl_health(unigram_nats: float, margin_nats: float = 0.05) -> Health:
    """The byte-unigram gate on perplexity: a run must end ``margin_nats`` below the unigram loss,
    i.e. its perplexity below ``exp(unigram - margin)``."""
    ref = math.exp(unigram_nats)
    return Health(reference=ref, margin=ref - math.exp(unigram_nats - margin_nats),
                  name=f"byte-unigram perplexity (margin = {margin_nats:g} nats)")


def mix_quality_rule(health: Health) -> Rule:
    """C1: Mix-LN's test perplexity below Pre-LN's, and below Post-LN's (the spec's tiers)."""
    text = (
        "Claim: Mix-LN reaches a lower test perplexity than Pre-LN and Post-LN. Each variant is read "
        "at its own best learning rate of the shared grid, chosen on validation windows. Main part: "
        "paired per-seed Mix − Pre with a 95% Student-t interval; wholly below 0: holds; wholly at or "
        "above 0: not replicated; straddling 0: inconclusive (the spec's tier 'partially if Mix ≤ Pre "
        "within noise' is read as inconclusive: an interval across zero supports neither side). Post "
        "part: the Mix − Post interval lies below 0; a Post-LN that fails the health gate is excluded "
        "from it (shown, not decided). Replicated if both parts hold; partially replicated (the "
        "spec's tier, Mix ≤ Pre) if the main part holds and the Post part does not or is excluded.")

    def decide(m):
        main = paired(m["Mix-LN"], m["Pre-LN"], names=("Mix", "Pre"))
        verdict, why = decide_side(main, claimed="below"), [f"{main}"]
        excluded = gate_note(health, m, "Post-LN")
        if excluded:
            post_ok = False
            why.append("Post-LN excluded from the Post part: " + excluded)
        else:
            p = paired(m["Mix-LN"], m["Post-LN"], names=("Mix", "Post"))
            post_ok = decide_side(p, claimed="below") is Verdict.REPLICATED
            why.append(f"{p}")
        return graded(all_of(verdict, post_ok), verdict), "; ".join(why)

    return Rule(text, decide, health, ("Pre-LN", "Mix-LN"))


def gradient_balance_rule(health: Health) -> Rule:
    """C2: Mix-LN's CV across layers the smallest; Pre-LN last/first < 1; Post-LN first/last < 1."""
    text = (
        "Claim: Pre-LN has small gradient norms in its deep layers, Post-LN in its early layers, and "
        "Mix-LN's per-layer gradient norms are the most uniform. Each variant at its own best "
        "learning rate; gradient norms per block averaged over the last 10% of training. Parts, each "
        "a 95% Student-t interval over seeds: Mix CV − Pre CV below 0 and Mix CV − Post CV below 0 "
        "(paired); log(Pre last/first) below 0 and log(Post first/last) below 0 (one-sample). "
        "Replicated if every part holds, not replicated if any part is reversed (its interval wholly "
        "on the other side), inconclusive otherwise (the spec has no partial tier). A Post-LN that "
        "fails the health gate leaves its two parts undecided.")

    def decide(m):
        parts = [paired(m["CV Mix-LN"], m["CV Pre-LN"], names=("Mix CV", "Pre CV")),
                 log_paired(m["Pre-LN last/first"], 1.0, names=("log Pre last/first", "0"))]
        verdicts = [decide_side(parts[0], claimed="below"), decide_side(parts[1], claimed="below")]
        why = [f"{p}" for p in parts]
        excluded = gate_note(health, m, "Post-LN")
        if excluded:
            verdicts.append(Verdict.INCONCLUSIVE)
            why.append("Post-LN parts undecided: " + excluded)
        else:
            more = [paired(m["CV Mix-LN"], m["CV Post-LN"], names=("Mix CV", "Post CV")),
                    log_paired(m["Post-LN first/last"], 1.0, names=("log Post first/last", "0"))]
            verdicts += [decide_side(p, claimed="below") for p in more]
            why += [f"{p}" for p in more]
        return all_of(*verdicts), "; ".join(why)

    return Rule(text, decide, health, ("Pre-LN", "Mix-LN"))


def deep_layers_rule(health: Health) -> Rule:
    """C3: Mix-LN's deep-layer angular distance and layer-drop loss both exceed Pre-LN's."""
    text = (
        "Claim: the deep layers (last third of the blocks) matter more with Mix-LN than with "
        "Pre-LN. Each variant at its own best learning rate. Parts, each a paired per-seed 95% "
        "Student-t interval: Mix − Pre mean deep angular distance (last token) above 0, and Mix − "
        "Pre mean deep layer-drop Δloss above 0. Replicated if both hold, not replicated if either "
        "is reversed (interval wholly at or below 0), inconclusive otherwise (the spec has no partial "
        "tier).")

    def decide(m):
        parts = [paired(m["deep angle Mix-LN"], m["deep angle Pre-LN"], names=("Mix angle", "Pre angle")),
                 paired(m["deep drop Mix-LN"], m["deep drop Pre-LN"], names=("Mix drop", "Pre drop"))]
        return all_of(*[decide_side(p, claimed="above") for p in parts]), "; ".join(f"{p}" for p in parts)

    return Rule(text, decide, health, ("Pre-LN", "Mix-LN"))


# ------------------------------------------------------------ C4's ViT analog (8x8 digits)
class PostViTBlock(nn.Module):
    r"""A Post-LN vision block built from a Pre-LN :class:`~replib.nn.vit.TinyViT` block's own
    modules: :math:`x \leftarrow N_1(x + \mathrm{Attn}(x))`, :math:`x \leftarrow N_2(x + \mathrm{MLP}(x))`."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.norm1, self.attn, self.norm2, self.mlp = block.norm1, block.attn, block.norm2, block.mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


def mix_vit(variant: str, *, n_classes: int, d_model: int, depth: int, n_head: int,
            mix_alpha: float = 0.25, norm: str = "rmsnorm") -> TinyViT:
    """A :class:`~replib.nn.vit.TinyViT` (patch 2, 4x MLP, truncated-normal init, final norm) whose
    first k blocks are Post-LN: k = 0 (Pre-LN), ⌊α·depth⌋ (Mix-LN) or depth (Post-LN)."""
    model = TinyViT(n_classes=n_classes, d_model=d_model, depth=depth, n_head=n_head, mlp_ratio=4,
                    norm=norm, init="trunc_normal")
    k = {"Pre-LN": 0, "Mix-LN": int(mix_alpha * depth), "Post-LN": depth}[variant]
    for i in range(k):
        model.blocks[i] = PostViTBlock(model.blocks[i])
    return model


def digits_data(val_fraction: float = 0.2, seed: int = 0) -> TrainValTest:
    """``load_tabular("digits")`` (stratified 80/20 train/test, standardised on the training split),
    with a stratified validation split carved from the training images (to choose the lr on)."""
    return carve_validation(load_tabular("digits", test_size=0.2, seed=seed), val_fraction, seed)


def vit_run(variant: str, lr: float, seed: int, data: TrainValTest, *, d_model: int, depth: int,
            n_head: int, batch_size: int, epochs: int, warmup_frac: float = 0.1,
            weight_decay: float = 0.05, grad_clip: float | None = 1.0, device="cpu",
            threads: int | None = 1) -> dict:
    """Train one :func:`mix_vit` on the digits (AdamW (0.9, 0.999), warm-up then cosine) and return
    the sweep's record: validation and test accuracy after the last epoch (``nan`` if the loss turned
    non-finite), the validation-loss curve per epoch."""
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        gen = seed_everything(seed)
        data = TrainValTest(*(t.to(device) for t in (data.x_train, data.y_train, data.x_val, data.y_val,
                                                      data.x_test, data.y_test)), data.n_classes)
        model = mix_vit(variant, n_classes=data.n_classes, d_model=d_model, depth=depth,
                        n_head=n_head).to(device)
        per_epoch = data.x_train.shape[0] // batch_size
        steps = epochs * per_epoch
        opt = adamw(model, lr, weight_decay, (0.9, 0.999))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac))

        def evaluate(m):
            out = {}
            for name, x, y in (("val", data.x_val, data.y_val), ("test", data.x_test, data.y_test)):
                logits = m(x)
                out[f"{name}_loss"] = F.cross_entropy(logits, y).item()
                out[f"{name}_acc"] = (logits.argmax(-1) == y).float().mean().item()
            return out

        hist = train(model, opt, minibatches(data.x_train, data.y_train, batch_size, gen),
                     lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps, evaluate=evaluate,
                     eval_every=per_epoch, grad_clip=grad_clip, scheduler=sched,
                     desc=f"ViT {variant} lr={lr:g} s{seed}", progress=False)
    return {"val": hist.final("val_acc"), "test": hist.final("test_acc"),
            "test_loss": hist.final("test_loss"), "curve": hist.eval_series("val_loss")[1],
            "diverged": hist.diverged}
