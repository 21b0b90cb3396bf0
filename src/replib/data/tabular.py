"""scikit-learn's bundled tabular data sets (offline), split and standardised as tensors."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn import datasets
from sklearn.model_selection import train_test_split

from ..errors import ReplibError


def _diabetes_binary():
    x, y = datasets.load_diabetes(return_X_y=True)
    return x, (y > np.median(y)).astype(int)  # above-median disease progression


LOADERS = {
    "digits": lambda: datasets.load_digits(return_X_y=True),
    "breast_cancer": lambda: datasets.load_breast_cancer(return_X_y=True),
    "wine": lambda: datasets.load_wine(return_X_y=True),
    "iris": lambda: datasets.load_iris(return_X_y=True),
    "diabetes_binary": _diabetes_binary,
}


@dataclass
class Split:
    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    def to(self, device) -> "Split":
        return Split(self.name, *(t.to(device) for t in
                     (self.x_train, self.y_train, self.x_test, self.y_test)), self.n_classes)


def load_arrays(name: str) -> tuple[np.ndarray, np.ndarray]:
    if name not in LOADERS:
        raise ReplibError(f"unknown tabular data set {name!r}; valid: {', '.join(LOADERS)}")
    x, y = LOADERS[name]()
    return np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.int64)


def load_tabular(name: str, test_size: float = 0.2, seed: int = 0, standardize: bool = True,
                 dtype: torch.dtype = torch.float32) -> Split:
    """A stratified train/test split; features standardised with the training split's statistics
    (constant features are left at zero rather than divided by zero)."""
    x, y = load_arrays(name)
    xtr, xte, ytr, yte = train_test_split(x, y, test_size=test_size, random_state=seed, stratify=y)
    if standardize:
        mu, sd = xtr.mean(0), xtr.std(0)
        sd[sd == 0] = 1.0
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    t = lambda a, dt: torch.as_tensor(a, dtype=dt)  # noqa: E731
    return Split(name, t(xtr, dtype), t(ytr, torch.long), t(xte, dtype), t(yte, torch.long),
                 int(y.max()) + 1)


def minibatches(x: torch.Tensor, y: torch.Tensor, batch_size: int, generator: torch.Generator):
    """Endless shuffled minibatches, a fresh permutation each epoch (the last partial batch is dropped)."""
    n = x.shape[0]
    if batch_size > n:
        raise ReplibError(f"batch size {batch_size} exceeds the {n} examples")
    while True:
        perm = torch.randperm(n, generator=generator).to(x.device)
        for i in range(0, n - batch_size + 1, batch_size):
            idx = perm[i:i + batch_size]
            yield x[idx], y[idx]
