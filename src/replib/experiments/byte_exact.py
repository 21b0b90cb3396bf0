"""Chapter 36's experiments: exact next-byte probabilities from token LMs on a Markov byte source.

The source (:class:`replib.data.markov.MarkovWords`) has a known next-byte distribution, so every
method is scored against the truth. Token models: the exact pushforward of the source through a
BPE (:class:`replib.tokenize.byte_exact.ChunkPushforwardLM`) and small transformers trained on the
source's tokens (:class:`TransformerLM`). Methods: BTR (the cover-encoding sum), naive prompting,
token healing (:mod:`replib.tokenize.byte_exact`).
"""
from __future__ import annotations

from collections import Counter
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data.markov import MarkovWords
from ..data.text import lm_batches, lm_splits, unigram_loss
from ..nn.transformer import GPTConfig, TinyGPT
from ..plotting import palette, seed_dots
from ..tokenize import byte_exact as be
from ..tokenize.bpe import BPE, split_chunks
from ..train import adamw, lm_loss, train, warmup_cosine

METHODS = ("naive", "token healing", "BTR")
COLORS = dict(zip(METHODS, palette(3)))


def tv(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Total-variation distance :math:`\\tfrac12\\sum_b |p_b - q_b|` along the last axis."""
    return 0.5 * np.abs(p - q).sum(axis=-1)


def tokenizers(source: MarkovWords, merges: Sequence[int], sample_bytes: int, seed: int = 0) -> list[BPE]:
    """One BPE per merge count, all trained on the same seeded sample of the source."""
    sample = source.sample(sample_bytes, np.random.default_rng(seed))
    return [BPE.train(sample, n, alphabet=source.alphabet) for n in merges]


class TransformerLM:
    """A trained :class:`TinyGPT` as a :class:`~replib.tokenize.byte_exact.TokenLM`: each context is
    cut to its last ``seq_len`` tokens (the source depends on the current word only)."""

    def __init__(self, model: TinyGPT, device: torch.device | str = "cpu", batch: int = 512):
        self.model, self.device, self.batch = model.eval(), device, batch
        self.vocab_size, self.seq_len = model.cfg.vocab_size, model.cfg.seq_len

    @torch.no_grad()
    def next_logprobs(self, contexts: Sequence[be.Context]) -> np.ndarray:
        if any(len(c) == 0 for c in contexts):
            raise ValueError("a trained model needs at least one context token")
        out = []
        for i in range(0, len(contexts), self.batch):
            part = [c[-self.seq_len:] for c in contexts[i:i + self.batch]]
            lens = torch.tensor([len(c) for c in part])
            idx = torch.zeros(len(part), int(lens.max()), dtype=torch.long)
            for row, c in enumerate(part):  # right padding: causal attention never sees it
                idx[row, :len(c)] = torch.tensor(c)
            logits, _ = self.model(idx.to(self.device))
            last = logits[torch.arange(len(part)), (lens - 1).to(self.device)]
            out.append(torch.log_softmax(last.double(), -1).cpu().numpy())
        return np.concatenate(out)


def training_stream(source: MarkovWords, n_bytes: int, seed: int) -> bytes:
    """The seed's training bytes (the same for every tokenizer and token model at that seed)."""
    return source.sample(n_bytes, np.random.default_rng(seed))


def counting_lm(tok: BPE, stream: bytes) -> be.ChunkPushforwardLM:
    """The counting estimate of the token model: the empirical word distribution of ``stream``
    pushed through ``tok`` (next-token counts given the current word's tokens)."""
    counts = Counter(split_chunks(stream, tok.boundary))
    total = sum(counts.values())
    return be.ChunkPushforwardLM(tok, {w: n / total for w, n in counts.items()})


def train_token_lm(tok: BPE, source: MarkovWords, *, lr: float, seed: int, train_bytes: int, steps: int,
                   batch: int, seq_len: int, d_model: int, n_layer: int, n_head: int, val_windows: int,
                   device: torch.device | str = "cpu", loss_every: int = 10) -> tuple[TinyGPT, dict]:
    """Train a TinyGPT on ``tok``'s encoding of a seeded sample of the source (the same bytes for
    every tokenizer at one seed); AdamW, warm-up + cosine; validation loss on held-out windows."""
    stream = training_stream(source, train_bytes, seed)
    tokens = torch.tensor(tok.encode(stream), dtype=torch.long)
    splits = lm_splits(tokens, seq_len, val_windows, 0, device=device)
    torch.manual_seed(seed)
    model = TinyGPT(GPTConfig(vocab_size=tok.vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                              d_model=d_model)).to(device)
    opt = adamw(model, lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=0.1))
    gen = torch.Generator().manual_seed(seed)
    hist = train(model, opt, lm_batches(splits.train, batch, seq_len, gen, device),
                 lambda m, b: m(*b)[1], steps, scheduler=sched, progress=False,
                 evaluate=lambda m: {"val_loss": lm_loss(m, *splits.val)})
    unigram = unigram_loss(splits.train, splits.val[1], tok.vocab_size)
    val = hist.final("val_loss") if not hist.diverged else float("nan")
    return model.eval(), {"val_loss": val, "unigram": unigram, "gap": val - unigram,
                          "loss": hist.loss[::loss_every], "seconds": hist.seconds}


def prompts(source: MarkovWords, tok: BPE, n: int, ctx_words: int, rng: np.random.Generator,
            mid_token: bool = True) -> list[bytes]:
    """``n`` prompts of ``ctx_words`` source words followed by a word cut strictly inside one of its
    multi-byte tokens (the spec's FIM-style "prompt ends mid-token"), drawn from the source; with
    ``mid_token=False`` the prompts end at a word boundary (where no tokenization bias is possible)."""
    words = list(source.words().items())
    probs = np.array([p for _, p in words])
    out = []
    while len(out) < n:
        draw = rng.choice(len(words), size=ctx_words + 1, p=probs / probs.sum())
        word = words[draw[-1]][0]
        cuts, pos = [], 0
        for t in tok.encode(word):
            size = len(tok.tokens[t])
            cuts += range(pos + 1, pos + size)
            pos += size
        if cuts or not mid_token:
            out.append(b"".join(words[i][0] for i in draw[:-1 if mid_token else None])
                       + (word[:rng.choice(cuts)] if mid_token else b""))
    return out


def next_byte_tvs(lm: be.TokenLM, tok: BPE, source: MarkovWords, prompts: Sequence[bytes]) -> dict[str, np.ndarray]:
    """TV distance to the source's next-byte distribution, per prompt, for every method."""
    truth = np.array([source.next_byte_probs(x) for x in prompts])
    return {"naive": tv(be.next_byte_naive(lm, tok, prompts), truth),
            "token healing": tv(be.next_byte_healing(lm, tok, prompts), truth),
            "BTR": tv(be.next_byte_btr(lm, tok, prompts)[0], truth)}


def expected_match(lm: be.TokenLM, tok: BPE, source: MarkovWords, prompts: Sequence[bytes],
                   k: int) -> dict[str, np.ndarray]:
    """Per prompt, the probability under the source that the true next ``k`` bytes equal each
    method's greedy continuation (the expected exact match, computed exactly)."""
    outs = {"naive": be.greedy_tokens(lm, tok, prompts, k),
            "token healing": be.greedy_tokens(lm, tok, prompts, k, heal=True),
            "BTR": be.greedy_btr(lm, tok, prompts, k)}
    return {m: np.array([source.continuation_prob(x, c) for x, c in zip(prompts, o)]) for m, o in outs.items()}


def held_out_nll(models: Mapping[str, tuple[be.TokenLM, BPE]], source: MarkovWords, n_words: int, ctx_words: int,
                 rng: np.random.Generator) -> dict[str, float]:
    """Byte-level NLL (nats per byte) of ``n_words`` held-out words, each after ``ctx_words`` words of
    context, for each model's BTR next-byte distributions and for their equal-weight byte mixture."""
    words = list(source.words().items())
    probs = np.array([p for _, p in words])
    prefixes, targets = [], []
    for _ in range(n_words):
        draw = rng.choice(len(words), size=ctx_words + 1, p=probs / probs.sum())
        ctx, word = b"".join(words[i][0] for i in draw[:-1]), words[draw[-1]][0]
        prefixes += [ctx + word[:j] for j in range(len(word))]
        targets += [source.alphabet.index(b) for b in word]
    rows = np.arange(len(targets))
    dists = {name: be.next_byte_btr(lm, tok, prefixes)[0] for name, (lm, tok) in models.items()}
    out = {name: float(-np.log(d[rows, targets]).mean()) for name, d in dists.items()}
    out["mixture"] = float(-np.log(np.mean(list(dists.values()), axis=0)[rows, targets]).mean())
    return out


def plot_example(ax: plt.Axes, alphabet: bytes, prompt: bytes, dists: Mapping[str, np.ndarray]) -> None:
    """Next-byte distributions of one prompt, one group of bars per byte."""
    width = 0.8 / len(dists)
    for i, (name, p) in enumerate(dists.items()):
        ax.bar(np.arange(len(alphabet)) + (i - (len(dists) - 1) / 2) * width, p, width, label=name,
               color=COLORS.get(name, "0.3"))
    ax.set_xticks(range(len(alphabet)), [repr(chr(b)) for b in alphabet])
    ax.set_ylabel("P(next byte)")
    ax.set_title(f"prompt {prompt.decode()!r}")
    ax.legend(fontsize=8)


def plot_methods(ax: plt.Axes, per_seed: Mapping[str, Sequence[float]], ylabel: str, title: str,
                 exact: Mapping[str, float] | None = None) -> None:
    """Per-seed values of each method (dots, mean ± std), with the exact model's value as a tick."""
    seed_dots(ax, per_seed, ylabel, colors={m: COLORS.get(m, "0.4") for m in per_seed})
    if exact:
        for i, m in enumerate(per_seed):
            if m in exact:
                ax.hlines(exact[m], i - 0.35, i + 0.35, color="k", lw=1.5, ls="--",
                          label="exact token model" if i == 0 else None)
        ax.legend(fontsize=8)
    ax.set_title(title)
