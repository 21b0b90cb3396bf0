r"""The all-norms benchmark: every norm of the registry in the same tiny transformer (chapter 90).

Nothing here lists norms by hand: :func:`benchmark` and :func:`throughput` iterate over
:func:`replib.nn.list_norms` unless told otherwise, so a norm registered by a later chapter is
benchmarked the next time the chapter runs. For every norm, with everything else identical:

- **quality**: one Pre-norm :class:`~replib.nn.TinyGPT` per (learning rate, seed) of one grid,
  the same grid for every norm (:func:`replib.lr_sweep`), trained as a byte-level language model
  (AdamW, linear warm-up then cosine decay, gradient clipping); the same seed gives the same
  batches in the same order for every norm. Each norm's learning rate is chosen on validation
  windows and its final loss (nats per byte) is reported on separate test windows
  (:func:`bench_data`), so every norm is compared at its own best learning rate;
- **stability**: from the same sweep, :func:`largest_stable_lr` applies a rule fixed before any
  run (every seed finite and below the byte-unigram loss by a margin; see its docstring), and
  :meth:`Benchmark.boundary` says how close each call was;
- **speed**: training and inference throughput (tokens/s) of the same model on a fixed batch,
  timed interleaved in one process by :func:`replib.timing.compare`, relative to LayerNorm, with
  every round kept (the spread).

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

from ..claims import paired
from ..data import lm_batches, lm_splits
from ..nn import GPTConfig, TinyGPT, create_norm, list_norms
from ..nn import norms as _norms
from ..runtime import seed_everything, torch_threads
from ..timing import compare, inference_step, paired_ratio, train_step
from ..train import Sweep, adamw, lm_loss, lr_sweep, train, warmup_cosine
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
class BenchData:
    """Byte tokens for training and two fixed held-out sets: *validation* windows (where each
    norm's learning rate is chosen) and separate *test* windows (where the chosen runs are
    reported). Both come from the held-out end of the corpus, validation first, test second."""

    train: torch.Tensor  # 1-D token ids (CPU), sampled by random windows
    val_x: torch.Tensor  # (n_val, seq_len) on the device
    val_y: torch.Tensor
    test_x: torch.Tensor  # (n_test, seq_len) on the device, disjoint from val
    test_y: torch.Tensor
    seq_len: int


def bench_data(text: str, seq_len: int, windows: int, held_out: float = 0.1,
               device: torch.device | str = "cpu") -> BenchData:
    """:func:`replib.data.lm_splits` of ``text``: the last ``held_out`` fraction split in two
    halves, the first giving up to ``windows`` validation windows, the second up to ``windows``
    test windows."""
    s = lm_splits(text, seq_len, windows, windows, held_out=held_out, device=device)
    return BenchData(s.train, *s.val, *s.test, seq_len)


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
    final_test_loss: float = math.nan  # on the test windows (nan: diverged, failed, or no test set)
    curve: list[float] = field(default_factory=list)  # validation loss at each evaluation
    curve_steps: list[int] = field(default_factory=list)

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

    def metrics(self) -> dict:
        """What :func:`replib.lr_sweep` keeps of the run: ``val`` and ``test`` (NaN when diverged
        or failed), the validation ``curve``, the divergence step and the wall time."""
        return {"val": self.final_val_loss, "test": self.final_test_loss, "curve": list(self.curve),
                "diverged_at": self.diverged_at, "seconds": round(self.seconds, 2)}

    def summary(self) -> dict:
        return {"norm": self.norm, "seed": self.seed, "lr": self.lr,
                "final_val_loss": self.final_val_loss, "final_test_loss": self.final_test_loss,
                "diverged_at": self.diverged_at, "error": self.error,
                "seconds": round(self.seconds, 2)}


def model_config(norm: str, seq_len: int, *, n_layer: int, d_model: int, n_head: int,
                 **extra) -> GPTConfig:
    """The benchmark's model: a Pre-norm TinyGPT on bytes; only ``norm`` differs between norms."""
    return GPTConfig(vocab_size=256, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, norm=norm, placement="pre", **extra)


def run_norm(norm: str, seed: int, lr: float, data: "BenchData | LMData", *, n_layer: int,
             d_model: int, n_head: int, batch_size: int, steps: int, warmup_frac: float = 0.05,
             weight_decay: float = 0.1, betas: tuple[float, float] = (0.9, 0.95),
             grad_clip: float | None = 1.0, evals: int = 10, device: torch.device | str = "cpu",
             threads: int | None = 1, progress: bool = False) -> NormRun:
    """Train one TinyGPT with ``norm`` for ``steps`` steps; never raises because of the norm.

    The batches depend on ``seed`` only (drawn from the generator :func:`seed_everything`
    returns), so every norm sees the same data in the same order. The validation loss is
    evaluated ``evals`` times, evenly spaced (the last after the final step; the curve that
    :func:`replib.undertrained_note` reads); the test loss once, at the end, when ``data`` has a
    test set. ``threads``: torch's intra-op CPU threads during the run (tiny models run fastest
    on one).
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
            every = max(1, steps // max(1, evals)) if evals > 1 else 0
            hist = train(model, opt, lm_batches(data.train, batch_size, data.seq_len, gen, device),
                         lambda m, b: m(*b)[1], steps,
                         evaluate=lambda m: {"val_loss": lm_loss(m, data.val_x, data.val_y)},
                         eval_every=every, grad_clip=grad_clip, scheduler=sched,
                         desc=f"{norm} lr={lr:g} s{seed}", progress=progress)
            run.diverged_at = hist.diverged_at
            run.initial_loss = hist.loss[0] if hist.loss else math.nan
            run.final_val_loss = hist.final("val_loss")
            run.curve_steps, run.curve = map(list, hist.eval_series("val_loss"))
            if not hist.diverged and getattr(data, "test_x", None) is not None:
                model.eval()
                run.final_test_loss = lm_loss(model, data.test_x, data.test_y)
    except Exception as exc:  # noqa: BLE001  (a broken norm is reported, never a crash)
        run.error = _error(exc)
    run.seconds = time.perf_counter() - t0
    return run


def stable_at(losses: Sequence[float | None], threshold: float) -> bool:
    """A learning rate is *stable* when every seed's run finished (no divergence: a finite loss)
    at or below ``threshold`` (the unigram loss minus the margin): every seed still learns
    something beyond byte frequencies. An empty list is not stable."""
    vals = [math.nan if v is None else float(v) for v in losses]
    return bool(vals) and all(math.isfinite(v) and v <= threshold for v in vals)


def slack(losses: Sequence[float | None], threshold: float) -> float:
    """How far the *worst* seed is on the good side of ``threshold`` (``threshold - max loss``):
    positive by how much a stable learning rate passed, negative by how much an unstable one
    missed; ``-inf`` when a seed diverged."""
    vals = [math.nan if v is None else float(v) for v in losses]
    if not vals or not all(math.isfinite(v) for v in vals):
        return -math.inf
    return threshold - max(vals)


def largest_stable_lr(losses: Mapping[float, Sequence[float | None]], threshold: float,
                      start: float | None = None) -> float | None:
    """The largest learning rate of a sweep that is still *stable*, by a rule fixed in advance.

    ``losses`` maps each swept learning rate to its runs' final losses, one per seed (``None``
    or non-finite: that seed diverged). A learning rate is stable when every seed finished with a
    finite loss at or below ``threshold`` (:func:`stable_at`; the chapter passes the byte-unigram
    loss minus a margin). Starting at ``start`` (the norm's selected learning rate; default the
    lowest stable one) and walking up the grid, the largest stable learning rate is the last
    stable one before the first unstable one (a stable learning rate above an unstable one does
    not count: stability must hold all the way up). None when ``start`` is not stable or nothing is.
    """
    lrs = sorted(losses)
    ok = [stable_at(losses[lr], threshold) for lr in lrs]
    if start is None:
        if not any(ok):
            return None
        i = ok.index(True)
    else:
        if start not in losses:
            raise ValueError(f"start={start} is not one of the swept learning rates {lrs}")
        i = lrs.index(start)
        if not ok[i]:
            return None
    while i + 1 < len(lrs) and ok[i + 1]:
        i += 1
    return lrs[i]


def paired_word(p, name: str = "the reference") -> str:
    """A paired difference (norm − reference, lower is better) in words: lower, higher, or not
    separated (the 95 % interval contains 0, or there are fewer than two pairs)."""
    lo, hi = p.interval
    if hi < 0:
        return f"lower than {name}"
    if lo > 0:
        return f"higher than {name}"
    return f"not separated from {name}"


@dataclass
class Benchmark:
    """The whole sweep (every norm × learning rate × seed) and what failed; read with the
    methods below. Each norm's learning rate is chosen on the validation loss (mean over seeds;
    a learning rate where a seed diverged is not eligible) and reported on the test loss."""

    norms: list[str]  # in registry order, failed ones included
    seeds: list[int]
    lrs: list[float]  # the grid, the same for every norm
    threshold: float  # stable: every seed's test loss at or below this (unigram − margin)
    sweep: Sweep | None = None  # ok norms only
    runs: list[NormRun] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)  # norm -> its first error
    seconds: float = 0.0
    reference: str = BASELINE

    @property
    def ok_norms(self) -> list[str]:
        return [n for n in self.norms if n not in self.failures]

    def select(self, norm: str, lr: float | None = None, seed: int | None = None) -> list[NormRun]:
        return [r for r in self.runs if r.norm == norm and (lr is None or r.lr == lr)
                and (seed is None or r.seed == seed)]

    def losses(self, norm: str, lr: float, key: str = "test") -> list[float | None]:
        """Per-seed final ``key`` loss ("val" or "test") at ``lr``, in seed order (None: diverged)."""
        rs = {r.seed: r for r in self.select(norm, lr)}
        vals = [getattr(rs[s], f"final_{key}_loss") if s in rs else math.nan for s in self.seeds]
        return [v if math.isfinite(v) else None for v in vals]

    def best_lr(self, norm: str) -> float | None:
        """The norm's learning rate, chosen on the mean validation loss over seeds."""
        if norm in self.failures or self.sweep is None or norm not in self.sweep.runs:
            return None
        return self.sweep.best_lr(norm)

    def at_best(self, norm: str, key: str = "test") -> list[float | None]:
        """Per-seed ``key`` loss at the norm's own best learning rate (all None if it has none)."""
        lr = self.best_lr(norm)
        return self.losses(norm, lr, key) if lr is not None else [None] * len(self.seeds)

    def curves_at_best(self, norm: str) -> list[list[float]]:
        lr = self.best_lr(norm)
        rs = {r.seed: r for r in self.select(norm, lr)} if lr is not None else {}
        return [list(rs[s].curve) for s in self.seeds if s in rs]

    def versus(self, norm: str, reference: str | None = None):
        """Paired per-seed test-loss difference ``norm − reference``, each at its own best lr."""
        ref = reference or self.reference
        return paired(self.at_best(norm), self.at_best(ref), names=(norm, ref))

    def diffs(self, norm: str, reference: str | None = None) -> list[float | None]:
        """Per-seed test-loss differences ``norm − reference`` at their own best lrs, in seed
        order (None where either seed diverged or has no lr)."""
        a, b = self.at_best(norm), self.at_best(reference or self.reference)
        return [None if x is None or y is None else x - y for x, y in zip(a, b)]

    def stable_lr(self, norm: str) -> float | None:
        """:func:`largest_stable_lr` on the test losses, walking up from the norm's best lr."""
        start = self.best_lr(norm)
        if start is None:
            return None
        return largest_stable_lr({lr: self.losses(norm, lr) for lr in self.lrs}, self.threshold,
                                 start)

    def censored(self, norm: str) -> bool:
        """True when the largest stable learning rate is the top of the grid (a lower bound)."""
        lr = self.stable_lr(norm)
        return lr is not None and lr == max(self.lrs)

    def boundary(self, norm: str) -> dict:
        """How close the stability call was: the worst seed's :func:`slack` at the largest stable
        lr (how much room it had) and at the next lr up (how far it missed; -inf: diverged),
        and the number of diverged seeds there."""
        lr = self.stable_lr(norm)
        out = {"stable_lr": lr, "slack": math.nan, "next_lr": None, "next_slack": math.nan,
               "next_diverged": 0}
        if lr is None:
            start = self.best_lr(norm)
            if start is not None:  # the best lr itself was not stable: by how much it missed
                out.update(next_lr=start, next_slack=slack(self.losses(norm, start), self.threshold),
                           next_diverged=sum(v is None for v in self.losses(norm, start)))
            return out
        out["slack"] = slack(self.losses(norm, lr), self.threshold)
        higher = [x for x in self.lrs if x > lr]
        if higher:
            nxt = higher[0]
            vals = self.losses(norm, nxt)
            out.update(next_lr=nxt, next_slack=slack(vals, self.threshold),
                       next_diverged=sum(v is None for v in vals))
        return out

    def runs_frame(self) -> pd.DataFrame:
        return pd.DataFrame([r.summary() for r in self.runs])

    def table(self) -> pd.DataFrame:
        """One row per norm, at its own best learning rate: test loss (mean, std), the paired
        difference to the reference with its interval, diverged seeds anywhere in the sweep, the
        largest stable lr with the slack on both sides of the call, status."""
        rows = []
        for n in self.norms:
            ok = n not in self.failures
            vals = self.at_best(n) if ok else []
            fin = [v for v in vals if v is not None]
            lr = self.stable_lr(n) if ok else None
            p = self.versus(n) if ok and self.best_lr(self.reference) is not None else None
            b = self.boundary(n) if ok else {}
            rows.append({
                "norm": n,
                "best_lr": self.best_lr(n) if ok else None,
                "test_loss_mean": float(np.mean(fin)) if fin else math.nan,
                "test_loss_std": float(np.std(fin, ddof=1)) if len(fin) > 1 else (
                    0.0 if fin else math.nan),
                "vs_ref_mean": p.mean if p is not None else math.nan,
                "vs_ref_lo": p.interval[0] if p is not None else math.nan,
                "vs_ref_hi": p.interval[1] if p is not None else math.nan,
                "diverged_runs": sum(r.diverged for r in self.select(n)) if ok else 0,
                "largest_stable_lr": lr if lr is not None else math.nan,
                "lr_is_lower_bound": self.censored(n) if ok else False,
                "stable_slack": b.get("slack", math.nan),
                "next_lr": b.get("next_lr"),
                "next_slack": b.get("next_slack", math.nan),
                "status": "failed: " + self.failures[n] if not ok else "ok",
            })
        return pd.DataFrame(rows)


def benchmark(data: BenchData, *, seeds: Sequence[int], lrs: Sequence[float], threshold: float,
              norms: Iterable[str] | None = None, reference: str = BASELINE,
              progress: bool = True, **run_kw) -> Benchmark:
    """Train every norm (default: the whole registry) at every learning rate of ``lrs`` with every
    seed (:func:`replib.lr_sweep`, selected on ``"val"``); ``threshold`` is the test loss every
    seed must reach for a learning rate to count as stable.

    ``run_kw`` goes to :func:`run_norm` (model sizes, steps, batch size, device, ...). A norm
    whose run raises is recorded in ``failures``, its remaining runs are skipped and it is left
    out of the sweep.
    """
    lrs = sorted(set(float(x) for x in lrs))
    seeds = list(seeds)
    names = list(norms) if norms is not None else list_norms()
    bench = Benchmark(names, seeds, lrs, threshold, reference=reference)
    t0 = time.perf_counter()

    def one(norm: str, lr: float, seed: int) -> dict:
        if norm in bench.failures:
            return {"val": math.nan, "test": math.nan, "curve": [], "diverged_at": None,
                    "seconds": 0.0}
        run = run_norm(norm, seed, lr, data, **run_kw)
        bench.runs.append(run)
        if run.failed:
            bench.failures[norm] = run.error
        return run.metrics()

    sweep = lr_sweep(names, lrs, seeds, one, select_on="val", progress=progress)
    runs = {n: v for n, v in sweep.runs.items() if n not in bench.failures}
    bench.sweep = Sweep(sweep.grid, sweep.seeds, sweep.select_on, sweep.lower_is_better, runs)
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

    def rounds(self, norm: str, kind: str = "train") -> list[float]:
        """Every interleaved round's ratio ``t_baseline / t_norm`` (the spread behind
        :meth:`relative`); all ones for the baseline, empty when either was not timed."""
        timings = getattr(self, kind)
        if norm not in timings or self.baseline not in timings:
            return []
        return [b / t for t, b in zip(timings[norm].seconds, timings[self.baseline].seconds)]

    def tokens_per_s_rounds(self, norm: str, kind: str = "train") -> list[float]:
        """Tokens per second of every timed round (empty when the norm was not timed)."""
        t = getattr(self, kind).get(norm)
        return [self.tokens_per_call / x for x in t.seconds] if t is not None else []

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


def throughput(data: "BenchData | LMData", *, n_layer: int, d_model: int, n_head: int, batch_size: int,
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


__all__ = ["BASELINE", "BenchData", "Benchmark", "NormRun", "Throughput", "bench_data", "benchmark",
           "largest_stable_lr", "lm_data", "model_config", "paired_word", "plain_math", "registry_table",
           "run_norm", "same_init", "slack", "stable_at", "summary_line", "sweep_figure",
           "overview_figure", "findings", "throughput"]


# ---- figures (the chapter's; kept here so the notebook shows results, not plotting code) ----

def _clip_top(values: Iterable[float], floor: float, span: float = 1.0) -> float:
    fin = [v for v in values if v is not None and math.isfinite(v)]
    return min(max(fin), floor + span) if fin else floor + span


def overview_figure(bench: Benchmark, tp: Throughput | None, unigram: float, threshold: float,
                    order: Sequence[str]):
    """Three panels over ``order`` (the norms, best first): the test loss at each norm's own best
    learning rate (every seed a dot; the paired difference to the reference underneath), the
    largest stable learning rate (with how close the call was), and the throughput relative to
    the reference with the interquartile range of the rounds."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from .. import plotting

    ref = bench.reference
    fig, axes = plt.subplots(3, 1, figsize=(max(7, 0.8 * len(order) + 2), 11), sharex=True)
    ax = axes[0]
    losses = {n: bench.at_best(n) for n in order}
    plotting.seed_dots(ax, losses, "test loss at its own best lr\n(nats/byte, lower is better)",
                       order=order, bars=False)
    vals = [v for vs in losses.values() for v in vs if v is not None]
    lo = min(vals + [threshold]) if vals else threshold - 1
    top = max(_clip_top(vals, lo, 0.9), unigram + 0.03)
    ax.set_ylim(lo - 0.06, top + 0.04)
    ref_mean = float(np.mean([v for v in losses.get(ref, []) if v is not None] or [math.nan]))
    if math.isfinite(ref_mean):
        ax.axhline(ref_mean, ls="-.", color="0.3", lw=1, label=f"{ref}'s mean")
    ax.axhline(unigram, color="grey", ls="--", lw=1, label="byte-unigram loss")
    ax.axhline(threshold, color="grey", ls=":", lw=1, label="unigram − margin (stability)")
    ax.legend(loc="upper left", fontsize=8)
    for i, n in enumerate(order):
        n_off = sum(v is not None and v > ax.get_ylim()[1] for v in losses[n])
        lr = bench.best_lr(n)
        note = f"lr {lr:g}" if lr is not None else "no lr"
        if n != ref and bench.best_lr(ref) is not None and lr is not None:
            p = bench.versus(n)
            if p.n >= 2:
                note += f"\nΔ {p.mean:+.3f}\n[{p.interval[0]:+.3f}, {p.interval[1]:+.3f}]"
        if n_off:
            note += f"\n{n_off} off scale"
        ax.text(i, 0.01, note, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                fontsize=7, color="0.25")
    ax.set_title(f"Each norm at its own best learning rate (chosen on validation, shown on test)\n"
                 f"Δ: paired difference to {ref} with its 95 % interval", fontsize=10)

    ax = axes[1]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, n in enumerate(order):
        lr = bench.stable_lr(n)
        b = bench.boundary(n)
        nxt = ("" if b["next_lr"] is None else
               f"{b['next_lr']:g}: " + ("div." if b["next_diverged"] else f"{b['next_slack']:+.2f}"))
        if lr is None:
            ax.text(i, min(bench.lrs), "none\n" + nxt, ha="center", va="bottom", fontsize=7,
                    color="#c62828")
            continue
        ax.bar(i, lr, color=colors[i % len(colors)], alpha=0.6, width=0.6)
        if bench.censored(n):
            ax.plot(i, lr * 1.3, marker="^", color="0.2")
        ax.text(i, lr * 1.05, f"{b['slack']:+.2f}" + (f"\n{nxt}" if nxt else ""), ha="center",
                va="bottom", fontsize=7, color="0.25")
    ax.set_yscale("log")
    ax.set_ylim(min(bench.lrs) / 2, max(bench.lrs) * 6)
    ax.set_yticks(bench.lrs, [f"{x:g}" for x in bench.lrs])
    ax.yaxis.set_minor_locator(NullLocator())
    ax.set_ylabel("largest stable lr\n(peak lr)")
    ax.set_title("Largest stable learning rate (every seed finite and below unigram − margin)\n"
                 "numbers: the worst seed's room there; then at the next lr up", fontsize=10)

    ax = axes[2]
    x = np.arange(len(order))
    if tp is not None:
        for k, (kind, label) in enumerate((("train", "training step"), ("infer", "inference"))):
            med = np.array([tp.relative(n, kind) for n in order])
            q1, q3 = np.array([tp.relative_quartiles(n, kind) for n in order]).reshape(-1, 2).T
            ax.bar(x + (k - 0.5) * 0.35, med, width=0.35, label=label,
                   yerr=np.nan_to_num([med - q1, q3 - med]), capsize=2, error_kw=dict(lw=1))
        rel = [tp.relative_quartiles(n, k)[1] for n in order for k in ("train", "infer")]
        ax.set_ylim(0, 1.15 * max([v for v in rel if math.isfinite(v)] + [1.0]))
        ax.legend(loc="upper right", ncol=2)
    ax.axhline(1.0, ls="--", color="0.4", lw=1)
    ax.set_ylabel(f"throughput / {ref}'s\nhigher is better")
    ax.set_title(f"Throughput relative to {ref}\n(median of interleaved rounds, whiskers: "
                 "interquartile range)", fontsize=10)
    ax.set_xticks(x, order, rotation=30, ha="right")
    fig.tight_layout()
    return fig


def sweep_figure(bench: Benchmark, unigram_val: float, order: Sequence[str], ncols: int = 4):
    """One panel per norm: its validation loss over the grid (every seed a dot, the mean a line,
    its best lr ringed: :func:`replib.plotting.lr_sweep`) beside the reference's in grey; points
    above the panel's top are marked ▲ on the top edge."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullLocator

    from .. import plotting

    sw = bench.sweep.to_json()
    ref = bench.reference
    names = [n for n in order if n in sw["runs"]]
    nrows = max(1, math.ceil(len(names) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.7 * nrows), sharex=True,
                             sharey=True, squeeze=False)
    all_vals = [r["val"] for n in names for per in sw["runs"][n].values() for r in per
                if r.get("val") is not None]
    lo = min(all_vals + [unigram_val]) - 0.05
    top = unigram_val + 0.35
    for ax, n in zip(axes.flat, names):
        arms = [n] + ([ref] if ref in sw["runs"] and ref != n else [])
        sub = {**sw, "runs": {a: sw["runs"][a] for a in arms}, "best": {a: sw["best"][a] for a in arms}}
        plotting.lr_sweep(ax, sub, key="val", ylabel="val loss (nats/byte)",
                          colors={n: "C0", ref: "0.65"}, reference=unigram_val)
        for a in arms:
            vals = [[r.get("val") for r in sw["runs"][a][f"{g:g}"]] for g in sw["grid"]]
            off = [g for g, vs in zip(sw["grid"], vals) if any(v is not None and v > top for v in vs)]
            ax.scatter(off, [top] * len(off), marker="^", color="C0" if a == n else "0.65",
                       clip_on=False, s=30, zorder=5)
        ax.set_ylim(lo, top)
        ax.set_title(n, fontsize=10)
        if ax is axes.flat[0]:
            ax.legend(fontsize=7, loc="lower left")
        elif ax.get_legend() is not None:
            ax.get_legend().remove()
        ax.set_xticks(sw["grid"], [f"{g:g}" for g in sw["grid"]], rotation=45, fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlabel("")
        if ax not in axes[:, 0]:
            ax.set_ylabel("")
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.supxlabel("peak learning rate (the same grid for every norm; ring: the norm's best)")
    fig.tight_layout()
    return fig


def findings(bench: Benchmark, tp: Throughput | None, unigram: float, margin: float,
             close: float = 0.02) -> list[str]:
    """What the measurements say, in words computed from them (one Markdown bullet each): the
    ranking at each norm's own best lr against the reference with paired intervals, the norms
    that did not learn, where the best lrs lie, how the stability calls came out and which were
    close (within ``close`` nats/byte of the threshold), and the throughput outside the noise."""
    ref = bench.reference
    ok = bench.ok_norms
    out = []
    learned = {n: all(v is not None and v <= unigram - margin for v in bench.at_best(n)) for n in ok}
    mean = {n: float(np.mean([v for v in bench.at_best(n) if v is not None] or [math.nan]))
            for n in ok}
    ranked = sorted([n for n in ok if math.isfinite(mean[n])], key=mean.get)
    if ranked:
        out.append("**Ranking at each norm's own best learning rate** (mean test loss, nats/byte): "
                   + ", ".join(f"{n} {mean[n]:.3f} (lr {bench.best_lr(n):g})" for n in ranked) + ".")
    if ref in ok and not learned[ref]:
        out.append(f"**{ref} itself did not learn here** (a seed at its best learning rate ended less "
                   f"than {margin:g} nats/byte below the unigram loss), so no norm is ranked against it.")
    elif ref in ok and bench.best_lr(ref) is not None:
        groups: dict[str, list[str]] = {}
        for n in ranked:
            if n == ref:
                continue
            p = bench.versus(n)
            word = paired_word(p, ref) if learned[n] else "did not learn (gate)"
            groups.setdefault(word, []).append(
                f"{n} ({p.mean:+.3f} [{p.interval[0]:+.3f}, {p.interval[1]:+.3f}])")
        for word, names in groups.items():
            out.append(f"**{word[0].upper() + word[1:]}** (paired test-loss difference to {ref}, "
                       f"95 % t-interval over {len(bench.seeds)} seeds): " + ", ".join(names) + ".")
    stalled = [n for n in ok if not learned[n]]
    out.append(("**Did not learn here:** " + ", ".join(stalled) + f": at its best learning rate at "
                f"least one seed ended less than {margin:g} nats/byte below the byte-unigram loss "
                f"({unigram:.3f}); with this recipe and budget the norm learned little beyond byte "
                "frequencies, so its place in the ranking says more about the set-up than the norm.")
               if stalled else f"**Every norm learned** beyond byte frequencies at its best "
               f"learning rate (every seed at least {margin:g} nats/byte below the unigram loss).")
    if ref in ok and bench.best_lr(ref) is not None:
        other = [n for n in ok if bench.best_lr(n) is not None and bench.best_lr(n) != bench.best_lr(ref)]
        if other:
            out.append(f"**Learning rates differ:** {ref}'s best is {bench.best_lr(ref):g}; "
                       + ", ".join(f"{n}'s {bench.best_lr(n):g}" for n in other)
                       + f". Ranked at {ref}'s learning rate alone, these norms would not have been "
                       "compared at their best.")
    edge = bench.sweep.edge_note() if bench.sweep is not None else ""
    if edge:
        out.append(f"**Grid edge:** {edge}.")
    stab, closes = [], []
    for n in ok:
        b = bench.boundary(n)
        lr = b["stable_lr"]
        stab.append(f"{n} {'none' if lr is None else ('≥ ' if bench.censored(n) else '') + f'{lr:g}'}")
        if lr is not None and math.isfinite(b["slack"]) and b["slack"] < close:
            closes.append(f"{n} (at {lr:g} its worst seed was only {b['slack']:.3f} below the threshold)")
        if b["next_lr"] is not None and not b["next_diverged"] and math.isfinite(b["next_slack"]) \
                and -close < b["next_slack"] < 0:
            closes.append(f"{n} (at {b['next_lr']:g} its worst seed missed by {-b['next_slack']:.3f})")
    out.append("**Largest stable learning rate** (every seed finite and at least "
               f"{margin:g} below the unigram loss): " + ", ".join(stab) + ". "
               + ("Close calls, which another machine or seed could flip: " + "; ".join(closes) + "."
                  if closes else f"No call was within {close:g} nats/byte of the threshold."))
    if tp is not None and tp.train:
        faster, slower = [], []
        for n in tp.train:
            if n == tp.baseline:
                continue
            q1, q3 = tp.relative_quartiles(n, "train")
            if q1 > 1:
                faster.append(f"{n} ({tp.relative(n, 'train'):.2f}×)")
            elif q3 < 1:
                slower.append(f"{n} ({tp.relative(n, 'train'):.2f}×)")
        out.append("**Training throughput** relative to " + tp.baseline + " (only where the "
                   "interquartile range of the rounds excludes 1): "
                   + (f"faster: {', '.join(faster)}; " if faster else "none faster; ")
                   + (f"slower: {', '.join(slower)}." if slower else "none slower.")
                   + " At this size a step is mostly per-operation overhead, so these are not "
                   "kernel benchmarks.")
    return out
