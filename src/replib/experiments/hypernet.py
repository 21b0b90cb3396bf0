r"""Chapter 01 (MIP hypernetworks, Ortiz et al., arXiv 2304.07645): the runners behind its claims.

The task (the spec's scaled analog): a hypernetwork conditioned on a regularisation strength
:math:`\gamma\sim U(0,1)` (one draw per step) predicts every weight and bias of a primary MLP
64-128-128-10 (LeakyReLU) that classifies ``load_digits``; the loss is
:math:`\mathrm{CE}(f(x;\theta(\gamma)),y)+\gamma\,c\,\lVert\theta(\gamma)\rVert^2` with :math:`c=10^{-3}`.
Evaluation averages over the fixed grid :math:`\gamma\in\{0.1,\dots,0.9\}`.

- :data:`ARMS`: the four arms (default, encoding only, additive only, MIP) as
  :class:`~replib.nn.hypernet.HyperNet` settings.
- :func:`digits_splits`: train / validation / test tensors (validation selects the learning rate).
- :func:`init_scales`: C1's measurement at initialisation, the std of the predicted weights and of
  the primary logits at several :math:`\gamma`.
- :func:`run`: one training run; returns the validation and test curves, steps to the accuracy
  target and the final numbers (NaN where it diverged).
- :func:`speed_ratio`: steps-to-target ratio with censoring, :func:`c2_rule`, :func:`c3_rule` and
  :func:`c4_rule`: the spec's verdict rules.
"""
from __future__ import annotations

import math
import time

import numpy as np
import torch
import torch.nn.functional as F

from .. import claims as rc
from ..data import load_tabular
from ..data.tabular import minibatches
from ..nn.hypernet import HyperNet, PrimaryMLP
from ..runtime import seed_everything
from ..train import train
from .layernorm import TrainValTest, carve_validation

ARMS: dict[str, dict] = {
    "default": dict(encoding=None, additive=False),
    "encoding only": dict(encoding="cos|sin", additive=False),
    "additive only": dict(encoding=None, additive=True),
    "MIP": dict(encoding="cos|sin", additive=True),
}
GAMMA_GRID = tuple(round(0.1 * i, 1) for i in range(1, 10))
PRIMARY = (64, 128, 128, 10)
HIDDEN = (16, 64, 128)  # the library README's example
REG = 1e-3  # c in the loss


def digits_splits(device: torch.device | str = "cpu") -> TrainValTest:
    """``load_digits`` standardised, stratified 80/20 train/test (seed 0); 20 % of the training
    images (stratified, seed 0) held out for validation (chapter 03's :func:`carve_validation`)."""
    d = carve_validation(load_tabular("digits", seed=0), 0.2, seed=0)
    return TrainValTest(*(t.to(device) for t in (d.x_train, d.y_train, d.x_val, d.y_val, d.x_test, d.y_test)),
                        d.n_classes)


def make(arm: str, seed: int, hidden=HIDDEN, primary=PRIMARY, device="cpu") -> tuple[HyperNet, PrimaryMLP]:
    if arm not in ARMS:
        raise KeyError(f"unknown arm {arm!r}; valid: {', '.join(ARMS)}")
    net = PrimaryMLP(primary)
    gen = torch.Generator().manual_seed(seed)
    hn = HyperNet(1, net.external_shapes(), hidden, generator=gen, **ARMS[arm])
    return hn.to(device), net


@torch.no_grad()
def init_scales(arm: str, seed: int, x: torch.Tensor, gammas=(0.01, 0.1, 0.5, 1.0), **kw) -> dict:
    """At initialisation: std of all predicted weights and std of the primary logits on ``x``, per gamma."""
    hn, net = make(arm, seed, device=x.device, **kw)
    th, lo = [], []
    for g in gammas:
        flat = hn.flat(torch.tensor([g], device=x.device, dtype=x.dtype))
        th.append(float(flat.std()))
        lo.append(float(net(x, hn.unflatten(flat)).std()))
    return {"gammas": list(gammas), "theta_std": th, "logit_std": lo}


@torch.no_grad()
def evaluate_grid(hn: HyperNet, net: PrimaryMLP, x: torch.Tensor, y: torch.Tensor, gammas=GAMMA_GRID) -> tuple[float, float]:
    """Mean cross-entropy (no regulariser) and accuracy over the gamma grid."""
    losses, accs = [], []
    for g in gammas:
        logits = net(x, hn(torch.tensor([g], device=x.device, dtype=x.dtype)))
        losses.append(float(F.cross_entropy(logits, y)))
        accs.append(float((logits.argmax(-1) == y).float().mean()))
    return float(np.mean(losses)), float(np.mean(accs))


class _Model(torch.nn.Module):
    def __init__(self, hn, net):
        super().__init__()
        self.hn, self.net = hn, net


def first_step_at_least(steps, values, target: float) -> float:
    """The first logged step whose value reached ``target`` (``inf``: never)."""
    for s, v in zip(steps, values):
        if v >= target:
            return float(s)
    return math.inf


def run(arm: str, optimizer: str, lr: float, seed: int, data: TrainValTest, *, steps: int, eval_every: int,
        batch_size: int = 128, reg: float = REG, target: float = 0.9, hidden=HIDDEN, progress: bool = False) -> dict:
    """Train one hypernetwork; the same seed gives the same gamma draws and batches to every arm.

    Returns ``val_auc`` (mean validation CE over the logged points, selects the learning rate),
    ``val`` (final validation CE), ``test`` (final test CE), ``test_acc`` (final), ``auc`` (mean test
    CE over the logged points), ``steps_to_target`` (first logged step with test accuracy >=
    ``target``; ``inf`` never), the curves and ``seconds``. A diverged run returns NaN numbers.
    """
    dev = data.x_train.device
    hn, net = make(arm, seed, hidden=hidden, device=dev)
    model = _Model(hn, net)
    opt = (torch.optim.Adam(hn.parameters(), lr=lr) if optimizer == "adam" else
           torch.optim.SGD(hn.parameters(), lr=lr, momentum=0.9) if optimizer == "sgd" else None)
    if opt is None:
        raise KeyError(f"unknown optimizer {optimizer!r}; valid: adam, sgd")
    gen = seed_everything(seed)
    gamma_gen = torch.Generator().manual_seed(10_000 + seed)
    batches = minibatches(data.x_train, data.y_train, batch_size, gen)

    def stream():
        for xb, yb in batches:
            yield xb, yb, float(torch.rand((), generator=gamma_gen))

    def loss_fn(m, b):
        xb, yb, g = b
        flat = m.hn.flat(torch.tensor([g], device=dev))
        return F.cross_entropy(m.net(xb, m.hn.unflatten(flat)), yb) + g * reg * flat.pow(2).sum()

    def evaluate(m):
        vl, va = evaluate_grid(m.hn, m.net, data.x_val, data.y_val)
        tl, ta = evaluate_grid(m.hn, m.net, data.x_test, data.y_test)
        return {"val_loss": vl, "val_acc": va, "test_loss": tl, "test_acc": ta}

    t0 = time.process_time()
    hist = train(model, opt, stream(), loss_fn, steps, evaluate=evaluate, eval_every=eval_every,
                 desc=f"{arm} {optimizer} {lr:g}", progress=progress)
    cpu = time.process_time() - t0
    s, vl = hist.eval_series("val_loss")
    _, tl = hist.eval_series("test_loss")
    _, ta = hist.eval_series("test_acc")
    if hist.diverged or not all(map(math.isfinite, vl + tl)):
        nan = math.nan
        return {"val_auc": nan, "val": nan, "test": nan, "test_acc": nan, "auc": nan,
                "steps_to_target": nan, "steps": s, "val_curve": vl, "test_acc_curve": ta,
                "seconds": hist.seconds, "cpu_seconds": cpu}
    return {"val_auc": float(np.mean(vl)), "val": vl[-1], "test": tl[-1], "test_acc": ta[-1],
            "auc": float(np.mean(tl)), "steps_to_target": first_step_at_least(s, ta, target),
            "steps": s, "val_curve": vl, "test_acc_curve": ta, "seconds": hist.seconds, "cpu_seconds": cpu}


def speed_ratio(method_steps: float, base_steps: float, total: int) -> float:
    """Steps-to-target of ``method`` over ``base``. A run that never reached the target is censored
    at ``total`` steps (so the ratio is an upper bound when only the base failed, a lower bound when
    only the method failed); NaN when neither reached it or either diverged."""
    if math.isnan(method_steps) or math.isnan(base_steps):
        return math.nan
    if method_steps == math.inf and base_steps == math.inf:
        return math.nan
    m = total if method_steps == math.inf else method_steps
    b = total if base_steps == math.inf else base_steps
    return m / b


def c2_rule(optimizers, *, health: rc.Health, loss_tol: float = 0.05, full: float = 0.5, faster: float = 0.9) -> rc.Rule:
    """The spec's C2 rule per optimizer on steps-to-target ratios MIP/default (metric
    ``"ratio <opt>"``, per seed) and final test losses (``"MIP test <opt>"``, ``"default test <opt>"``).

    Per optimizer: *fast* when the ratio is <= ``full`` in >= 2/3 of the seeds, *faster* when
    <= ``faster`` (10 %) in >= 2/3; the final test loss is *not worse* when the paired interval
    MIP − default lies below ``loss_tol``. Replicated: fast and not worse under every optimizer;
    partially: faster (10-50 %) under every optimizer, or fast and not worse under only one; not
    replicated: faster under no optimizer; otherwise (a loss interval that cannot decide)
    inconclusive.
    """
    opts = tuple(optimizers)
    text = (f"Claim: MIP reaches {int(0.9 * 100)} % test accuracy (mean over the gamma grid) in fewer steps "
            f"than the default hypernetwork, final loss not worse. Per optimizer ({', '.join(opts)}), each arm at "
            f"its own best lr: 'fast' if MIP/default steps-to-target <= {full:g} in >= 2/3 of the seeds, "
            f"'faster' if <= {faster:g}; final test loss 'not worse' if the paired 95 % t-interval of MIP − default "
            f"lies below +{loss_tol:g} nats. Replicated: fast and not worse under every optimizer; partially: "
            f"faster under every optimizer, or fast and not worse under one; not replicated: faster under none; "
            "inconclusive otherwise.")

    def decide(m):
        fast, fastr, ok, why = {}, {}, {}, []
        for o in opts:
            r = np.asarray(m[f"ratio {o}"].values, dtype=float)
            n = len(r)
            fast[o] = np.sum(r <= full) >= math.ceil(2 * n / 3)
            fastr[o] = np.sum(r <= faster) >= math.ceil(2 * n / 3)
            p = rc.paired(m[f"MIP test {o}"], m[f"default test {o}"], names=(f"MIP[{o}]", f"default[{o}]"))
            ok[o] = rc.decide_side(p, claimed="below", threshold=loss_tol)
            why.append(f"{o}: ratios {', '.join(f'{x:.2f}' for x in r)}; {p:.3f}")
        reason = "; ".join(why)
        good = [o for o in opts if fast[o] and ok[o] is rc.Verdict.REPLICATED]
        if len(good) == len(opts):
            return rc.Verdict.REPLICATED, reason
        if all(fastr.values()) or good:
            return rc.Verdict.PARTIAL, reason
        if not any(fastr.values()):
            return rc.Verdict.NOT_REPLICATED, reason
        return rc.Verdict.INCONCLUSIVE, reason

    gated = tuple(f"{a} acc {o}" for o in opts for a in ("MIP", "default"))
    return rc.Rule(text, decide, health, gated)


def c3_rule(*, health: rc.Health, metric: str = "test-loss AUC") -> rc.Rule:
    """C3 (ablation): each component beats the default, and MIP beats each component alone, on
    paired per-seed ``metric`` (lower is better; metrics named by arm, gated on ``"<arm> acc"``). Replicated when all four intervals are wholly on
    the claimed side; not replicated when any excludes its claim; inconclusive otherwise."""
    pairs = [("encoding only", "default"), ("additive only", "default"), ("MIP", "encoding only"),
             ("MIP", "additive only")]
    text = (f"Claim: each MIP component helps and the combination is best. On the {metric} (lower is better), "
            "the paired 95 % t-intervals of encoding only − default, additive only − default, MIP − encoding "
            "only and MIP − additive only must all lie below 0 (replicated); if any lies wholly at or above 0, "
            "not replicated; otherwise inconclusive.")

    def decide(m):
        ps = [rc.paired(m[a], m[b], names=(a, b)) for a, b in pairs]
        vs = [rc.decide_side(p, claimed="below") for p in ps]
        reason = "; ".join(f"{p:.3f}" for p in ps)
        if all(v is rc.Verdict.REPLICATED for v in vs):
            return rc.Verdict.REPLICATED, reason
        if any(v is rc.Verdict.NOT_REPLICATED for v in vs):
            return rc.Verdict.NOT_REPLICATED, reason
        return rc.Verdict.INCONCLUSIVE, reason

    return rc.Rule(text, decide, health, tuple(f"{a} acc" for a in ARMS))


def c4_rule(threshold: float = 0.5) -> rc.Rule:
    """C4: count the (optimizer, lr, seed) runs whose final test accuracy does not exceed
    ``threshold`` (a diverged run counts as a failure); replicated if the default fails in strictly
    more runs than MIP, not replicated otherwise (the spec's rule: one tier)."""
    text = (f"Claim: the default formulation fails to learn in more runs than MIP. Over every (optimizer, lr, seed) "
            f"run of the sweep, count runs whose final test accuracy does not exceed {threshold:g} (diverged runs "
            "count as failures): replicated if the default fails in strictly more runs than MIP, not replicated "
            "otherwise.")

    def decide(m):
        def fails(s):
            return sum(not (math.isfinite(v) and v > threshold) for v in s.values)
        fd, fm = fails(m["default"]), fails(m["MIP"])
        why = f"failed runs: default {fd}/{m['default'].n}, MIP {fm}/{m['MIP'].n}"
        return (rc.Verdict.REPLICATED if fd > fm else rc.Verdict.NOT_REPLICATED), why

    return rc.Rule(text, decide)


def param_count(arm: str) -> int:
    hn, _ = make(arm, 0)
    return sum(p.numel() for p in hn.parameters())
