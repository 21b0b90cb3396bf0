r"""Chapter 31 (Bayram et al. 2025, arXiv 2502.07057): %TR and %Pure of locally trained tokenizers on a
Turkish pseudo-corpus, and what they predict about a small language model trained on each.

- :func:`build_analog`: the offline validators (:mod:`replib.data.turkish`): lexicon, roots,
  suffixes, the case-marked words of the probe.
- :func:`train_tokenizers` / :func:`score_all`: every tokenizer of a (kind, vocabulary, training
  language) grid trained with :mod:`replib.tokenize.subword` and scored with
  :func:`replib.tokenize.linguistic.score` on a held-out Turkish text.
- :func:`lm_sweep`: per tokenizer, the same TinyGPT trained on the same Turkish text tokenized by it;
  validation / test bits per character (BPC), its unigram reference, and a case probe (a linear
  classifier of the case suffix of a noun from the mean of its tokens' input embeddings).
- :func:`spearman_bootstrap`: Spearman's ρ of %TR and %Pure with a downstream score over
  tokenizers, and the difference of the two, with percentile bootstrap intervals over tokenizers.
- ``plot_*``: the chapter's figures.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from scipy import stats as sps
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from ..data import turkish as trdata
from ..data.text import lm_batches, lm_eval_windows, unigram_loss
from ..nn import GPTConfig, TinyGPT
from ..plotting import palette
from ..runtime import seed_everything, torch_threads
from ..tokenize import linguistic, subword
from ..train import Sweep, adamw, lm_loss, lr_sweep, progress_bar, train, warmup_cosine

LANG_MARKERS = {"tr": "o", "en": "^"}


@dataclass(frozen=True)
class Analog:
    """The offline stand-ins for the paper's validators, and the probe's labelled words."""

    lexicon: frozenset[str]
    roots: frozenset[str]
    valid: Callable[[str], bool]  # %TR's test
    pure: Callable[[str], bool]  # %Pure's test
    case_words: dict[str, str]


def build_analog(lexicon_size: int) -> Analog:
    lex = trdata.lexicon(lexicon_size)
    roots = trdata.roots(lex)
    valid, pure = linguistic.lexicon_tests(lex, roots, trdata.SUFFIXES)
    return Analog(lex, roots, valid, pure, trdata.case_words(lex, roots))


def tokenizer_name(kind: str, vocab: int, lang: str) -> str:
    return f"{kind}-{vocab / 1000:g}k-{lang}"


def tokenizer_grid(kinds: Sequence[str], vocabs: Sequence[int], langs: Sequence[str],
                   extra: Sequence[tuple[str, int, str]] = ()) -> dict[str, tuple[str, int, str]]:
    """Name → (kind, requested vocabulary, training language) for the full grid plus ``extra``."""
    specs = [(k, v, lang) for k in kinds for v in vocabs for lang in langs] + list(extra)
    return {tokenizer_name(*s): s for s in specs}


def training_texts(lang: str, n_words: int, seed: int) -> list[str]:
    """A tokenizer's training text: a ``lang`` pseudo-corpus, plus one line holding the Turkish
    alphabet for English, so no tokenizer maps a Turkish letter to ``[UNK]`` (an [UNK] would hide
    characters from the language model and flatter its bits per character)."""
    lines = trdata.pseudo_corpus(lang, n_words, seed)
    alphabet = " ".join(trdata.TURKISH_LETTERS) + " " + trdata.TURKISH_LETTERS * 2  # initial and ## forms
    return lines + [alphabet] if lang != "tr" else lines


def train_tokenizers(specs: Mapping[str, tuple[str, int, str]], texts: Mapping[str, list[str]],
                     progress: bool = True) -> dict[str, subword.Subword]:
    """Train every tokenizer of ``specs`` on ``texts[lang]``."""
    return {name: subword.train(kind, texts[lang], vocab)
            for name, (kind, vocab, lang) in progress_bar(list(specs.items()), progress, desc="tokenizers")}


def score_all(toks: Mapping[str, subword.Subword], specs: Mapping[str, tuple[str, int, str]],
              lines: list[str], analog: Analog, repeats: int = 3) -> pd.DataFrame:
    """The paper's metrics for every tokenizer on ``lines`` (one row per tokenizer); ``per_1k_words``
    is the token count per 1,000 words."""
    n_words = sum(len(s.split()) for s in lines)
    rows = []
    for name, tok in toks.items():
        s = linguistic.score(tok.encode_batch, lambda i, t=tok: t.decode([i]), tok.vocab_size, lines,
                             analog.valid, analog.pure, repeats)
        kind, vocab, lang = specs[name]
        rows.append(dict(name=name, kind=kind, requested=vocab, lang=lang, vocab=s.vocab_size,
                         tokens=s.token_count, per_1k_words=1000 * s.token_count / n_words,
                         unique=s.unique, tr=s.percent_tr, pure=s.percent_pure, seconds=s.seconds))
    return pd.DataFrame(rows).set_index("name")


def language_pairs(table: pd.DataFrame, kinds: Sequence[str], vocabs: Sequence[int]) -> list[tuple[str, str]]:
    """(Turkish-trained, English-trained) names at equal requested vocabulary, per kind; a pair
    whose two actual vocabulary sizes repeat the previous pair's (the training text capped both, so
    the tokenizers are the same) is left out."""
    pairs, seen = [], set()
    for kind in kinds:
        for vocab in vocabs:
            tr, en = tokenizer_name(kind, vocab, "tr"), tokenizer_name(kind, vocab, "en")
            key = (kind, int(table.loc[tr, "vocab"]), int(table.loc[en, "vocab"]))
            if key not in seen:
                seen.add(key)
                pairs.append((tr, en))
    return pairs


# ------------------------------------------------------------------------------ language models
@dataclass
class LMData:
    """One tokenizer's view of the LM text: training ids, validation/test windows, and tokens per
    character of each held-out text (to turn nats per token into bits per character)."""

    train: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor]
    test: tuple[torch.Tensor, torch.Tensor]
    val_tpc: float
    test_tpc: float
    vocab_size: int
    probe_ids: list[list[int]]


def lm_data(tok: subword.Subword, train_lines: list[str], val_lines: list[str], test_lines: list[str],
            seq_len: int, eval_windows: int, probe_words: Sequence[str]) -> LMData:
    """Encode each text as one stream (lines joined by spaces); held-out windows are the first
    ``eval_windows`` non-overlapping windows; tokens per character count the windows' text only
    approximately (the stream's average), the same way for every tokenizer."""
    def stream(lines):
        text = " ".join(lines)
        ids = torch.tensor(tok.encode(text), dtype=torch.long)
        return ids, len(ids) / len(text)
    tr, _ = stream(train_lines)
    va, va_tpc = stream(val_lines)
    te, te_tpc = stream(test_lines)
    return LMData(tr, lm_eval_windows(va, seq_len, eval_windows), lm_eval_windows(te, seq_len, eval_windows),
                  va_tpc, te_tpc, tok.vocab_size, tok.encode_batch([" " + w for w in probe_words]))


def bits_per_char(nats_per_token: float, tokens_per_char: float) -> float:
    r"""BPC = (nats per token / ln 2) × (tokens per character)."""
    return nats_per_token / math.log(2) * tokens_per_char


def case_probe(embedding: torch.Tensor, probe_ids: list[list[int]], labels: Sequence[str],
               split_seed: int = 0) -> float:
    """Test accuracy of a logistic-regression probe predicting a word's case from the mean of its
    tokens' input embeddings (a fixed 70/30 stratified split of the words, seeded ``split_seed``)."""
    emb = embedding.detach().cpu().double().numpy()
    x = np.stack([emb[ids].mean(0) for ids in probe_ids])
    xtr, xte, ytr, yte = train_test_split(x, list(labels), test_size=0.3, random_state=split_seed,
                                          stratify=list(labels))
    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=300))
    with threadpool_limits(1):  # BLAS threads beside a one-thread torch run only contend
        return float(clf.fit(xtr, ytr).score(xte, yte))


def run_lm(data: LMData, lr: float, seed: int, *, labels: Sequence[str], n_layer: int, d_model: int,
           n_head: int, seq_len: int, batch_size: int, steps: int, device: torch.device | str = "cpu",
           threads: int | None = 1) -> dict:
    """Train one TinyGPT on ``data`` (AdamW, warm-up + cosine, clip 1); validation/test BPC, the
    unigram reference's test BPC, the case probe's accuracy and the loss curve. The same ``seed``
    gives every tokenizer the same initial draws and batch positions; NaN metrics when diverged."""
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        gen = seed_everything(seed)
        model = TinyGPT(GPTConfig(vocab_size=data.vocab_size, seq_len=seq_len, n_layer=n_layer,
                                  n_head=n_head, d_model=d_model)).to(device)
        opt = adamw(model, lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=0.1))
        hist = train(model, opt, lm_batches(data.train, batch_size, seq_len, gen, device),
                     lambda m, b: m(*b)[1], steps, grad_clip=1.0, scheduler=sched, progress=False)
        model.eval()
        val, test = (lm_loss(model, *(t.to(device) for t in w)) for w in (data.val, data.test))
        bad = hist.diverged or not (math.isfinite(val) and math.isfinite(test))
        uni = unigram_loss(data.train, data.test[1], data.vocab_size)
        return {"val_bpc": math.nan if bad else bits_per_char(val, data.val_tpc),
                "test_bpc": math.nan if bad else bits_per_char(test, data.test_tpc),
                "unigram_bpc": bits_per_char(uni, data.test_tpc),
                "probe": math.nan if bad else case_probe(model.tok_emb.weight, data.probe_ids, labels),
                "loss": hist.loss, "seconds": hist.seconds}


def lm_sweep(datas: Mapping[str, LMData], grid: Sequence[float], seeds: Sequence[int], labels: Sequence[str],
             progress: bool = True, **kw) -> tuple[Sweep, dict[str, list[dict]]]:
    """Every tokenizer's LM over the same learning-rate ``grid`` at the first seed (the rate chosen on
    validation BPC), then the remaining ``seeds`` at that rate. Returns the sweep and, per tokenizer,
    the runs at its best rate in seed order."""
    run = lambda name, lr, seed: run_lm(datas[name], lr, seed, labels=labels, **kw)  # noqa: E731
    sweep = lr_sweep(list(datas), grid, seeds[:1], run, select_on="val_bpc", progress=progress)
    best = {}
    jobs = [(n, s) for n in datas for s in seeds[1:]]
    extra = {(n, s): run(n, sweep.best_lr(n) or grid[0], s)
             for n, s in progress_bar(jobs, progress, desc="seeds at best lr", leave=False)}
    for name in datas:
        lr = sweep.best_lr(name) or grid[0]
        best[name] = [sweep.runs[name][lr][0]] + [extra[(name, s)] for s in seeds[1:]]
    return sweep, best


# ------------------------------------------------------------------------------ correlation
def spearman_bootstrap(x_tr: Sequence[float], x_pure: Sequence[float], y: Sequence[float], *,
                       n_resamples: int = 4000, confidence: float = 0.95, seed: int = 0) -> dict:
    r"""Spearman's :math:`\rho(\%TR, y)`, :math:`\rho(\%Pure, y)` and their difference over tokenizers,
    each as (point, lo, hi) with a percentile bootstrap interval (tokenizers resampled with
    replacement, the same resample for both ρ; resamples where a ρ is undefined, a constant column,
    are skipped). Spearman's ρ is Pearson's r of average ranks (``scipy.stats.rankdata``)."""
    cols = np.stack([np.asarray(v, dtype=float) for v in (x_tr, x_pure, y)])  # (3, n)
    idx = np.random.default_rng(seed).integers(cols.shape[1], size=(n_resamples, cols.shape[1]))
    samples = np.concatenate([cols[None], cols[:, idx].transpose(1, 0, 2)])  # (1 + R, 3, n): point first
    ranks = sps.rankdata(samples, axis=-1)
    ranks -= ranks.mean(-1, keepdims=True)
    norm = np.sqrt((ranks ** 2).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho_tr = (ranks[:, 0] * ranks[:, 2]).sum(-1) / (norm[:, 0] * norm[:, 2])
        rho_pure = (ranks[:, 1] * ranks[:, 2]).sum(-1) / (norm[:, 1] * norm[:, 2])
    stats = {"tr": rho_tr, "pure": rho_pure, "diff": rho_tr - rho_pure}
    ok = np.isfinite(rho_tr[1:]) & np.isfinite(rho_pure[1:])
    q = [100 * (1 - confidence) / 2, 100 * (1 + confidence) / 2]
    return {k: (float(v[0]), *map(float, np.percentile(v[1:][ok], q))) for k, v in stats.items()}


def side(interval: tuple[float, float, float], threshold: float) -> bool | None:
    """Three-valued "above ``threshold``": True if the interval (point, lo, hi) lies above it, False
    if it lies wholly below, None otherwise."""
    _, lo, hi = interval
    return True if lo > threshold else False if hi < threshold else None


# ------------------------------------------------------------------------------ figures
def plot_metrics(axes: Sequence[plt.Axes], table: pd.DataFrame) -> None:
    """%TR (left) and %Pure (right) against the actual vocabulary size, a colour per kind and a
    marker per training language."""
    kinds = list(dict.fromkeys(table["kind"]))
    colors = dict(zip(kinds, palette(len(kinds))))
    for ax, col, label in zip(axes, ("tr", "pure"), ("%TR (share of unique tokens)", "%Pure (share of unique tokens)")):
        for (kind, lang), g in table.groupby(["kind", "lang"], sort=False):
            g = g.sort_values("vocab")
            ax.plot(g["vocab"], g[col], marker=LANG_MARKERS.get(lang, "s"), color=colors[kind],
                    ls="-" if lang == "tr" else "--", label=f"{kind}, trained on {lang}")
        ax.set_xscale("log")
        ax.set_xlabel("vocabulary size (actual)")
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)


def plot_pairs(ax: plt.Axes, table: pd.DataFrame, pairs: Sequence[tuple[str, str]]) -> None:
    """%TR of each Turkish-trained tokenizer (circle) beside its English-trained twin (triangle)."""
    for i, (tr, en) in enumerate(pairs):
        ax.plot([i, i], [table.loc[en, "tr"], table.loc[tr, "tr"]], color="0.6", lw=1)
        ax.scatter(i, table.loc[tr, "tr"], marker="o", color=palette(2)[0], zorder=3,
                   label="trained on Turkish" if i == 0 else None)
        ax.scatter(i, table.loc[en, "tr"], marker="^", color=palette(2)[1], zorder=3,
                   label="trained on English" if i == 0 else None)
    ax.set_xticks(range(len(pairs)), [tr.removesuffix("-tr") for tr, _ in pairs], rotation=45, ha="right")
    ax.set_ylabel("%TR")
    ax.legend(fontsize=8)


def plot_correlation(axes: Sequence[plt.Axes], table: pd.DataFrame, down: Mapping[str, Mapping[str, list]],
                     labels: Mapping[str, str]) -> None:
    """Each downstream score (rows of ``axes``: one per key of ``down``, mean ± std over seeds per
    tokenizer) against %TR (left column) and %Pure (right column); ρ in the titles."""
    names = list(next(iter(down.values())))
    colors = dict(zip(names, palette(len(names))))
    for row, (key, per) in zip(axes, down.items()):
        ys = np.array([np.mean(per[n]) for n in names])
        sd = np.array([np.std(per[n], ddof=1) if len(per[n]) > 1 else 0.0 for n in names])
        for ax, col in zip(row, ("tr", "pure")):
            x = table.loc[names, col].to_numpy()
            for n, xi, yi, si in zip(names, x, ys, sd):
                ax.errorbar(xi, yi, yerr=si, marker=LANG_MARKERS.get(table.loc[n, "lang"], "s"),
                            color=colors[n], capsize=3, label=n)
            ax.set_title(f"Spearman ρ = {sps.spearmanr(x, ys).statistic:+.2f}", fontsize=10)
            ax.set_xlabel("%TR" if col == "tr" else "%Pure")
            ax.set_ylabel(labels[key])
    axes[0][1].legend(fontsize=7, ncol=2)
