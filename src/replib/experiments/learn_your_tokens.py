r"""Chapter 18's experiment: eByte (word-pooled, :mod:`replib.nn.word_pooling`) against byte-level
and 4k byte-BPE GPTs on next-word exact-match accuracy (Thawani et al. 2023, arXiv 2310.11628).

Every model trains on the same text: the book corpus cut into words by eTok's segmentation
(:mod:`replib.data.words`; words longer than ``max_bytes`` become ``"@"``) and joined by single
spaces, so the byte and BPE models read exactly the characters eByte reads. A training step covers
about the same text for every model: eByte reads ``n_words`` words, the GPTs windows of as many
bytes / BPE tokens as that many words hold on average.

Evaluation (:func:`word_accuracy`): at fixed held-out positions, every model gets the preceding
text and greedily generates the next word; a hit needs the whole word and its end (eByte: the
padding after its last byte; a GPT: the continuation must read ``" " + word + " "``). eTok samples
at temperature 1 and gives its GPT baselines 90 units of context against eByte's 90 words; we
decode greedily and give every model the same text window.
"""
from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..claims import Health, Rule, at_least, decide_side, graded, holds, log_paired
from ..data.text import ByteTokenizer
from ..data.words import cap_words, decode_word, encode_words, word_splits
from ..nn import GPTConfig, TinyGPT
from ..nn.word_pooling import WordPoolConfig, WordPoolLM, attention_cost
from ..plotting import lr_sweep as plot_lr_sweep
from ..plotting import seed_dots
from ..runtime import seed_everything, torch_threads
from ..tokenize import subword
from ..train import Sweep, adamw, lr_sweep, train, warmup_cosine

ARMS = ("eByte", "byte GPT", "BPE GPT")
RARE_MAX_COUNT = 5  # the spec's rare words: seen at most 5 times in training


@dataclass
class WordData:
    """The corpus as capped words, the joined training text, its bytes and its BPE ids."""

    train_words: list[str]
    val_words: list[str]
    test_words: list[str]
    train_units: torch.Tensor  # (N, c0) byte canvases of the training words
    train_bytes: torch.Tensor  # 1-D byte ids of " ".join(train_words)
    train_bpe: torch.Tensor  # 1-D BPE ids of the same text
    bpe: subword.Subword
    canvas: int  # c0 = max_bytes + 1
    counts: Counter

    @property
    def bytes_per_word(self) -> float:  # the separating space included
        return len(self.train_bytes) / len(self.train_words)

    @property
    def bpe_per_word(self) -> float:
        return len(self.train_bpe) / len(self.train_words)


def word_data(text: str, max_bytes: int, bpe_vocab: int) -> WordData:
    """Split ``text`` into words (last 10 % held out: validation, then test), cap them at
    ``max_bytes`` and train a byte-level BPE of ``bpe_vocab`` tokens on the training text."""
    train, val, test = (cap_words(part, max_bytes) for part in word_splits(text))
    joined = " ".join(train)
    bpe = subword.train("byte-bpe", [joined], bpe_vocab)
    return WordData(train, val, test, encode_words(train, max_bytes + 1),
                    ByteTokenizer().encode(joined), torch.tensor(bpe.encode(joined)), bpe,
                    max_bytes + 1, Counter(train))


@dataclass
class Size:
    """One scale's model and training sizes (the notebook's sizes table holds these keys)."""

    d_model: int
    n_head: int
    n_layer: int  # eByte's main LM; the GPTs get n_layer + n_enc_layer + n_dec_layer blocks
    n_enc_layer: int
    n_dec_layer: int
    n_prefix: int
    n_words: int
    batch: int
    steps: int

    @classmethod
    def of(cls, sizes) -> "Size":
        return cls(**{k: getattr(sizes, k) for k in cls.__dataclass_fields__})


def seq_lens(data: WordData, size: Size) -> dict[str, int]:
    """Each GPT's window: the units ``n_words`` words take on average (the same text per step)."""
    return {"byte GPT": round(size.n_words * data.bytes_per_word),
            "BPE GPT": round(size.n_words * data.bpe_per_word)}


def build(arm: str, data: WordData, size: Size) -> torch.nn.Module:
    if arm == "eByte":
        return WordPoolLM(WordPoolConfig(canvas=data.canvas, n_prefix=size.n_prefix,
                                         n_words=size.n_words, d_model=size.d_model,
                                         n_head=size.n_head, n_layer=size.n_layer,
                                         n_enc_layer=size.n_enc_layer, n_dec_layer=size.n_dec_layer))
    vocab = 256 if arm == "byte GPT" else data.bpe.vocab_size
    depth = size.n_layer + size.n_enc_layer + size.n_dec_layer
    return TinyGPT(GPTConfig(vocab_size=vocab, seq_len=seq_lens(data, size)[arm], n_layer=depth,
                             n_head=size.n_head, d_model=size.d_model))


def batches(arm: str, data: WordData, size: Size, gen: torch.Generator, device):
    """Endless training batches: (B, n_words, c0) canvases for eByte, (x, y) windows for a GPT."""
    if arm == "eByte":
        offsets = torch.arange(size.n_words)
        while True:
            starts = torch.randint(len(data.train_units) - size.n_words, (size.batch,), generator=gen)
            yield data.train_units[starts[:, None] + offsets].to(device)
    tokens = data.train_bytes if arm == "byte GPT" else data.train_bpe
    n = seq_lens(data, size)[arm]
    offsets = torch.arange(n + 1)
    while True:
        starts = torch.randint(len(tokens) - n - 1, (size.batch,), generator=gen)
        win = tokens[starts[:, None] + offsets].to(device)
        yield win[:, :-1], win[:, 1:]


def loss_of(model, batch):
    if isinstance(model, WordPoolLM):
        return model(batch, targets=True)[1]
    return model(*batch)[1]


# ---- next-word accuracy ----------------------------------------------------------------------

def positions(words: Sequence[str], n: int, context: int) -> list[int]:
    """``n`` evenly spaced target positions with at least ``context`` words before them."""
    return np.linspace(context, len(words) - 1, n).round().astype(int).tolist()


def _complete(text: str) -> bool:
    """A continuation that already decides its next word: a whole word, or not a word at all."""
    return not text.startswith(" ") or " " in text[1:]


@torch.no_grad()
def _gpt_continuations(model: TinyGPT, contexts: list[list[int]], steps: int, decode,
                       device, chunk: int = 256) -> list[str]:
    """Greedy continuation of each context (all cut to one length) by up to ``steps`` tokens,
    stopping early once every row's next word is decided."""
    out = []
    for i in range(0, len(contexts), chunk):
        idx = torch.tensor(contexts[i:i + chunk], device=device)
        start = idx.shape[1]
        for _ in range(steps):
            nxt = model(idx[:, -model.cfg.seq_len:])[0][:, -1].argmax(-1, keepdim=True)
            idx = torch.cat([idx, nxt], 1)
            texts = [decode(row) for row in idx[:, start:].tolist()]
            if all(_complete(t) for t in texts):
                break
        out += texts
    return out


@torch.no_grad()
def predict_words(model, arm: str, data: WordData, words: Sequence[str], where: Sequence[int],
                  size: Size, device, chunk: int = 256) -> list[str]:
    """The word each model generates greedily at each position of ``where`` in ``words``."""
    if arm == "eByte":
        units = encode_words(words, data.canvas)
        out = []
        for i in range(0, len(where), chunk):
            idx = torch.tensor(where[i:i + chunk])[:, None] - size.n_words + torch.arange(size.n_words)
            gen = model.generate_word(units[idx].to(device)).cpu()
            out += [decode_word(g) for g in gen]
        return out
    steps = data.canvas + 1  # " " + the longest word + " "
    ctx_len = seq_lens(data, size)[arm] - steps
    texts = [" ".join(words[max(0, j - 2 * size.n_words):j]) for j in where]
    if arm == "byte GPT":
        contexts = [list(t.encode("utf-8"))[-ctx_len:] for t in texts]
        decode = lambda ids: bytes(ids).decode("utf-8", errors="replace")  # noqa: E731
    else:
        contexts = [ids[-ctx_len:] for ids in data.bpe.encode_batch(texts)]
        decode = data.bpe.decode
    return [next_word(c) for c in _gpt_continuations(model, contexts, steps, decode, device, chunk)]


def next_word(continuation: str) -> str:
    """The word a GPT's continuation predicts: the text between its first two spaces, if it opens
    with a space and closes the word; otherwise ``""`` (never a hit)."""
    return continuation[1:].split(" ")[0] if _complete(continuation) and continuation.startswith(" ") else ""


def word_accuracy(predicted: Sequence[str], words: Sequence[str], where: Sequence[int],
                  counts: Counter) -> dict[str, float]:
    """Exact-match accuracy overall and on rare targets (seen <= RARE_MAX_COUNT times in training),
    with hit counts for the smoothed ratios of the verdicts."""
    hit = np.array([p == words[j] for p, j in zip(predicted, where)])
    rare = np.array([counts[words[j]] <= RARE_MAX_COUNT for j in where])
    return {"acc": float(hit.mean()), "hits": int(hit.sum()), "n": len(hit),
            "rare_acc": float(hit[rare].mean()) if rare.any() else math.nan,
            "rare_hits": int(hit[rare].sum()), "rare_n": int(rare.sum())}


def most_frequent_word_accuracy(data: WordData, words: Sequence[str], where: Sequence[int]) -> float:
    """The trivial reference: always predict the most frequent training word."""
    top = data.counts.most_common(1)[0][0]
    return float(np.mean([words[j] == top for j in where]))


def smoothed(hits: int, n: int) -> float:
    """(hits + 1/2) / (n + 1): an accuracy that stays positive, so a ratio is always defined."""
    return (hits + 0.5) / (n + 1)


# ---- one run and the sweep --------------------------------------------------------------------

def run_arm(arm: str, lr: float, seed: int, data: WordData, size: Size, n_val: int, n_test: int,
            device, progress: bool = True) -> dict:
    """Train one model at one learning rate and seed; validation and test next-word accuracy.
    On a CPU it runs on one thread: models this small are slower with two on a busy machine."""
    with torch_threads(1 if device.type == "cpu" else None):
        return _run_arm(arm, lr, seed, data, size, n_val, n_test, device, progress)


def _run_arm(arm, lr, seed, data, size, n_val, n_test, device, progress) -> dict:
    gen = seed_everything(seed)
    model = build(arm, data, size).to(device)
    opt = adamw(model, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(size.steps, warmup_frac=0.05))
    hist = train(model, opt, batches(arm, data, size, gen, device), loss_of, size.steps,
                 grad_clip=1.0, scheduler=sched, desc=f"{arm} lr={lr:g} seed={seed}", progress=progress)
    out = {"params": sum(p.numel() for p in model.parameters()), "seconds": hist.seconds,
           "step_ms": 1000 * hist.seconds / max(1, len(hist.loss)), "loss": hist.loss[::10],
           "val": math.nan, "diverged": hist.diverged}
    if hist.diverged:
        return out
    model.eval()
    for part, words, n in (("val", data.val_words, n_val), ("test", data.test_words, n_test)):
        where = positions(words, n, 2 * size.n_words)
        acc = word_accuracy(predict_words(model, arm, data, words, where, size, device),
                            words, where, data.counts)
        out.update({part: acc["acc"]} if part == "val" else {f"test_{k}": v for k, v in acc.items()})
    return out


@dataclass
class Comparison:
    """Learning rates chosen on the first seed's validation accuracy over one grid shared by every
    arm (``selection``), then every seed at each arm's chosen rate (``runs``)."""

    selection: Sweep
    runs: dict[str, list[dict]]

    def at_best(self, arm: str, key: str = "test_acc") -> list[float]:
        return [float(r.get(key, math.nan)) for r in self.runs[arm]]


def compare(data: WordData, size: Size, grid: Sequence[float], seeds: Sequence[int], n_val: int,
            n_test: int, device, progress: bool = True) -> Comparison:
    """Every arm at every learning rate of ``grid`` for the first seed (selected on validation
    next-word accuracy), then the other seeds at each arm's best rate; diverged runs count as NaN."""
    def run(arm, lr, seed):
        return run_arm(arm, lr, seed, data, size, n_val, n_test, device, progress)
    selection = lr_sweep(list(ARMS), list(grid), list(seeds[:1]), run, select_on="val",
                         lower_is_better=False, progress=progress)
    runs = {}
    for arm in ARMS:
        lr = selection.best_lr(arm) or selection.grid[0]  # all diverged: any lr, all NaN
        runs[arm] = selection.runs[arm][lr] + [run(arm, lr, s) for s in seeds[1:]]
    return Comparison(selection, runs)


def best_baseline(cmp: Comparison) -> str:
    """The baseline with the higher mean validation accuracy at its own best learning rate."""
    return max(ARMS[1:], key=lambda a: np.nanmean(cmp.at_best(a, "val")))


def smoothed_at_best(cmp: Comparison, arm: str, rare: bool = False) -> list[float]:
    k = "rare_" if rare else ""
    return [smoothed(h, n) if math.isfinite(h) and math.isfinite(n) else math.nan
            for h, n in zip(cmp.at_best(arm, f"test_{k}hits"), cmp.at_best(arm, f"test_{k}n"))]


def metrics(cmp: Comparison) -> dict[str, list[float]]:
    """Per-seed values the rules read: validation and test accuracy, and the smoothed test
    accuracies (all words, rare words) of every arm at its own best learning rate."""
    out = {}
    for a in ARMS:
        out[f"{a} val acc"] = cmp.at_best(a, "val")
        out[f"{a} test acc"] = cmp.at_best(a, "test_acc")
        out[f"{a} smoothed"] = smoothed_at_best(cmp, a)
        out[f"{a} rare smoothed"] = smoothed_at_best(cmp, a, rare=True)
    return out


def ratio_rule(what: str, full: float, partial: float, health: Health) -> Rule:
    """eByte's (smoothed) test accuracy on ``what`` ("all words" or "rare words") over the best
    baseline's (the higher mean validation accuracy), as paired per-seed log-ratios with a 95 %
    t-interval: replicated if the interval lies at or above log ``full``, partially replicated if it
    lies above log ``partial`` but wholly below log ``full``, not replicated if it lies wholly below
    log ``partial`` (below log ``full`` and log ``partial`` both refuted), inconclusive otherwise."""
    key = "smoothed" if what == "all words" else "rare smoothed"
    text = (f"eByte's next-word exact-match accuracy on {what} over the best baseline's (byte GPT or "
            f"BPE GPT, whichever has the higher mean validation accuracy), each at its own best "
            f"learning rate; accuracies smoothed as (hits + 1/2)/(n + 1) so a zero stays a finite "
            f"ratio. Paired per-seed log-ratio with a 95 % t-interval: replicated if it lies at or above "
            f"log {full:g}; partially replicated if it lies above log {partial:g} but wholly below "
            f"log {full:g}; not replicated if it lies wholly below log {partial:g}; inconclusive otherwise.")

    def decide(m):
        best = max(ARMS[1:], key=lambda a: m[f"{a} val acc"].mean)
        p = log_paired(m[f"eByte {key}"], m[f"{best} {key}"], names=("log eByte", f"log {best}"))
        part = (holds(decide_side(p, claimed="above", threshold=math.log(partial))) if partial <= 1
                else at_least(p, math.log(partial)))
        return graded(at_least(p, math.log(full)), part), f"best baseline: {best}; {p}"
    return Rule(text, decide, health, tuple(f"{a} test acc" for a in ARMS))


def step_times(data: WordData, size: Size, device, repeats: int = 5) -> dict[str, float]:
    """Median milliseconds of one training step (forward + backward) per arm, measured in one
    interleaved loop so the machine's load hits every arm alike."""
    with torch_threads(1 if device.type == "cpu" else None):
        return _step_times(data, size, device, repeats)


def _step_times(data, size, device, repeats) -> dict[str, float]:
    models = {a: build(a, data, size).to(device) for a in ARMS}
    gen = torch.Generator().manual_seed(0)
    inputs = {a: next(batches(a, data, size, gen, device)) for a in ARMS}
    times: dict[str, list[float]] = {a: [] for a in ARMS}
    for _ in range(repeats + 1):  # the first round warms up
        for a, m in models.items():
            t0 = time.perf_counter()
            loss_of(m, inputs[a]).backward()
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[a].append(1000 * (time.perf_counter() - t0))
    return {a: float(np.median(t[1:])) for a, t in times.items()}


def cost_table(data: WordData, size: Size) -> dict[str, float]:
    """Attention entries per sequence and layer: a byte LM's, eByte's main LM's, eByte's words'."""
    return attention_cost(size.n_words, data.bytes_per_word, size.n_prefix, data.canvas)


# ---- figures ----------------------------------------------------------------------------------

def figure_sweep(cmp: Comparison, reference: float):
    fig, ax = plt.subplots(figsize=(6, 3.6))
    plot_lr_sweep(ax, cmp.selection.to_json(), ylabel="validation next-word accuracy", reference=reference,
                  reference_label="most frequent word")
    ax.set_title("Learning-rate sweep (validation, first seed)")
    return fig


def figure_accuracy(cmp: Comparison, reference: float):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    seed_dots(axes[0], {a: cmp.at_best(a, "test_acc") for a in ARMS}, "test next-word accuracy")
    axes[0].axhline(reference, color="0.4", ls=":", lw=1, label="most frequent word")
    axes[0].legend(fontsize=8)
    axes[0].set_title("All words (each at its best lr)")
    seed_dots(axes[1], {a: cmp.at_best(a, "test_rare_acc") for a in ARMS}, "accuracy on rare words")
    axes[1].set_title(f"Rare words (seen <= {RARE_MAX_COUNT}x in training)")
    fig.tight_layout()
    return fig


def figure_cost(costs: Mapping[str, float], times: Mapping[str, float]):
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    names = {"unit_lm": "byte LM\n(T L)^2", "main": "eByte main\n(T p)^2",
             "within_words": "eByte words\n2 T c^2"}
    axes[0].bar([names[k] for k in costs], list(costs.values()), color="#607d8b")
    axes[0].set_ylabel("attention entries per sequence, per layer")
    axes[0].set_title("Attention cost (analytical)")
    axes[1].bar(list(times), list(times.values()), color="#8d6e63")
    axes[1].set_ylabel("ms per training step (median)")
    axes[1].set_title("Measured step time")
    fig.tight_layout()
    return fig


__all__ = ["ARMS", "RARE_MAX_COUNT", "Comparison", "Size", "WordData", "best_baseline", "compare",
           "cost_table", "figure_accuracy", "figure_cost", "figure_sweep", "metrics",
           "most_frequent_word_accuracy", "next_word", "positions", "predict_words", "ratio_rule",
           "run_arm", "smoothed", "smoothed_at_best", "step_times", "word_accuracy", "word_data"]
