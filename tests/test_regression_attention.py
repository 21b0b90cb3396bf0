"""Test-time regression (chapter 38): each special case equals its direct attention form (float64)."""
import math

import pytest
import torch
import torch.nn.functional as F

from replib.experiments import regression as rx
from replib.nn.attention.linear import decayed_parallel
from replib.nn.attention.regression import (cumulative_decay_weights, delta_rule, exp_kernel,
                                            gated_linear_recurrent, linear_attention,
                                            local_linear_attention, local_polynomial, nadaraya_watson,
                                            rls, weighted_ls_attention)
from replib.nn.attention.softmax import softmax_attention

F64 = torch.float64
TOL = 1e-8  # the spec's bound for every identity


def _qkv(B=2, H=2, T=24, d=6, e=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, T, d, generator=g, dtype=F64), torch.randn(B, H, T, d, generator=g, dtype=F64),
            torch.randn(B, H, T, e, generator=g, dtype=F64))


def _close(a, b, tol=TOL):
    return float((a - b).detach().abs().max()) < tol


def test_linear_attention_is_ls_without_key_covariance_and_matches_the_linear_family():
    q, k, v = _qkv()
    W = torch.ones(24, 24, dtype=F64).tril()
    o = weighted_ls_attention(q, k, v, W, covariance="identity")
    assert _close(o, linear_attention(q, k, v))
    assert _close(o, decayed_parallel(q, k, v))  # the linear family's unnormalised core (linear.py)
    S = torch.einsum("bhie,bhid->bhed", v, k)  # (sum v k^T) q_t at the last step
    assert _close(o[..., -1, :], (S @ q[..., -1, :, None]).squeeze(-1))


def test_full_ls_equals_linear_attention_when_the_key_covariance_is_isotropic():
    d, c = 6, 1.7
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64))
    k = (c * Q).view(1, 1, d, d)  # sum_i k_i k_i^T = c^2 I after d keys
    q, _, v = _qkv(1, 1, d, d, 4)
    W = torch.ones(d, d, dtype=F64).tril()
    ls = weighted_ls_attention(q, k, v, W, lam=1e-12)[..., -1, :]  # early rows are singular
    assert _close(c ** 2 * ls, linear_attention(q, k, v)[..., -1, :])
    assert not _close(weighted_ls_attention(*_qkv(1, 1, d, d, 4), W, lam=1e-12)[..., -1, :] * c ** 2,
                      linear_attention(*_qkv(1, 1, d, d, 4))[..., -1, :], 1e-3)  # not for random keys


def test_gated_recurrence_is_ls_with_product_weights_and_no_inverse():
    q, k, v = _qkv()
    a = torch.rand(2, 2, 24, generator=torch.Generator().manual_seed(1), dtype=F64) * 0.5 + 0.5
    W = cumulative_decay_weights(a)
    assert _close(gated_linear_recurrent(q, k, v, a), weighted_ls_attention(q, k, v, W, covariance="identity"))
    s = torch.tensor([0.1, 0.7], dtype=F64)  # constant per-head decay: RetNet / TransNormer form
    a_const = torch.exp(-s).view(1, 2, 1).expand(2, 2, 24)
    assert _close(gated_linear_recurrent(q, k, v, a_const), decayed_parallel(q, k, v, s))


@pytest.mark.parametrize("gated", [False, True])
def test_delta_rule_is_one_sgd_step_per_token(gated):
    q, k, v = _qkv(1, 1, 10, 4, 3)
    g = torch.Generator().manual_seed(2)
    beta = torch.rand(1, 1, 10, generator=g, dtype=F64)
    a = torch.rand(1, 1, 10, generator=g, dtype=F64) * 0.5 + 0.5 if gated else None
    M = torch.zeros(3, 4, dtype=F64)
    outs = []
    for t in range(10):
        M = (a[0, 0, t] * M if gated else M).detach().requires_grad_()
        loss = 0.5 * (v[0, 0, t] - M @ k[0, 0, t]).pow(2).sum()
        (grad,) = torch.autograd.grad(loss, M)
        M = M - beta[0, 0, t] * grad
        outs.append(M @ q[0, 0, t])
    assert _close(delta_rule(q, k, v, beta, a)[0, 0], torch.stack(outs))


def test_delta_rule_with_unit_keys_and_beta_one_stores_the_newest_pair_exactly():
    q, k, v = _qkv(1, 1, 8, 5, 3)
    k = F.normalize(k, dim=-1)
    _, M = delta_rule(q, k, v, 1.0, return_state=True)
    assert _close(M @ k[0, 0, -1], v[0, 0, -1])


def test_rls_equals_ridge_ls_at_every_step_and_its_inverse():
    q, k, v = _qkv(T=16)
    lam = 0.3
    W = torch.ones(16, 16, dtype=F64).tril()
    o, M, P = rls(q, k, v, lam, return_state=True)
    assert _close(o, weighted_ls_attention(q, k, v, W, lam=lam))
    eye = torch.eye(6, dtype=F64)
    assert _close(P, torch.linalg.inv(lam * eye + k.transpose(-2, -1) @ k))


def test_nadaraya_watson_with_the_exp_kernel_is_softmax_attention():
    q, k, v = _qkv()
    kappa = exp_kernel(q, k)
    assert _close(nadaraya_watson(v, kappa), softmax_attention(q, k, v))
    assert _close(local_polynomial(q, k, v, kappa, order=0), softmax_attention(q, k, v))
    big = exp_kernel(q + 0.0, k) * math.e ** 3  # a constant per row (a logit shift) changes nothing
    assert _close(nadaraya_watson(v, big), softmax_attention(q, k, v))


def test_local_linear_closed_form_is_the_weighted_ls_intercept():
    q, k, v = _qkv(1, 2, 16, 3, 4)
    kappa = exp_kernel(q, k)
    w = kappa / kappa.sum(-1, keepdim=True)
    for lam in (1e-3, 0.5):
        assert _close(local_linear_attention(q, k, v, kappa, lam), local_polynomial(q, k, v, w, order=1, lam=lam))


def test_softmax_temperature_to_zero_returns_the_nearest_key_value():
    q, k, v = _qkv(1, 1, 12, 4, 3)
    kappa = exp_kernel(q, k, temperature=1e-4)
    nearest = (q @ k.transpose(-2, -1)).masked_fill(~torch.ones(12, 12, dtype=torch.bool).tril(),
                                                    -math.inf).argmax(-1)
    assert _close(nadaraya_watson(v, kappa), v[0, 0, nearest[0, 0]], 1e-6)


def test_qknorm_weights_ignore_key_norms_and_are_a_shift_invariant_kernel():
    q, k, _ = _qkv(1, 1, 12, 4, 3)
    scale = torch.rand(1, 1, 12, 1, dtype=F64) * 3 + 0.2
    assert rx.qknorm_invariance(q, k, scale, normalise=True) < TOL
    assert rx.qknorm_invariance(q, k, scale, normalise=False) > 1e-2
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    tau = 0.5
    gauss = torch.exp(-(qn.unsqueeze(-2) - kn.unsqueeze(-3)).pow(2).sum(-1) / (2 * tau))
    gauss = gauss * torch.ones(12, 12, dtype=F64).tril()
    ex = exp_kernel(qn, kn, tau)
    assert _close(ex / ex.sum(-1, keepdim=True), gauss / gauss.sum(-1, keepdim=True))


def test_ridge_recall_is_perfect_for_orthonormal_keys_and_linear_attention_error_is_the_crosstalk():
    d, n = 8, 5
    Q, _ = torch.linalg.qr(torch.randn(d, d, dtype=F64))
    v = torch.randn(n, 3, dtype=F64)
    for K in (Q[:n], F.normalize(torch.randn(n, d, dtype=F64), dim=-1)):
        G = K @ K.T  # queries = the stored (unit) keys: o_i = sum_j (k_i . k_j) v_j
        crosstalk = (G - torch.diag(torch.diag(G))) @ v  # sum_{j != i} (k_i . k_j) v_j
        assert _close(G @ v - v, crosstalk)
    K = Q[:n]
    ridge = K @ torch.linalg.solve(K.T @ K + 1e-12 * torch.eye(d, dtype=F64), K.T @ v)
    assert _close(ridge, v, 1e-6) and _close(K @ K.T @ v, v)  # both exact for orthonormal keys
    K = F.normalize(torch.randn(n, d, dtype=F64), dim=-1)  # n <= d independent keys: ridge still exact
    ridge = K @ torch.linalg.solve(K.T @ K + 1e-12 * torch.eye(d, dtype=F64), K.T @ v)
    assert _close(ridge, v, 1e-6) and not _close(K @ K.T @ v, v, 1e-3)


def test_recall_task_on_known_answers():
    """Orthogonal-ish keys (rho=0, n << d): every method recalls; correlated keys hurt linear attention."""
    acc = rx.recall_accuracy(n=8, d=64, rho=0.0, seed=0, methods=("linear", "ls", "delta"))
    assert min(acc.values()) == 1.0, acc
    hard = rx.recall_accuracy(n=32, d=32, rho=0.8, seed=0, methods=("linear", "ls"))
    assert hard["ls"] >= 0.9 and hard["linear"] < 0.6, hard  # the spec's C2 thresholds


class _LookupModel(torch.nn.Module):
    """Answers MQAR exactly: at each position, the token that followed this token's first occurrence."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, x, targets=None):
        out = torch.zeros(*x.shape, self.vocab)
        for b, row in enumerate(x.tolist()):
            for t, tok in enumerate(row):
                first = row.index(tok)
                if first < t and first + 1 < len(row):
                    out[b, t, row[first + 1]] = 1.0
        return out, None


def test_query_accuracy_of_an_exact_lookup_is_one_and_of_a_constant_guess_is_its_frequency():
    from replib.data.mqar import mqar
    x, y = mqar(12, 6, 30, 64, seed=2)
    assert rx.query_accuracy(_LookupModel(64), x, y, chunk=5) == 1.0
    const = lambda idx, targets=None: (F.one_hot(torch.full_like(idx, 40), 64).float(), None)  # noqa: E731
    scored = y != -100
    assert rx.query_accuracy(const, x, y) == pytest.approx(float((y[scored] == 40).float().mean()))


def test_run_mqar_is_seeded_and_scores_in_zero_one():
    kw = dict(n_pairs=2, seq_len=8, vocab_size=16, n_layer=1, d_model=16, n_head=2, batch_size=4, steps=2,
              val_seqs=8, test_seqs=8)
    a, b = (rx.run_mqar("regression", 1e-3, 0, **kw) for _ in range(2))
    assert a["loss"] == b["loss"] and a["test_acc"] == b["test_acc"] and 0.0 <= a["val_acc"] <= 1.0


def test_c2_trained_rule_on_known_answers():
    from replib.claims import Health, Stat, Verdict, better
    rule_ = better("regression", "linear", metric="query accuracy", lower_is_better=False,
                   health=Health(reference=1 / 32, margin=0.05, lower_is_better=False, name="chance"))
    rule = lambda m: rule_({k: Stat.of(v) for k, v in m.items()})  # noqa: E731
    assert rule({"regression": [0.6, 0.7, 0.65], "linear": [0.3, 0.35, 0.32]}) is Verdict.REPLICATED
    assert rule({"regression": [0.3, 0.31, 0.29], "linear": [0.6, 0.7, 0.65]}) is Verdict.NOT_REPLICATED
    assert rule({"regression": [0.6, 0.3, 0.5], "linear": [0.4, 0.5, 0.45]}) is Verdict.INCONCLUSIVE
    assert rule({"regression": [0.9, 0.9, 0.9], "linear": [0.04, 0.05, 0.03]}) is Verdict.INCONCLUSIVE  # at chance
    assert rule({"regression": [0.9, math.nan, 0.9], "linear": [0.4, 0.5, 0.45]}) is Verdict.INCONCLUSIVE
