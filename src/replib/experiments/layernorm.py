"""Training runs for the Layer Normalization chapter (Ba, Kiros & Hinton 2016, arXiv 1607.06450).

Each runner trains one model for one seed and returns what the claims need; the notebook loops
over variants and seeds. All runs use Adam; nothing here reads the test split to choose anything.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from ..data import lm_batches, minibatches
from ..data.tabular import Split
from ..nn import MLP, CharLSTM, LSTMClassifier, TinyCNN
from ..runtime import seed_everything
from ..train import History, train


def as_sequences(x: torch.Tensor, side: int = 8) -> torch.Tensor:
    """Flat ``side*side`` images as sequences of ``side`` rows: ``(N, T=side, d_in=side)``."""
    return x.view(x.shape[0], side, side)


def _classification_eval(model, x, y):
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y).item(),
            "error": (logits.argmax(-1) != y).float().mean().item()}


def run_seq_digits(norm: str, seed: int, split: Split, *, hidden: int, steps: int, batch_size: int,
                   lr: float, eval_every: int, grad_clip: float | None, device,
                   progress: bool = True) -> History:
    """Sequential digits: an LSTM reads the 8 rows of an 8x8 digit and classifies it.

    ``History.evals`` holds the held-out cross-entropy (``loss``) and error rate (``error``).
    """
    gen = seed_everything(seed)
    model = LSTMClassifier(split.x_train.shape[1] // 8, hidden, split.n_classes, norm).to(device)
    xtr, xte = as_sequences(split.x_train).to(device), as_sequences(split.x_test).to(device)
    ytr, yte = split.y_train.to(device), split.y_test.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return train(model, opt, minibatches(xtr, ytr, batch_size, gen),
                 lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps,
                 evaluate=lambda m: _classification_eval(m, xte, yte), eval_every=eval_every,
                 grad_clip=grad_clip, desc=f"digits {norm} s{seed}", progress=progress)


def run_char_lm(norm: str, seed: int, train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
                vocab_size: int, *, hidden: int, d_embed: int, steps: int, batch_size: int,
                seq_len: int, lr: float, eval_every: int, grad_clip: float | None, device,
                progress: bool = True) -> History:
    """Character language model on text; ``History.evals`` holds validation ``loss`` in nats/char."""
    gen = seed_everything(seed)
    model = CharLSTM(vocab_size, d_embed, hidden, norm).to(device)
    vx, vy = val

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten())

    def evaluate(m):
        return {"loss": F.cross_entropy(m(vx).flatten(0, 1), vy.flatten()).item()}

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return train(model, opt, lm_batches(train_tokens, batch_size, seq_len, gen, device), loss_fn,
                 steps, evaluate=evaluate, eval_every=eval_every, grad_clip=grad_clip,
                 desc=f"char-LM {norm} s{seed}", progress=progress)


def steps_to_target(hist: History, target: float, key: str = "loss") -> int | None:
    """First evaluated step at which ``key`` is at or below ``target`` (None: never)."""
    if hist.diverged:
        return None
    return hist.first_step_below(key, target)


def speedup_ratio(hist: History, baseline: History, key: str = "loss") -> tuple[float, bool]:
    """Steps for ``hist`` to reach the baseline's final ``key``, over the baseline's own steps.

    Returns ``(ratio, reached)``. A run that never reaches the target is censored at its whole
    budget (``reached=False``): the ratio is then a lower bound, which can only count against it.
    """
    target = baseline.final(key)
    base = steps_to_target(baseline, target, key)
    if base is None:  # the baseline diverged: no target
        return math.nan, False
    mine = steps_to_target(hist, target, key)
    if mine is None:
        return len(hist.loss) / base, False
    return mine / base, True


@dataclass
class TrainValTest:
    """A training split with a validation part carved out of it, and the untouched test split."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    n_classes: int


def carve_validation(split: Split, val_fraction: float = 0.2, seed: int = 0) -> TrainValTest:
    """Stratified validation split from the training set (for choosing the learning rate)."""
    xtr, xva, ytr, yva = train_test_split(split.x_train.numpy(), split.y_train.numpy(),
                                          test_size=val_fraction, random_state=seed,
                                          stratify=split.y_train.numpy())
    t = torch.as_tensor
    return TrainValTest(t(xtr), t(ytr), t(xva), t(yva), split.x_test, split.y_test, split.n_classes)


def run_mlp(norm: str, batch_size: int, lr: float, seed: int, data: TrainValTest, *, width: int,
            depth: int, epochs: int, device) -> dict[str, float]:
    """MLP ``d_in-width x depth-10`` with ``norm`` before each ReLU, ``epochs`` passes at ``batch_size``.

    Returns validation and test error (in eval mode: batch norm uses its running estimates) and
    ``nan`` errors when the run diverged.
    """
    gen = seed_everything(seed)
    model = MLP(data.x_train.shape[1], width, depth, data.n_classes, norm=norm).to(device)
    xtr, ytr = data.x_train.to(device), data.y_train.to(device)
    steps = epochs * (xtr.shape[0] // batch_size)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sets = {"val": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)}

    def evaluate(m):
        return {f"{k}_error": _classification_eval(m, x.to(device), y.to(device))["error"]
                for k, (x, y) in sets.items()}

    hist = train(model, opt, minibatches(xtr, ytr, batch_size, gen),
                 lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps, evaluate=evaluate,
                 progress=False)
    return {"val_error": hist.final("val_error"), "test_error": hist.final("test_error")}


def run_cnn(norm: str, seed: int, split: Split, *, epochs: int, batch_size: int, lr: float,
            device) -> History:
    """:class:`~replib.nn.TinyCNN` on 8x8 digits; held-out ``loss``/``error`` after every epoch."""
    gen = seed_everything(seed)
    model = TinyCNN(split.n_classes, norm).to(device)
    xtr, ytr = split.x_train.to(device), split.y_train.to(device)
    xte, yte = split.x_test.to(device), split.y_test.to(device)
    per_epoch = xtr.shape[0] // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return train(model, opt, minibatches(xtr, ytr, batch_size, gen),
                 lambda m, b: F.cross_entropy(m(b[0]), b[1]), epochs * per_epoch,
                 evaluate=lambda m: _classification_eval(m, xte, yte), eval_every=per_epoch,
                 desc=f"cnn {norm} s{seed}", progress=False)
