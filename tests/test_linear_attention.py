"""The linear-attention family: equal parallel / chunked / recurrent forms, the specs' reference
checks (24 NaLaFormer, 33 TransNormerLLM), and the official code's equations on random inputs."""
import math

import pytest
import torch

from replib.nn import create_norm
from replib.nn.attention import create_attention
from replib.nn.attention.linear import (FORMS, decay_mask, decayed, decayed_parallel, decayed_recurrent,
                                        decayed_step, normalized_linear_attention)
from replib.nn.attention.nala import (nala_attention, nala_features, nala_weights, query_power, rope_angles,
                                      theta_shift)
from replib.nn.attention.transnormer import alibi_slopes, layer_slopes, lightning_attention

F64 = torch.float64
T = 13  # not a multiple of any chunk below but 1 and 13
CHUNKS = (1, 3, 4, 5, 13, 16)


def rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def qkv(B=2, H=3, T=T, D=4, E=5, seed=0):
    return rand(B, H, T, D, seed=seed), rand(B, H, T, D, seed=seed + 1), rand(B, H, T, E, seed=seed + 2)


# ------------------------------------------------------------------ the shared decayed core
@pytest.mark.parametrize("decay", [False, True])
def test_decayed_parallel_equals_chunked_equals_recurrent(decay):
    q, k, v = qkv()
    s = torch.tensor([0.5, 0.1, 0.0], dtype=F64) if decay else None
    ref = decayed_parallel(q, k, v, s)
    for c in CHUNKS:
        torch.testing.assert_close(decayed(q, k, v, s, form="chunked", chunk=c), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decayed(q, k, v, s, form="recurrent"), ref, rtol=1e-12, atol=1e-12)


def test_decayed_parallel_is_the_written_out_sum():
    q, k, v = qkv(B=1, H=2, T=6)
    s = torch.tensor([0.3, 1.2], dtype=F64)
    out = decayed_parallel(q, k, v, s)
    for h in range(2):
        for t in range(6):
            want = sum(math.exp(-s[h] * (t - j)) * (q[0, h, t] @ k[0, h, j]) * v[0, h, j] for j in range(t + 1))
            torch.testing.assert_close(out[0, h, t], want, rtol=1e-12, atol=1e-12)


def test_recurrent_state_is_constant_size_and_continues():
    """The decoding state is (B, H, D, E) whatever T; running the recurrence on a prefix and then
    continuing from its state equals one pass (so a decoder needs nothing but the state)."""
    q, k, v = qkv(T=40)
    s = torch.tensor([0.5, 0.1, 0.01], dtype=F64)
    sizes = {decayed_recurrent(q[..., :n, :], k[..., :n, :], v[..., :n, :], s)[1].shape for n in (1, 8, 40)}
    assert sizes == {torch.Size([2, 3, 4, 5])}
    full, _ = decayed_recurrent(q, k, v, s)
    a, S = decayed_recurrent(q[..., :25, :], k[..., :25, :], v[..., :25, :], s)
    b, _ = decayed_recurrent(q[..., 25:, :], k[..., 25:, :], v[..., 25:, :], s, state=S)
    torch.testing.assert_close(torch.cat([a, b], -2), full, rtol=1e-12, atol=1e-12)


def test_decoding_state_after_prefill_is_the_decayed_sum():
    """33's check: S_n = sum_j exp(-s (n-1-j)) k_j^T v_j."""
    q, k, v = qkv(T=9)
    s = torch.tensor([0.5, 0.1, 0.0], dtype=F64)
    _, S = decayed_recurrent(q, k, v, s)
    w = torch.exp(-s.view(1, 3, 1) * (8 - torch.arange(9, dtype=F64)))  # (1, H, T)
    torch.testing.assert_close(S, torch.einsum("bht,bhtd,bhte->bhde", w.expand(2, 3, 9), k, v))


def test_decay_mask_rows_match_lightning_get_mask():
    """Row t: [exp(-s t), ..., exp(-s), 1, 0, ...] (lightning-attention's get_mask loop)."""
    s = 0.37
    M = decay_mask(5, torch.tensor([s], dtype=F64), dtype=F64)[0]
    for t in range(5):
        want = [math.exp(-s * (t - j)) if j <= t else 0.0 for j in range(5)]
        torch.testing.assert_close(M[t], torch.tensor(want, dtype=F64))


# ------------------------------------------------------------------ kernelised linear attention
@pytest.mark.parametrize("phi", [lambda x: torch.nn.functional.elu(x) + 1, torch.relu])
def test_normalized_linear_attention_forms_and_formula(phi):
    q, k, v = qkv()
    fq, fk = phi(q), phi(k)
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=2)  # (B, H, T, D, E)
    z = torch.cumsum(fk, dim=2)
    want = torch.einsum("bhtd,bhtde->bhte", fq, S) / ((fq * z).sum(-1, keepdim=True) + 1e-6)
    for form in FORMS:
        for c in (3, 16):
            got = normalized_linear_attention(fq, fk, v, form=form, chunk=c)
            torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_linear_weights_are_a_convex_mix_and_token_zero_sees_itself():
    q, k, v = qkv()
    phi = lambda x: torch.nn.functional.elu(x) + 1  # noqa: E731
    ones = torch.ones_like(v)
    torch.testing.assert_close(normalized_linear_attention(phi(q), phi(k), ones, eps=0.0), ones)
    out = normalized_linear_attention(phi(q), phi(k), v, eps=0.0)
    torch.testing.assert_close(out[..., 0, :], v[..., 0, :])


@pytest.mark.parametrize("name,kw", [("linear", {}), ("linear", {"feature_map": "relu"}),
                                     ("nala", {}), ("nala", {"rope": False, "lepe": True}),
                                     ("nala", {"split": False}),
                                     ("transnormer", {}), ("transnormer", {"decay": False, "gate": False})])
def test_registry_entries_give_equal_outputs_in_every_form(name, kw):
    x = rand(2, 11, 16)
    outs = []
    for form, chunk in (("parallel", 64), ("chunked", 4), ("chunked", 3), ("recurrent", 64)):
        torch.manual_seed(0)
        m = create_attention(name, 16, 2, seq_len=11, form=form, chunk=chunk, **kw).double().eval()
        outs.append(m(x))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ NaLa (chapter 24)
def test_nala_features_nonnegative_and_the_query_power_bounds():
    q, k, _ = qkv()
    fq, fk = nala_features(q, k)
    assert fq.shape[-1] == fk.shape[-1] == 8 and (fq >= 0).all() and (fk >= 0).all()
    p = query_power(torch.tensor([[1e-9, 0, 0], [1e9, 0, 0]], dtype=F64)).squeeze(-1)
    torch.testing.assert_close(p, torch.tensor([1.5, 4.5], dtype=F64))
    c = torch.tensor([[2.0, 0, 0]], dtype=F64)
    torch.testing.assert_close(query_power(c), 3 * (0.5 + torch.tanh(torch.tensor([[2.0]], dtype=F64))))


def test_nala_kernel_on_positive_entries_and_the_cosine_inhibit():
    """All-positive q, k: phi(q).phi(k) = sum_i (q_i/||q||)^p k_i^3; opposite signs everywhere: 0."""
    q, k = rand(5, 6).abs(), rand(5, 6, seed=1).abs()
    fq, fk = nala_features(q, k)
    p = query_power(q)
    want = ((q / q.norm(dim=-1, keepdim=True)) ** p) @ (k ** 3).T
    torch.testing.assert_close(fq @ fk.T, want)
    fq, fk = nala_features(q, -k)
    assert (fq @ fk.T == 0).all()
    fq, fk = nala_features(-q, -k)  # negative-negative interactions kept
    torch.testing.assert_close(fq @ fk.T, want)
    fq, fk = nala_features(-q, -k, split=False)  # ... and dropped by the ReLU-only kernel
    assert (fq @ fk.T == 0).all()


def test_nala_weights_rows_sum_to_one_and_depend_on_the_query_norm():
    q, k = rand(16, 8), rand(16, 8, seed=1)
    a = nala_weights(q, k)
    assert (a >= 0).all()
    torch.testing.assert_close(a.sum(-1), torch.ones(16, dtype=F64))
    assert not torch.allclose(nala_weights(3 * q, k), a, atol=1e-3)  # NaLa: changes with ||q||
    r = torch.relu(q) @ torch.relu(k).T  # ReLU linear attention: exactly invariant to q -> c q
    r3 = torch.relu(3 * q) @ torch.relu(k).T
    torch.testing.assert_close(r3 / r3.sum(-1, keepdim=True), r / r.sum(-1, keepdim=True))


def official_nala_kernel(q, k, v, sin, cos):
    """The kernel lines of NormAwareLinearAttn.forward (ZacharyMeng/NaLaFormer @1f1c10a,
    NaLaformer/NALA.py), transcribed; (B, H, N, d) heads, sin/cos given."""
    N = q.shape[-2]
    k = k ** 3
    q1, k1, q2, k2 = torch.relu(q), torch.relu(k), torch.relu(-q), torch.relu(-k)
    q_norm = q.norm(dim=-1, p=2, keepdim=True)
    q1, q2 = q1 / q_norm, q2 / q_norm
    power = 3 * (0.5 + torch.tanh(q_norm))
    q1, q2 = q1 ** power, q2 ** power
    q_ = torch.cat([theta_shift(q1, sin, cos), theta_shift(q2, sin, cos)], dim=-1)
    k_ = torch.cat([theta_shift(k1, sin, cos), theta_shift(k2, sin, cos)], dim=-1)
    q, k = torch.cat([q1, q2], dim=-1), torch.cat([k1, k2], dim=-1)
    z = 1 / (q @ k.mean(dim=-2, keepdim=True).transpose(-2, -1) + 1e-6)
    kv = (k_.transpose(-2, -1) * (N ** -0.5)) @ (v * (N ** -0.5))
    return q_ @ kv * z


def test_official_theta_shift_rotates_every_two():
    x = rand(3, 6)
    sin, cos = rope_angles(3, 6, dtype=F64)
    x1, x2 = x[:, ::2], x[:, 1::2]
    want = torch.stack([-x2, x1], dim=-1).flatten(-2)  # the official rotate_every_two
    torch.testing.assert_close(theta_shift(x, sin, cos), x * cos + want * sin)
    torch.testing.assert_close(theta_shift(x, sin, cos).norm(dim=-1), x.norm(dim=-1))  # a rotation


@pytest.mark.parametrize("rope", [False, True])
def test_nala_noncausal_equals_the_official_equations_and_the_explicit_nxn_form(rope):
    q, k, v = qkv(T=10, D=8)
    sin, cos = rope_angles(10, 8, dtype=F64)
    if not rope:
        sin, cos = torch.zeros_like(sin), torch.ones_like(cos)
    ours = nala_attention(q, k, v, causal=False, rope=rope)
    torch.testing.assert_close(ours, official_nala_kernel(q, k, v, sin, cos), rtol=1e-10, atol=1e-12)
    if not rope:  # the explicit N x N computation: numerator and denominator
        fq, fk = nala_features(q, k)
        A = fq @ fk.transpose(-2, -1) / 10
        torch.testing.assert_close(ours, (A @ v) / (A.sum(-1, keepdim=True) + 1e-6), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("rope", [False, True])
def test_nala_causal_forms_agree_and_the_last_token_is_the_noncausal_one(rope):
    q, k, v = qkv(T=T, D=8)
    ref = nala_attention(q, k, v, rope=rope, form="parallel")
    for c in CHUNKS:
        torch.testing.assert_close(nala_attention(q, k, v, rope=rope, form="chunked", chunk=c), ref,
                                   rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(nala_attention(q, k, v, rope=rope, form="recurrent"), ref, rtol=1e-10, atol=1e-12)
    full = nala_attention(q, k, v, causal=False, rope=rope)
    torch.testing.assert_close(ref[..., -1, :], full[..., -1, :], rtol=1e-10, atol=1e-12)
    t = 6  # token t's causal output is the non-causal output of the first t+1 tokens
    pre = nala_attention(q[..., :t + 1, :], k[..., :t + 1, :], v[..., :t + 1, :], causal=False, rope=rope)
    torch.testing.assert_close(ref[..., t, :], pre[..., -1, :], rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ TransNormerLLM (chapter 33)
def test_alibi_slopes_and_the_layer_factor():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)], dtype=F64))
    torch.testing.assert_close(alibi_slopes(6), torch.tensor([2 ** -2, 2 ** -4, 2 ** -6, 2 ** -8, 2 ** -1, 2 ** -3],
                                                             dtype=F64))
    torch.testing.assert_close(layer_slopes(8, 0, 4), alibi_slopes(8) * (1 + 1e-5))
    torch.testing.assert_close(layer_slopes(8, 3, 4), alibi_slopes(8) * 1e-5)
    torch.testing.assert_close(layer_slopes(8, 1, 4), alibi_slopes(8) * (1 - 1 / 3 + 1e-5))


def official_linear_attn(q, k, v, slopes):
    """lightning-attention @0ae41be lightning_attn/ops/torch/linear_attention.py, transcribed."""
    n = q.shape[-2]
    masks = []
    for slope in slopes:
        mask = torch.triu(torch.zeros(n, n, dtype=F64).fill_(float("-inf")), 1)
        for i in range(n):
            mask[i, : i + 1] = -torch.flip(slope * torch.arange(i + 1, dtype=F64), [0])
        masks.append(torch.exp(mask))
    qk = torch.matmul(q, k.transpose(2, 3)) * torch.stack(masks)
    return torch.matmul(qk, v)


def official_prefill(q, k, v, slope_rate, BLOCK):
    """The prefill loop of NormLinearAttention.inference (TransNormerLLM's modeling_transnormer.py),
    transcribed; slope_rate (h, 1, 1)."""
    b, h, n, d = q.shape
    array = torch.arange(BLOCK, dtype=F64) + 1
    q_decay = torch.exp(-slope_rate * array.reshape(-1, 1))
    k_decay = torch.exp(-slope_rate * (BLOCK - array.reshape(-1, 1)))
    index = array[:, None] - array[None, :]
    s_index = torch.where(index >= 0, -slope_rate * index[None, None], float("-inf"))
    diag_decay = torch.exp(s_index)
    kv = torch.zeros(b, h, d, v.shape[-1], dtype=F64)
    output = torch.empty(b, h, n, v.shape[-1], dtype=F64)
    for i in range((n + BLOCK - 1) // BLOCK):
        si, ei = i * BLOCK, min(i * BLOCK + BLOCK, n)
        m = ei - si
        qi, ki, vi = q[:, :, si:ei], k[:, :, si:ei], v[:, :, si:ei]
        none_diag = torch.matmul(qi * q_decay[:, :m], kv)
        qk = torch.matmul(qi, ki.transpose(-1, -2)) * diag_decay[:, :, :m, :m]
        output[:, :, si:ei] = none_diag + torch.matmul(qk, vi)
        kv = torch.exp(-slope_rate * m) * kv + torch.matmul((ki * k_decay[:, -m:]).transpose(-1, -2), vi)
    return output


def test_tnl_forms_equal_the_official_reference_and_prefill_loop():
    q, k, v = qkv(H=4, T=T)
    s = alibi_slopes(4)
    ref = official_linear_attn(q, k, v, s)
    torch.testing.assert_close(decayed_parallel(q, k, v, s), ref, rtol=1e-12, atol=1e-12)
    for block in (4, 5, 16):
        torch.testing.assert_close(official_prefill(q, k, v, s.view(4, 1, 1), block), ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(lightning_attention(q, k, v, s, block), ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(decayed(q, k, v, s, form="recurrent"), ref, rtol=1e-12, atol=1e-12)


def test_tnl_decode_step_is_the_official_recurrence():
    """kv = exp(-s) kv + k^T v; o = q kv (NormLinearAttention.inference's decode loop)."""
    q, k, v = qkv(H=4, T=1)
    s = alibi_slopes(4)
    S0 = rand(2, 4, 4, 5, seed=9)
    o, S = decayed_step(S0, q[..., 0, :], k[..., 0, :], v[..., 0, :], s)
    want_S = torch.exp(-s).view(4, 1, 1) * S0 + k[..., 0, :].unsqueeze(-1) * v[..., 0, :].unsqueeze(-2)
    torch.testing.assert_close(S, want_S)
    torch.testing.assert_close(o, torch.einsum("bhd,bhde->bhe", q[..., 0, :], want_S))


def test_tnl_without_decay_norm_and_gate_is_cumsum_linear_attention():
    torch.manual_seed(0)
    m = create_attention("transnormer", 16, 2, seq_len=9, decay=False, norm=False, gate=False).double()
    x = rand(2, 9, 16)
    q, k, v = m.heads(x)
    fq, fk = torch.nn.functional.silu(q), torch.nn.functional.silu(k)
    S = torch.cumsum(fk.unsqueeze(-1) * v.unsqueeze(-2), dim=2)
    torch.testing.assert_close(m.mix(q, k, v, x), torch.einsum("bhtd,bhtde->bhte", fq, S))


def test_srmsnorm_has_no_parameters_and_unit_mean_square():
    n = create_norm("srmsnorm", 32)
    assert not list(n.parameters())
    x = 5 * rand(4, 7, 32)
    y = n(x)
    ms = x.pow(2).mean(-1)
    torch.testing.assert_close(y.pow(2).mean(-1), 1 / (1 + 1e-6 / ms))
    torch.testing.assert_close(n(x.half()).float(), y.float(), rtol=2e-3, atol=2e-3)  # computed in float32
    assert n(x.half()).dtype == torch.float16


# ------------------------------------------------------------------ the chapters' rules on known answers
def _judge(rule, metrics):
    from replib.claims import Stat
    return rule.apply({k: Stat.of(v) for k, v in metrics.items()})[0]


def test_entropy_rule_on_known_answers():
    from replib.claims import Verdict
    from replib.experiments.nala import entropy_rule
    base = {"softmax rho": [-0.97, -0.98], "relu-linear rho": [0.01, -0.02], "elu1-linear rho": [-0.9, -0.9]}
    assert _judge(entropy_rule(), {**base, "nala rho": [-0.7, -0.6]}) is Verdict.REPLICATED
    assert _judge(entropy_rule(), {**base, "nala rho": [-0.1, -0.2]}) is Verdict.NOT_REPLICATED
    assert _judge(entropy_rule(), {**base, "nala rho": [-0.7, -0.2]}) is Verdict.INCONCLUSIVE
    assert _judge(entropy_rule(), {**base, "relu-linear rho": [0.3, 0.3], "nala rho": [-0.7, -0.6]}) \
        is Verdict.INCONCLUSIVE


def test_entropy_correlation_separates_softmax_from_relu_linear():
    from replib.experiments.nala import entropy_correlation
    r = entropy_correlation(0)
    assert r["softmax"]["rho"] < -0.9 and abs(r["relu-linear"]["rho"]) < 0.05


def test_nala_and_tnl_quality_rules_on_known_answers():
    from replib.claims import Health, Verdict
    from replib.experiments.nala import nala_quality_rule
    from replib.experiments.transnormer import tnl_quality_rule
    h = Health(reference=6.0, margin=0.07)
    eps = [0.0, 0.01, -0.01]
    m = {"softmax": [2.0 + e for e in eps], "relu-linear": [2.5 + e for e in eps],
         "elu1-linear": [2.4 + e for e in eps], "nala": [2.1 + e + 0.001 * i for i, e in enumerate(eps)]}
    rule = nala_quality_rule(h, ("relu-linear", "elu1-linear"))
    assert _judge(rule, m) is Verdict.REPLICATED
    assert _judge(rule, {**m, "nala": [2.6 + e + 0.001 * i for i, e in enumerate(eps)]}) is Verdict.NOT_REPLICATED
    assert _judge(rule, {**m, "nala": [2.1, 6.5, 2.1]}) is Verdict.INCONCLUSIVE  # health gate
    t = {"transformer": [2.0, 2.1, 1.9], "tnl": [1.99, 2.09, 1.891], "tnl-no-decay": [2.2, 2.31, 2.1]}
    assert _judge(tnl_quality_rule(h), t) is Verdict.REPLICATED
    assert _judge(tnl_quality_rule(h), {**t, "tnl": [2.2, 2.31, 2.092]}) is Verdict.NOT_REPLICATED


def test_decode_rule_on_known_answers():
    from replib.claims import Verdict
    from replib.experiments.transnormer import decode_rule
    m = {"tnl time ratio": [1.0, 1.1], "softmax time ratio": [3.0, 3.2], "state growth": [1.0, 1.0],
         "tnl max error": [1e-6, 2e-6]}
    assert _judge(decode_rule(), m) is Verdict.REPLICATED
    assert _judge(decode_rule(), {**m, "state growth": [2.0, 2.0]}) is Verdict.NOT_REPLICATED
    assert _judge(decode_rule(), {**m, "tnl max error": [1e-6, 1e-3]}) is Verdict.NOT_REPLICATED
    assert _judge(decode_rule(), {**m, "tnl time ratio": [3.0, 3.0]}) is Verdict.NOT_REPLICATED


def test_saved_bytes_quadratic_for_the_masked_form_linear_for_blocks():
    from replib.timing import saved_for_backward_bytes as saved_bytes
    s = alibi_slopes(2).float()

    def saved(f, T):
        q, k, v = (torch.randn(1, 2, T, 8, requires_grad=True) for _ in range(3))
        return saved_bytes(lambda: f(q, k, v, s))

    naive = saved(decayed_parallel, 512) / saved(decayed_parallel, 256)
    blocks = saved(lambda q, k, v, s: lightning_attention(q, k, v, s, 32), 512) / \
        saved(lambda q, k, v, s: lightning_attention(q, k, v, s, 32), 256)
    assert naive > 3.0 and blocks < 2.5, (naive, blocks)
