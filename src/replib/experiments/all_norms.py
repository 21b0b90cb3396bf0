r"""The all-norms benchmark: every norm of the registry in the same tiny transformer (chapter 90).

Nothing here lists norms by hand: :func:`benchmark` and :func:`throughput` iterate over
:func:`replib.nn.list_norms` unless told otherwise, so a norm registered by a later chapter is
benchmarked the next time the chapter runs. For every norm, with everything else identical:

- **quality**: one Pre-norm :class:`~replib.nn.TinyGPT` per seed, trained at the main learning
  rate as a byte-level language model (AdamW, linear warm-up then cosine decay, gradient clipping);
  the same seed gives the same batches in the same order for every norm. The outcome is the final
  validation loss (nats per byte) on fixed held-out windows;
- **stability**: a learning-rate sweep with one seed; :func:`largest_stable_lr` applies a rule
  fixed before any run (see its docstring);
- **speed**: training and inference throughput (tokens/s) of the same model on a fixed batch,
  timed interleaved in one process by :func:`replib.timing.compare`, relative to LayerNorm.

A norm that raises (at construction, in training, in timing) is *reported* as failed with its
error and skipped for the rest; it never stops the benchmark. A non-finite loss is a divergence
(recorded by :func:`replib.train.train`), not a failure.
"""
from __future__ import annotations

import inspect
import math
import re
import time
import traceback
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from ..data import lm_batches
from ..nn import GPTConfig, TinyGPT, create_norm, list_norms
from ..nn import norms as _norms
from ..runtime import seed_everything, torch_threads
from ..timing import compare, inference_step, paired_ratio, train_step
from ..train import adamw, lm_loss, progress_bar, train, warmup_cosine
from .placement import LMData, lm_data  # noqa: F401  (re-exported: the data the runs share)

BASELINE = "layernorm"


def _error(exc: BaseException) -> str:
    """A one-line description of an exception: its type, message and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" ({tb[-1].filename.rsplit('/', 1)[-1]}:{tb[-1].lineno})" if tb else ""
    msg = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {msg}{where}"


_TEX = {"alpha": "α", "beta": "β", "gamma": "γ", "delta": "δ", "epsilon": "ε", "varepsilon": "ε",
        "kappa": "κ", "lambda": "λ", "mu": "μ", "sigma": "σ", "odot": "⊙", "cdot": "·", "times": "×",
        "sqrt": "√", "sum": "Σ", "le": "≤", "ge": "≥", "ell": "ℓ"}


def plain_math(tex: str) -> str:
    r"""LaTeX of a one-line formula as plain text for a table cell: Greek letters and operators
    as Unicode, ``\sqrt{x}`` as ``√(x)``, ``\frac{a}{b}`` as ``(a)/(b)``, other commands by their
    name, spacing commands dropped (``\gamma \odot \tanh(\alpha x)`` becomes ``γ ⊙ tanh(α x)``)."""
    s = re.sub(r"\\[,;:! ]", "", tex)
    s = re.sub(r"\\(?:mathrm|operatorname|text|mathbf)\{([^{}]*)\}", r"\1", s)  # first: frees nested braces
    s = re.sub(r"\\sqrt\{([^{}]*)\}", r"√(\1)", s)
    s = re.sub(r"\\frac\{([^{}]*)\}\{([^{}]*)\}", r"(\1)/(\2)", s)
    s = re.sub(r"\\([A-Za-z]+)", lambda m: _TEX.get(m.group(1), m.group(1)), s)
    return re.sub(r"\s+", " ", s.replace("{", "").replace("}", "")).strip()


def summary_line(obj: object) -> str:
    """The first line of ``obj``'s docstring (empty when it has none), reST roles made plain and
    inline math as plain text (:func:`plain_math`)."""
    doc = inspect.getdoc(obj) or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    line = re.sub(r":math:`([^`]*)`", lambda m: plain_math(m.group(1)), line)
    return line.replace("``", "`")  # reST literals to Markdown ones


def registry_table(dim: int, norms: Iterable[str] | None = None) -> pd.DataFrame:
    """One row per registered norm: its class, parameter count at width ``dim`` (trainable
    parameters and buffers) and the first line of its docstring; ``error`` when building it fails."""
    rows = []
    for name in (list(norms) if norms is not None else list_norms()):
        cls = _norms._REGISTRY.get(name)
        row = {"norm": name, "class": cls.__name__ if cls else "?",
               "module": cls.__module__.rsplit(".", 1)[-1] if cls else "?",
               "params": None, "buffers": None, "summary": summary_line(cls) if cls else "",
               "error": None}
        try:
            m = create_norm(name, dim)
            row["params"] = sum(p.numel() for p in m.parameters())
            row["buffers"] = sum(b.numel() for b in m.buffers())
        except Exception as exc:  # noqa: BLE001  (a broken norm is a result, not a crash)
            row["error"] = _error(exc)
        rows.append(row)
    return pd.DataFrame(rows, columns=["norm", "class", "module", "params", "buffers", "summary",
                                       "error"])


def _is_norm_key(key: str) -> bool:
    """A TinyGPT state-dict entry that belongs to a norm layer (norm1/norm2/norm_f/..._out)."""
    return any(part.startswith("norm") for part in key.split("."))


def same_init(norm: str, baseline: str = BASELINE, *, seed: int = 0, seq_len: int = 16,
              **model) -> bool | None:
    """Whether ``norm``'s TinyGPT starts with the same weights as ``baseline``'s everywhere
    outside the norm layers, for the same seed (a norm that draws random numbers when it is
    built shifts every later initialisation). None when either model cannot be built."""
    try:
        sds = []
        for n in (norm, baseline):
            seed_everything(seed)
            sds.append(TinyGPT(model_config(n, seq_len, **model)).state_dict())
    except Exception:  # noqa: BLE001
        return None
    a, b = ({k: v for k, v in sd.items() if not _is_norm_key(k)} for sd in sds)
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@dataclass
class NormRun:
    """One training run of one norm at one learning rate and seed."""

    norm: str
    seed: int
    lr: float
    steps: int
    final_val_loss: float = math.nan  # nats/byte after the last step; nan if diverged/failed
    initial_loss: float = math.nan  # training loss at step 1
    diverged_at: int | None = None  # first step with a non-finite loss
    error: str | None = None  # the norm raised: the run is a failure, not a divergence
    seconds: float = 0.0
    n_params: int | None = None

    @property
    def failed(self) -> bool:
        return self.error is not None

    @property
    def diverged(self) -> bool:
        return self.diverged_at is not None

    @property
    def value(self) -> float | None:
        """The final validation loss, or None (diverged or failed)."""
        return self.final_val_loss if math.isfinite(self.final_val_loss) else None

    def summary(self) -> dict:
        return {"norm": self.norm, "seed": self.seed, "lr": self.lr,
                "final_val_loss": self.final_val_loss, "diverged_at": self.diverged_at,
                "error": self.error, "seconds": round(self.seconds, 2)}


def model_config(norm: str, seq_len: int, *, n_layer: int, d_model: int, n_head: int,
                 **extra) -> GPTConfig:
    """The benchmark's model: a Pre-norm TinyGPT on bytes; only ``norm`` differs between norms."""
    return GPTConfig(vocab_size=256, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, norm=norm, placement="pre", **extra)


def run_norm(norm: str, seed: int, lr: float, data: LMData, *, n_layer: int, d_model: int,
             n_head: int, batch_size: int, steps: int, warmup_frac: float = 0.05,
             weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
             grad_clip: float | None = 1.0, device: torch.device | str = "cpu",
             threads: int | None = 1, progress: bool = False) -> NormRun:
    """Train one TinyGPT with ``norm`` for ``steps`` steps; never raises because of the norm.

    The batches depend on ``seed`` only (drawn from the generator :func:`seed_everything`
    returns), so every norm sees the same data in the same order. ``threads``: torch's intra-op
    CPU threads during the run (tiny models run fastest on one).
    """
    run = NormRun(norm, seed, lr, steps)
    t0 = time.perf_counter()
    try:
        with torch_threads(threads if torch.device(device).type == "cpu" else None):
            gen = seed_everything(seed)
            model = TinyGPT(model_config(norm, data.seq_len, n_layer=n_layer, d_model=d_model,
                                         n_head=n_head)).to(device)
            run.n_params = model.num_params()
            opt = adamw(model, lr, weight_decay, betas)
            sched = torch.optim.lr_scheduler.LambdaLR(
                opt, warmup_cosine(steps, warmup_frac=warmup_frac))
            hist = train(model, opt, lm_batches(data.train, batch_size, data.seq_len, gen, device),
                         lambda m, b: m(*b)[1], steps,
                         evaluate=lambda m: {"val_loss": lm_loss(m, data.val_x, data.val_y)},
                         eval_every=0, grad_clip=grad_clip, scheduler=sched,
                         desc=f"{norm} lr={lr:g} s{seed}", progress=progress)
        run.diverged_at = hist.diverged_at
        run.initial_loss = hist.loss[0] if hist.loss else math.nan
        run.final_val_loss = hist.final("val_loss")
    except Exception as exc:  # noqa: BLE001  (a broken norm is reported, never a crash)
        run.error = _error(exc)
    run.seconds = time.perf_counter() - t0
    return run


def largest_stable_lr(final_losses: Mapping[float, float | None], tol: float
                      ) -> float | None:
    """The largest learning rate of a sweep that is still *stable*, by a rule fixed in advance.

    ``final_losses`` maps each swept learning rate to its run's final validation loss (``None``
    or non-finite: the run diverged). A learning rate is *good* when its run finished with a
    finite loss no worse than ``tol`` above the best finite loss of the sweep. Starting at the
    learning rate with the best loss, walk up the grid while learning rates are good; the last
    good one is the largest stable learning rate (a good learning rate above a bad one does not
    count: stability must hold all the way up). None when every run diverged.
    """
    if tol < 0:
        raise ValueError(f"tol must be >= 0, got {tol}")
    lrs = sorted(final_losses)
    vals = [final_losses[lr] for lr in lrs]
    ok = [v is not None and math.isfinite(v) for v in vals]
    if not any(ok):
        return None
    best = min(v for v, o in zip(vals, ok) if o)
    good = [o and v <= best + tol for v, o in zip(vals, ok)]
    i = next(i for i, (v, o) in enumerate(zip(vals, ok)) if o and v == best)
    while i + 1 < len(lrs) and good[i + 1]:
        i += 1
    return lrs[i]


@dataclass
class Benchmark:
    """Every run of the benchmark and what failed; read with the methods below."""

    norms: list[str]  # in registry order, failed ones included
    seeds: list[int]
    main_lr: float
    lrs: list[float]  # the sweep grid (contains main_lr)
    sweep_seed: int
    tol: float
    runs: list[NormRun] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # norm -> its first error
    seconds: float = 0.0

    @property
    def ok_norms(self) -> list[str]:
        return [n for n in self.norms if n not in self.failures]

    def select(self, norm: str, lr: float | None = None, seed: int | None = None) -> list[NormRun]:
        return [r for r in self.runs if r.norm == norm and (lr is None or r.lr == lr)
                and (seed is None or r.seed == seed)]

    def val_loss(self, norm: str) -> list[float | None]:
        """Per-seed final validation loss at the main learning rate (None: diverged)."""
        return [r.value for s in self.seeds for r in self.select(norm, self.main_lr, s)]

    def sweep(self, norm: str) -> dict[float, float | None]:
        """{lr: final validation loss of the sweep seed} for one norm."""
        return {lr: rs[0].value for lr in self.lrs
                if (rs := self.select(norm, lr, self.sweep_seed))}

    def stable_lr(self, norm: str) -> float | None:
        return largest_stable_lr(self.sweep(norm), self.tol) if norm in self.ok_norms else None

    def censored(self, norm: str) -> bool:
        """True when the largest stable learning rate is the top of the grid (a lower bound)."""
        lr = self.stable_lr(norm)
        return lr is not None and lr == max(self.lrs)

    def runs_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.summary() for r in self.runs])

    def table(self) -> pd.DataFrame:
        """One row per norm: val loss (mean, std, per seed), diverged seeds, stable lr, status."""
        rows = []
        for n in self.norms:
            vals = self.val_loss(n) if n not in self.failures else []
            fin = [v for v in vals if v is not None]
            lr = self.stable_lr(n)
            rows.append({
                "norm": n,
                "val_loss_mean": float(np.mean(fin)) if fin else math.nan,
                "val_loss_std": float(np.std(fin, ddof=1)) if len(fin) > 1 else (
                    0.0 if fin else math.nan),
                "diverged_seeds": sum(v is None for v in vals),
                "largest_stable_lr": lr if lr is not None else math.nan,
                "lr_is_lower_bound": self.censored(n),
                "status": "failed: " + self.failures[n] if n in self.failures else "ok",
            })
        return pd.DataFrame(rows)


def benchmark(data: LMData, *, seeds: Sequence[int], main_lr: float, lrs: Sequence[float],
              tol: float, norms: Iterable[str] | None = None, sweep_seed: int | None = None,
              progress: bool = True, **run_kw) -> Benchmark:
    """Train every norm (default: the whole registry) at ``main_lr`` with every seed, then sweep
    ``lrs`` with ``sweep_seed`` (default: the first seed; its main run is reused at ``main_lr``).

    ``run_kw`` goes to :func:`run_norm` (model sizes, steps, batch size, device, ...). A norm
    whose run raises is recorded in ``failures`` and its remaining runs are skipped.
    """
    lrs = sorted(set(lrs))
    if main_lr not in lrs:
        raise ValueError(f"main_lr={main_lr} must be one of the swept lrs {lrs}")
    seeds = list(seeds)
    sweep_seed = seeds[0] if sweep_seed is None else sweep_seed
    names = list(norms) if norms is not None else list_norms()
    bench = Benchmark(names, seeds, main_lr, lrs, sweep_seed, tol)
    grid = [(n, main_lr, s) for n in names for s in seeds]
    grid += [(n, lr, sweep_seed) for n in names for lr in lrs
             if not (lr == main_lr and sweep_seed in seeds)]
    t0 = time.perf_counter()
    bar = progress_bar(grid, progress, desc="runs")
    for n, lr, s in bar:
        if n in bench.failures:
            continue
        bar.set_postfix_str(f"{n} lr={lr:g} seed={s}", refresh=False)
        run = run_norm(n, s, lr, data, **run_kw)
        bench.runs.append(run)
        if run.failed:
            bench.failures[n] = run.error
    bench.seconds = time.perf_counter() - t0
    return bench


@dataclass
class Throughput:
    """Tokens per second of every norm's model, and relative to the baseline (LayerNorm)."""

    tokens_per_call: int
    train: dict  # norm -> Timing
    infer: dict  # norm -> Timing
    failures: dict[str, str]
    baseline: str = BASELINE

    def tokens_per_s(self, norm: str, kind: str = "train") -> float:
        t = getattr(self, kind).get(norm)
        return self.tokens_per_call / t.median if t is not None else math.nan

    def relative(self, norm: str, kind: str = "train") -> float:
        """Throughput relative to the baseline: median over interleaved rounds of
        ``t_baseline / t_norm`` (> 1: faster than the baseline); exactly 1 for the baseline."""
        timings = getattr(self, kind)
        if norm not in timings or self.baseline not in timings:
            return math.nan
        if norm == self.baseline:
            return 1.0
        return 1.0 / paired_ratio(timings[norm], timings[self.baseline])

    def relative_quartiles(self, norm: str, kind: str = "train") -> tuple[float, float]:
        """The first and third quartiles over interleaved rounds of ``t_baseline / t_norm``: the
        timing noise around :meth:`relative` (its median); ``(1, 1)`` for the baseline."""
        timings = getattr(self, kind)
        if norm not in timings or self.baseline not in timings:
            return math.nan, math.nan
        if norm == self.baseline:
            return 1.0, 1.0
        r = [b / t for t, b in zip(timings[norm].seconds, timings[self.baseline].seconds)]
        return float(np.percentile(r, 25)), float(np.percentile(r, 75))

    def table(self) -> pd.DataFrame:
        names = list(self.train) + [n for n in self.failures if n not in self.train]
        return pd.DataFrame([{
            "norm": n,
            "train_tok_per_s": self.tokens_per_s(n, "train"),
            "train_rel": self.relative(n, "train"),
            "train_rel_q1": self.relative_quartiles(n, "train")[0],
            "train_rel_q3": self.relative_quartiles(n, "train")[1],
            "infer_tok_per_s": self.tokens_per_s(n, "infer"),
            "infer_rel": self.relative(n, "infer"),
            "infer_rel_q1": self.relative_quartiles(n, "infer")[0],
            "infer_rel_q3": self.relative_quartiles(n, "infer")[1],
            "status": "failed: " + self.failures[n] if n in self.failures else "ok",
        } for n in names])


def throughput(data: LMData, *, n_layer: int, d_model: int, n_head: int, batch_size: int,
               norms: Iterable[str] | None = None, lr: float = 1e-3, warmup: int = 5,
               reps: int = 20, device: torch.device | str = "cpu", threads: int | None = 1,
               amp_dtype: torch.dtype | None = None, baseline: str = BASELINE,
               seed: int = 0) -> Throughput:
    """Time one training step (forward, backward, AdamW) and one inference forward of every
    norm's model on the same fixed batch, interleaved in this process (:func:`replib.timing.compare`).

    Each norm's callables are run once before timing; one that raises is reported in
    ``failures`` and left out, so one broken norm cannot spoil the others' timings.
    """
    names = list(norms) if norms is not None else list_norms()
    device = torch.device(device)
    gen = seed_everything(seed)
    x, y = next(lm_batches(data.train, batch_size, data.seq_len, gen, device))
    train_fns, infer_fns, failures = {}, {}, {}
    with torch_threads(threads if device.type == "cpu" else None):
        for n in names:
            try:
                seed_everything(seed)
                model = TinyGPT(model_config(n, data.seq_len, n_layer=n_layer, d_model=d_model,
                                             n_head=n_head)).to(device)
                # separate copies: the training step must not change the inference model
                infer_model = TinyGPT(model.cfg).to(device)
                infer_model.load_state_dict(model.state_dict())
                opt = adamw(model, lr, 0.1, (0.9, 0.95))
                tr = train_step(model, opt, lambda m: m(x, y)[1], amp_dtype)
                inf = inference_step(infer_model, lambda m: m(x), amp_dtype)
                tr(), inf()  # one untimed call each: a norm that raises is left out here
                train_fns[n], infer_fns[n] = tr, inf
            except Exception as exc:  # noqa: BLE001
                failures[n] = _error(exc)
        if not train_fns:
            return Throughput(x.numel(), {}, {}, failures, baseline)
        t_train = compare(train_fns, device, warmup=warmup, reps=reps)
        t_infer = compare(infer_fns, device, warmup=warmup, reps=reps)
    return Throughput(x.numel(), t_train, t_infer, failures, baseline)


__all__ = ["BASELINE", "Benchmark", "NormRun", "Throughput", "benchmark", "largest_stable_lr",
           "lm_data", "model_config", "plain_math", "registry_table", "run_norm", "same_init", "summary_line",
           "throughput"]
