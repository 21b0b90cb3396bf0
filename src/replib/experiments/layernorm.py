"""Training runs for the Layer Normalization chapter (Ba, Kiros & Hinton 2016, arXiv 1607.06450).

Each runner trains one model for one seed and learning rate and evaluates it on a validation split
(where the chapter chooses learning rates, :func:`replib.lr_sweep`) and a test split (where the
claims are judged); :func:`sweep_runner` adapts a runner to ``lr_sweep``. All runs use Adam;
nothing here reads the test split to choose anything. The chapter's tiered rules combine paired
intervals with :mod:`replib.claims` (:func:`~replib.claims.at_most`, :func:`~replib.claims.all_of`,
:func:`~replib.claims.graded`, ...).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

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


def _split_eval(model, data: "TrainValTest", transform=lambda x: x, device="cpu") -> dict[str, float]:
    out = {}
    for k, (x, y) in {"val": (data.x_val, data.y_val), "test": (data.x_test, data.y_test)}.items():
        for name, v in _classification_eval(model, transform(x).to(device), y.to(device)).items():
            out[f"{k}_{name}"] = v
    return out


def run_seq_digits(norm: str, seed: int, data: "TrainValTest", *, hidden: int, steps: int,
                   batch_size: int, lr: float, eval_every: int, grad_clip: float | None, device,
                   progress: bool = True) -> History:
    """Sequential digits: an LSTM reads the 8 rows of an 8x8 digit and classifies it.

    ``History.evals`` holds ``val_loss``/``val_error`` (validation split carved from training) and
    ``test_loss``/``test_error`` (the held-out test split).
    """
    gen = seed_everything(seed)
    model = LSTMClassifier(data.x_train.shape[1] // 8, hidden, data.n_classes, norm).to(device)
    xtr, ytr = as_sequences(data.x_train).to(device), data.y_train.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return train(model, opt, minibatches(xtr, ytr, batch_size, gen),
                 lambda m, b: F.cross_entropy(m(b[0]), b[1]), steps,
                 evaluate=lambda m: _split_eval(m, data, as_sequences, device), eval_every=eval_every,
                 grad_clip=grad_clip, desc=f"digits {norm} s{seed}", progress=progress)


def run_char_lm(norm: str, seed: int, train_tokens: torch.Tensor, val: tuple[torch.Tensor, torch.Tensor],
                test: tuple[torch.Tensor, torch.Tensor], vocab_size: int, *, hidden: int, d_embed: int,
                steps: int, batch_size: int, seq_len: int, lr: float, eval_every: int,
                grad_clip: float | None, device, progress: bool = True) -> History:
    """Character language model on text; ``History.evals`` holds ``val_loss`` and ``test_loss`` in
    nats/char (the two held-out window sets)."""
    gen = seed_everything(seed)
    model = CharLSTM(vocab_size, d_embed, hidden, norm).to(device)

    def loss_fn(m, b):
        return F.cross_entropy(m(b[0]).flatten(0, 1), b[1].flatten())

    def evaluate(m):
        return {f"{k}_loss": F.cross_entropy(m(x).flatten(0, 1), y.flatten()).item()
                for k, (x, y) in {"val": val, "test": test}.items()}

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return train(model, opt, lm_batches(train_tokens, batch_size, seq_len, gen, device), loss_fn,
                 steps, evaluate=evaluate, eval_every=eval_every, grad_clip=grad_clip,
                 desc=f"char-LM {norm} s{seed}", progress=progress)


def sweep_runner(task: Callable[..., History], store: dict, **kw: Any
                 ) -> Callable[[str, float, int], dict[str, Any]]:
    """``run(arm, lr, seed)`` for :func:`replib.lr_sweep` from a runner returning a
    :class:`~replib.train.History` with ``val_loss``/``test_loss``: the history is kept in
    ``store[arm, lr, seed]``; the sweep gets the final ``val`` and ``test`` losses (NaN if the run
    diverged) and the validation curve."""
    def run(arm: str, lr: float, seed: int) -> dict[str, Any]:
        h = task(arm, seed, lr=lr, **kw)
        store[arm, lr, seed] = h
        return {"val": h.final("val_loss"), "test": h.final("test_loss"), "curve": h.eval_series("val_loss")[1]}
    return run


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
            depth: int, epochs: int, device) -> dict[str, Any]:
    """MLP ``d_in-width x depth-10`` with ``norm`` before each ReLU, ``epochs`` passes at ``batch_size``.

    Returns the final validation and test error in percent (in eval mode: batch norm uses its running
    estimates; NaN when the run diverged) and the validation loss after every epoch (``curve``).
    """
    gen = seed_everything(seed)
    model = MLP(data.x_train.shape[1], width, depth, data.n_classes, norm=norm).to(device)
    xtr, ytr = data.x_train.to(device), data.y_train.to(device)
    per_epoch = xtr.shape[0] // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    hist = train(model, opt, minibatches(xtr, ytr, batch_size, gen),
                 lambda m, b: F.cross_entropy(m(b[0]), b[1]), epochs * per_epoch,
                 evaluate=lambda m: _split_eval(m, data, device=device), eval_every=per_epoch,
                 progress=False)
    return {"val": 100 * hist.final("val_error"), "test": 100 * hist.final("test_error"),
            "curve": hist.eval_series("val_loss")[1]}


def run_cnn(norm: str, seed: int, data: TrainValTest, *, epochs: int, batch_size: int, lr: float,
            device) -> History:
    """:class:`~replib.nn.TinyCNN` on 8x8 digits; ``val_``/``test_`` ``loss``/``error`` after every epoch."""
    gen = seed_everything(seed)
    model = TinyCNN(data.n_classes, norm).to(device)
    xtr, ytr = data.x_train.to(device), data.y_train.to(device)
    per_epoch = xtr.shape[0] // batch_size
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    return train(model, opt, minibatches(xtr, ytr, batch_size, gen),
                 lambda m, b: F.cross_entropy(m(b[0]), b[1]), epochs * per_epoch,
                 evaluate=lambda m: _split_eval(m, data, device=device), eval_every=per_epoch,
                 desc=f"cnn {norm} s{seed}", progress=False)


def cnn_sweep_runner(data: TrainValTest, store: dict, *, early_epoch: int, **kw: Any
                     ) -> Callable[[str, float, int], dict[str, Any]]:
    """``run(norm, lr, seed)`` for :func:`replib.lr_sweep`: one :func:`run_cnn`, kept in
    ``store[norm, lr, seed]``; ``val``/``test`` are the held-out losses after ``early_epoch`` epochs
    (the claim's fixed early epoch), ``curve`` the validation loss after every epoch."""
    def run(norm: str, lr: float, seed: int) -> dict[str, Any]:
        h = run_cnn(norm, seed, data, lr=lr, **kw)
        store[norm, lr, seed] = h
        return {"val": at_epoch(h, "val_loss", early_epoch), "test": at_epoch(h, "test_loss", early_epoch),
                "curve": h.eval_series("val_loss")[1]}
    return run


def at_epoch(hist: History, key: str, epoch: int) -> float:
    """``key`` after ``epoch`` epochs (evaluations run once per epoch); NaN if the run diverged before."""
    _, values = hist.eval_series(key)
    return values[epoch - 1] if len(values) >= epoch else math.nan


def findings_markdown(claims: dict, *, scale: str) -> Any:
    """The chapter's "What we learned", computed from this run's verdicts and numbers (so it stays
    true whatever they are)."""
    from IPython.display import Markdown

    from ..claims import Stat, paired

    def interval(values, ref=None, unit=""):
        p = paired(values, ref if ref is not None else [0.0] * len(values))
        lo, hi = p.interval
        return f"{p.mean:+.3g}{unit} (95% interval [{lo:+.3g}, {hi:+.3g}], {p.n} seed{'s' * (p.n != 1)})"

    lines = []
    if "C1" in claims:
        m = claims["C1"].metrics
        worst = max(s.max for k, s in m.items() if "should change" not in k)
        lines.append(f"**C1 ({claims['C1'].verdict.value}).** The invariances hold to {worst:.1e} (the residue "
                     "is the epsilon inside the square root); scaling one unit's weights changes the output by "
                     f"{m['scale one row (should change)'].min:.2g} or more. True by construction, so not a replication.")
    if "C2" in claims:
        c, m = claims["C2"], claims["C2"].metrics
        parts = [f"{t}: LN-LSTM needs {Stat.of(m[f'{t} LN/LSTM steps ratio'].values).mean:.2f}x the plain LSTM's steps"
                 for t in ("digits", "char") if f"{t} LN/LSTM steps ratio" in m]
        lines.append(f"**C2 ({c.verdict.value}).** " + "; ".join(parts) + " to reach the plain LSTM's final test "
                     "loss (below 1 is faster). " + (c.qualifiers[0] + "." if c.qualifiers else ""))
    if "C3" in claims and "LN error b4 (%)" in claims["C3"].metrics:
        c, m = claims["C3"], claims["C3"].metrics
        lines.append(f"**C3 ({c.verdict.value}).** Going from batch 128 to batch 4 changes LN's test error by "
                     f"{interval(m['LN error b4 (%)'].values, m['LN error b128 (%)'].values, ' pt')} and BN's by "
                     f"{interval(m['BN error b4 (%)'].values, m['BN error b128 (%)'].values, ' pt')} "
                     "(the spec asks for at most +1 pt and at least +2 pt).")
    if "C4" in claims:
        c, m = claims["C4"], claims["C4"].metrics
        lines.append(f"**C4 ({c.verdict.value}).** Test loss at the early epoch: BN − LN = "
                     f"{interval(m['BN loss'].values, m['LN loss'].values)} nats, LN − none = "
                     f"{interval(m['LN loss'].values, m['none loss'].values)} nats (the paper: both negative).")
    under = [f"{cid}: {q}" for cid, c in claims.items() for q in c.qualifiers if q.startswith("under-trained")]
    if under:
        lines.append("**Under-training.** " + " ".join(under))
    text = "\n".join(f"- {line}" for line in lines)
    if scale == "smoke":
        text += "\n\n*Smoke scale: a pipeline check, not a result.*"
    return Markdown(text)
