r"""Chapter 34 (vocabulary key space, Peng, An & Shang, ICLR 2025, arXiv 2410.02284): the analog.

- :func:`train_lm`: one :class:`~replib.nn.key_space.TiedAttributeLM` (2-layer TinyGPT body, tied
  keys with a shared attribute embedding) trained on fresh lines of a
  :class:`~replib.data.setlang.SetLanguage`; its validation loss, the unigram reference loss, and
  the model. :func:`lr_choice` trains the lr grid on one seed and picks the lr on validation loss.
- :func:`probe_ranking` / :func:`c1_metrics`: the knowledge-probing analysis (C1): the plain prompt
  ``SET s :`` ranks the item tokens; precision by rank bin, and how much ranks 4-30 crowd into the
  top-1 token's k-means key cluster against the base rate.
- :func:`budget_answers`: C2's decoding procedures for a budget of ``T`` answers per set (sampling,
  rank-based, ICN, and the key-projection geometry), scored as distinct correct answers / ``T``,
  with their wall time.
- :func:`minilm_neighbours`: the optional real-model check (descriptive): in MiniLM's word-piece
  embedding matrix, how often a piece's nearest neighbours share its first letter.
- ``plot_*``: the chapter's figures.
"""
from __future__ import annotations

import math
import time
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

from ..data.setlang import SetLanguage
from ..data.text import unigram_loss
from ..nn import key_space as ks
from ..nn.transformer import GPTConfig
from ..plotting import palette, seed_dots
from ..runtime import seed_everything, torch_threads
from ..train import adamw, lr_sweep, train, warmup_cosine

RANK_BINS = ((1, 3), (4, 10), (11, 30))
ARMS = ("sampling", "rank-based", "ICN", "key projection")


# ------------------------------------------------------------------------------------- training
def make_model(lang: SetLanguage, d_model: int, n_layer: int, n_head: int) -> ks.TiedAttributeLM:
    cfg = GPTConfig(vocab_size=lang.vocab_size, seq_len=lang.seq_len, n_layer=n_layer, n_head=n_head,
                    d_model=d_model)
    return ks.TiedAttributeLM(cfg, lang.attribute_of_tokens(), lang.n_attrs)


def train_lm(lang: SetLanguage, lr: float, seed: int, *, steps: int, batch_size: int, d_model: int,
             n_layer: int, n_head: int, val_lines: int, weight_decay: float = 0.1, warmup_frac: float = 0.05,
             device: torch.device | str = "cpu", threads: int | None = 1, progress: bool = True):
    """Train one model on fresh lines (NumPy generator ``[seed, 1]``); validation lines are one fixed
    draw (:func:`validation_lines`) shared by every seed and lr. Returns (metrics, model): the final
    validation loss (NaN if diverged) and the training-loss curve; and the trained model."""
    with torch_threads(threads if torch.device(device).type == "cpu" else None):
        seed_everything(seed)
        model = make_model(lang, d_model, n_layer, n_head).to(device)
        opt = adamw(model, lr, weight_decay)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac))
        rng = np.random.default_rng([seed, 1])
        batches = (lang.batch(batch_size, rng, device) for _ in range(steps))
        vx, vy = validation_lines(lang, val_lines, device)

        def evaluate(m):
            return {"val_loss": float(m(vx, vy)[1])}

        hist = train(model, opt, batches, lambda m, b: m(*b)[1], steps, evaluate=evaluate,
                     grad_clip=1.0, scheduler=sched, desc=f"lr {lr:g} seed {seed}", progress=progress)
        model.eval()
        return {"val_loss": hist.final("val_loss"), "loss": hist.loss}, model


def validation_lines(lang: SetLanguage, n: int, device: torch.device | str = "cpu"):
    """The fixed validation lines (generator ``[2**31 - 1]``) every seed and lr is scored on."""
    return lang.batch(n, np.random.default_rng([2**31 - 1]), device)


def unigram_reference(lang: SetLanguage, n: int) -> float:
    """The loss of the validation targets under the target frequencies of ``n`` other lines
    (generator ``[2**31 - 2]``): what a model that ignores the context scores (the health gate)."""
    _, vy = validation_lines(lang, n)
    _, ty = lang.batch(n, np.random.default_rng([2**31 - 2]))
    return unigram_loss(ty[ty >= 0], vy[vy >= 0], lang.vocab_size)


def chance_precision(lang: SetLanguage) -> float:
    """Member precision of a random item: mean set size / number of items."""
    return float(np.mean([len(m) for m in lang.members]) / lang.n_items)


def lr_choice(lang: SetLanguage, grid: Sequence[float], seed: int, **kw):
    """The lr grid trained on one seed (:func:`replib.train.lr_sweep`, one arm), the lr with the lowest
    validation loss, and the models it trained ({lr: model}) so that seed's model is reused."""
    models = {}

    def run(arm, lr, s):
        metrics, models[lr] = train_lm(lang, lr, s, **kw)
        return metrics

    sweep = lr_sweep(["tied+attribute"], grid, [seed], run, select_on="val_loss", progress=False)
    return sweep, sweep.best_lr("tied+attribute"), models


# ------------------------------------------------------------------------------------- probing
@torch.no_grad()
def last_logits(model: ks.TiedAttributeLM, prompts: torch.Tensor, n_items: int) -> torch.Tensor:
    """Item-token logits after the last prompt token, (prompts, n_items)."""
    return (model.query(prompts)[:, -1] @ model.keys()[:n_items].T)


def eval_sets(lang: SetLanguage, n: int, seed: int) -> torch.Tensor:
    """``n`` distinct sets to probe (all held in: the model was trained on every set)."""
    return torch.as_tensor(np.random.default_rng([seed, 2]).choice(lang.n_sets, n, replace=False))


def plain_prompts(lang: SetLanguage, sets: torch.Tensor, device) -> torch.Tensor:
    return torch.tensor([lang.listing_prompt(int(s)) for s in sets], device=device)


@torch.no_grad()
def probe_ranking(model, lang: SetLanguage, sets: torch.Tensor, depth: int = 30):
    """The top-``depth`` item tokens of the plain prompt per set, and whether each is a member."""
    dev = next(model.parameters()).device
    ranked = last_logits(model, plain_prompts(lang, sets, dev), lang.n_items).topk(depth, -1).indices.cpu()
    member = lang.membership()[sets]
    return ranked, member.gather(1, ranked)


def c1_metrics(model, lang: SetLanguage, sets: torch.Tensor, n_clusters: int, seed: int) -> dict:
    """Precision per rank bin, member precision of ranks 4-30 inside / outside the top-1 token's key
    cluster (the official notebook's split, with top-1 for top-10), the same-cluster fraction of
    ranks 4-30 against its base rate (k-means on the normalised item keys), and the same with the
    true attribute in place of the cluster."""
    ranked, correct = probe_ranking(model, lang, sets)
    out = {f"precision {k}": v for k, v in ks.precision_by_rank(correct, RANK_BINS).items()}
    labels = ks.cluster_keys(model.keys()[: lang.n_items], n_clusters, seed)
    out["same-cluster 4-30"], out["base rate"] = ks.same_cluster_fraction(ranked, labels, 4, 30)
    out["same-attribute 4-30"], out["attribute base rate"] = ks.same_cluster_fraction(ranked, lang.attr_of, 4, 30)
    lab = torch.as_tensor(labels)
    inside = lab[ranked[:, 3:]] == lab[ranked[:, :1]]
    mid = correct[:, 3:]
    out["precision 4-30 in top-1 cluster"] = float(mid[inside].float().mean()) if inside.any() else math.nan
    out["precision 4-30 elsewhere"] = float(mid[~inside].float().mean()) if (~inside).any() else math.nan
    return out


@torch.no_grad()
def budget_answers(model, lang: SetLanguage, sets: torch.Tensor, T: int, tau: float, seed: int) -> dict:
    """Each procedure's ``T`` answers per set, scored as distinct correct / ``T`` (mean over sets),
    and its wall time in seconds (``"<arm> s"``)."""
    dev = next(model.parameters()).device
    member = lang.membership()[sets]
    keys = model.keys()[: lang.n_items]
    out = {}

    def timed(arm, fn):
        t0 = time.perf_counter()
        answers = fn().cpu()
        out[f"{arm} s"] = time.perf_counter() - t0
        out[arm] = float(ks.unique_correct(answers, member).mean())

    plain = lambda: last_logits(model, plain_prompts(lang, sets, dev), lang.n_items)  # noqa: E731
    gen = torch.Generator().manual_seed(seed)
    timed("sampling", lambda: ks.sampled(plain(), T, tau, gen))
    timed("rank-based", lambda: ks.rank_based(plain(), T))

    def icn_logits(explored):
        prompts = torch.tensor([lang.navigation_prompt(int(s), row.tolist()) for s, row in zip(sets, explored)],
                               device=dev)
        return last_logits(model, prompts, lang.n_items)

    timed("ICN", lambda: ks.navigate(icn_logits, len(sets), T))
    timed("key projection", lambda: ks.key_projection(model.query(plain_prompts(lang, sets, dev))[:, -1], keys, T))
    return out


# ------------------------------------------------------------------------------- real-model check
def minilm_neighbours(k: int = 10, n_sample: int = 500, seed: int = 0) -> dict:
    """In all-MiniLM-L6-v2's word-piece embedding matrix (its input/MLM-key matrix), the fraction of
    each sampled alphabetic piece's ``k`` cosine-nearest alphabetic pieces that share its first letter
    (``##`` stripped), against the base rate of that letter among the pieces. Descriptive."""
    from ..nn.minilm import load_minilm

    tok, model = load_minilm()
    emb = model.get_input_embeddings().weight.detach()
    vocab = tok.convert_ids_to_tokens(list(range(emb.shape[0])))
    words = [(i, p.removeprefix("##")) for i, p in enumerate(vocab)]
    keep = [(i, w) for i, w in words if w.isascii() and w.isalpha() and len(w) >= 3]
    ids = torch.tensor([i for i, _ in keep])
    first = np.array([w[0].lower() for _, w in keep])
    e = torch.nn.functional.normalize(emb[ids], dim=-1)
    pick = np.random.default_rng(seed).choice(len(keep), n_sample, replace=False)
    sims = e[pick] @ e.T
    sims[torch.arange(n_sample), torch.as_tensor(pick)] = -2.0  # not its own neighbour
    nn_idx = sims.topk(k, -1).indices.numpy()
    share = (first[nn_idx] == first[pick][:, None]).mean()
    letters, counts = np.unique(first, return_counts=True)
    freq = dict(zip(letters, counts / counts.sum()))
    base = float(np.mean([freq[c] for c in first[pick]]))
    examples = {keep[j][1]: [keep[n][1] for n in nn_idx[r][:5]] for r, j in enumerate(pick[:6])}
    return {"same first letter": float(share), "base rate": base, "pieces": len(keep), "examples": examples}


# ---------------------------------------------------------------------------------------- figures
def plot_training(ax: plt.Axes, losses: Mapping[int, Sequence[float]], unigram: float, k: int = 20) -> None:
    """Training loss per seed (block means of ``k`` steps) against the unigram reference."""
    for color, (seed, curve) in zip(palette(len(losses)), losses.items()):
        y = np.asarray(curve, float)
        y = y[: len(y) // k * k].reshape(-1, k).mean(1) if len(y) >= k else y
        ax.plot(np.arange(len(y)) * k, y, color=color, label=f"seed {seed}")
    ax.axhline(unigram, color="k", ls="--", lw=1, label="unigram")
    ax.set(xlabel="step", ylabel="training loss (nats)", title="the analog LM learns the language")
    ax.legend()


def plot_precision(ax: plt.Axes, per_seed: Sequence[Mapping[str, float]], chance: float) -> None:
    """Member precision per rank bin (every seed a dot), with chance."""
    groups = {f"ranks {lo}-{hi}": [m[f"precision {lo}-{hi}"] for m in per_seed] for lo, hi in RANK_BINS}
    groups["4-30 in top-1 cluster"] = [m["precision 4-30 in top-1 cluster"] for m in per_seed]
    groups["4-30 elsewhere"] = [m["precision 4-30 elsewhere"] for m in per_seed]
    seed_dots(ax, groups, "member precision")
    ax.axhline(chance, color="k", ls=":", lw=1, label="chance")
    ax.set_title("precision by rank of the first-token ranking")
    ax.tick_params(axis="x", labelrotation=20)
    ax.legend()


def plot_clusters(ax: plt.Axes, per_seed: Sequence[Mapping[str, float]]) -> None:
    """Fraction of ranks 4-30 in the top-1 token's key cluster / attribute, against base rates."""
    keys = ["same-cluster 4-30", "base rate", "same-attribute 4-30", "attribute base rate"]
    seed_dots(ax, {k: [m[k] for m in per_seed] for k in keys}, "fraction of ranks 4-30")
    ax.set_title("middle ranks crowd into the top-1 key cluster")
    ax.tick_params(axis="x", labelrotation=20)


def plot_budget(ax: plt.Axes, per_seed: Sequence[Mapping[str, float]], T: int) -> None:
    """Distinct correct answers / T per procedure (every seed a dot)."""
    seed_dots(ax, {arm: [m[arm] for m in per_seed] for arm in ARMS}, f"distinct correct / T (T={T})")
    ax.set_title(f"C2: a budget of {T} answers per set")
