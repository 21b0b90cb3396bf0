r"""Chapter 04 (SeeDNorm, Cai et al. 2025, arXiv 2510.22777): the runners behind its claims.

- :func:`lm_run`: one byte-level TinyGPT (Pre-norm) trained with a given norm variant; a thin
  wrapper of :func:`replib.experiments.placement.run_placement` (AdamW, 5 % warm-up then cosine,
  weight decay 0.1 on matrices only, so SeeDNorm's :math:`\gamma,\alpha,\beta` are not decayed).
- :func:`vit_run`: :class:`~replib.nn.vit.TinyViT` (Pre-norm, 4x MLP, truncated-normal init) on 8x8 ``load_digits``
  images cut into 2x2 patches (16 tokens + a class token), trained with the same optimiser.
- :func:`jacobian_scaling`: the Frobenius norm of a norm layer's per-token Jacobian
  :math:`\lVert\partial\,\mathrm{out}/\partial x\rVert_F` at inputs :math:`c\,x`, and
  :func:`loglog_slope` of it against :math:`c`.
- :func:`step_times`: fair, interleaved timing of one TinyGPT training step per variant
  (:func:`replib.timing.compare`) on the same batch, and :func:`norm_param_delta`.

- :func:`lm_splits` and :func:`c1_point`: the held-out bytes cut into a validation half (learning-rate
  selection, the curve) and a test half (the judged number), and one point of C1's learning-rate
  sweep; :func:`vit_splits` and :func:`c2_point` the same for the ViT (a validation split of the
  training images selects, the test split judges).
- :func:`beats_rule`: the spec's C1/C2 rule on paired per-seed differences, with DyT excluded
  (reason shown) when it never beats the trivial reference.

The variants (``VARIANTS``) map a label to a registry norm and its keyword arguments;
``LM_MODEL_KWARGS`` holds what a variant's own recipe changes in the language model outside the
norms (DyT's learnable :math:`\sqrt{d}` embedding scale).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .. import claims as rc
from .. import timing
from ..claims import loglog_slope
from ..data import lm_splits as text_splits
from ..data import minibatches
from ..data.tabular import Split
from ..nn import GPTConfig, TinyGPT
from ..nn.vit import TinyViT
from ..runtime import seed_everything, torch_threads
from ..train import adamw, lm_loss, train, warmup_cosine
from .placement import LMData, PlacementRun, run_placement

MH_HEADS = 4  # heads of the multi-head SeeDNorm variant

VARIANTS: dict[str, tuple[str, dict]] = {
    "RMSNorm": ("rmsnorm", {"eps": 1e-6}),
    "LayerNorm": ("layernorm", {}),
    "DyT": ("dyt", {}),  # alpha0 = 0.5, the DyT code's default
    "DyT a0=1.0": ("dyt", {"alpha0": 1.0}),  # the DyT LLaMA training config's default
    "SeeDNorm": ("seednorm", {}),
    "SeeDNorm-MH": ("seednorm", {"heads": MH_HEADS}),
}

#: Language-model settings outside the norms that belong to a variant's own recipe. DyT's official
#: LLaMA code (jiachenzhu/DyT, ``other_tasks/LLaMA/fms_fsdp/models/llama.py``) multiplies the token
#: embeddings by a learnable scalar initialised to :math:`\sqrt{d}` (``shared_scale``), so that its
#: statistics-free first norm sees inputs of a useful size; every other variant keeps TinyGPT's
#: plain embeddings. The ViT has no such element.
LM_MODEL_KWARGS: dict[str, dict] = {"DyT": {"embed_scale": True}, "DyT a0=1.0": {"embed_scale": True}}


def variant(label: str) -> tuple[str, dict]:
    """``(norm name, norm kwargs)`` of a variant label in ``VARIANTS``."""
    if label not in VARIANTS:
        raise KeyError(f"unknown variant {label!r}; valid: {', '.join(VARIANTS)}")
    name, kw = VARIANTS[label]
    return name, dict(kw)


def lm_model_kwargs(label: str) -> dict:
    """The :class:`~replib.nn.GPTConfig` settings of variant ``label``'s language model beyond
    ``norm``: its norm kwargs, plus ``LM_MODEL_KWARGS[label]`` (DyT: ``embed_scale=True``)."""
    _, kwargs = variant(label)
    return {"norm_kwargs": kwargs, **LM_MODEL_KWARGS.get(label, {})}


# ----------------------------------------------------------------------------- language model
def lm_run(label: str, seed: int, data: LMData, *, n_layer: int, d_model: int, n_head: int,
           batch_size: int, steps: int, log_every: int, lr: float = 1e-3,
           device: torch.device | str = "cpu", **kw) -> PlacementRun:
    """Train one Pre-norm TinyGPT whose every norm (both per block and the final one) is ``label``;
    DyT's model also gets its recipe's learnable embedding scale (``LM_MODEL_KWARGS``).

    The same ``seed`` gives the same batches for every variant, and the same initial weights
    outside the norms (no variant here draws random numbers when it is built).
    """
    name, _ = variant(label)
    return run_placement("pre", seed, lr, data, n_layer=n_layer, d_model=d_model, n_head=n_head,
                         batch_size=batch_size, steps=steps, log_every=log_every, norm=name,
                         model_kwargs=lm_model_kwargs(label), device=device, **kw)


def val_auc(run: PlacementRun) -> float:
    r"""Area under the validation-loss curve over training, normalised by the step count
    (the mean validation loss, nats/byte, by the trapezoid rule); ``nan`` if the run diverged."""
    if run.nan or not run.val_loss or run.log_steps[-1] != run.steps:
        return math.nan
    s = np.asarray(run.log_steps, dtype=float)
    v = np.asarray(run.val_loss, dtype=float)
    return float(np.sum((v[1:] + v[:-1]) / 2 * np.diff(s)) / (s[-1] - s[0])) if len(s) > 1 else float(v[0])


@dataclass
class LMSplits:
    """C1's data: the training stream and fixed validation windows (``data``, what
    :func:`~replib.experiments.placement.run_placement` logs its curve on and what selects the
    learning rate), and test windows from a disjoint part of the held-out bytes (what is judged)."""

    data: LMData
    test_x: torch.Tensor
    test_y: torch.Tensor


def lm_splits(text: str, seq_len: int, val_windows: int, test_windows: int, probe_windows: int = 8,
              held_out: float = 0.1, device: torch.device | str = "cpu") -> LMSplits:
    """:func:`replib.data.lm_splits` of ``text`` packaged for C1: the last ``held_out`` fraction cut
    in two halves, validation windows from the first half, test windows from the second (no byte is
    in both); the runs see only the validation windows."""
    s = text_splits(text, seq_len, val_windows, test_windows, held_out=held_out, device=device)
    return LMSplits(LMData.of(s, probe_windows, test=False), *s.test)


def c1_point(label: str, lr: float, seed: int, splits: LMSplits, **size) -> dict:
    """One point of C1's learning-rate sweep: :func:`lm_run` of ``label`` at ``lr`` and ``seed``;
    returns the final validation loss (``val``, nats/byte, selects), the test loss (``test``,
    judged), the validation curve (``curve``, nats/byte at ``steps``) and its area (``auc``).
    A diverged run returns NaN for every number (it does not raise)."""
    run = lm_run(label, seed, splits.data, lr=lr, keep_model=True, **size)
    out = {"val": run.final_val_loss, "test": math.nan, "auc": val_auc(run),
           "curve": list(run.val_loss), "steps": list(run.log_steps)}
    if not run.nan:
        run.model.eval()
        out["test"] = lm_loss(run.model, splits.test_x, splits.test_y)
    return out


def beats_rule(method: str, base: str, other: str, *, metric: str, health: rc.Health,
               confidence: float = 0.95) -> rc.Rule:
    """The spec's C1/C2 rule on paired per-seed differences: ``method`` beats ``base`` and is no
    worse than ``other`` (DyT).

    Health gates (``method`` and ``base``) first. Then ``method − base`` with a Student-t interval:
    wholly below 0 is needed, wholly at or above 0 is ``not replicated``, otherwise
    ``inconclusive`` (the spec's "partially: lower but within the seed noise" is what the interval
    calls inconclusive, so the tier is not used). Then ``other``: if it diverged in every seed the
    spec counts the part as held; if any seed failed the health gate it is **excluded** (a
    baseline that never trained cannot decide a comparison; the reason is named) and the claim is
    decided on ``base`` alone; otherwise ``method − other`` must lie wholly below 0 (wholly above:
    ``not replicated``; straddling: ``inconclusive``).
    """
    text = (f"Claim: {method}'s {metric} is lower than {base}'s and not higher than {other}'s. "
            f"Paired per-seed differences with {confidence:.0%} Student-t intervals: replicated if "
            f"{method} − {base} lies wholly below 0 and {method} − {other} lies wholly below 0 (or "
            f"{other} diverged in every seed); not replicated if either interval lies wholly at or "
            f"above 0; inconclusive otherwise. {other} is excluded from the claim (reason shown) if "
            f"any of its seeds fails the health gate below; the claim is then decided on {base} "
            f"alone. The spec's partial tier (lower but within the seed noise) is what the interval "
            "calls inconclusive.")

    def decide(m):
        a = rc.paired(m[method], m[base], names=(method, base), confidence=confidence)
        va = rc.decide_side(a, claimed="below")
        d = m[other]
        if d.n_diverged == d.n:
            vb, why_b = rc.Verdict.REPLICATED, f"{other} diverged in every seed (the spec counts it as beaten)"
        elif (fails := health.failures(m, [other])):
            vb, why_b = None, f"{other} excluded from the claim: " + "; ".join(fails)
        else:
            b = rc.paired(m[method], d, names=(method, other), confidence=confidence)
            vb, why_b = rc.decide_side(b, claimed="below"), f"{b}"
        why = f"{a}; {why_b}"
        return rc.all_of(va, *([vb] if vb is not None else [])), why

    return rc.Rule(text, decide, health, (method, base))


# ----------------------------------------------------------------------------- vision
@dataclass
class ViTRun:
    label: str
    seed: int
    steps: int
    eval_steps: list[int] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)  # nats, at each eval step
    test_acc: list[float] = field(default_factory=list)
    loss: list[float] = field(default_factory=list)  # training loss every step
    diverged_at: int | None = None
    seconds: float = 0.0
    model: nn.Module | None = field(default=None, repr=False)  # the trained model (keep_model=True)

    @property
    def final_test_loss(self) -> float:
        return math.nan if self.diverged_at is not None else self.test_loss[-1]

    @property
    def final_test_acc(self) -> float:
        return math.nan if self.diverged_at is not None else self.test_acc[-1]


def vit_run(label: str, seed: int, split: Split, *, d_model: int, n_layer: int, n_head: int,
            batch_size: int, epochs: int, eval_every: int, lr: float = 1e-3,
            weight_decay: float = 0.1, grad_clip: float | None = 1.0,
            device: torch.device | str = "cpu", threads: int | None = 1,
            keep_model: bool = False) -> ViTRun:
    """Train a :class:`TinyViT` with norm variant ``label`` on ``split`` (8x8 digits) for
    ``epochs`` epochs of ``batch_size`` (AdamW, 5 % warm-up then cosine); loss and accuracy on
    ``split``'s held-out part (``x_test``; a validation split in C2's sweep, see
    :func:`vit_splits`) every ``eval_every`` steps and at the end."""
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        gen = seed_everything(seed)
        name, kwargs = variant(label)
        sp = split.to(device)
        model = TinyViT(n_classes=split.n_classes, d_model=d_model, depth=n_layer, n_head=n_head,
                        mlp_ratio=4, norm=name, norm_kwargs=kwargs, init="trunc_normal").to(device)
        steps = epochs * (sp.x_train.shape[0] // batch_size)
        opt = adamw(model, lr, weight_decay, (0.9, 0.999))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=0.05))
        run = ViTRun(label, seed, steps)

        def evaluate(m: nn.Module) -> dict[str, float]:
            logits = m(sp.x_test)
            return {"loss": F.cross_entropy(logits, sp.y_test).item(),
                    "acc": (logits.argmax(-1) == sp.y_test).float().mean().item()}

        hist = train(model, opt, minibatches(sp.x_train, sp.y_train, batch_size, gen),
                     lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps, evaluate=evaluate,
                     eval_every=eval_every, grad_clip=grad_clip, scheduler=sched,
                     desc=f"ViT {label} s{seed}", progress=False)
    run.eval_steps, run.test_loss = hist.eval_series("loss")
    run.test_acc = hist.eval_series("acc")[1]
    run.loss, run.diverged_at, run.seconds = hist.loss, hist.diverged_at, hist.seconds
    if keep_model:
        run.model = model.eval()
    return run


def vit_splits(split: Split, val_fraction: float = 0.2, seed: int = 0) -> tuple[Split, Split]:
    """``(select, judge)``: ``select`` trains on the training images minus a stratified
    ``val_fraction`` and holds that validation part out (its ``x_test``); ``judge`` is ``split``
    with the same reduced training set and the untouched test images."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(split.x_train.shape[0])
    tr, va = train_test_split(idx, test_size=val_fraction, random_state=seed,
                              stratify=split.y_train.cpu().numpy())
    tr, va = torch.as_tensor(np.sort(tr)), torch.as_tensor(np.sort(va))
    xt, yt = split.x_train[tr], split.y_train[tr]
    select = Split(split.name + "-val", xt, yt, split.x_train[va], split.y_train[va], split.n_classes)
    judge = Split(split.name, xt, yt, split.x_test, split.y_test, split.n_classes)
    return select, judge


def c2_point(label: str, lr: float, seed: int, select: Split, judge: Split, **size) -> dict:
    """One point of C2's learning-rate sweep: train on ``select``'s training images, return the
    validation loss (``val``, selects), the test loss and accuracy (``test``, ``test_acc`` in %,
    judged; ``judge`` must share ``select``'s training images) and the validation curve."""
    run = vit_run(label, seed, select, lr=lr, keep_model=True, **size)
    out = {"val": run.final_test_loss, "val_acc": 100 * run.final_test_acc, "test": math.nan,
           "test_acc": math.nan, "curve": list(run.test_loss), "steps": list(run.eval_steps)}
    if run.diverged_at is None:
        dev = next(run.model.parameters()).device
        with torch.no_grad():
            logits = run.model(judge.x_test.to(dev))
            out["test"] = F.cross_entropy(logits, judge.y_test.to(dev)).item()
            out["test_acc"] = 100 * (logits.argmax(-1) == judge.y_test.to(dev)).float().mean().item()
    return out


# ----------------------------------------------------------------------------- gradient scaling
def jacobian_scaling(norm: nn.Module, x: torch.Tensor, scales) -> dict[str, np.ndarray]:
    r"""For each :math:`c` in ``scales``: the per-token Jacobian :math:`J=\partial\,\mathrm{out}/\partial x`
    of ``norm`` at :math:`c\,x_i` for every token :math:`x_i` (rows of ``x``, shape ``(N, D)``).

    Returns ``{"fro": (len(scales),), "diag": (len(scales),)}``: the mean over tokens of
    :math:`\lVert J\rVert_F`, and the median over tokens and features of :math:`|J_{jj}|`."""
    one = lambda v: norm(v.unsqueeze(0)).squeeze(0)  # noqa: E731
    jac = torch.func.vmap(torch.func.jacrev(one))
    fro, diag = [], []
    for c in scales:
        J = jac(c * x).detach()  # (N, D, D)
        fro.append(float(torch.linalg.matrix_norm(J).mean()))
        diag.append(float(torch.diagonal(J, dim1=-2, dim2=-1).abs().median()))
    return {"fro": np.array(fro), "diag": np.array(diag)}


# ----------------------------------------------------------------------------- overhead
def gpt(label: str, *, n_layer: int, d_model: int, n_head: int, seq_len: int) -> TinyGPT:
    """A Pre-norm byte-level TinyGPT whose norms are variant ``label`` (C1's model: with
    ``LM_MODEL_KWARGS``, so DyT's has the learnable embedding scale)."""
    name, _ = variant(label)
    return TinyGPT(GPTConfig(vocab_size=256, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                             d_model=d_model, norm=name, placement="pre", **lm_model_kwargs(label)))


def norm_param_delta(label: str, baseline: str = "RMSNorm", **size) -> tuple[int, int]:
    """``(extra parameters of variant label over baseline, number of norm layers)`` in TinyGPT
    (:func:`gpt`; DyT's count includes its one embedding-scale parameter)."""
    a, b = gpt(label, **size), gpt(baseline, **size)
    n_norms = 2 * size["n_layer"] + 1
    return a.num_params() - b.num_params(), n_norms


def step_times(labels, seed: int, *, n_layer: int, d_model: int, n_head: int, seq_len: int,
               batch_size: int, warmup: int = 10, reps: int = 50,
               device: torch.device | str = "cpu", amp_dtype: torch.dtype | None = None,
               threads: int | None = 1) -> dict[str, timing.Timing]:
    """One full training step (forward, backward, AdamW) per variant, timed fairly and
    interleaved in one process (:func:`replib.timing.compare`) on the same random batch."""
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        gen = seed_everything(seed)
        idx = torch.randint(0, 256, (batch_size, seq_len + 1), generator=gen).to(device)
        x, y = idx[:, :-1], idx[:, 1:]
        fns = {}
        for label in labels:
            m = gpt(label, n_layer=n_layer, d_model=d_model, n_head=n_head, seq_len=seq_len).to(device)
            opt = adamw(m, 1e-4, 0.1, (0.9, 0.95))
            fns[label] = timing.train_step(m, opt, lambda mm: mm(x, y)[1], amp_dtype=amp_dtype)
        return timing.compare(fns, device, warmup=warmup, reps=reps)


__all__ = ["LMSplits", "LM_MODEL_KWARGS", "MH_HEADS", "VARIANTS", "ViTRun", "beats_rule", "c1_point",
           "c2_point", "gpt", "jacobian_scaling", "lm_model_kwargs", "lm_run", "lm_splits",
           "loglog_slope", "norm_param_delta", "step_times", "val_auc", "variant", "vit_run",
           "vit_splits"]
