r"""Where the norm sits in a transformer block: instrumented TinyGPT training runs.

Used by chapter 05 (Peri-LN, Kim et al. 2025, arXiv 2502.02732) and meant for reuse by chapter 25
(Mix-LN, Li et al. 2024, arXiv 2412.13795). The API below is stable; extend it additively.

One call of :func:`run_placement` trains one :class:`~replib.nn.TinyGPT` (any ``placement``, any
extra :class:`~replib.nn.GPTConfig` option through ``model_kwargs``) as a byte-level language
model with AdamW, linear warm-up then cosine decay, and gradient clipping, and logs every
``log_every`` steps (and at the last step):

- the validation loss (nats per byte) on fixed held-out windows;
- the residual stream :math:`h_0..h_L` on a fixed probe batch: its per-token standard deviation
  over features (mean over tokens), RMS and max :math:`|h|` per layer;
- each block's gradient norm :math:`\lVert\nabla_{\theta_\ell}L\rVert_2` of that step's training
  batch (before clipping).

The training loss is kept at every step. A non-finite loss stops the run and is recorded
(``diverged_at``), never raised. :func:`lr_sweep` loops over placements x learning rates x seeds.
Outcome helpers: :func:`count_spikes`, :func:`is_divergent`, :func:`best_lr_range`,
:func:`fit_r2`.

Typical use::

    data = lm_data(book_corpus().text, seq_len=64, val_windows=32, test_windows=32, device=device)
    run = run_placement("peri", seed=0, lr=3e-3, data=data, n_layer=8, d_model=64, n_head=4,
                        batch_size=16, steps=400, log_every=40, device=device)
    run.final_val_bpb, run.residual_std[-1], run.grad_norms[-1]
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from ..claims import Health, Rule, Verdict, all_of, decide_side, gate_note, graded, log_paired, paired
from ..data import TextSplits, lm_batches, lm_splits
from ..nn import GPTConfig, TinyGPT, block_grad_norms, hidden_states
from ..runtime import seed_everything, torch_threads
from ..show import explorer
from ..train import Sweep, adamw, lm_loss, progress_bar, train, warmup_cosine
from ..train import lr_sweep as _lr_sweep

LN2 = math.log(2.0)


@dataclass
class LMData:
    """Byte tokens for training, fixed validation windows and a fixed probe batch."""

    train: torch.Tensor  # 1-D token ids (CPU), sampled by random windows
    val_x: torch.Tensor  # (n_val, seq_len) on the device
    val_y: torch.Tensor
    probe: torch.Tensor  # (n_probe, seq_len): where residual statistics are measured
    seq_len: int
    test_x: torch.Tensor | None = None  # (n_test, seq_len): the second held-out half (when asked for)
    test_y: torch.Tensor | None = None

    @classmethod
    def of(cls, splits: TextSplits, probe_windows: int = 8, *, test: bool = True) -> "LMData":
        """The runs' data from :func:`replib.data.lm_splits`; the probe batch is the first
        ``probe_windows`` validation windows. ``test=False`` leaves the test windows out (then
        :func:`run_placement` does not score them; the caller keeps and scores them itself)."""
        vx, vy = splits.val
        tx, ty = splits.test if test and splits.test is not None else (None, None)
        return cls(splits.train, vx, vy, vx[:probe_windows], vx.shape[-1], tx, ty)


def lm_data(text: str, seq_len: int, val_windows: int, test_windows: int = 0, probe_windows: int = 8,
            val_fraction: float = 0.1, device: torch.device | str = "cpu") -> LMData:
    """Byte-tokenise ``text`` and cut it with :func:`replib.data.lm_splits`: the last
    ``val_fraction`` is held out; with ``test_windows`` it is cut in two halves, validation windows
    from the first (to choose a learning rate on, and to probe) and test windows from the second
    (to judge on); with ``test_windows=0`` the whole tail gives validation windows and there is no
    test set."""
    return LMData.of(lm_splits(text, seq_len, val_windows, test_windows, held_out=val_fraction,
                               device=device), probe_windows)


@dataclass
class PlacementRun:
    """Everything one training run logged. Lists indexed by log point share ``log_steps``."""

    placement: str
    seed: int
    lr: float
    steps: int
    loss: list[float] = field(default_factory=list)  # training loss (nats/byte) every step
    log_steps: list[int] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)  # nats/byte at each log step
    residual_std: list[list[float]] = field(default_factory=list)  # [log][L+1]
    residual_rms: list[list[float]] = field(default_factory=list)  # [log][L+1]
    residual_maxabs: list[list[float]] = field(default_factory=list)  # [log][L+1]
    grad_norms: list[list[float]] = field(default_factory=list)  # [log][L], before clipping
    diverged_at: int | None = None  # first step with a non-finite loss
    seconds: float = 0.0
    model: Any = field(default=None, repr=False)  # the trained model when keep_model=True
    test_loss: float = math.nan  # nats/byte on LMData.test_x after the last step (when it has one)

    @property
    def nan(self) -> bool:
        return self.diverged_at is not None

    @property
    def initial_loss(self) -> float:
        return self.loss[0] if self.loss else math.nan

    @property
    def final_val_loss(self) -> float:
        """Validation loss after the last step (nats/byte); ``nan`` if the run hit a NaN."""
        if self.nan or not self.val_loss or self.log_steps[-1] != self.steps:
            return math.nan
        return self.val_loss[-1]

    @property
    def final_val_bpb(self) -> float:
        return self.final_val_loss / LN2

    @property
    def final_test_bpb(self) -> float:
        """Test bits/byte (``nan`` if the run hit a NaN or the data has no test windows)."""
        return math.nan if self.nan else self.test_loss / LN2

    @property
    def diverged(self) -> bool:
        return is_divergent(self)

    @property
    def spikes(self) -> int:
        return count_spikes(self.loss)

    def at_fraction(self, frac: float) -> int:
        """Index of the log point closest to ``frac`` of training (e.g. 0.1, 0.5, 1.0)."""
        target = frac * self.steps
        return int(np.argmin([abs(s - target) for s in self.log_steps]))

    def summary(self) -> dict:
        return {"placement": self.placement, "seed": self.seed, "lr": self.lr,
                "final_val_bpb": self.final_val_bpb, "diverged": self.diverged,
                "nan_at": self.diverged_at, "spikes": self.spikes, "seconds": self.seconds}


def count_spikes(loss: Sequence[float], threshold: float = 0.5) -> int:
    """Steps whose loss lies more than ``threshold`` above the running minimum so far.

    Non-finite losses are not counted here (a NaN run is a divergence, see :func:`is_divergent`).
    """
    best, n = math.inf, 0
    for v in loss:
        if not math.isfinite(v):
            break
        if v > best + threshold:
            n += 1
        best = min(best, v)
    return n


def is_divergent(run: PlacementRun, margin: float = 0.1) -> bool:
    """A NaN/inf loss, or a final validation loss above the first training loss minus ``margin``."""
    final = run.final_val_loss
    return not math.isfinite(final) or final > run.initial_loss - margin


@torch.no_grad()
def _residual_stats(model: TinyGPT, probe: torch.Tensor) -> tuple[list, list, list]:
    hs = hidden_states(model, probe)
    std = [float(h.float().var(-1, unbiased=False).mean().sqrt()) for h in hs]
    rms = [float(h.float().pow(2).mean().sqrt()) for h in hs]
    mx = [float(h.float().abs().max()) for h in hs]
    return std, rms, mx


def val_loss(model: TinyGPT, data: LMData) -> float:
    """Mean next-byte cross-entropy (nats) on the fixed validation windows."""
    return lm_loss(model, data.val_x, data.val_y)


def run_placement(placement: str, seed: int, lr: float, data: LMData, *, n_layer: int,
                  d_model: int, n_head: int, batch_size: int, steps: int, log_every: int,
                  norm: str = "rmsnorm", warmup_frac: float = 0.05, weight_decay: float = 0.1,
                  betas: tuple[float, float] = (0.9, 0.95), grad_clip: float | None = 1.0,
                  model_kwargs: dict | None = None, device: torch.device | str = "cpu",
                  keep_model: bool = False, progress: bool = False,
                  threads: int | None = 1) -> PlacementRun:
    """Train one TinyGPT with ``placement`` for ``steps`` steps and log its instrumentation.

    ``model_kwargs`` go to :class:`~replib.nn.GPTConfig` unchanged (e.g. ``mix_alpha``,
    ``layer_scaling``, ``scaled_init``). The same ``seed`` gives the same initial weights for
    placements with the same parameter shapes, and always the same batches.

    ``threads``: on a CPU device, torch's intra-op threads during the run (restored afterwards).
    Models this small run fastest on one thread, and far slower with two on a busy machine;
    ``None`` leaves torch's setting alone.
    """
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        gen = seed_everything(seed)
        cfg = GPTConfig(vocab_size=256, seq_len=data.seq_len, n_layer=n_layer, n_head=n_head,
                        d_model=d_model, norm=norm, placement=placement, **(model_kwargs or {}))
        model = TinyGPT(cfg).to(device)
        opt = adamw(model, lr, weight_decay, betas)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac))
        run = PlacementRun(placement, seed, lr, steps)

        def on_backward(step: int, m: TinyGPT) -> None:  # raw gradients, before clipping
            if step % log_every == 0 or step == steps:
                run.log_steps.append(step)
                run.grad_norms.append(block_grad_norms(m))

        def evaluate(m: TinyGPT) -> dict[str, float]:  # runs after the same steps
            for field_, values in zip(("residual_std", "residual_rms", "residual_maxabs"),
                                      _residual_stats(m, data.probe)):
                getattr(run, field_).append(values)
            run.val_loss.append(val_loss(m, data))
            return {"val_loss": run.val_loss[-1]}

        hist = train(model, opt, lm_batches(data.train, batch_size, data.seq_len, gen, device),
                     lambda m, b: m(*b)[1], steps, evaluate=evaluate, eval_every=log_every,
                     grad_clip=grad_clip, scheduler=sched, on_backward=on_backward,
                     desc=f"{placement} lr={lr:g} s{seed}", progress=progress)
    run.loss, run.diverged_at, run.seconds = hist.loss, hist.diverged_at, hist.seconds
    if data.test_x is not None and not hist.diverged:
        model.eval()
        with torch_threads(threads if torch.device(device).type == "cpu" else None):
            run.test_loss = lm_loss(model, data.test_x, data.test_y)
    if keep_model:
        run.model = model
    return run


def lr_sweep(placements: Iterable[str], lrs: Iterable[float], seeds: Iterable[int], data: LMData,
             progress: bool = True, **kw) -> list[PlacementRun]:
    """:func:`run_placement` for every placement x learning rate x seed (``kw`` passed on)."""
    grid = [(p, lr, s) for p in placements for lr in lrs for s in seeds]
    return [run_placement(p, s, lr, data, **kw)
            for p, lr, s in progress_bar(grid, progress, desc="runs")]


def select(runs: Iterable[PlacementRun], **where) -> list[PlacementRun]:
    """The runs whose attributes equal ``where`` (e.g. ``placement="peri", lr=3e-3``), in order."""
    return [r for r in runs if all(getattr(r, k) == v for k, v in where.items())]


def best_lr_range(runs: Sequence[PlacementRun], tol_bpb: float = 0.1) -> list[float]:
    """Learning rates whose seeds all converged (no divergence) with mean final validation
    bits/byte within ``tol_bpb`` of the best such mean among ``runs`` (one placement's grid)."""
    means = {}
    for lr in sorted({r.lr for r in runs}):
        rs = [r for r in runs if r.lr == lr]
        if not any(r.diverged for r in rs):
            means[lr] = float(np.mean([r.final_val_bpb for r in rs]))
    if not means:
        return []
    best = min(means.values())
    return [lr for lr, m in means.items() if m <= best + tol_bpb]


def fit_r2(y: Sequence[float], kind: str = "linear") -> float:
    """R² of fitting ``y`` against depth ``1..n``: ``linear`` (a + b l) or ``exp`` (a e^{b l},
    fitted in log space, R² measured in the original space so the two are comparable)."""
    y = np.asarray(y, dtype=float)
    x = np.arange(1, len(y) + 1, dtype=float)
    if kind == "linear":
        pred = np.polyval(np.polyfit(x, y, 1), x)
    elif kind == "exp":
        pred = np.exp(np.polyval(np.polyfit(x, np.log(y), 1), x))
    else:
        raise ValueError(f"kind must be 'linear' or 'exp', not {kind!r}")
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((y - pred) ** 2).sum()) / ss_tot if ss_tot > 0 else 1.0


def coefficient_of_variation(values: Sequence[float]) -> float:
    """std / mean (population std) of per-layer values."""
    v = np.asarray(values, dtype=float)
    return float(v.std() / v.mean())


def count_norms(model: torch.nn.Module) -> int:
    """Number of norm layers (modules with a gain ``weight`` and no matrix), identity excluded."""
    from ..nn import norms as _norms  # noqa: F401  (registry classes)
    n = 0
    for m in model.modules():
        name = type(m).__name__.lower()
        if "norm" in name and "identity" not in name and not list(m.children()):
            n += 1
    return n


def sweep_record(run: PlacementRun) -> dict:
    """What :class:`~replib.train.Sweep` keeps of one run: validation and test bits/byte (``nan``
    when the loss turned non-finite), the validation-loss curve (nats/byte), spikes, divergence."""
    return {"val": run.final_val_bpb, "test": run.final_test_bpb, "curve": list(run.val_loss),
            "steps": list(run.log_steps), "spikes": run.spikes, "diverged": bool(run.diverged),
            "seconds": round(run.seconds, 2)}


def arm_sweep(arms: Mapping[str, Mapping[str, Any]], grid: Iterable[float], seeds: Iterable[int],
              data: LMData, progress: bool = True, failures: dict[str, str] | None = None,
              **kw) -> tuple[Sweep, dict[tuple[str, float, int], PlacementRun]]:
    """Every arm at every learning rate of the same ``grid`` and every seed
    (:func:`replib.train.lr_sweep`, selected on validation bits/byte); the same seed gives every
    arm the same batches. An arm is :class:`~replib.nn.GPTConfig` options (``placement``, default
    ``"pre"``; ``norm``; e.g. ``attention``), ``kw`` go to :func:`run_placement`. Returns the sweep
    and every run, keyed ``(arm, lr, seed)``. With a ``failures`` dict an arm whose run raises is
    recorded there (``arm: error``) and skipped at its other points, as diverged; without, the
    error propagates."""
    runs: dict[tuple[str, float, int], PlacementRun] = {}
    failed = {"val": math.nan, "test": math.nan, "diverged": True}

    def one(arm: str, lr: float, seed: int) -> dict:
        options = dict(arms[arm])
        placement = options.pop("placement", "pre")
        args = {k: v for k, v in kw.items() if k != "model_kwargs"}
        args["model_kwargs"] = {**(kw.get("model_kwargs") or {}), **options}
        if "norm" in options:
            args["norm"] = args["model_kwargs"].pop("norm")
        if failures is not None and arm in failures:
            return dict(failed)
        try:
            runs[(arm, lr, seed)] = r = run_placement(placement, seed, lr, data, **args)
        except Exception as e:  # noqa: BLE001  with failures: recorded, the page goes on
            if failures is None:
                raise
            failures[arm] = f"{type(e).__name__}: {e}"
            return dict(failed)
        return sweep_record(r)

    sweep = _lr_sweep(list(arms), list(grid), list(seeds), one, select_on="val", progress=progress)
    return sweep, runs


def placement_sweep(placements: Iterable[str], grid: Iterable[float], seeds: Iterable[int],
                    data: LMData, progress: bool = True,
                    **kw) -> tuple[Sweep, dict[tuple[str, float, int], PlacementRun]]:
    """:func:`arm_sweep` over placements (an arm per placement, named by it)."""
    return arm_sweep({p: {"placement": p} for p in placements}, grid, seeds, data, progress, **kw)


def at_best(sweep: Sweep, runs: dict[tuple[str, float, int], PlacementRun],
            placement: str) -> list[PlacementRun]:
    """The placement's runs at its own best learning rate, in seed order (the sweep's)."""
    lr = sweep.best_lr(placement)
    lr = sweep.grid[0] if lr is None else lr  # every grid point diverged: any lr, all NaN
    return [runs[(placement, lr, s)] for s in sweep.seeds]


def per_seed_events(runs: Iterable[PlacementRun], seeds: Sequence[int]) -> list[int]:
    """Per seed, divergences + spike steps summed over the runs given (e.g. one placement's grid)."""
    runs = list(runs)
    return [sum(int(r.diverged) + r.spikes for r in runs if r.seed == s) for s in seeds]


__all__ = ["LMData", "PlacementRun", "at_best", "best_lr_range", "coefficient_of_variation",
           "count_norms", "count_spikes", "fit_r2", "gradient_rule", "growth_rule",
           "is_divergent", "lm_data", "peri_quality_rule", "stability_rule",
           "lr_sweep", "per_seed_events", "placement_sweep", "arm_sweep", "run_placement", "select",
           "sweep_record", "val_loss"]


def lr_stability_explorer(data: LMData, *, n_layer: int = 6, d_model: int = 64, n_head: int = 4,
                          batch_size: int = 16, steps: int = 200, device: torch.device | str = "cpu"):
    """An ipywidgets control for readers in Jupyter/Colab: choose placements and a learning rate,
    press *Run*, and see the training-loss curves side by side (a diverged run stops where its
    loss became non-finite). The chapter's static learning-rate sweep is the figure of record."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    def show(placements=("pre", "peri", "post"), log10_lr: float = -2.5, seed: int = 0) -> None:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for p in placements:
            run = run_placement(p, seed, 10 ** log10_lr, data, n_layer=n_layer, d_model=d_model,
                                n_head=n_head, batch_size=batch_size, steps=steps,
                                log_every=max(1, steps // 4), device=device)
            label = p + (f" (diverged at step {run.diverged_at})" if run.diverged else "")
            ax.plot(range(1, len(run.loss) + 1), run.loss, label=label)
        ax.set_xlabel("training step")
        ax.set_ylabel("training loss (nats/byte)")
        ax.set_title(f"lr = {10 ** log10_lr:.2g}, {n_layer} layers, d = {d_model}")
        ax.legend(fontsize=8)
        plt.show()

    return explorer(lambda: widgets.interactive(
        show, {"manual": True, "manual_name": "Run"},
        placements=widgets.SelectMultiple(options=["pre", "peri", "post", "mix"],
                                          value=("pre", "peri", "post"), description="placement"),
        log10_lr=widgets.FloatSlider(value=-2.5, min=-4.0, max=-0.5, step=0.25,
                                     description="log10 lr"),
        seed=widgets.IntSlider(value=0, min=0, max=4, description="seed")))


# ----------------------------------------------------------------- chapter 05's verdict rules
# Each rule is decided on paired per-seed differences (replib.claims.paired, a Student-t
# interval) after the health gates, its parts combined by replib.claims (all_of, graded); the
# chapter declares them before its learning-rate sweep.

def peri_quality_rule(health: Health) -> Rule:
    """C1: Peri-LN below Pre-LN on test bits/byte, and Post-LN the worst (the spec's tiers)."""
    text = (
        "Claim: Peri-LN reaches lower test bits/byte than Pre-LN, and Post-LN is the worst. Each "
        "placement is read at its own best learning rate of the shared grid, chosen on the "
        "validation half. Main part: paired per-seed Peri − Pre with a 95% Student-t interval; wholly "
        "below 0: the main part holds; wholly at or above 0: not replicated; straddling 0: "
        "inconclusive (the spec's tier 'partially if Peri ≤ Pre within noise' is read as inconclusive: "
        "an interval across zero supports neither side). Post part: the Post − Pre and Post − Peri "
        "intervals both lie above 0, or Post diverges (NaN, or final loss above its first loss − 0.1) "
        "at the grid's highest learning rate in some seed where Pre and Peri do not. A Post-LN that "
        "fails the health gate is excluded from the Post part (shown, not decided). Replicated if the "
        "main part and the Post part hold; partially replicated (the spec's tier, Peri ≤ Pre) if the "
        "main part holds and the Post part does not or Post-LN is excluded.")

    def decide(m):
        main = paired(m["peri"], m["pre"], names=("Peri", "Pre"))
        verdict, why = decide_side(main, claimed="below"), [f"{main}"]
        excluded = gate_note(health, m, "post")
        top_div = (m["post top-lr divergent"].finite.sum() > 0
                   and m["pre top-lr divergent"].finite.sum() == 0
                   and m["peri top-lr divergent"].finite.sum() == 0)
        if excluded:
            post_ok = top_div
            why.append("Post-LN excluded from the Post part: " + excluded
                       + ("; it diverges at the highest lr where Pre and Peri do not" if top_div else ""))
        else:
            vs = [paired(m["post"], m[o], names=("Post", o.capitalize())) for o in ("pre", "peri")]
            worst = all(decide_side(p, claimed="above") is Verdict.REPLICATED for p in vs)
            post_ok = worst or top_div
            why += [f"{p}" for p in vs]
            why.append(f"Post part {'holds' if post_ok else 'does not hold'}")
        return graded(all_of(verdict, post_ok), verdict), "; ".join(why)

    return Rule(text, decide, health, ("pre", "peri"))


def stability_rule(health: Health) -> Rule:
    """C2: fewer divergences + spikes for Peri-LN over the grid, and a best-LR range at least as wide."""
    text = (
        "Claim: over the learning-rate grid and seeds Pre-LN spikes or diverges more often than "
        "Peri-LN, and Peri-LN is less sensitive to the learning rate. Per seed, divergences + spike "
        "steps summed over the grid; paired per-seed Peri − Pre with a 95% Student-t interval. "
        "Replicated if the interval lies below 0 and Peri's best-LR range (grid points with no "
        "divergent seed and mean validation bits/byte within 0.1 of its best) is at least as wide as "
        "Pre's; partially replicated (the spec's tier) if the counts are equal in every seed and the "
        "range at least as wide; not replicated if the interval lies above 0, or if the range is "
        "narrower (the learning-rate half reversed); inconclusive otherwise.")

    def decide(m):
        p = paired(m["peri events"], m["pre events"], names=("Peri", "Pre"))
        wide = m["peri best-LR range width"].mean >= m["pre best-LR range width"].mean
        side = decide_side(p, claimed="below")
        why = f"{p}; best-LR range {'at least as wide' if wide else 'narrower'} for Peri"
        if side is Verdict.NOT_REPLICATED and p.n and all(d == 0 for d in p.diffs):
            return (Verdict.PARTIAL if wide else Verdict.NOT_REPLICATED), why + " (equal counts)"
        if side is Verdict.NOT_REPLICATED or not wide:
            return Verdict.NOT_REPLICATED, why
        return side, why

    return Rule(text, decide, health, ("pre", "peri"))


def growth_rule(health: Health) -> Rule:
    """C3: Pre-LN's depth growth ratio >= 3x Peri-LN's; Peri-LN's std over depth about linear."""
    text = (
        "Claim: Pre-LN's hidden-state std grows strongly with depth, Peri-LN's slowly and about "
        "linearly. Growth ratio = std(h_L)/std(h_1) at the end of training, each placement at its own "
        "best learning rate. Ratio part: paired per-seed log(Pre ratio) − log(Peri ratio), 95% "
        "Student-t interval, against log 3 (the spec's '≥ 3×'). Shape part: per seed R² of a linear "
        "fit of Peri-LN's std over depth minus R² of an exponential fit, interval above 0. "
        "Replicated if both parts hold; partially replicated (the spec's tier) if only the ratio "
        "part holds; not replicated if the ratio interval lies wholly below log 3; inconclusive "
        "otherwise.")

    def decide(m):
        ratio = log_paired(m["pre growth ratio"], m["peri growth ratio"], names=("log Pre ratio", "log Peri ratio"))
        rv = decide_side(ratio, claimed="above", threshold=math.log(3))
        shape = paired(m["peri R2 linear"], m["peri R2 exp"], names=("R2 linear", "R2 exp"))
        sv = decide_side(shape, claimed="above")
        why = f"{ratio} (threshold log 3 = {math.log(3):.3f}); {shape}"
        if rv is not Verdict.REPLICATED:
            return rv, why
        return (Verdict.REPLICATED if sv is Verdict.REPLICATED else Verdict.PARTIAL), why

    return Rule(text, decide, health, ("pre", "peri"))


def gradient_rule(health: Health) -> Rule:
    """C4: Peri-LN's layer-to-layer gradient CV the smallest; Post-LN's first/last ratio < 0.3."""
    text = (
        "Claim: Peri-LN's per-layer gradient norms are the steadiest, while Post-LN's vanish in the "
        "early layers. CV = std/mean of block gradient norms over layers, averaged over 10/50/100% "
        "of training, each placement at its own best learning rate. Parts, each a paired per-seed "
        "95% Student-t interval: Peri CV − Pre CV below 0; Peri CV − Post CV below 0; log(Post "
        "first/last block gradient ratio) below log 0.3 (one-sample). Replicated if every part "
        "holds, not replicated if any part is reversed (its interval wholly on the other side), "
        "inconclusive otherwise (the spec has no partial tier). A Post-LN that fails the health "
        "gate leaves its two parts undecided (inconclusive).")

    def decide(m):
        parts = [paired(m["peri CV"], m["pre CV"], names=("Peri CV", "Pre CV"))]
        verdicts = [decide_side(parts[0], claimed="below")]
        why = [f"{parts[0]}"]
        excluded = gate_note(health, m, "post")
        if excluded:
            verdicts.append(Verdict.INCONCLUSIVE)
            why.append("Post-LN parts undecided: " + excluded)
        else:
            cv = paired(m["peri CV"], m["post CV"], names=("Peri CV", "Post CV"))
            fl = log_paired(m["post first/last"], 0.3, names=("log Post first/last", "log 0.3"))
            verdicts += [decide_side(cv, claimed="below"), decide_side(fl, claimed="below")]
            why += [f"{cv}", f"{fl}"]
        return all_of(*verdicts), "; ".join(why)

    return Rule(text, decide, health, ("pre", "peri"))
