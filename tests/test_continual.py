"""The continual-learning harness (replib.experiments.continual): Split-Digits, the reservoir buffer,
ER-ACE's masked loss as in the official AdaB²N code (lvyilin/AdaB2N @ 2536317, models/er_ace_ada.py),
the recency gap, and the plasticity runs of chapter 12."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from replib import ReplibError
from replib.experiments import continual as cl


@pytest.fixture(scope="module")
def data():
    return cl.split_digits()


def test_split_digits_tasks_are_disjoint_class_pairs(data):
    assert len(data.tasks) == 5 and data.n_classes == 10
    total = 0
    for t, task in enumerate(data.tasks):
        for split in ("train", "val", "test"):
            y = task[f"y_{split}"]
            assert set(y.tolist()) == {2 * t, 2 * t + 1}
            assert task[f"x_{split}"].shape[1:] == (1, 8, 8)
            total += len(y)
    assert total == 1797
    sizes = [len(t["y_train"]) for t in data.tasks]
    assert min(sizes) > 200 and sum(len(t["y_test"]) for t in data.tasks) == 360  # the stratified 20 %
    with pytest.raises(ReplibError, match="equal tasks"):
        cl.split_digits(n_tasks=3)


def test_reservoir_keeps_every_example_with_equal_probability():
    gen = torch.Generator().manual_seed(0)
    hits = np.zeros(100)
    for _ in range(300):
        buf = cl.Reservoir(10, gen)
        for i in range(0, 100, 10):
            buf.add(torch.arange(i, i + 10).float()[:, None], torch.arange(i, i + 10))
        assert len(buf) == 10 and buf.seen == 100
        hits[buf.y.numpy()] += 1
    # each example is held with probability 0.1: 30 expected per example over 300 trials
    assert hits.sum() == 3000
    assert abs(hits[:50].sum() - hits[50:].sum()) < 0.1 * 3000
    x, y = buf.sample(4)
    assert len(y) == 4 and len(set(y.tolist())) == 4 and torch.equal(x[:, 0].long(), y)
    with pytest.raises(ReplibError, match="empty"):
        cl.Reservoir(5, gen).sample(2)


def test_er_ace_mask_and_loss_follow_the_official_code():
    torch.manual_seed(0)
    logits = torch.randn(4, 10)
    ys = torch.tensor([4, 5, 5, 4])
    seen = torch.tensor([0, 1, 2, 3, 4, 5])
    mask = cl.stream_mask(logits, ys.unique(), seen)
    # present classes 4, 5, and every class from the largest seen (5) on
    assert mask[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    by, bl = torch.tensor([0, 3]), torch.randn(2, 10)
    loss = cl.er_ace_loss(logits, ys, bl, by, seen)
    ref = F.cross_entropy(logits[:, 4:], ys - 4) + F.cross_entropy(bl, by)
    torch.testing.assert_close(loss, ref)
    # all classes seen: only the present ones stay
    full = cl.stream_mask(logits, torch.tensor([8, 9]), torch.arange(10))
    assert full[0].tolist() == [0] * 8 + [1, 1]


def test_recency_gap_is_zero_when_the_running_mean_is_the_union_mean(data):
    torch.manual_seed(0)
    model = cl.SplitCNN("batchnorm", channels=4, layers=2)
    model.train()
    for t in data.tasks:
        model(t["x_train"][:32])
    assert cl.recency_gap(model, data) > 0
    last = model.norms()[-1].norm
    feats = []
    h = model.norms()[-1].register_forward_pre_hook(lambda m, a: feats.append(a[0]))
    model.eval()(torch.cat([t["x_train"] for t in data.tasks]))
    h.remove()
    with torch.no_grad():
        last.running_mean.copy_(feats[0].mean((0, 2, 3)))
    assert cl.recency_gap(model, data) == pytest.approx(0.0, abs=1e-5)
    assert math.isnan(cl.recency_gap(cl.SplitCNN("groupnorm", channels=4, layers=1), data))


@pytest.mark.parametrize("name", ["BN", "AdaB2N k=0.4 l=1", "kappa-only k=0.4", "GN"])
def test_er_ace_run_is_deterministic_and_well_formed(data, name):
    arm = cl.cl_arms()[name]
    kw = dict(buffer_size=30, channels=4, layers=1)
    small = cl.SplitDigits([{k: v[:40] for k, v in t.items()} for t in data.tasks], 2)
    a = cl.er_ace_run(arm, 0.05, 0, small, **kw)
    b = cl.er_ace_run(arm, 0.05, 0, small, **kw)
    assert a["test"] == b["test"]
    np.testing.assert_array_equal(np.array(a["acc_test"]), np.array(b["acc_test"]))  # NaN above the diagonal
    acc = np.array(a["acc_test"])
    assert np.isnan(acc[np.triu_indices(5, 1)]).all() and np.isfinite(acc[np.tril_indices(5)]).all()
    assert a["test"] == pytest.approx(acc[-1].mean()) and 0 <= a["test"] <= 1
    assert a["steps"] == sum(math.ceil(len(t["y_train"]) / 10) for t in small.tasks)
    assert math.isnan(a["gap"]) == (name == "GN")


def test_adab2n_task_weights_learn_unless_frozen(data):
    small = cl.SplitDigits([{k: v[:40] for k, v in t.items()} for t in data.tasks], 2)
    kw = dict(buffer_size=30, channels=4, layers=1)
    learned = cl.er_ace_run(cl.cl_arms()["AdaB2N k=0.4 l=1"], 0.05, 0, small, **kw)["task_weight"]
    frozen = cl.er_ace_run(cl.cl_arms()["kappa-only k=0.4"], 0.05, 0, small, **kw)["task_weight"]
    assert any(w != 0 for w in learned) and all(w == 0 for w in frozen) and len(learned) == 5
    assert cl.er_ace_run(cl.cl_arms()["BN"], 0.05, 0, small, **kw)["task_weight"] is None


def test_random_label_run_nap_keeps_norms_and_ln_grows():
    kw = dict(n_images=128, tasks=3, steps_per_task=40, batch_size=32, width=32, depth=2, probe=64)
    nap = cl.random_label_run("NaP", 1e-2, 0, **kw)
    ln = cl.random_label_run("LN", 1e-2, 0, **kw)
    for norms in nap["norms"]:
        assert norms == pytest.approx(nap["init_norms"], rel=1e-4)
    assert all(n > i for n, i in zip(ln["norms"][-1], ln["init_norms"]))
    assert nap["init_norms"] == ln["init_norms"]  # same seed, same initialisation
    again = cl.random_label_run("LN", 1e-2, 0, **kw)
    assert again["acc"] == ln["acc"]
    assert len(nap["acc"]) == 3 and all(0 <= d <= 1 for d in nap["dormant"])
    assert cl.early_late([1, 2, 3, 4, 5, 6, 7, 8, 9, 10]) == (1.5, 9.5)
    with pytest.raises(ReplibError, match="unknown arm"):
        cl.plastic_model("BN", 4, 8, 1)


def test_layerwise_lr_schedule_reproduces_ln_only_exactly():
    """Under SGD, NaP with eta_l(t) = eta rho_l^2 / ||W_l(t)||^2 follows LN-only's trajectory (the
    directions agree at every step), so the accuracy curves coincide."""
    out = cl.lr_matched_runs(0, 0.2, n_images=128, tasks=2, steps_per_task=60, batch_size=32, width=32,
                             depth=2, log_every=20)
    assert len(out["steps"]) == 6
    assert np.max(np.abs(np.array(out["layerwise"]) - np.array(out["LN"]))) <= 1 / 128
    assert out["ln_norms"][-1][0] > out["ln_norms"][0][0]


def test_stationary_run():
    r = cl.stationary_run("NaP", 3e-3, 0, epochs=2, width=32, depth=2)
    assert 0.5 < r["test"] <= 1 and 0.5 < r["val"] <= 1


def test_layerwise_schedule_matches_ln_directions_exactly_without_eps():
    """C3's identity: NaP at eta rho^2/||W_t||^2 follows LN-only's weight directions step for step
    when the norm is exactly scale-invariant (eps = 0); LayerNorm's eps alone makes them drift."""
    from replib.experiments.continual import layerwise_direction_gap
    exact = layerwise_direction_gap(0, 0.1, steps=60, ln_eps=0.0, n_images=128, width=32)
    with_eps = layerwise_direction_gap(0, 0.1, steps=60, n_images=128, width=32)
    assert exact < 1e-13
    assert with_eps > 1e3 * max(exact, 1e-16)
