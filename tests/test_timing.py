import math
"""replib.timing: fair, interleaved timing of competing variants."""
import time

import pytest
import torch

from replib.errors import ReplibError
from replib.timing import Timing, compare, paired_ratio, ratio, ratios, time_call


def test_timing_statistics():
    t = Timing("a", (1.0, 2.0, 3.0, 4.0, 100.0), warmup=2)
    assert t.n == 5 and t.median == 3.0 and t.q1 == 2.0 and t.q3 == 4.0 and t.iqr == 2.0
    assert "a:" in str(t) and "n=5" in str(t)


def test_compare_orders_variants_by_their_cost_and_counts_calls():
    calls = {"fast": 0, "slow": 0}

    def make(name, s):
        def fn():
            calls[name] += 1
            time.sleep(s)
        return fn

    res = compare({"fast": make("fast", 0.001), "slow": make("slow", 0.006)}, "cpu",
                  warmup=2, reps=7)
    assert calls == {"fast": 9, "slow": 9}
    assert res["fast"].n == 7 and res["fast"].warmup == 2
    assert res["fast"].median < res["slow"].median
    assert 2 < ratio(res["slow"], res["fast"]) < 20
    assert 2 < paired_ratio(res["slow"], res["fast"]) < 20
    r = ratios(res, "fast")
    assert set(r) == {"slow"} and r["slow"] > 2


def test_interleaving_rotates_the_order():
    order = []
    compare({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, "cpu",
            warmup=0, reps=4)
    assert order == ["a", "b", "b", "a", "a", "b", "b", "a"]


def test_time_call_measures_tensor_work():
    x = torch.randn(64, 64)
    t = time_call(lambda: x @ x, warmup=1, reps=5, label="mm")
    assert t.label == "mm" and t.n == 5 and all(s > 0 for s in t.seconds)


def test_bad_arguments():
    with pytest.raises(ReplibError):
        compare({}, "cpu")
    with pytest.raises(ReplibError):
        compare({"a": lambda: None}, "cpu", reps=0)
    with pytest.raises(ReplibError):
        paired_ratio(Timing("a", (1.0,), 0), Timing("b", (1.0, 2.0), 0))
    with pytest.raises(ReplibError):
        ratios({"a": Timing("a", (1.0,), 0)}, "b")


def test_train_and_inference_steps():
    from replib.timing import inference_step, train_step
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 1)
    x, y = torch.randn(16, 4), torch.randn(16, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = lambda m: ((m(x) - y) ** 2).mean()  # noqa: E731
    before = loss(model).item()
    w = model.weight.detach().clone()
    infer = inference_step(model, lambda m: m(x))
    infer()
    assert torch.equal(w, model.weight) and not model.training
    step = train_step(model, opt, loss)
    for _ in range(5):
        step()
    assert model.training and loss(model).item() < before


def test_saved_for_backward_bytes_counts_what_autograd_keeps():
    from replib.timing import peak_cuda_bytes, saved_for_backward_bytes
    x = torch.randn(64, 32, requires_grad=True)
    assert saved_for_backward_bytes(lambda: (x * 2).sum()) == 0  # a scalar multiply saves nothing
    assert saved_for_backward_bytes(lambda: (x * x).sum()) == x.numel() * 4  # x once, one storage
    w = torch.randn(32, 16, requires_grad=True)
    assert saved_for_backward_bytes(lambda: (x @ w).sum()) == (x.numel() + w.numel()) * 4
    assert math.isnan(peak_cuda_bytes(lambda: None, "cpu"))
