r"""Chapter 15 (Singh & Strouse 2024, arXiv 2402.14903): digit chunking and learned addition.

A trained-from-scratch *analog* of the paper's few-shot study: small causal transformers
(:class:`~replib.nn.TinyGPT`, learned positions) learn ``a + b = c`` where the **only** difference
between arms is how digits become tokens (:mod:`replib.tokenize.digits`: L2R or R2L groups of three,
or single digits), on the same problems (:mod:`replib.data.addition`), seeds, batches and
learning-rate grid.

- :func:`make_data`: fixed train / validation / test problems (balanced triplets) tokenized per arm.
- :func:`run_addition`: one run; AdamW, warm-up + cosine, gradient clipping; the loss on the answer
  tokens and ``<eos>`` only. Returns validation loss and exact match, test exact match, per-problem
  correctness and the position of the first wrong answer digit.
- :func:`addition_sweep`: every arm x learning rate x seed (:func:`replib.train.lr_sweep`), the lr
  chosen per arm on the validation answer loss.
- :func:`error_rates`: a run's error rate on length-matched and length-mismatched test problems.
- :func:`c1_rule`, :func:`c2_rule`, :func:`c3_rule`: the claims' verdict rules (text and code).
- ``plot_*``: the chapter's figures.

Exact match is measured with teacher forcing: a problem counts as solved when the argmax at every
answer position (and at ``<eos>``) is the target. This equals greedy decoding's exact match: greedy
decoding reproduces the answer exactly iff every step's argmax, given the right prefix, is right.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from ..claims import Health, Rule, Verdict, all_of, at_least, decide_side, graded, holds, paired
from ..data.addition import IGNORE, Problems, Tokenized, max_tokens, problems, tokenize
from ..nn import GPTConfig, TinyGPT
from ..plotting import palette, seed_dots
from ..runtime import seed_everything, torch_threads
from ..tokenize.digits import VOCAB, chunk
from ..train import Sweep, adamw, lr_sweep, train, warmup_cosine

SPLIT_SEEDS = {"train": 15_000, "val": 15_001, "test": 15_002}  # problem draws, apart from model seeds


@dataclass
class AdditionData:
    """The same problems for every arm, tokenized per chunking."""

    train: Problems
    val: Problems
    test: Problems
    tokens: dict[str, dict[str, Tokenized]]  # chunking -> split -> Tokenized (on the device)
    min_digits: int
    max_digits: int
    size: int  # digits per chunk (3: cl100k's)

    def unigram_loss(self, chunking: str) -> float:
        """Cross-entropy (nats) of the training answer tokens' own frequencies: the loss of a
        model that ignores the question (the health gates' trivial reference)."""
        y = self.tokens[chunking]["train"].y
        counts = torch.bincount(y[y != IGNORE].cpu(), minlength=len(VOCAB)).double()
        p = counts[counts > 0] / counts.sum()
        return float(-(p * p.log()).sum())

    def mean_tokens(self, chunking: str, split: str = "test") -> float:
        """Mean tokens per problem, ``a + b = c <eos>`` (padding excluded)."""
        t = self.tokens[chunking][split]
        return float((t.x != VOCAB.eos).sum(1).double().mean() + 1)


def make_data(chunkings: Sequence[str], *, min_digits: int, max_digits: int, n_train: int, n_val: int,
              n_test: int, size: int = 3, device: torch.device | str = "cpu") -> AdditionData:
    """Draw the three splits (fixed seeds :data:`SPLIT_SEEDS`) and tokenize them for every arm, in
    groups of ``size`` digits."""
    splits = {name: problems(n, min_digits, max_digits, SPLIT_SEEDS[name])
              for name, n in (("train", n_train), ("val", n_val), ("test", n_test))}
    tokens = {c: {name: tokenize(p, c, max_tokens(max_digits, c, size), size).to(device)
                  for name, p in splits.items()} for c in chunkings}
    return AdditionData(splits["train"], splits["val"], splits["test"], tokens, min_digits, max_digits, size)


@torch.no_grad()
def score(model: TinyGPT, task: Tokenized, chunk: int = 512) -> dict:
    """Answer-token loss (nats), exact match per problem, and per problem the answer token index of
    the first wrong prediction (-1 when solved)."""
    loss_sum, count, solved, first_wrong = 0.0, 0, [], []
    for i in range(0, len(task.x), chunk):
        x, y = task.x[i:i + chunk], task.y[i:i + chunk]
        logits, _ = model(x)
        scored = y != IGNORE
        loss_sum += float(F.cross_entropy(logits[scored], y[scored], reduction="sum"))
        count += int(scored.sum())
        wrong = (logits.argmax(-1) != y) & scored
        solved.append(~wrong.any(1))
        # answer token index of the first wrong one: its position minus the answer's start
        start = scored.float().argmax(1)
        pos = torch.where(wrong.any(1), wrong.float().argmax(1) - start, torch.full_like(start, -1))
        first_wrong.append(pos)
    return {"loss": loss_sum / count, "solved": torch.cat(solved).cpu().numpy(),
            "first_wrong": torch.cat(first_wrong).cpu().numpy()}


def run_addition(chunking: str, lr: float, seed: int, data: AdditionData, *, n_layer: int, d_model: int,
                 n_head: int, batch_size: int, steps: int, weight_decay: float = 0.1,
                 warmup_frac: float = 0.05, grad_clip: float = 1.0, device: torch.device | str = "cpu",
                 threads: int | None = 1) -> dict:
    """Train one TinyGPT on ``data`` tokenized by ``chunking``; score validation and test.

    The ``seed`` fixes the initial weights (the same for L2R and R2L, whose sequences have the
    same length) and the batches: every arm sees the same problems in the same order. A non-finite loss returns
    NaN metrics (a divergence, recorded, never raised).
    """
    task = data.tokens[chunking]
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        seed_everything(seed)
        cfg = GPTConfig(vocab_size=len(VOCAB), seq_len=task["train"].seq_len, n_layer=n_layer, n_head=n_head,
                        d_model=d_model)
        model = TinyGPT(cfg).to(device)
        opt = adamw(model, lr, weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac))
        g = torch.Generator().manual_seed(seed)
        n = len(task["train"].x)
        order = (torch.randint(0, n, (batch_size,), generator=g) for _ in range(steps))
        batches = ((task["train"].x[i.to(device)], task["train"].y[i.to(device)]) for i in order)
        hist = train(model, opt, batches, lambda m, b: m(*b)[1], steps, grad_clip=grad_clip,
                     scheduler=sched, progress=False)
        model.eval()
        if hist.diverged:
            nan = math.nan
            return {"val_loss": nan, "val_acc": nan, "test_acc": nan, "test_loss": nan, "solved": None,
                    "first_wrong": None, "loss": hist.loss, "seconds": hist.seconds}
        val, test = score(model, task["val"]), score(model, task["test"])
    return {"val_loss": val["loss"], "val_acc": float(val["solved"].mean()), "test_loss": test["loss"],
            "test_acc": float(test["solved"].mean()), "solved": test["solved"].tolist(),
            "first_wrong": test["first_wrong"].tolist(), "loss": hist.loss, "seconds": hist.seconds}


def addition_sweep(arms: Mapping[str, str], lrs: Sequence[float], seeds: Sequence[int], data: AdditionData,
                   progress: bool = True, **kw) -> Sweep:
    """:func:`run_addition` for every arm (a name and its chunking) x learning rate x seed; each arm's
    lr minimises the mean validation answer loss (continuous, so it also ranks runs that solve no
    problem yet)."""
    return lr_sweep(list(arms), lrs, seeds, lambda a, lr, s: run_addition(arms[a], lr, s, data, **kw),
                    select_on="val_loss", progress=progress)


def error_rates(solved: Sequence[bool] | None, mismatch: np.ndarray) -> tuple[float, float]:
    """A run's test error rate on (length-matched, length-mismatched) problems; NaN if it diverged."""
    if solved is None:
        return math.nan, math.nan
    wrong = ~np.asarray(solved, dtype=bool)
    return float(wrong[~mismatch].mean()), float(wrong[mismatch].mean())


def first_wrong_digit(first_wrong_token: Sequence[int], probs: Problems, chunking: str, size: int) -> np.ndarray:
    """The answer digit (1 = most significant) where each unsolved problem's first wrong token
    begins; 0 for solved problems; the answer's digit count + 1 when only ``<eos>`` was wrong."""
    out = np.zeros(len(probs), dtype=int)
    for i, (k, c) in enumerate(zip(first_wrong_token, probs.total)):
        if k >= 0:
            parts = chunk(str(int(c)), chunking, size)
            out[i] = sum(len(p) for p in parts[:k]) + 1
    return out


def slim(sweep: Sweep) -> Sweep:
    """The sweep without per-problem and per-step lists (for the results file)."""
    heavy = {"solved", "first_wrong", "loss"}
    runs = {arm: {lr: [{k: v for k, v in r.items() if k not in heavy} for r in per] for lr, per in lrs.items()}
            for arm, lrs in sweep.runs.items()}
    return Sweep(sweep.grid, sweep.seeds, sweep.select_on, sweep.lower_is_better, runs)


# ------------------------------------------------------------------------------------------ rules
def learned_gate(margin: float) -> Health:
    """Every seed's test answer loss at least ``margin`` nats below its arm's answer-token unigram
    loss (metrics given as ``loss - unigram``, so the reference is 0)."""
    return Health(reference=0.0, margin=margin, name="arm's answer-token unigram loss (metrics: loss − unigram)")


def c1_rule(floor: float, margin: float) -> Rule:
    """The spec's tiers on the paired per-seed difference R2L − L2R of test exact match."""
    text = ("Claim: R2L chunking gives higher addition exact match than L2R. Each arm at its own best "
            "learning rate of the same grid (chosen on the validation answer loss); paired per-seed "
            "difference R2L − L2R of test exact match with a 95 % Student-t interval. The spec's tiers: "
            "replicated if the interval lies at or above +10 points; partially replicated if it lies below "
            "+10 and above +2 points; not replicated if it lies at or below +2 points (a reversal included); "
            "inconclusive if it straddles a tier's edge. Before comparing: at least one arm must solve "
            f"≥ {floor:.0%} of the test problems (mean over seeds), otherwise inconclusive (nothing was learned "
            "to compare).")

    def decide(m):
        p = paired(m["R2L"], m["L2R"], names=("R2L", "L2R"))
        if max(m["R2L"].mean, m["L2R"].mean) < floor:
            return Verdict.INCONCLUSIVE, f"neither arm reached the {floor:.0%} exact-match floor; {p}"
        return graded(at_least(p, 0.10), holds(decide_side(p, claimed="above", threshold=0.02))), f"{p}"
    return Rule(text, decide, learned_gate(margin), ("R2L loss − unigram", "L2R loss − unigram"))


def c2_rule(floor: float) -> Rule:
    """L2R's errors concentrate on length-mismatched problems: a ratio of at least 2, per seed."""
    text = ("Claim: L2R's error rate on length-mismatched test problems (answer one digit longer than the "
            "addends) is at least twice that on matched ones. Per seed (L2R at its C1 learning rate) the log "
            "ratio log e_mismatch − log e_matched, each rate with a continuity correction "
            "(errors + 0.5) / (problems + 1) so a group without errors keeps a finite log; 95 % Student-t "
            "interval of the mean: replicated if it lies at or above log 2, not replicated if it lies below "
            "log 2, inconclusive otherwise.")

    def decide(m):
        ratio = m["L2R log error ratio (mismatch / matched)"]
        p = paired(ratio, [0.0] * ratio.n, names=("log ratio", "0"))
        lo, hi = p.interval
        verdict = (Verdict.REPLICATED if lo >= math.log(2) else
                   Verdict.NOT_REPLICATED if hi < math.log(2) else Verdict.INCONCLUSIVE)
        return verdict, (f"L2R log(error ratio) = {p.mean:+.3g} [{lo:+.3g}, {hi:+.3g}] (95 % t-interval, "
                         f"{p.n} seeds; ratio {math.exp(p.mean):.2f}, threshold 2)")
    gate = Health(reference=floor, margin=0.0, lower_is_better=False, name="exact-match floor")
    return Rule(text, decide, gate, ("L2R exact match",))


def corrected_rate(wrong: int, n: int) -> float:
    """An error rate (errors + 0.5) / (problems + 1): finite logs for groups without errors."""
    return (wrong + 0.5) / (n + 1)


def log_error_ratio(solved: Sequence[bool] | None, mismatch: np.ndarray) -> float:
    """log of the continuity-corrected error rate on mismatched over matched test problems."""
    if solved is None:
        return math.nan
    wrong = ~np.asarray(solved, dtype=bool)
    return (math.log(corrected_rate(int(wrong[mismatch].sum()), int(mismatch.sum())))
            - math.log(corrected_rate(int(wrong[~mismatch].sum()), int((~mismatch).sum()))))


def c3_rule(widths: Sequence[int], margin: float) -> Rule:
    """The gap R2L − L2R shrinks at every step up in width (paired per seed)."""
    text = (f"Claim: the R2L − L2R gap in test exact match shrinks as the model grows. Widths {list(widths)} "
            "(each arm at its C1 learning rate); for every step up in width, the paired per-seed difference "
            "gap(smaller) − gap(larger) with a 95 % Student-t interval: replicated if every interval lies above "
            "0 (monotone shrinking), not replicated if any lies wholly at or below 0, inconclusive otherwise.")

    def decide(m):
        parts, why = [], []
        for small, large in zip(widths, widths[1:]):
            p = paired(m[f"gap d={small}"], m[f"gap d={large}"], names=(f"gap d={small}", f"gap d={large}"))
            parts.append(decide_side(p, claimed="above"))
            why.append(f"{p}")
        return all_of(*parts), "; ".join(why)
    gated = tuple(f"{arm} d={w} loss − unigram" for w in widths for arm in ("R2L", "L2R"))
    return Rule(text, decide, learned_gate(margin), gated)


# ---------------------------------------------------------------------------------------- figures
def plot_accuracy(ax: plt.Axes, per_arm: Mapping[str, Sequence[float]], title: str) -> None:
    """Test exact match per arm, every seed a dot."""
    seed_dots(ax, {a: [100 * v for v in vals] for a, vals in per_arm.items()}, "test exact match (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(title)


def plot_mismatch(ax: plt.Axes, rates: Mapping[str, Sequence[tuple[float, float]]]) -> None:
    """Error rate on length-matched vs length-mismatched test problems, per arm, seeds as dots."""
    groups = {}
    for arm, per_seed in rates.items():
        groups[f"{arm}\nmatched"] = [100 * m for m, _ in per_seed]
        groups[f"{arm}\nmismatch"] = [100 * x for _, x in per_seed]
    colors = {k: palette(len(rates))[list(rates).index(k.split("\n")[0])] for k in groups}
    seed_dots(ax, groups, "test error rate (%)", colors=colors)
    ax.set_title("errors by answer length (mismatch: one digit longer than the addends)")


def plot_first_wrong(ax: plt.Axes, digits: Mapping[str, np.ndarray], max_answer: int) -> None:
    """Where the first wrong answer digit falls (1 = most significant), pooled over seeds."""
    width = 0.8 / max(1, len(digits))
    for i, (arm, pos) in enumerate(digits.items()):
        wrong = pos[pos > 0]
        counts = np.bincount(wrong, minlength=max_answer + 2)[1:]
        share = counts / max(1, counts.sum())
        ax.bar(np.arange(1, len(share) + 1) + (i - (len(digits) - 1) / 2) * width, 100 * share, width=width,
               color=palette(len(digits))[i], label=f"{arm} ({len(wrong)} errors)")
    ax.set_xlabel(f"first wrong answer digit (1 = most significant; {max_answer + 1} = only <eos> wrong)")
    ax.set_ylabel("share of errors (%)")
    ax.legend(fontsize=8)


def plot_width_gap(ax: plt.Axes, widths: Sequence[int], gaps: Mapping[int, Sequence[float]]) -> None:
    """R2L − L2R test exact match against model width, every seed a dot."""
    means = [np.nanmean(gaps[w]) * 100 for w in widths]
    ax.plot(widths, means, "o-", color=palette(1)[0], label="mean over seeds")
    for w in widths:
        ax.scatter([w] * len(gaps[w]), [100 * g for g in gaps[w]], color="k", s=12, zorder=3)
    ax.axhline(0, color="0.4", ls=":", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("model width d_model")
    ax.set_ylabel("R2L − L2R test exact match (points)")
    ax.legend(fontsize=8)
