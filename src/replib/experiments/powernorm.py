"""Runs for the PowerNorm chapter (Shen et al. 2020, arXiv 2003.07845).

- :func:`run_lm`: a pre-norm byte-level language model on padded batches of random-length windows,
  one norm variant and one seed; validation bits per byte over training, test bits per byte at the
  end; optionally the batch statistics of every batch-norm layer against its running estimates
  (claim C1).
- :func:`sweep_runner`: the ``run(arm, lr, seed)`` function :func:`replib.lr_sweep` calls, keeping
  every run for the chapter's figures and C1.
- :func:`run_digits_cnn`: the vision baseline of C1, a small BN CNN on 8x8 digits with the same
  statistics tracker.
- :func:`inference_latency`: LN model vs folded PN models, timed fairly in one process.

Nothing here looks at a result to choose a size, a rate or a seed.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import minibatches
from ..data.tabular import Split
from ..errors import ReplibError
from ..nn import GPTConfig, TinyCNN, TinyGPT
from ..nn.norms import MaskedBatchNorm
from ..nn.powernorm import fold_gpt
from ..runtime import seed_everything
from ..timing import compare, paired_ratio
from ..train import History, lm_loss, train, warmup_cosine

#: The chapter's variants: label -> (registry name, norm kwargs). ``PN`` is the authors' code
#: version (GroupScaling with one group per head, warm-up on batch statistics); its
#: ``warmup_iters`` and (unless given) ``group_num`` are filled in by :func:`norm_spec`.
VARIANTS = {
    "LN": ("layernorm", {}),
    "BN": ("batchnorm", {}),
    "PN-V": ("pn-v", {}),
    "PN": ("powernorm", {"version": "code"}),
    "PN (paper)": ("powernorm", {"version": "paper"}),
    # a diagnostic, not in the paper: the code version without its GroupScaling pre-step
    "PN (no GS)": ("powernorm", {"version": "code", "group_num": 0}),
}


def norm_spec(variant: str, *, n_head: int, warmup: int) -> tuple[str, dict]:
    """Registry name and kwargs of ``variant``; the code version gets ``group_num = n_head`` (unless
    the variant sets it) and ``warmup_iters = warmup`` (the LR warm-up), as the authors'
    ``NormSelect`` passes them."""
    if variant not in VARIANTS:
        raise ReplibError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    name, kw = VARIANTS[variant]
    kw = dict(kw)
    if name == "powernorm" and kw["version"] == "code":
        kw.setdefault("group_num", n_head)
        kw["warmup_iters"] = warmup
    return name, kw


def padded_lm_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, min_len: int,
                      generator: torch.Generator, device: torch.device | str = "cpu",
                      ) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Endless ``(x, y, mask)`` batches of random windows of random length in
    ``[min_len, seq_len]``, padded at the end: ``x`` with 0, ``y`` with -100 (ignored by the loss),
    ``mask`` False. The amount of padding changes from batch to batch, as in an MT batch of
    sentences; with causal attention and padding at the end no real token ever sees padding, so
    only batch statistics could, and the mask keeps them out."""
    if not 1 <= min_len <= seq_len or len(tokens) <= seq_len + 1:
        raise ReplibError(f"need 1 <= min_len <= seq_len < len(tokens) - 1, got {min_len}, "
                          f"{seq_len}, {len(tokens)}")
    offsets = torch.arange(seq_len + 1)
    pos = torch.arange(seq_len)
    while True:
        starts = torch.randint(len(tokens) - seq_len - 1, (batch_size,), generator=generator)
        lengths = torch.randint(min_len, seq_len + 1, (batch_size,), generator=generator)
        win = tokens[starts[:, None] + offsets]
        mask = pos[None, :] < lengths[:, None]
        x = win[:, :-1].masked_fill(~mask, 0)
        y = win[:, 1:].masked_fill(~mask, -100)
        yield x.to(device), y.to(device), mask.to(device)


def _rel(batch: torch.Tensor, running: torch.Tensor) -> float:
    den = float(running.norm())
    return float((batch - running).norm()) / den if den > 0 else math.nan


class BatchStatTracker:
    r"""Relative deviation of every batch-norm layer's batch statistics from its running ones.

    At each training forward of a :class:`~replib.nn.norms.MaskedBatchNorm` (before its update):

    .. math:: d_\mu = \frac{\lVert \mu_B - \hat\mu \rVert}{\lVert \hat\mu \rVert},\qquad
              d_{\sigma^2} = \frac{\lVert \sigma_B^2 - \hat\sigma^2 \rVert}{\lVert \hat\sigma^2 \rVert}

    over the real (unpadded) positions. ``mu[layer]`` and ``var[layer]`` hold one value per step.
    """

    def __init__(self, model: nn.Module):
        self.layers = [m for m in model.modules() if isinstance(m, MaskedBatchNorm)]
        if not self.layers:
            raise ReplibError("the model has no batch-norm layer to track")
        self.mu: list[list[float]] = [[] for _ in self.layers]
        self.var: list[list[float]] = [[] for _ in self.layers]
        self._handles = [m.register_forward_pre_hook(self._hook(i)) for i, m in enumerate(self.layers)]

    def _hook(self, i: int):
        @torch.no_grad()
        def hook(module: MaskedBatchNorm, args):
            if not module.training:
                return
            x = args[0]
            mask = args[1] if len(args) > 1 else None
            flat = x.reshape(-1, x.shape[-1])
            if mask is not None:
                flat = flat[mask.reshape(-1)]
            mu, var = flat.mean(0), flat.var(0, unbiased=False)
            self.mu[i].append(_rel(mu, module.running_mean))
            self.var[i].append(_rel(var, module.running_var))
        return hook

    def remove(self) -> None:
        for h in self._handles:
            h.remove()

    def curve(self, which: str = "var") -> np.ndarray:
        """Per step, the median over layers."""
        return np.nanmedian(np.asarray(getattr(self, which)), axis=0)

    def median(self, which: str = "var", skip_frac: float = 0.1) -> float:
        """Median over layers and over the steps after the first ``skip_frac`` of training (the
        running estimates start at 0 and 1 and need a few dozen steps to settle)."""
        a = np.asarray(getattr(self, which))
        return float(np.nanmedian(a[:, int(skip_frac * a.shape[1]):]))


@dataclass
class LMRun:
    history: History
    val_bpb: float  # final validation bits per byte (nan: diverged)
    stats: BatchStatTracker | None = None
    test_bpb: float = math.nan  # final test bits per byte (nan: diverged, or no test split given)
    model: nn.Module | None = field(default=None, repr=False)


def make_gpt(variant: str, *, n_layer: int, d_model: int, n_head: int, seq_len: int,
             warmup: int, vocab_size: int = 256) -> TinyGPT:
    name, kw = norm_spec(variant, n_head=n_head, warmup=warmup)
    return TinyGPT(GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer,
                             n_head=n_head, d_model=d_model, norm=name, norm_kwargs=kw))


def run_lm(variant: str, seed: int, train_tokens: torch.Tensor,
           val: tuple[torch.Tensor, torch.Tensor], *, n_layer: int, d_model: int, n_head: int,
           seq_len: int, min_len: int, batch_size: int, steps: int, lr: float, warmup: int,
           eval_every: int, grad_clip: float | None = 1.0, device="cpu",
           track_stats: bool = False, keep_model: bool = False, progress: bool = True,
           test: tuple[torch.Tensor, torch.Tensor] | None = None) -> LMRun:
    """Train a pre-norm :class:`~replib.nn.TinyGPT` with ``variant``'s norm in every norm slot.

    Adam(0.9, 0.98) as in the paper's IWSLT recipe, linear LR warm-up over ``warmup`` steps (the
    same number the code-version PN spends on batch statistics, as the authors tie the two) and
    cosine decay. Validation: full windows in eval mode (running statistics), in bits per byte,
    every ``eval_every`` steps; ``test`` windows (if given) once, after the last step.
    """
    gen = seed_everything(seed)
    model = make_gpt(variant, n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len,
                     warmup=warmup).to(device)
    tracker = BatchStatTracker(model) if track_stats else None
    opt = torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.98))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_steps=warmup))
    vx, vy = val[0].to(device), val[1].to(device)

    def loss_fn(m, b):
        return m(b[0], b[1], mask=b[2])[1]

    hist = train(model, opt, padded_lm_batches(train_tokens, batch_size, seq_len, min_len, gen, device),
                 loss_fn, steps, evaluate=lambda m: {"bpb": lm_loss(m, vx, vy) / math.log(2)},
                 eval_every=eval_every, grad_clip=grad_clip, scheduler=sched,
                 desc=f"{variant} s{seed}", progress=progress)
    if tracker is not None:
        tracker.remove()
    test_bpb = math.nan
    if test is not None and not hist.diverged:
        model.eval()
        test_bpb = lm_loss(model, test[0].to(device), test[1].to(device)) / math.log(2)
    return LMRun(hist, hist.final("bpb"), stats=tracker, test_bpb=test_bpb,
                 model=model if keep_model else None)


def sweep_runner(train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
                 test: tuple[torch.Tensor, torch.Tensor], store: dict, **lm_kw: Any,
                 ) -> Callable[[str, float, int], dict[str, Any]]:
    """``run(arm, lr, seed)`` for :func:`replib.lr_sweep`: one :func:`run_lm` (batch statistics
    tracked for ``BN``, claim C1), kept in ``store[arm, lr, seed]``; returns the final validation
    (``val``, where the sweep selects) and test (``test``, what the claims judge) bits per byte and
    the validation curve (NaN metrics for a diverged run; it never raises)."""
    def run(arm: str, lr: float, seed: int) -> dict[str, Any]:
        r = run_lm(arm, seed, train_tokens, val, lr=lr, track_stats=(arm == "BN"), test=test, **lm_kw)
        store[arm, lr, seed] = r
        return {"val": r.val_bpb, "test": r.test_bpb, "curve": r.history.eval_series("bpb")[1]}
    return run


def run_digits_cnn(seed: int, split: Split, *, epochs: int, batch_size: int, lr: float,
                   device="cpu") -> tuple[BatchStatTracker, float]:
    """C1's vision baseline: :class:`~replib.nn.TinyCNN` with batch norm on 8x8 digits, Adam.

    Returns the batch-statistics tracker and the final test error."""
    gen = seed_everything(seed)
    model = TinyCNN(split.n_classes, "batchnorm").to(device)
    tracker = BatchStatTracker(model)
    xtr, ytr = split.x_train.to(device), split.y_train.to(device)
    steps = epochs * (xtr.shape[0] // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    xte, yte = split.x_test.to(device), split.y_test.to(device)
    hist = train(model, opt, minibatches(xtr, ytr, batch_size, gen),
                 lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps,
                 evaluate=lambda m: {"error": (m(xte).argmax(-1) != yte).float().mean().item()},
                 progress=False)
    tracker.remove()
    return tracker, hist.final("error")


def inference_latency(seed: int, *, n_layer: int, d_model: int, n_head: int, seq_len: int,
                      batch_size: int, reps: int, warmup_calls: int = 5, device="cpu",
                      ) -> dict[str, float]:
    """Forward-pass latency of freshly built eval-mode models, relative to LayerNorm.

    Variants: ``PN (folded)`` is the code version with its affine map folded into the next linear
    layer (GroupScaling stays); ``PN (paper, folded)`` has no norm op left at all; ``PN (unfolded)``
    is the code version as trained. Returns paired ratios of per-round times (< 1: faster than LN)
    and the LN median in ms.
    """
    seed_everything(seed)
    kw = dict(n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len, warmup=1)
    models = {v: make_gpt(v, **kw).to(device).eval() for v in ("LN", "PN", "PN (paper)")}
    variants = {"LN": models["LN"], "PN (unfolded)": models["PN"],
                "PN (folded)": fold_gpt(models["PN"]), "PN (paper, folded)": fold_gpt(models["PN (paper)"])}
    idx = torch.randint(0, 256, (batch_size, seq_len), device=device)

    def call(m):
        def f():
            with torch.inference_mode():
                m(idx)
        return f

    timings = compare({k: call(m) for k, m in variants.items()}, device, warmup=warmup_calls, reps=reps)
    out = {k: paired_ratio(t, timings["LN"]) for k, t in timings.items() if k != "LN"}
    out["LN ms"] = 1e3 * timings["LN"].median
    return out


def findings_markdown(claims: dict, bpb: dict[str, list[float]], best: dict[str, float | None],
                      sweep: Any, unigram: float, runs: dict[str, list[LMRun]], *, scale: str) -> Any:
    """The chapter's "What we learned", computed from this run's numbers and verdicts (so it stays
    true whatever they are): one line per claim, then the chosen learning rates and the diagnostics."""
    from IPython.display import Markdown

    from ..claims import Stat, paired

    def pd(a: str, b: str) -> str:
        p = paired(bpb[a], bpb[b], names=(a, b))
        lo, hi = p.interval
        return f"{a} − {b} = {p.mean:+.3f} bits/byte (95% interval [{lo:+.3f}, {hi:+.3f}], {p.n} seed{'s' * (p.n != 1)})"

    lines = []
    if "C1" in claims:
        c = claims["C1"]
        lines.append(f"**C1 ({c.verdict.value}).** Batch-variance deviation from the running variance, "
                     f"LM over CNN: {c.ours}. The paper's premise is a ratio well above 1; "
                     + ("ours is above 1." if c.metrics["ratio d_var LM / CNN"].mean > 1 else
                        "ours is not above 1: with padding masked out, our byte-level LM's batch "
                        "variances are no noisier than the digits CNN's."))
    if "C2" in claims:
        lines.append(f"**C2 ({claims['C2'].verdict.value}).** No translation experiment: the BLEU claim is "
                     "neither confirmed nor refuted here.")
    for cid, pairs in (("C3", [("PN", "LN"), ("BN", "LN")]), ("C4", [("PN", "PN-V"), ("PN-V", "BN")])):
        if cid in claims:
            c = claims[cid]
            gate = [q for q in c.qualifiers if q.startswith("health gate failed")]
            lines.append(f"**{cid} ({c.verdict.value}).** " + "; ".join(pd(a, b) for a, b in pairs) + "."
                         + (f" The verdict is set by a failed gate: {gate[0][len('health gate failed: '):]}."
                            if gate else ""))
    lrs = ", ".join(f"{v} {lr:g}" if lr is not None else f"{v} none eligible" for v, lr in best.items())
    lines.append(f"**Learning rates.** Chosen on validation from the grid {list(sweep.grid)}: {lrs}."
                 + (f" {sweep.edge_note()[0].upper()}{sweep.edge_note()[1:]}." if sweep.edge_note() else ""))
    order = sorted((v for v in best), key=lambda v: Stat.of(bpb[v]).mean
                   if math.isfinite(Stat.of(bpb[v]).mean) else math.inf)
    lines.append("**Ranking by mean test loss at each variant's best rate:** "
                 + " < ".join(f"{v} ({Stat.of(bpb[v]).mean:.3f})" for v in order)
                 + f" bits/byte; the byte-unigram model is at {unigram:.3f}.")
    diag = [v for v in ("PN (paper)", "PN (no GS)") if runs.get(v)]
    if diag:
        parts = []
        for v in diag:
            st = Stat.of(bpb[v])
            above = sum(b > unigram for b in st.finite)
            parts.append(f"{v} {st:.3f} bits/byte ({st.n_diverged} of {st.n} diverged, {above} above the "
                         "unigram loss)")
        pn = Stat.of(bpb["PN"]).mean
        worse = [v for v in diag if not math.isfinite(Stat.of(bpb[v]).mean) or Stat.of(bpb[v]).mean > pn + 0.1]
        lines.append(f"**Diagnostics (PN's chosen rate, not claims).** {'; '.join(parts)}; PN (code version) "
                     f"{Stat.of(bpb['PN']):.3f}. "
                     + (f"{' and '.join(worse)} ended more than 0.1 bits/byte behind the released code version "
                        "(or diverged): at this scale what the paper's pseudocode leaves out (GroupScaling, the "
                        "warm-up on batch statistics) matters." if worse else
                        "Neither ended more than 0.1 bits/byte behind the released code version."))
    text = "\n".join(f"- {line}" for line in lines)
    if scale == "smoke":
        text += "\n\n*Smoke scale: a pipeline check, not a result.*"
    return Markdown(text)
