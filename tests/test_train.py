import itertools
import math

import pytest
import torch

from replib import ReplibError, lr_sweep, train


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


def test_on_backward_sees_raw_gradients_before_clipping():
    model, opt, batches, loss_fn = _setup(0.1)
    seen = []
    train(model, opt, batches, loss_fn, steps=3, grad_clip=1e-6, progress=False,
          on_backward=lambda step, m: seen.append((step, float(m.weight.grad.norm()))))
    assert [s for s, _ in seen] == [1, 2, 3] and all(g > 1e-3 for _, g in seen)


def test_warmup_cosine_shape():
    import pytest

    from replib import ReplibError
    from replib.train import warmup_cosine

    f = warmup_cosine(100, warmup_frac=0.1, min_ratio=0.1)
    assert [round(f(s), 6) for s in (0, 9)] == [0.1, 1.0]
    assert f(10) == 1.0 and abs(f(55) - 0.55) < 1e-9 and abs(f(100) - 0.1) < 1e-12 and f(500) == f(100)
    assert warmup_cosine(100, warmup_steps=10, min_ratio=0.1)(37) == f(37)
    with pytest.raises(ReplibError):
        warmup_cosine(100)


def test_lm_loss_weights_chunks_by_tokens():
    from replib.nn import GPTConfig, TinyGPT
    from replib.train import lm_loss

    model = TinyGPT(GPTConfig(vocab_size=16, seq_len=8, n_layer=1, n_head=1, d_model=8)).eval()
    x = torch.randint(0, 16, (5, 8)); y = torch.randint(0, 16, (5, 8))
    assert abs(lm_loss(model, x, y, chunk=2) - float(model(x, y)[1].detach())) < 1e-6


def test_torch_threads_restores():
    from replib.runtime import torch_threads

    before = torch.get_num_threads()
    with torch_threads(1):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before


def test_lr_sweep_gives_every_arm_the_grid_and_judges_each_at_its_own_best():
    # a known answer: arm "a" is best at lr 0.01, arm "b" at 0.1; lr 1.0 diverges for one seed of b
    optimum = {"a": 0.01, "b": 0.1}

    def run(arm, lr, seed):
        if arm == "b" and lr == 1.0 and seed == 1:
            return {"val": math.nan, "test": math.nan}
        val = (math.log10(lr) - math.log10(optimum[arm])) ** 2 + 0.01 * seed
        return {"val": val, "test": val + 0.5}

    sweep = lr_sweep(["a", "b"], [1.0, 0.01, 0.1, 0.001], [0, 1], run, select_on="val", progress=False)
    assert sweep.grid == (0.001, 0.01, 0.1, 1.0)
    assert sweep.best_lr("a") == 0.01 and sweep.best_lr("b") == 0.1
    assert sweep.at_best("b", "test") == [0.5, 0.51]
    assert math.isnan(sweep.score("b", 1.0))  # a diverged seed makes that grid point ineligible
    d = sweep.to_json()
    assert d["best"] == {"a": 0.01, "b": 0.1} and d["runs"]["b"]["1"][1]["val"] is None
    assert sweep.edge_note() == ""
    edge = lr_sweep(["a"], [0.1, 1.0], [0], run, select_on="val", progress=False)
    assert "a (0.1)" in edge.edge_note()
    with pytest.raises(ReplibError, match="without repeats"):
        lr_sweep(["a"], [0.1, 0.1], [0], run, select_on="val", progress=False)
    with pytest.raises(ReplibError, match="returned no 'loss'"):
        lr_sweep(["a"], [0.1], [0], run, select_on="loss", progress=False)
