"""Chapter 20 (Byte2Word, Lee, Guo and Qiu 2022, arXiv 2211.12677): data, runs and figures.

Two masked language models with one backbone: **BERT-sub** (a WordPiece table and a tied head over
sub-word sequences) and **Byte2Word** (:mod:`replib.nn.byte2word` over word sequences, predicting a
masked word's first sub-words). Both are pre-trained on the book corpus, then fine-tuned on the
chapter's "GLUE" analog: which standard-library module a docstring comes from (the ten modules
with the most docstrings), read from its first words; test docstrings are also read with random
character edits (the noise analog). The corpus is cut back into its 25 modules at pinned line
numbers; held-out (validation and test) docstrings are blanked out of the pre-training text.
"""
from __future__ import annotations

import ast
import math
import time
from collections import Counter
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

from .. import plotting
from ..claims import Health, Rule, Verdict, decide_side, graded, paired
from ..data.text import STDLIB_FILES, book_corpus, unigram_loss
from ..data.words import encode_words, split_words
from ..errors import ReplibError
from ..nn.bert import SubwordBert
from ..nn.byte2word import Byte2Word, Byte2WordBert
from ..tokenize import subword
from ..train import adamw, train, warmup_cosine

ARMS = ("BERT-sub", "Byte2Word")
# First line (0-based) of each of the 25 modules in the pinned corpus (sha256 checked by the
# loader): the corpus is the modules joined by one newline, so these cut it back exactly.
MODULE_START_LINES = (0, 2631, 4384, 5153, 6536, 6981, 8483, 10540, 13371, 15420, 16177, 17190,
                      17794, 21138, 21810, 24662, 25567, 27098, 28489, 28799, 31009, 33906, 34398,
                      36067, 36762)
NOISE_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def module_texts() -> dict[str, str]:
    """The book corpus cut back into its 25 modules (name without ``.py`` -> source)."""
    lines = book_corpus().text.split("\n")
    bounds = (*MODULE_START_LINES, len(lines))
    return {f[:-3]: "\n".join(lines[a:b]) for f, a, b in zip(STDLIB_FILES, bounds, bounds[1:])}


@dataclass(frozen=True)
class Docstring:
    module: str
    text: str
    lines: tuple[int, int]  # 1-based first and last source line of the string literal


@dataclass
class DocTask:
    classes: tuple[str, ...]
    splits: dict[str, list[Docstring]]  # train / val / test
    pretrain_text: str  # all 25 modules, validation and test docstrings blanked out


def module_docstrings(name: str, source: str) -> list[Docstring]:
    """Docstrings of the module, its classes and functions (``ast.get_docstring``, cleaned)."""
    out = []
    todo = [ast.parse(source)]
    while todo:  # definitions nest only in statement bodies, so expressions are never visited
        node = todo.pop()
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node)
            if doc:
                lit = node.body[0]
                out.append(Docstring(name, doc, (lit.lineno, lit.end_lineno)))
        for attr in ("body", "orelse", "finalbody", "handlers", "cases"):
            todo += [n for n in getattr(node, attr, []) if isinstance(n, ast.AST)]
    return sorted(out, key=lambda d: d.lines)


def docstring_task(n_classes: int = 10, min_words: int = 4, fractions=(0.6, 0.2, 0.2),
                   split_seed: int = 0) -> DocTask:
    """The classification analog: docstrings of the ``n_classes`` modules with the most docstrings
    of at least ``min_words`` words, split per module at random (fixed ``split_seed``) into
    train / val / test. The split is a property of the data, the same for every seed and arm."""
    mods = module_texts()
    docs = {m: [d for d in module_docstrings(m, s) if len(split_words(d.text)) >= min_words]
            for m, s in mods.items()}
    classes = tuple(sorted(sorted(docs, key=lambda m: (-len(docs[m]), m))[:n_classes]))
    g = torch.Generator().manual_seed(split_seed)
    splits: dict[str, list[Docstring]] = {"train": [], "val": [], "test": []}
    for m in classes:
        order = torch.randperm(len(docs[m]), generator=g).tolist()
        n_tr, n_va = int(fractions[0] * len(order)), int(fractions[1] * len(order))
        for part, idx in (("train", order[:n_tr]), ("val", order[n_tr:n_tr + n_va]),
                          ("test", order[n_tr + n_va:])):
            splits[part] += [docs[m][i] for i in sorted(idx)]
    held = {}
    for d in splits["val"] + splits["test"]:
        held.setdefault(d.module, []).append(d.lines)
    texts = []
    for m, s in mods.items():
        lines = s.split("\n")
        for a, b in held.get(m, []):
            lines[a - 1:b] = [""] * (b - a + 1)
        texts.append("\n".join(lines))
    return DocTask(classes, splits, "\n".join(texts))


def byte_noise(text: str, p: float, generator: torch.Generator) -> str:
    """Random character edits: each character is, with probability ``p``, deleted, replaced by a
    random lower-case letter, or preceded by one (one of the three, equally likely). On this ASCII
    text a character is a byte, so these are the spec's byte edits that keep the text valid UTF-8."""
    n = len(text)
    hit = torch.rand(n, generator=generator) < p
    kind = torch.randint(3, (n,), generator=generator)
    letter = torch.randint(len(NOISE_LETTERS), (n,), generator=generator)
    out = []
    for ch, h, k, l in zip(text, hit.tolist(), kind.tolist(), letter.tolist()):
        if not h:
            out.append(ch)
        elif k == 1:
            out.append(NOISE_LETTERS[l])
        elif k == 2:
            out.append(NOISE_LETTERS[l] + ch)
    return "".join(out)


def embedding_ratio(*, d_model: int, vocab_size: int, **byte2word) -> float:
    """Byte2Word's parameters over a ``vocab_size x d_model`` sub-word table's (by construction)."""
    return Byte2Word(d_model, **byte2word).embedding_params() / (vocab_size * d_model)


class Lexicon:
    """Every distinct word seen, with its byte canvas and its first ``n_slots`` sub-word ids.

    Row 0 is the empty word (an all-padding canvas) used to pad word sequences.
    """

    def __init__(self, tokenizer, max_bytes: int, n_slots: int):
        self.tok, self.max_bytes, self.n_slots = tokenizer, max_bytes, n_slots
        self.row: dict[str, int] = {"": 0}
        self.canvases = torch.zeros(1, max_bytes, dtype=torch.long)
        self.slot_ids = torch.full((1, n_slots), -100, dtype=torch.long)
        self.pieces: list[list[int]] = [[]]

    def index(self, words: list[str]) -> torch.Tensor:
        new = list(dict.fromkeys(w for w in words if w not in self.row))
        if new:
            pieces = self.tok.encode_batch(new)
            for w, p in zip(new, pieces):
                self.row[w] = len(self.pieces)
                self.pieces.append(p)
            slots = [(p + [-100] * self.n_slots)[:self.n_slots] for p in pieces]
            self.canvases = torch.cat([self.canvases, encode_words(new, self.max_bytes)])
            self.slot_ids = torch.cat([self.slot_ids, torch.tensor(slots, dtype=torch.long)])
        return torch.tensor([self.row[w] for w in words], dtype=torch.long)

    def subwords(self, rows: torch.Tensor) -> torch.Tensor:
        """The sub-word stream of a word stream: every word's pieces, in order."""
        return torch.tensor([t for r in rows.tolist() for t in self.pieces[r]], dtype=torch.long)


@dataclass
class ClassSet:
    words: torch.Tensor  # (n, W) lexicon rows, 0 = padding
    subwords: torch.Tensor  # (n, L) sub-word ids, padded with 0 (masked out)
    sub_pad: torch.Tensor  # (n, L) True at sub-word padding
    labels: torch.Tensor  # (n,)


@dataclass
class ChapterData:
    task: DocTask
    tok: object
    lex: Lexicon
    train_words: torch.Tensor  # pre-training word stream (lexicon rows)
    train_subwords: torch.Tensor  # the same text as sub-words
    val_words: torch.Tensor  # MLM validation: the validation docstrings' words
    val_subwords: torch.Tensor
    seq_words: int  # MLM window in words
    sub_window: int  # sub-word window holding about as much text as a word window
    class_sets: dict[str, ClassSet] = field(default_factory=dict)  # train, val, test, test@p
    unigram: dict[str, float] = field(default_factory=dict)  # MLM reference per arm
    capped_fraction: float = 0.0  # words longer than max_bytes (canvas "@")


def class_set(lex: Lexicon, texts: list[str], labels: list[int], n_words: int, n_sub: int) -> ClassSet:
    """First ``n_words`` words of every text, as lexicon rows and as (at most ``n_sub``) sub-words."""
    words = [split_words(t)[:n_words] for t in texts]
    flat = lex.index([w for ws in words for w in ws])  # one lexicon update for the whole set
    rows = torch.zeros(len(texts), n_words, dtype=torch.long)
    subs = torch.zeros(len(texts), n_sub, dtype=torch.long)
    pad = torch.ones(len(texts), n_sub, dtype=torch.bool)
    for i, r in enumerate(flat.split([len(ws) for ws in words])):
        rows[i, :len(r)] = r
        s = lex.subwords(r)[:n_sub]
        subs[i, :len(s)], pad[i, :len(s)] = s, False
    return ClassSet(rows, subs, pad, torch.tensor(labels, dtype=torch.long))


def slot_unigram_loss(train_rows: torch.Tensor, target_rows: torch.Tensor, slot_ids: torch.Tensor,
                      vocab_size: int) -> float:
    """Byte2Word's trivial reference: each slot's sub-word frequencies in the training stream (add-1
    smoothed), the cross-entropy of the targets' real (non ``-100``) slots, averaged as the loss is."""
    total, count = 0.0, 0
    for j in range(slot_ids.shape[1]):
        tr, te = slot_ids[train_rows, j], slot_ids[target_rows, j]
        tr, te = tr[tr >= 0], te[te >= 0]
        total += unigram_loss(tr, te, vocab_size) * len(te)
        count += len(te)
    return total / count


def build_data(*, vocab_size: int, max_bytes: int, n_slots: int, seq_words: int, n_classes: int,
               class_words: int, noise: tuple[float, ...], noise_seed: int = 1234) -> ChapterData:
    """Tokenizer, lexicon, pre-training streams and the classification sets (clean and noisy)."""
    task = docstring_task(n_classes)
    tok = subword.train("wordpiece", task.pretrain_text.split("\n"), vocab_size)
    lex = Lexicon(tok, max_bytes, n_slots)
    words = split_words(task.pretrain_text)
    train_words = lex.index(words)
    train_sub = lex.subwords(train_words)
    val_words = lex.index(split_words("\n".join(d.text for d in task.splits["val"])))
    per_word = len(train_sub) / len(train_words)
    data = ChapterData(task, tok, lex, train_words, train_sub, val_words, lex.subwords(val_words),
                       seq_words, int(round(seq_words * per_word)))
    n_sub = int(math.ceil(class_words * per_word * 1.5))
    label = {m: i for i, m in enumerate(task.classes)}
    for part, docs in task.splits.items():
        data.class_sets[part] = class_set(lex, [d.text for d in docs], [label[d.module] for d in docs],
                                          class_words, n_sub)
    test = task.splits["test"]
    for i, p in enumerate(noise):
        g = torch.Generator().manual_seed(noise_seed + i)
        data.class_sets[f"test@{p:g}"] = class_set(lex, [byte_noise(d.text, p, g) for d in test],
                                                   [label[d.module] for d in test], class_words, n_sub)
    data.capped_fraction = float(np.mean([len(w.encode("utf-8")) > max_bytes for w in words]))
    x, m = mlm_eval_set("BERT-sub", data)
    data.unigram["BERT-sub"] = unigram_loss(train_sub, x[m], tok.vocab_size)
    x, m = mlm_eval_set("Byte2Word", data)
    data.unigram["Byte2Word"] = slot_unigram_loss(train_words, x[m], lex.slot_ids, tok.vocab_size)
    return data


def build_model(arm: str, data: ChapterData, cfg):
    """``arm``'s model at the sizes of ``cfg`` (``d_model``, ``n_layer``, ``n_head``, ``byte2word``)."""
    V, d_model, n_layer, n_head = data.tok.vocab_size, cfg.d_model, cfg.n_layer, cfg.n_head
    if arm == "BERT-sub":
        max_len = max(data.sub_window, data.class_sets["train"].subwords.shape[1])
        return SubwordBert(V, d_model, n_layer, n_head, max_len)
    if arm == "Byte2Word":
        max_len = max(data.seq_words, data.class_sets["train"].words.shape[1])
        return Byte2WordBert(V, d_model, n_layer, n_head, max_len, n_slots=data.lex.n_slots,
                             byte2word={**cfg.byte2word, "max_bytes": data.lex.max_bytes})
    raise ReplibError(f"unknown arm {arm!r}; valid: {', '.join(ARMS)}")


def mask_positions(shape, rate: float, g: torch.Generator) -> torch.Tensor:
    """BERT's 15 %: each position masked with probability ``rate``, at least one per sequence."""
    m = torch.rand(shape, generator=g) < rate
    m[torch.arange(shape[0]), torch.randint(shape[1], (shape[0],), generator=g)] = True
    return m


def windows(stream: torch.Tensor, length: int, starts: torch.Tensor) -> torch.Tensor:
    return stream[starts[:, None] + torch.arange(length)]


def mlm_stream(arm: str, data: ChapterData, split: str) -> tuple[torch.Tensor, int]:
    """The ``train`` or ``val`` stream of ``arm``'s units and its window length (same text per window)."""
    if arm == "BERT-sub":
        return (data.train_subwords if split == "train" else data.val_subwords), data.sub_window
    return (data.train_words if split == "train" else data.val_words), data.seq_words


def mlm_batch(arm: str, data: ChapterData, batch: int, g: torch.Generator,
              rate: float = 0.15) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, masked)``: random windows of the pre-training stream and their masks."""
    stream, T = mlm_stream(arm, data, "train")
    x = windows(stream, T, torch.randint(len(stream) - T, (batch,), generator=g))
    return x, mask_positions(x.shape, rate, g)


def mlm_eval_set(arm: str, data: ChapterData) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows of the validation docstrings, masked once (fixed generator)."""
    stream, T = mlm_stream(arm, data, "val")
    n = len(stream) // T
    x = stream[:n * T].view(n, T)
    return x, mask_positions(x.shape, 0.15, torch.Generator().manual_seed(0))


def mlm_loss(arm: str, model, data: ChapterData, x: torch.Tensor, masked: torch.Tensor,
             device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the masked targets and their top-1 accuracy."""
    x, masked = x.to(device), masked.to(device)
    if arm == "BERT-sub":
        logits = model.mlm_logits(model(x, masked=masked)[masked])
        y = x[masked]
    else:
        logits = model.mlm_logits(model(data.lex.canvases.to(device)[x], masked=masked)[masked])
        y = data.lex.slot_ids.to(device)[x[masked]]
        logits, y = logits.flatten(0, 1), y.flatten()
    loss = F.cross_entropy(logits, y, ignore_index=-100)
    keep = y >= 0
    return loss, (logits.argmax(-1)[keep] == y[keep]).float().mean()


def class_inputs(arm: str, data: ChapterData, cs: ClassSet, idx, device):
    if arm == "BERT-sub":
        return cs.subwords[idx].to(device), cs.sub_pad[idx].to(device)
    rows = cs.words[idx].to(device)
    return data.lex.canvases.to(device)[rows], rows == 0


class Classifier(torch.nn.Module):
    """The pre-trained model, mean-pooled over real positions, and a linear head."""

    def __init__(self, model, d_model: int, n_classes: int):
        super().__init__()
        self.model, self.head = model, torch.nn.Linear(d_model, n_classes)

    def forward(self, x, pad):
        h = self.model(x, pad)
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        return self.head((h * keep).sum(1) / keep.sum(1).clamp_min(1))


@torch.no_grad()
def accuracy(arm, clf, data, cs: ClassSet, device, chunk: int = 128) -> float:
    clf.eval()
    right = 0
    for i in range(0, len(cs.labels), chunk):
        idx = torch.arange(i, min(i + chunk, len(cs.labels)))
        right += int((clf(*class_inputs(arm, data, cs, idx, device)).argmax(-1).cpu() == cs.labels[idx]).sum())
    clf.train()
    return right / len(cs.labels)


def _optimise(model, lr: float, steps: int, warmup_frac: float):
    opt = adamw(model, lr)
    return opt, torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac))


def run(arm: str, lr: float, seed: int, data: ChapterData, cfg, device, progress: bool = False) -> dict:
    """Pre-train ``arm`` (MLM) at ``lr``, fine-tune it at ``cfg.ft_lr_ratio * lr`` on the docstring
    task, and measure: MLM validation loss/accuracy, val/test accuracy, noisy test accuracy.
    The same ``seed`` gives both arms the same initial head, batch order and masks."""
    torch.manual_seed(seed)
    model = build_model(arm, data, cfg).to(device)
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()

    def mlm_batches():
        while True:
            yield mlm_batch(arm, data, cfg.batch_size, g)

    opt, sched = _optimise(model, lr, cfg.mlm_steps, cfg.warmup_frac)
    pre = train(model, opt, mlm_batches(), lambda m, b: mlm_loss(arm, m, data, *b, device)[0],
                cfg.mlm_steps, grad_clip=1.0, scheduler=sched, desc=f"{arm} MLM", progress=progress)
    if pre.diverged:
        return {"val_acc": math.nan, "diverged": "mlm"}
    model.eval()
    with torch.no_grad():
        vloss, vacc = mlm_loss(arm, model, data, *mlm_eval_set(arm, data), device)
    clf = Classifier(model, cfg.d_model, len(data.task.classes)).to(device)
    train_set = data.class_sets["train"]

    def class_batches():
        while True:
            idx = torch.randint(len(train_set.labels), (cfg.batch_size,), generator=g)
            yield class_inputs(arm, data, train_set, idx, device), train_set.labels[idx].to(device)

    opt, sched = _optimise(clf, cfg.ft_lr_ratio * lr, cfg.ft_steps, cfg.warmup_frac)
    ft = train(clf, opt, class_batches(), lambda m, b: F.cross_entropy(m(*b[0]), b[1]), cfg.ft_steps,
               grad_clip=1.0, scheduler=sched, desc=f"{arm} fine-tune", progress=progress)
    if ft.diverged:
        return {"val_acc": math.nan, "diverged": "fine-tune"}
    out = {"mlm_val_loss": float(vloss), "mlm_val_acc": float(vacc), "mlm_curve": pre.loss[::10],
           "ft_curve": ft.loss[::5], "seconds": time.perf_counter() - t0}
    for part, cs in data.class_sets.items():
        if part != "train":
            out[f"{part}_acc"] = accuracy(arm, clf, data, cs, device)
    return out


@torch.no_grad()
def forward_seconds(data: ChapterData, cfg, device, rounds: int = 5) -> dict[str, list[float]]:
    """Seconds per forward pass over the clean test set, both arms interleaved, ``rounds`` times
    (the same backbone: BERT-sub on sub-words, Byte2Word on words plus its byte encoder)."""
    models = {a: build_model(a, data, cfg).to(device).eval() for a in ARMS}
    cs = data.class_sets["test"]
    idx = torch.arange(len(cs.labels))
    inputs = {a: class_inputs(a, data, cs, idx, device) for a in ARMS}
    out = {a: [] for a in ARMS}
    for _ in range(rounds + 1):  # the first round warms up
        for a in ARMS:
            t0 = time.perf_counter()
            models[a](*inputs[a])
            if device.type == "cuda":
                torch.cuda.synchronize()
            out[a].append(time.perf_counter() - t0)
    return {a: v[1:] for a, v in out.items()}


def tokens_per_word(data: ChapterData, split: str = "test") -> float:
    """Sub-words per whitespace word over the first words of the chapter's docstrings."""
    cs = data.class_sets[split]
    return float((~cs.sub_pad).sum() / (cs.words != 0).sum())


def class_counts(data: ChapterData) -> dict[str, Counter]:
    return {part: Counter(data.task.classes[i] for i in cs.labels.tolist())
            for part, cs in data.class_sets.items() if part in ("train", "val", "test")}


def plot_sweep(sweep_json: dict, test: dict[str, list[float]], chance: float) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    plotting.lr_sweep(axes[0], sweep_json, ylabel="validation accuracy (docstring → module)",
                      reference=chance, reference_label="majority class")
    plotting.seed_dots(axes[1], test, "test accuracy at each arm's best lr", order=list(ARMS))
    axes[1].axhline(chance, color="grey", ls="--", lw=1)
    plt.tight_layout()


def plot_noise(acc: dict[str, dict[float, list[float]]], chance: float) -> None:
    """Test accuracy against the character-edit rate, every seed a dot, the mean a line."""
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for i, (arm, by_p) in enumerate(acc.items()):
        ps = sorted(by_p)
        color = plotting.palette(len(acc))[i]
        ax.plot(ps, [np.mean(by_p[p]) for p in ps], marker="o", color=color, label=arm)
        for p in ps:
            ax.scatter([p] * len(by_p[p]), by_p[p], color=color, s=12, alpha=0.5)
    ax.axhline(chance, color="grey", ls="--", lw=1, label="majority class")
    ax.set_xlabel("character edit rate on test docstrings")
    ax.set_ylabel("test accuracy")
    ax.legend(fontsize=8)
    plt.tight_layout()


def plot_mlm(curves: dict[str, list[list[float]]], unigram: dict[str, float]) -> None:
    """MLM training loss per arm (every seed) against its own unigram reference (dotted)."""
    fig, axes = plt.subplots(1, len(curves), figsize=(11, 3.2))
    for ax, (arm, runs) in zip(axes, curves.items()):
        for r in runs:
            ax.plot(np.arange(len(r)) * 10, r, alpha=0.7)
        ax.axhline(unigram[arm], color="0.4", ls=":", label="unigram reference (validation)")
        ax.set_title(arm)
        ax.set_xlabel("MLM step")
        ax.set_ylabel("masked-token loss (nats)")
        ax.legend(fontsize=8)
    plt.tight_layout()


# ---- Rules (declared in the chapter before their experiments) ---------------------------------

def health_gates(unigram_margin: float, chance: float, chance_margin: float) -> list[tuple[Health, tuple[str, ...]]]:
    """Both arms' MLM must beat its own unigram reference (metric ``<arm> MLM gain``: reference
    loss minus validation loss, nats) and their classifiers must beat the majority class."""
    return [(Health(0.0, unigram_margin, lower_is_better=False,
                    name="zero MLM gain over the arm's unigram reference (nats)"),
             tuple(f"{a} MLM gain" for a in ARMS)),
            (Health(chance, chance_margin, lower_is_better=False, name="majority-class test accuracy"),
             tuple(f"{a} clean acc" for a in ARMS))]


def gated_rule(text: str, gates, decide) -> Rule:
    """A rule whose health gates (several, each with its own reference) run before ``decide``."""
    def apply(m):
        failed = [f for h, arms in gates for f in h.failures(m, arms)]
        if failed:
            return Verdict.INCONCLUSIVE, "health gate failed: " + "; ".join(failed)
        return decide(m)
    return Rule(" ".join([text, *(h.text(arms) for h, arms in gates)]), apply)


def parity_rule(gates, full: float = 0.01, partial: float = 0.03, max_ratio: float = 0.15) -> Rule:
    """C1: Byte2Word's test accuracy no worse than BERT-sub's by ``full`` (partially: ``partial``),
    with at most ``max_ratio`` of its embedding parameters."""
    text = (f"Paired per-seed difference Byte2Word − BERT-sub in clean test accuracy (95 % t-interval), "
            f"with Byte2Word's embedding at most {max_ratio:.0%} of BERT-sub's table: replicated if the "
            f"interval lies above −{full:g}; partially replicated if it lies above −{partial:g} (and not "
            f"above −{full:g}); not replicated if it lies wholly below −{partial:g}; inconclusive otherwise.")

    def decide(m):
        if max(m["embedding ratio"].values) > max_ratio:
            return Verdict.NOT_REPLICATED, f"embedding ratio {max(m['embedding ratio'].values):.3f} > {max_ratio}"
        p = paired(m["Byte2Word clean acc"], m["BERT-sub clean acc"], names=("Byte2Word", "BERT-sub"))
        return graded(decide_side(p, claimed="above", threshold=-full),
                      decide_side(p, claimed="above", threshold=-partial)), f"{p}"
    return gated_rule(text, gates, decide)


def noise_rule(gates, p: float, tol: float = 0.01) -> Rule:
    """C2: Byte2Word's accuracy drop under ``p`` character edits is at most BERT-sub's + ``tol``."""
    text = (f"Drop = clean − noisy test accuracy at edit rate {p:g}. Paired per-seed difference of drops "
            f"Byte2Word − BERT-sub (95 % t-interval): replicated if the interval lies below +{tol:g}, not "
            f"replicated if it lies wholly at or above +{tol:g}, inconclusive otherwise; an interval wholly "
            "below 0 is a smaller drop than BERT-sub's (stronger than the paper's 'competitive').")

    def decide(m):
        pd = paired(m["Byte2Word drop"], m["BERT-sub drop"], names=("Byte2Word drop", "BERT-sub drop"))
        stronger = " (smaller drop than BERT-sub: stronger than claimed)" if pd.interval[1] < 0 else ""
        return decide_side(pd, claimed="below", threshold=tol), f"{pd}{stronger}"
    return gated_rule(text, gates, decide)
