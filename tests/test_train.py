import itertools
import math

import torch

from replib import train


def _setup(lr):
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x = torch.randn(32, 4); y = x.sum(1, keepdim=True)
    batches = itertools.repeat((x, y))
    loss_fn = lambda m, b: torch.nn.functional.mse_loss(m(b[0]), b[1])  # noqa: E731
    return model, torch.optim.SGD(model.parameters(), lr=lr), batches, loss_fn


def test_learns_and_evaluates():
    model, opt, batches, loss_fn = _setup(0.1)
    calls = []

    def evaluate(m):
        calls.append(m.training)
        return {"w_err": float((m.weight - 1).abs().max())}

    h = train(model, opt, batches, loss_fn, steps=200, evaluate=evaluate, eval_every=50, progress=False)
    assert not h.diverged and len(h.loss) == 200 and h.loss[-1] < 1e-3 < h.loss[0]
    steps, values = h.eval_series("w_err")
    assert steps == [50, 100, 150, 200] and values[-1] < 0.05
    assert calls == [False] * 4 and model.training  # evaluated in eval mode, restored after
    assert h.first_step_below("w_err", 0.05) is not None and h.final("w_err") == values[-1]


def test_divergence_is_an_outcome_not_a_crash():
    model, opt, batches, loss_fn = _setup(10.0)  # far above the stable step size
    h = train(model, opt, batches, loss_fn, steps=500, evaluate=lambda m: {"l": 0.0}, progress=False)
    assert h.diverged and h.diverged_at < 500
    assert not math.isfinite(h.loss[-1]) and len(h.loss) == h.diverged_at
    assert math.isnan(h.final("l"))
