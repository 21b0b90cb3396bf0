"""The optimiser chapters' shared pieces: the tiny LLaMA, the matrix split, the Adam step, state bytes."""
import math

import pytest
import torch

from replib.errors import ReplibError
from replib.optim.common import (LlamaConfig, TinyLlama, adam_update_, matrix_params, param_bytes,
                                 state_bytes)


def small(**kw):
    return TinyLlama(LlamaConfig(seq_len=16, n_layer=2, n_head=2, d_model=16, **kw))


def test_llama_shapes_loss_and_swiglu_width():
    torch.manual_seed(0)
    m = small()
    assert m.cfg.d_ff == 48  # 8/3 * 16 = 42.7, rounded up to a multiple of 8
    x = torch.randint(0, 256, (3, 16))
    logits, loss = m(x, x)
    assert logits.shape == (3, 16, 256)
    assert abs(float(loss.detach()) - math.log(256)) < 0.1  # N(0, 0.02) init: near-uniform predictions
    with pytest.raises(ReplibError):
        m(torch.randint(0, 256, (1, 17)))
    with pytest.raises(ReplibError):
        LlamaConfig(d_model=18, n_head=4)


def test_llama_is_causal():
    torch.manual_seed(1)
    m = small().eval()
    x = torch.randint(0, 256, (1, 16))
    y = x.clone()
    y[0, 10:] = (y[0, 10:] + 7) % 256
    a, b = m(x)[0], m(y)[0]
    torch.testing.assert_close(a[:, :10], b[:, :10])
    assert not torch.allclose(a[:, 10:], b[:, 10:])


def test_rope_scores_depend_on_relative_position_only():
    from replib.optim.common import LlamaAttention
    att = LlamaAttention(LlamaConfig(seq_len=32, n_head=1, d_model=8)).double()
    q, k = torch.randn(8, dtype=torch.float64), torch.randn(8, dtype=torch.float64)
    cos, sin = att.cos.double(), att.sin.double()
    from replib.optim.common import _rope

    def score(i, j):
        return float(_rope(q, cos[i], sin[i]) @ _rope(k, cos[j], sin[j]))
    assert abs(score(3, 1) - score(13, 11)) < 1e-5 and abs(score(3, 1) - score(5, 1)) > 1e-3  # float32 angles
    # a rotation: norms are kept
    assert abs(_rope(q, cos[9], sin[9]).norm() - q.norm()) < 1e-6


def test_matrix_params_follow_the_official_attn_mlp_rule():
    m = small()
    mats, rest = matrix_params(m)
    assert len(mats) == 2 * 7  # q, k, v, o, gate, up, down per block
    assert all(p.dim() == 2 for p in mats)
    names = {id(p): n for n, p in m.named_parameters()}
    assert sorted(names[id(p)].split(".")[0] for p in rest if "blocks" not in names[id(p)]) == \
        ["embed", "lm_head", "norm"]
    assert len(mats) + len(rest) == len(list(m.parameters()))


def test_adam_update_matches_its_equations_and_torch_adam():
    torch.manual_seed(0)
    p0 = torch.randn(5, 3, dtype=torch.float64)
    grads = [torch.randn(5, 3, dtype=torch.float64) for _ in range(6)]
    lr, b1, b2, eps, wd = 1e-2, 0.9, 0.99, 1e-8, 0.1
    p, st = p0.clone(), {}
    m = torch.zeros_like(p0); v = torch.zeros_like(p0); w = p0.clone()
    for t, g in enumerate(grads, 1):
        adam_update_(p, g, st, lr=lr, betas=(b1, b2), eps=eps, weight_decay=wd)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
        w = w - lr * math.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m / (v.sqrt() + eps)
        w = w - lr * wd * w
    torch.testing.assert_close(p, w, rtol=0, atol=1e-14)
    # without weight decay and with eps -> 0 it is torch.optim.Adam
    q = p0.clone().requires_grad_(True)
    opt = torch.optim.Adam([q], lr=lr, betas=(b1, b2), eps=1e-14)
    p, st = p0.clone(), {}
    for g in grads:
        q.grad = g.clone(); opt.step()
        adam_update_(p, g, st, lr=lr, betas=(b1, b2), eps=1e-14, weight_decay=0.0)
    torch.testing.assert_close(p, q.detach(), rtol=0, atol=1e-10)


def test_state_bytes_are_measured_from_tensors():
    torch.manual_seed(0)
    m = small()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    assert state_bytes(opt) == 0  # nothing allocated before the first step
    x = torch.randint(0, 256, (2, 16))
    m(x, x)[1].backward(); opt.step()
    n_params = len(list(m.parameters()))
    step_bytes = sum(opt.state[p]["step"].numel() * opt.state[p]["step"].element_size() for p in m.parameters())
    assert state_bytes(opt) == 2 * param_bytes(m.parameters()) + step_bytes
    assert step_bytes == 4 * n_params  # a float32 scalar per parameter
    mats, rest = matrix_params(m)
    assert state_bytes(opt, rest) == 2 * param_bytes(rest) + 4 * len(rest)


# ------------------------------------------------------------- the chapters' harness (experiments.optimizers)
from replib.experiments import optimizers as ox  # noqa: E402


def test_steps_to_target_interpolates_and_speedup_is_a_step_ratio():
    assert ox.steps_to_target([10, 20, 30], [3.0, 2.0, 1.0], 1.5) == pytest.approx(25.0)
    assert ox.steps_to_target([10, 20, 30], [3.0, 2.0, 1.0], 3.5) == 10.0
    assert ox.steps_to_target([10, 20, 30], [3.0, 2.0, 1.0], 0.5) is None
    assert ox.steps_to_target([10, 20], [3.0, float("nan")], 1.0) is None
    base = ox.OptRun("adamw", 0, 1e-3, 40, 8, loss=[5.0], log_steps=[10, 20, 30, 40], test_loss=[4.0, 3.0, 2.0, 1.0])
    fast = ox.OptRun("x", 0, 1e-3, 40, 8, loss=[5.0], log_steps=[10, 20, 30, 40], test_loss=[2.0, 1.0, 0.8, 0.7])
    slow = ox.OptRun("y", 0, 1e-3, 40, 8, loss=[5.0], log_steps=[10, 20, 30, 40], test_loss=[4.5, 3.5, 2.5, 1.5])
    assert ox.speedup(base, fast) == (pytest.approx(2.0), True)  # 40 steps vs 20
    assert ox.speedup(base, slow) == (pytest.approx(1.0), False)  # never: the bound 40 / 40
    assert ox.speedup(base, base) == (pytest.approx(1.0), True)


def test_effective_rank_and_newton_schulz():
    assert ox.effective_rank(torch.outer(torch.randn(6), torch.randn(4)).double()) == pytest.approx(1.0, abs=1e-6)
    assert ox.effective_rank(torch.eye(5)) == pytest.approx(5.0)
    g = torch.randn(12, 7, generator=torch.Generator().manual_seed(0))
    s = torch.linalg.svdvals(ox.newton_schulz(g))
    assert ((s > 0.6) & (s < 1.25)).all()  # Muon's quintic iteration: singular values near 1, not exactly


def test_log_ratio_is_paired_log_difference():
    p = ox.log_ratio([2.0, 4.0], [1.0, 2.0], names=("a", "b"))
    assert p.diffs == pytest.approx((math.log(2), math.log(2)))
    q = ox.log_ratio([1.5, 3.0], 1.0, names=("a", "1"))
    assert q.diffs == pytest.approx((math.log(1.5), math.log(3.0)))


def test_run_lm_trains_every_arm_and_measures_state():
    data = ox.lm_data_split("def f(x):\n    return x + 1\n" * 400, seq_len=16, val_windows=4, test_windows=4)
    kw = dict(n_layer=1, d_model=16, n_head=2, batch_size=4, steps=30, log_every=10)
    runs = {a: ox.run_lm(a, 0, 1e-2, data, measure_update=True, **kw) for a in ("adamw", "sinkgd", "rownorm", "conda")}
    for a, r in runs.items():
        assert r.log_steps == [10, 20, 30] and len(r.test_loss) == 3
        assert r.final_val_loss < r.loss[0] - 0.5, a
        assert len(r.eff_ranks) == 7 and all(1 <= e <= 16 for e in r.eff_ranks)
    assert runs["sinkgd"].state_bytes < runs["adamw"].state_bytes < runs["conda"].state_bytes
    assert runs["sinkgd"].state_bytes == runs["rownorm"].state_bytes
    again = ox.run_lm("conda", 0, 1e-2, data, **kw)  # deterministic on CPU, and measuring changed nothing
    assert again.test_loss == runs["conda"].test_loss
    with pytest.raises(ReplibError):
        ox.make_optimizer("lion", TinyLlama(LlamaConfig(seq_len=8, n_layer=1, n_head=1, d_model=8)), 1e-3)


def test_step_timings_cover_every_label():
    t = ox.optimizer_step_timings(["adamw", "sinkgd", "newton-schulz"], LlamaConfig(seq_len=8, n_layer=1, n_head=1, d_model=8),
                                  batch_size=2, lr=1e-3, warmup=1, reps=3)
    assert set(t) == {"adamw", "sinkgd", "newton-schulz"} and all(x.n == 3 for x in t.values())
