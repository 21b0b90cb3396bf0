r"""A small continual-learning harness on scikit-learn's digits (offline), shared by chapter 12
(Normalize-and-Project) and chapter 21 (AdaB²N).

**Plasticity under non-stationarity (chapter 12).** :func:`random_label_run`: a fixed subset of
digit images whose labels are re-drawn uniformly at random at every task switch (continual
random-label memorisation). The model, :class:`PlasticMLP`, is ``Linear -> norm -> ReLU`` per hidden
layer (the linear layer has no bias when a norm follows: the norm's offset makes it redundant)
and a linear head. Arms (``PLASTIC_ARMS``): no norm; LayerNorm; LayerNorm + projection (NaP,
:class:`replib.optim.nap.NaP`); no norm + L2 weight decay. Each task ends with the memorisation
accuracy on all its images, the per-layer weight norms, the effective learning rate and the
fraction of dormant ReLU units on a probe batch. :func:`lr_matched_runs` trains an LN-only network
with SGD, records :math:`\lVert W_l(t)\rVert`, then trains NaP with the layer-wise
:math:`\eta_l(t)=\eta\,\rho_l^2/\lVert W_l(t)\rVert^2` or a global schedule (chapter 12's C3).
:func:`stationary_run`: the same MLP on the ordinary (stationary) digits task.

**Class-incremental Split-Digits (chapter 21).** :func:`split_digits`: 5 tasks of 2 classes
(0/1, 2/3, ...), each with train/validation/test images. :func:`er_ace_run` trains online (one
pass, a stream batch of 10 plus a replay batch of 32 from a reservoir buffer) with ER-ACE as in the
official AdaB²N code (``models/er_ace_ada.py`` of lvyilin/AdaB2N @ 2536317): the stream loss is a
cross-entropy on logits masked to the classes present in the stream batch (and, while classes
remain unseen, to every class from the largest seen one on), the replay loss a plain
cross-entropy; AdaB²N's regulariser :math:`\lambda\sum L_{bn}` is added from task ``ada_t0`` on,
and every norm layer is told each sample's task before the forward on the concatenated batch.
The backbone (:class:`SplitCNN`) is three ``conv3x3 -> norm -> ReLU`` layers of 32 channels, global
average pooling, a linear head.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.tabular import load_arrays, load_tabular
from ..errors import ReplibError
from ..nn.adab2n import end_task, regulariser, set_batch_tasks
from ..nn.cnn import ChannelLast, ChannelLayerNorm
from ..nn.instrument import capture_activations, dormant_fraction, effective_lr, weight_norms
from ..nn.norms import create_norm
from ..optim.nap import NaP, nap_targets
from ..runtime import seed_everything, torch_threads

# --------------------------------------------------------------------------- chapter 12: plasticity
PLASTIC_ARMS = {  # label: (norm, project, weight decay)
    "no norm": ("identity", False, 0.0),
    "LN": ("layernorm", False, 0.0),
    "NaP": ("layernorm", True, 0.0),
    "no norm + L2": ("identity", False, 1e-4),
}


class PlasticMLP(nn.Module):
    """``depth`` hidden layers ``Linear -> norm -> ReLU`` and a linear head (PyTorch's default init)."""

    def __init__(self, d_in: int, width: int, depth: int, d_out: int, norm: str = "identity"):
        super().__init__()
        self.hidden = nn.ModuleList()
        for i in range(depth):
            self.hidden.append(nn.Sequential(
                nn.Linear(d_in if i == 0 else width, width, bias=norm == "identity"),
                create_norm(norm, width), nn.ReLU()))
        self.head = nn.Linear(width, d_out)

    def weights(self) -> list[torch.Tensor]:
        return [layer[0].weight for layer in self.hidden]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.hidden:
            x = layer(x)
        return self.head(x)


def plastic_model(arm: str, d_in: int, width: int, depth: int, d_out: int = 10) -> PlasticMLP:
    if arm not in PLASTIC_ARMS:
        raise ReplibError(f"unknown arm {arm!r}; valid: {', '.join(PLASTIC_ARMS)}")
    return PlasticMLP(d_in, width, depth, d_out, PLASTIC_ARMS[arm][0])


def make_optimizer(model: PlasticMLP, arm: str, lr: float, kind: str = "adam",
                   scale_offset: bool = True) -> torch.optim.Optimizer:
    """Adam (or SGD) with the arm's weight decay, wrapped in NaP for the NaP arm."""
    _, project, wd = PLASTIC_ARMS[arm]
    if kind == "adam":
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=wd)
    elif kind == "sgd":
        opt = torch.optim.SGD(model.parameters(), lr=lr, weight_decay=wd)
    else:
        raise ReplibError(f"unknown optimizer kind {kind!r}; valid: adam, sgd")
    if project:
        projected, pairs = nap_targets(model, scale_offset=scale_offset)
        opt = NaP(opt, projected, pairs)
    return opt


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    was = model.training
    model.eval()
    acc = float((model(x).argmax(-1) == y).float().mean())
    model.train(was)
    return acc


@torch.no_grad()
def probe_dormant(model: nn.Module, x: torch.Tensor, tau: float = 0.0) -> float:
    with capture_activations(model) as acts:
        model(x)
    return dormant_fraction(acts, tau)


def memorisation_images(n_images: int, seed: int = 0) -> torch.Tensor:
    """``n_images`` digit images (64 pixels scaled to [0, 1]) drawn once with ``seed``."""
    x, _ = load_arrays("digits")
    idx = np.random.default_rng(seed).permutation(len(x))[:n_images]
    return torch.as_tensor(x[idx] / 16.0, dtype=torch.float32)


def random_label_run(arm: str, lr: float, seed: int, *, n_images: int = 1000, tasks: int = 30,
                     steps_per_task: int = 500, batch_size: int = 64, width: int = 256, depth: int = 3,
                     probe: int = 512, device: str | torch.device = "cpu", threads: int | None = 1) -> dict:
    """Continual random-label memorisation (the spec's C1/C2 experiment) with Adam.

    Per task: ``acc`` (memorisation accuracy on all images, after the task), ``norms`` (per hidden
    layer :math:`\\lVert W\\rVert_F`), ``elr`` (Adam's :math:`\\eta/\\lVert W\\rVert`), ``dormant``
    (fraction of ReLU units zero on all of ``probe`` images). The seed fixes the initialisation,
    the label draws and the batch order, the same for every arm.
    """
    device = torch.device(device)
    with torch_threads(threads if device.type == "cpu" else None):
        x = memorisation_images(n_images).to(device)
        gen = seed_everything(seed)
        model = plastic_model(arm, x.shape[1], width, depth).to(device)
        opt = make_optimizer(model, arm, lr, "adam")
        init = weight_norms(model.weights())
        out = {"acc": [], "norms": [], "elr": [], "dormant": [], "loss": []}
        t0 = time.process_time()
        for _ in range(tasks):
            y = torch.randint(0, 10, (n_images,), generator=gen).to(device)
            for _ in range(steps_per_task):
                idx = torch.randint(0, n_images, (batch_size,), generator=gen).to(device)
                loss = F.cross_entropy(model(x[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            if not torch.isfinite(loss):
                return {**{k: [math.nan] * tasks for k in out}, "init_norms": init, "diverged": True,
                        "mean_acc": math.nan}
            norms = weight_norms(model.weights())
            out["acc"].append(accuracy(model, x, y))
            out["norms"].append(norms)
            out["elr"].append(effective_lr(lr, norms, "adam"))
            out["dormant"].append(probe_dormant(model, x[:probe]))
            out["loss"].append(float(loss.detach()))
        out["cpu_s"] = time.process_time() - t0
    out["init_norms"] = init
    out["mean_acc"] = float(np.mean(out["acc"]))
    return out


def early_late(acc: list[float], frac: float = 0.2) -> tuple[float, float]:
    """Mean accuracy over the first and the last ``frac`` of tasks (at least one task each)."""
    k = max(1, int(round(len(acc) * frac)))
    return float(np.mean(acc[:k])), float(np.mean(acc[-k:]))


def lr_matched_runs(seed: int, lr: float, *, n_images: int = 1000, tasks: int = 5, steps_per_task: int = 300,
                    batch_size: int = 64, width: int = 256, depth: int = 3, log_every: int = 50,
                    device: str | torch.device = "cpu", threads: int | None = 1) -> dict:
    r"""Chapter 12's C3 with SGD: an LN-only run records :math:`\lVert W_l(t)\rVert` before every step;
    NaP (weights projected, :math:`\gamma,\beta` free, as LN-only leaves them) then trains with
    the same seed, data and batches at

    - ``layerwise``: :math:`\eta_l(t) = \eta\,\rho_l^2/\lVert W_l(t)\rVert^2` for hidden layer
      :math:`l` (exactly LN-only's effective learning rate on the sphere),
    - ``global``: one factor for every hidden layer,
      :math:`\eta\,\sum_l\rho_l^2/\sum_l\lVert W_l(t)\rVert^2`,
    - ``constant``: :math:`\eta` (plain NaP),

    while the head and :math:`\gamma,\beta` keep :math:`\eta`. Returns each run's accuracy curve on all
    images (every ``log_every`` steps) and LN-only's norms.
    """
    device = torch.device(device)
    x = memorisation_images(n_images).to(device)
    total = tasks * steps_per_task

    def run(mode: str, ln_norms: list[list[float]] | None):
        gen = seed_everything(seed)
        arm = "LN" if mode == "LN" else "NaP"
        model = plastic_model(arm, x.shape[1], width, depth).to(device)
        ws = model.weights()
        rest = [p for p in model.parameters() if all(p is not w for w in ws)]
        base = torch.optim.SGD([{"params": [w]} for w in ws] + [{"params": rest}], lr=lr)
        opt = base if arm == "LN" else NaP(base, [(w,) for w in ws])
        rho2 = [n ** 2 for n in weight_norms(ws)]
        norms, curve, steps = [], [], []
        y = None
        for t in range(total):
            if t % steps_per_task == 0:
                y = torch.randint(0, 10, (n_images,), generator=gen).to(device)
            idx = torch.randint(0, n_images, (batch_size,), generator=gen).to(device)
            if mode == "LN":
                norms.append(weight_norms(ws))
            elif mode != "constant":
                sq = [n ** 2 for n in ln_norms[t]]
                factors = ([r / s for r, s in zip(rho2, sq)] if mode == "layerwise"
                           else [sum(rho2) / sum(sq)] * len(ws))
                for g, f in zip(base.param_groups[:len(ws)], factors):
                    g["lr"] = lr * f
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if (t + 1) % log_every == 0:
                steps.append(t + 1)
                curve.append(accuracy(model, x, y))
        return curve, steps, norms

    with torch_threads(threads if device.type == "cpu" else None):
        ln_curve, steps, ln_norms = run("LN", None)
        out = {"steps": steps, "LN": ln_curve, "ln_norms": ln_norms}
        for mode in ("layerwise", "global", "constant"):
            out[mode] = run(mode, ln_norms)[0]
    return out


def layerwise_direction_gap(seed: int, lr: float, *, steps: int = 200, ln_eps: float | None = None,
                            n_images: int = 300, width: int = 64, depth: int = 3, batch_size: int = 64) -> float:
    r"""C3's identity in float64: the largest gap, over ``steps`` SGD steps and hidden layers, between
    the weight directions :math:`W/\lVert W\rVert` of LN-only and of NaP at the layer-wise rate
    :math:`\eta\rho_l^2/\lVert W_l(t)\rVert^2`. With ``ln_eps=0`` every layer is exactly
    scale-invariant and the gap is rounding (~1e-16); LayerNorm's default ``eps`` breaks the invariance
    slightly, which is what lets the float32 curves of :func:`lr_matched_runs` drift apart."""
    x = memorisation_images(n_images).double()
    runs = []
    for mode in ("LN", "layerwise"):
        gen = seed_everything(seed)
        model = plastic_model("LN" if mode == "LN" else "NaP", x.shape[1], width, depth).double()
        if ln_eps is not None:
            for layer in model.hidden:
                layer[1].eps = ln_eps
        ws = model.weights()
        rest = [p for p in model.parameters() if all(p is not w for w in ws)]
        base = torch.optim.SGD([{"params": [w]} for w in ws] + [{"params": rest}], lr=lr)
        opt = base if mode == "LN" else NaP(base, [(w,) for w in ws])
        rho2 = [n ** 2 for n in weight_norms(ws)]
        y = torch.randint(0, 10, (n_images,), generator=gen)
        norms, dirs = [], []
        for t in range(steps):
            idx = torch.randint(0, n_images, (batch_size,), generator=gen)
            if mode == "LN":
                norms.append(weight_norms(ws))
            else:
                for g, r2, n in zip(base.param_groups, rho2, runs[0][0][t]):
                    g["lr"] = lr * r2 / n ** 2
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            dirs.append([(w / w.norm()).detach().clone() for w in ws])
        runs.append((norms, dirs))
    return max(float((a - b).abs().max()) for da, db in zip(runs[0][1], runs[1][1]) for a, b in zip(da, db))


def stationary_run(arm: str, lr: float, seed: int, *, epochs: int = 20, batch_size: int = 64, width: int = 256,
                   depth: int = 3, device: str | torch.device = "cpu", threads: int | None = 1) -> dict:
    """The MLP on ordinary digits classification (stratified 80/20 train/test, seed 0; 20 % of the
    training images held out for validation, seed 0), Adam, ``epochs`` passes. Returns validation
    and test accuracy and test cross-entropy at the end, and ``norm_growth``: each hidden layer's
    final over initial weight norm (what NaP's projection undoes; 1 under NaP)."""
    device = torch.device(device)
    split = load_tabular("digits", seed=0)
    n_val = len(split.x_train) // 5
    perm = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(0))
    xv, yv = split.x_train[perm[:n_val]].to(device), split.y_train[perm[:n_val]].to(device)
    xt, yt = split.x_train[perm[n_val:]].to(device), split.y_train[perm[n_val:]].to(device)
    xs, ys = split.x_test.to(device), split.y_test.to(device)
    with torch_threads(threads if device.type == "cpu" else None):
        gen = seed_everything(seed)
        model = plastic_model(arm, xt.shape[1], width, depth).to(device)
        opt = make_optimizer(model, arm, lr, "adam")
        norms0 = weight_norms(model.weights())
        losses = []
        for _ in range(epochs):
            p = torch.randperm(len(xt), generator=gen).to(device)
            for i in range(0, len(xt) - batch_size + 1, batch_size):
                idx = p[i:i + batch_size]
                loss = F.cross_entropy(model(xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            losses.append(float(loss))
        if not math.isfinite(losses[-1]):
            return {"val": math.nan, "test": math.nan, "losses": losses}
        with torch.no_grad():
            model.eval()
            test_loss = float(F.cross_entropy(model(xs), ys))
        growth = [n / n0 for n, n0 in zip(weight_norms(model.weights()), norms0)]
        return {"val": accuracy(model, xv, yv), "test": accuracy(model, xs, ys), "test_loss": test_loss,
                "norm_growth": growth, "losses": losses}


# --------------------------------------------------------------------------- chapter 21: Split-Digits
@dataclass
class SplitDigits:
    """Class-incremental digits: ``tasks[t]`` holds train/val/test tensors for classes (2t, 2t+1)."""

    tasks: list[dict[str, torch.Tensor]]
    classes_per_task: int

    @property
    def n_classes(self) -> int:
        return len(self.tasks) * self.classes_per_task

    def to(self, device) -> "SplitDigits":
        return SplitDigits([{k: v.to(device) for k, v in t.items()} for t in self.tasks], self.classes_per_task)


def split_digits(n_tasks: int = 5, val_fraction: float = 0.2) -> SplitDigits:
    """Digits (standardised with the training split's statistics, as 1x8x8 images) cut into
    ``n_tasks`` tasks of ``10 // n_tasks`` classes; test: the stratified 20 % (seed 0), validation:
    ``val_fraction`` of the training images (seed 0)."""
    if 10 % n_tasks:
        raise ReplibError(f"10 classes do not split into {n_tasks} equal tasks")
    cpt = 10 // n_tasks
    split = load_tabular("digits", seed=0)
    n_val = int(len(split.x_train) * val_fraction)
    perm = torch.randperm(len(split.x_train), generator=torch.Generator().manual_seed(0))
    parts = {"train": (split.x_train[perm[n_val:]], split.y_train[perm[n_val:]]),
             "val": (split.x_train[perm[:n_val]], split.y_train[perm[:n_val]]),
             "test": (split.x_test, split.y_test)}
    tasks = []
    for t in range(n_tasks):
        entry = {}
        for name, (x, y) in parts.items():
            keep = (y // cpt) == t
            entry[f"x_{name}"] = x[keep].view(-1, 1, 8, 8)
            entry[f"y_{name}"] = y[keep]
        tasks.append(entry)
    return SplitDigits(tasks, cpt)


CL_NORMS = ("batchnorm", "adab2n", "groupnorm", "layernorm", "none")


def conv_norm(norm: str, channels: int, **kw) -> nn.Module:
    if norm in ("batchnorm", "adab2n"):
        return ChannelLast(create_norm(norm, channels, **kw))
    if norm == "groupnorm":
        return nn.GroupNorm(kw.get("groups", 4), channels)
    if norm == "layernorm":
        return ChannelLayerNorm(channels)
    if norm == "none":
        return nn.Identity()
    raise ReplibError(f"unknown norm {norm!r}; valid: {', '.join(CL_NORMS)}")


class SplitCNN(nn.Module):
    """``layers`` x (conv3x3 ``channels`` -> norm -> ReLU) on 1x8x8 images, global pool, linear head."""

    def __init__(self, norm: str = "batchnorm", channels: int = 32, layers: int = 3, n_classes: int = 10,
                 **norm_kw):
        super().__init__()
        blocks = []
        for i in range(layers):
            blocks += [nn.Conv2d(1 if i == 0 else channels, channels, 3, padding=1),
                       conv_norm(norm, channels, **norm_kw), nn.ReLU()]
        self.features = nn.Sequential(*blocks)
        self.head = nn.Linear(channels, n_classes)

    def norms(self) -> list[nn.Module]:
        return [m for m in self.features if isinstance(m, (ChannelLast, nn.GroupNorm, ChannelLayerNorm))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


class Reservoir:
    """Reservoir-sampling replay buffer (mammoth's ``Buffer``): every stream example seen so far
    has the same chance to be held; ``sample`` draws without replacement."""

    def __init__(self, size: int, generator: torch.Generator):
        self.size, self.gen, self.seen = size, generator, 0
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def __len__(self) -> int:
        return min(self.seen, self.size)

    def add(self, x: torch.Tensor, y: torch.Tensor) -> None:
        if self.x is None:
            self.x = torch.zeros((self.size, *x.shape[1:]), dtype=x.dtype, device=x.device)
            self.y = torch.zeros(self.size, dtype=y.dtype, device=y.device)
        for i in range(len(x)):
            if self.seen < self.size:
                j = self.seen
            else:
                j = int(torch.randint(0, self.seen + 1, (1,), generator=self.gen))
            if j < self.size:
                self.x[j], self.y[j] = x[i], y[i]
            self.seen += 1

    def sample(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if n == 0:
            raise ReplibError("the replay buffer is empty")
        idx = torch.randperm(n, generator=self.gen)[:min(k, n)].to(self.x.device)
        return self.x[idx], self.y[idx]


def stream_mask(logits: torch.Tensor, present: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """ER-ACE's mask on the stream logits (official ``er_ace_ada.py``): the classes present in the
    stream batch, and, while some classes are still unseen, every class from the largest seen on."""
    mask = torch.zeros_like(logits)
    mask[:, present] = 1
    top = int(seen.max())
    if top < logits.shape[1] - 1:
        mask[:, top:] = 1
    return mask


def er_ace_loss(logits: torch.Tensor, ys: torch.Tensor, replay_logits: torch.Tensor, replay_y: torch.Tensor,
                seen: torch.Tensor) -> torch.Tensor:
    """Masked cross-entropy on the stream batch plus plain cross-entropy on the replay batch."""
    mask = stream_mask(logits, ys.unique(), seen)
    masked = logits.masked_fill(mask == 0, torch.finfo(logits.dtype).min)
    return F.cross_entropy(masked, ys) + F.cross_entropy(replay_logits, replay_y)


@dataclass(frozen=True)
class CLArm:
    """A Split-Digits arm: the norm, its keyword arguments, AdaB²N's lambda and whether the task
    weights learn."""

    norm: str
    norm_kw: tuple = ()
    lam: float = 0.0
    ada_t0: int = 0
    freeze_task_weight: bool = False


def cl_arms(kappas=(0.1, 0.4, 1.0), lambdas=(0.1, 1.0)) -> dict[str, CLArm]:
    """BN, GN(4 groups), LN, AdaB²N at every (kappa, lambda), and the spec's kappa-only ablation
    (kappa 0.4, lambda 0, task weights frozen). AdaB²N at kappa 1 is the balanced-batch-only
    ablation."""
    arms = {"BN": CLArm("batchnorm"), "GN": CLArm("groupnorm"), "LN": CLArm("layernorm")}
    for k in kappas:
        for lam in lambdas:
            arms[f"AdaB2N k={k:g} l={lam:g}"] = CLArm("adab2n", (("kappa", k),), lam)
    arms["kappa-only k=0.4"] = CLArm("adab2n", (("kappa", 0.4),), 0.0, freeze_task_weight=True)
    return arms


@torch.no_grad()
def recency_gap(model: SplitCNN, data: SplitDigits) -> float:
    r"""Recency bias of the last norm layer's running mean: the mean over channels of
    :math:`|r_{\mu,c} - \mu_c| / \sigma_c`, where :math:`\mu_c,\sigma_c` are the mean and standard
    deviation of that layer's input over the training images of *all* tasks (eval mode, so earlier
    layers use their running statistics). NaN for norms without running statistics."""
    if not model.norms():
        return math.nan
    last = model.norms()[-1]
    inner = getattr(last, "norm", None)
    if inner is None or not hasattr(inner, "running_mean"):
        return math.nan
    x = torch.cat([t["x_train"] for t in data.tasks])
    was = model.training
    model.eval()
    feats = []
    h = last.register_forward_pre_hook(lambda m, args: feats.append(args[0]))
    model(x)
    h.remove()
    model.train(was)
    f = feats[0].transpose(0, 1).reshape(feats[0].shape[1], -1)  # (C, N*H*W)
    mu, sd = f.mean(1), f.std(1).clamp_min(1e-8)
    return float(((inner.running_mean - mu).abs() / sd).mean())


def er_ace_run(arm: CLArm, lr: float, seed: int, data: SplitDigits, *, buffer_size: int = 200,
               stream_batch: int = 10, replay_batch: int = 32, channels: int = 32, layers: int = 3,
               device: str | torch.device = "cpu", threads: int | None = 1) -> dict:
    """One online class-incremental run (ER-ACE, one pass) on Split-Digits.

    Returns the accuracy matrices ``acc_val``/``acc_test`` (row: after task i, column: task j),
    ``val``/``test`` (final average accuracy over all tasks), ``forgetting`` (test; mean over
    all but the last task of the best earlier accuracy minus the final one), ``gap``
    (:func:`recency_gap`), ``step_s`` (mean seconds per training step), ``diverged`` and, for
    AdaB²N, the last norm layer's learned ``task_weight``.
    """
    device = torch.device(device)
    data = data.to(device)
    T, cpt, C = len(data.tasks), data.classes_per_task, data.n_classes
    with torch_threads(threads if device.type == "cpu" else None):
        gen = seed_everything(seed)
        kw = dict(arm.norm_kw)
        if arm.norm == "adab2n":
            kw["num_tasks"] = T
        model = SplitCNN(arm.norm, channels, layers, C, **kw).to(device)
        if arm.freeze_task_weight:
            for name, p in model.named_parameters():
                if name.endswith("task_weight"):
                    p.requires_grad_(False)
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
        buf = Reservoir(buffer_size, gen)
        seen = torch.zeros(0, dtype=torch.long, device=device)
        acc = {"val": np.full((T, T), np.nan), "test": np.full((T, T), np.nan)}
        steps, train_s, diverged = 0, 0.0, False
        model.train()
        for t, task in enumerate(data.tasks):
            x, y = task["x_train"], task["y_train"]
            order = torch.randperm(len(x), generator=gen).to(device)
            for i in range(0, len(x), stream_batch):
                t0 = time.perf_counter()
                idx = order[i:i + stream_batch]
                if len(idx) < 2:
                    continue
                xs, ys = x[idx], y[idx]
                present = ys.unique()
                seen = torch.cat([seen, present]).unique()
                if t > 0:
                    bx, by = buf.sample(replay_batch)
                    allx, ally = torch.cat([xs, bx]), torch.cat([ys, by])
                    set_batch_tasks(model, ally // cpt)
                    out = model(allx)
                    loss = er_ace_loss(out[:len(xs)], ys, out[len(xs):], by, seen)
                    if arm.lam and t >= arm.ada_t0:
                        loss = loss + arm.lam * regulariser(model)
                else:
                    set_batch_tasks(model, None)
                    loss = F.cross_entropy(model(xs), ys)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                buf.add(xs, ys)
                train_s += time.perf_counter() - t0
                steps += 1
                if not torch.isfinite(loss):
                    diverged = True
                    break
            if diverged:
                break
            end_task(model)
            for split in ("val", "test"):
                for j in range(t + 1):
                    acc[split][t, j] = accuracy(model, data.tasks[j][f"x_{split}"], data.tasks[j][f"y_{split}"])
        if diverged:
            return {"val": math.nan, "test": math.nan, "forgetting": math.nan, "gap": math.nan,
                    "acc_val": acc["val"].tolist(), "acc_test": acc["test"].tolist(), "step_s": math.nan,
                    "diverged": True}
        gap = recency_gap(model, data)
        tws = [p.detach().cpu().tolist() for n, p in model.named_parameters() if n.endswith("task_weight")]
    final = acc["test"][-1]
    forgetting = float(np.mean([np.nanmax(acc["test"][j:T - 1, j]) - final[j] for j in range(T - 1)]))
    return {"val": float(np.mean(acc["val"][-1])), "test": float(np.mean(final)), "forgetting": forgetting,
            "gap": gap, "acc_val": acc["val"].tolist(), "acc_test": acc["test"].tolist(),
            "step_s": train_s / max(steps, 1), "steps": steps, "diverged": False,
            "task_weight": tws[-1] if tws else None}
