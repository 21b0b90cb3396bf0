"""Runners for MLP classifiers on scikit-learn's tabular data: train/validation/test splits, one
training run, selection on validation, k-fold CV, ranks. (Per-part verdicts are combined into
one claim by :mod:`replib.claims`: :func:`~replib.claims.all_of`, :func:`~replib.claims.k_of`.)

Reusable by any chapter that trains a fully-connected classifier on a :class:`replib.data.Split`
(first used by chapter 16, self-normalizing networks; chapter 23 uses it too).
"""
from __future__ import annotations

import math
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold, train_test_split

from ..data import Split, minibatches
from ..data.tabular import load_arrays
from ..runtime import seed_everything
from ..train import History, train

ModelFn = Callable[[int, int], torch.nn.Module]  # (n_features, n_classes) -> model


def _ce(model: torch.nn.Module, batch) -> torch.Tensor:
    x, y = batch
    return F.cross_entropy(model(x), y)


@torch.no_grad()
def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Classification accuracy in eval mode (dropout off, BatchNorm on running statistics)."""
    was = model.training
    model.eval()
    acc = float((model(x).argmax(-1) == y).float().mean())
    model.train(was)
    return acc


def train_classifier(make_model: ModelFn, split: Split, seed: int, *, steps: int, batch_size: int,
                     lr: float, momentum: float = 0.0, device: torch.device | str = "cpu",
                     progress: bool = False, desc: str = "train") -> tuple[torch.nn.Module, History]:
    """Train ``make_model(n_features, n_classes)`` with SGD on ``split``'s training set.

    Seeds everything with ``seed`` before building the model (weights) and draws the minibatch
    order from the same seed. The History holds the minibatch cross-entropy at every step
    (``nan`` and ``diverged_at`` if it blew up).
    """
    gen = seed_everything(seed)
    split = split.to(device)
    model = make_model(split.n_features, split.n_classes).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    bs = min(batch_size, split.x_train.shape[0])
    hist = train(model, opt, minibatches(split.x_train, split.y_train, bs, gen), _ce, steps,
                 progress=progress, desc=desc)
    return model, hist


def holdout(name: str, seed: int = 0, *, test_size: float = 0.2, val_size: float = 0.2,
            dtype: torch.dtype = torch.float32) -> tuple[Split, Split]:
    """A stratified train / validation / test split of a bundled data set, drawn with ``seed``.

    The test part (``test_size`` of the data) is held out first; the validation part
    (``val_size`` of the rest) is split off the training part. Features are standardised with the
    training part's statistics (constant features left at zero). Returns two :class:`Split` that
    share the training tensors: ``fit`` (its ``x_test`` is the validation part, for choosing
    hyper-parameters) and ``final`` (its ``x_test`` is the test part, for judging).
    """
    x, y = load_arrays(name)
    xr, xte, yr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    xtr, xva, ytr, yva = train_test_split(xr, yr, test_size=val_size, random_state=seed, stratify=yr)
    mu, sd = xtr.mean(0), xtr.std(0)
    sd[sd == 0] = 1.0
    t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
    xtr_t, ytr_t = t((xtr - mu) / sd, dtype), t(ytr, torch.long)
    k = int(y.max()) + 1
    return (Split(name, xtr_t, ytr_t, t((xva - mu) / sd, dtype), t(yva, torch.long), k),
            Split(name, xtr_t, ytr_t, t((xte - mu) / sd, dtype), t(yte, torch.long), k))


def majority_rate(name: str) -> float:
    """The accuracy of always predicting the most frequent class (the trivial classifier)."""
    _, y = load_arrays(name)
    return float(np.bincount(y).max() / len(y))


@torch.no_grad()
def loss_and_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """Mean cross-entropy and accuracy in eval mode (dropout off, BatchNorm on running statistics)."""
    was = model.training
    model.eval()
    logits = model(x)
    out = float(F.cross_entropy(logits, y)), float((logits.argmax(-1) == y).float().mean())
    model.train(was)
    return out


def train_eval(make_model: ModelFn, fit: Split, final: Split, seed: int, *, steps: int,
               batch_size: int, lr: float, momentum: float = 0.0,
               device: torch.device | str = "cpu") -> dict:
    """Train on ``fit``'s training part, then measure the validation part (``fit.x_test``) and the
    test part (``final.x_test``): ``val_loss``, ``val_acc``, ``test_acc`` (``nan`` for a diverged
    run, never an exception) and the run's ``history``."""
    model, hist = train_classifier(make_model, fit, seed, steps=steps, batch_size=batch_size, lr=lr,
                                   momentum=momentum, device=device)
    if hist.diverged:
        return dict(val_loss=math.nan, val_acc=math.nan, test_acc=math.nan, history=hist)
    v, f = fit.to(device), final.to(device)
    val_loss, val_acc = loss_and_accuracy(model, v.x_test, v.y_test)
    if not math.isfinite(val_loss):
        return dict(val_loss=math.nan, val_acc=math.nan, test_acc=math.nan, history=hist)
    return dict(val_loss=val_loss, val_acc=val_acc, test_acc=accuracy(model, f.x_test, f.y_test),
                history=hist)


def best_config(make_model: Callable[[tuple], ModelFn], configs: Sequence[tuple], fit: Split,
                final: Split, seed: int, *, steps: int, batch_size: int, lr: float,
                device: torch.device | str = "cpu") -> dict:
    """Train ``make_model(config)`` for every configuration ``(depth, ...)`` and keep the one with
    the best validation accuracy (ties go to the shallower network; a diverged one is not eligible).

    Returns ``val`` / ``test`` accuracy and ``depth`` of the chosen network (``nan`` when every
    configuration diverged) and the per-configuration ``val_by_config`` / ``test_by_config``.
    """
    runs = [train_eval(make_model(c), fit, final, seed, steps=steps, batch_size=batch_size, lr=lr,
                       device=device) for c in configs]
    vals = [r["val_acc"] for r in runs]
    ok = [(v, -c[0], -i) for i, (v, c) in enumerate(zip(vals, configs)) if math.isfinite(v)]
    best = -max(ok)[2] if ok else None
    if best is None:
        return dict(val=math.nan, test=math.nan, depth=math.nan, val_by_config=vals,
                    test_by_config=[r["test_acc"] for r in runs])
    return dict(val=runs[best]["val_acc"], test=runs[best]["test_acc"], depth=float(configs[best][0]),
                val_by_config=vals, test_by_config=[r["test_acc"] for r in runs])


def cv_splits(name: str, n_folds: int = 5, seed: int = 0,
              dtype: torch.dtype = torch.float32) -> list[Split]:
    """Stratified k-fold splits of a bundled data set, each standardised with its training folds'
    statistics (constant features left at zero)."""
    x, y = load_arrays(name)
    out = []
    kf = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for tr, te in kf.split(x, y):
        mu, sd = x[tr].mean(0), x[tr].std(0)
        sd[sd == 0] = 1.0
        t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
        out.append(Split(name, t((x[tr] - mu) / sd, dtype), t(y[tr], torch.long),
                         t((x[te] - mu) / sd, dtype), t(y[te], torch.long), int(y.max()) + 1))
    return out


def cv_accuracy(make_model: ModelFn, folds: list[Split], seed: int, *, steps: int,
                batch_size: int, lr: float, momentum: float = 0.0,
                device: torch.device | str = "cpu") -> list[float]:
    """Test accuracy on each held-out fold after training on the others; ``nan`` for a diverged run."""
    accs = []
    for k, split in enumerate(folds):
        model, hist = train_classifier(make_model, split, seed * 1000 + k, steps=steps,
                                       batch_size=batch_size, lr=lr, momentum=momentum,
                                       device=device)
        s = split.to(device)
        accs.append(math.nan if hist.diverged else accuracy(model, s.x_test, s.y_test))
    return accs


def sklearn_cv_accuracy(make_estimator: Callable[[], object], folds: list[Split]) -> list[float]:
    """The same folds for a scikit-learn estimator (fit on the training part, score the test part)."""
    accs = []
    for split in folds:
        est = make_estimator()
        est.fit(split.x_train.numpy(), split.y_train.numpy())
        accs.append(float(est.score(split.x_test.numpy(), split.y_test.numpy())))
    return accs


def average_ranks(scores: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Average rank of each method over data sets: ``scores[method][dataset]`` (higher is better).

    Rank 1 is the best on a data set; ties share the mean of their ranks; ``nan`` ranks last.
    """
    methods = list(scores)
    datasets = list(next(iter(scores.values())))
    ranks = {m: [] for m in methods}
    for d in datasets:
        vals = np.array([scores[m][d] for m in methods], dtype=float)
        vals = np.where(np.isfinite(vals), vals, -np.inf)
        for i, m in enumerate(methods):
            better = np.sum(vals > vals[i])
            ties = np.sum(vals == vals[i])  # includes itself
            ranks[m].append(better + (ties + 1) / 2)
    return {m: float(np.mean(r)) for m, r in ranks.items()}
