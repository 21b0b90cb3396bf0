from collections import Counter

import pytest
import torch

from replib.data.words import PAD, encode_words
from replib.experiments.learn_your_tokens import next_word, smoothed, word_accuracy
from replib.nn.word_pooling import WordPoolConfig, WordPoolLM, attention_cost
from replib.runtime import torch_threads
from replib.train import adamw

@pytest.fixture(autouse=True)
def _one_thread():  # tiny models: a second thread only waits on a busy machine
    with torch_threads(1):
        yield


CFG = WordPoolConfig(canvas=6, n_prefix=3, n_words=5, d_model=16, n_head=2)


def model(cfg=CFG, seed=0):
    torch.manual_seed(seed)
    return WordPoolLM(cfg).eval()


def words(seed=0, B=2, cfg=CFG):
    g = torch.Generator().manual_seed(seed)
    u = torch.randint(1, cfg.vocab_size, (B, cfg.n_words, cfg.canvas), generator=g)
    lengths = torch.randint(1, cfg.canvas, (B, cfg.n_words, 1), generator=g)
    return u.masked_fill(torch.arange(cfg.canvas) >= lengths, PAD)


def test_shapes():
    m, u = model(), words()
    h = m.encode(u)
    assert h.shape == (2, 5, 3, 16)
    assert m.main_lm(h).shape == (2, 5, 3, 16)
    logits, loss = m(u, targets=True)
    assert logits.shape == (2, 4, 6, CFG.vocab_size) and torch.isfinite(loss)


def test_main_lm_is_causal_over_words():
    m, u = model(), words()
    v = u.clone()
    v[:, 3] = words(seed=1)[:, 3]  # change word 3 (0-based)
    za, zb = m.main_lm(m.encode(u)), m.main_lm(m.encode(v))
    assert torch.allclose(za[:, :3], zb[:, :3], atol=1e-6)
    assert not torch.allclose(za[:, 3], zb[:, 3], atol=1e-4)


def test_decoder_logits_for_unit_j_see_only_earlier_units():
    m, u = model(), words()
    u[:, 2, :4] = torch.tensor([10, 11, 12, 13])
    for j in range(4):
        v = u.clone()
        v[:, 2, j] = 99
        la, lb = m(u)[0], m(v)[0]
        # word 2 is predicted at row 1: its logits for units 0..j must not move
        assert torch.allclose(la[:, 1, :j + 1], lb[:, 1, :j + 1], atol=1e-6)
        assert not torch.allclose(la[:, 1, j + 1:], lb[:, 1, j + 1:], atol=1e-4)
        assert torch.allclose(la[:, 0], lb[:, 0], atol=1e-6)  # an earlier word: untouched


def test_padding_does_not_change_a_words_vector():
    m, u = model(), words()
    before = m.encode(u)
    with torch.no_grad():
        m.unit_emb.weight[PAD] += torch.randn(CFG.d_model)
    assert torch.allclose(m.encode(u), before, atol=1e-5)


def test_one_prefix_one_unit_words_reduce_to_a_trainable_lm():
    cfg = WordPoolConfig(vocab_size=8, canvas=1, n_prefix=1, n_words=16, d_model=16, n_head=2)
    m = model(cfg).train()
    seq = torch.arange(1, 17).remainder(7).add(1).view(1, 16, 1).repeat(4, 1, 1)  # a cycle
    opt = adamw(m, 3e-3)
    losses = []
    for _ in range(60):
        loss = m(seq, targets=True)[1]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.25 * losses[0]


def test_optimiser_groups_spare_biases_and_norm_gains():
    m = model()
    opt = adamw(m, 1e-4)
    decay, rest = ({id(p) for p in g["params"]} for g in opt.param_groups)
    assert opt.param_groups[0]["weight_decay"] == 0.1 and opt.param_groups[1]["weight_decay"] == 0.0
    assert opt.defaults["betas"] == (0.9, 0.95)
    for name, p in m.named_parameters():
        if name.endswith("bias") or "norm" in name:
            assert id(p) in rest, name
        if name.endswith(("in_proj_weight", "fc.weight", "unit_emb.weight", "head.weight")):
            assert id(p) in decay, name


def test_greedy_word_is_the_decoders_argmax_on_itself():
    m, u = model(), words()
    out = m.generate_word(u)
    z = m.main_lm(m.encode(u))[:, -1]
    again = m.decode(z, out).argmax(-1)
    for row, ref in zip(out, again):
        n = int((row != PAD).sum()) + 1 if (row == PAD).any() else len(row)
        assert torch.equal(row[:n], ref[:n])  # up to and including the word's end


def test_decoder_gradcheck_in_float64():
    cfg = WordPoolConfig(canvas=4, n_prefix=2, n_words=2, d_model=8, n_head=2)
    m = model(cfg).double()
    u = words(cfg=cfg)[:1, :1]
    ctx = torch.randn(1, 1, 2, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda c: m.decode(c, u), (ctx,), eps=1e-6, atol=1e-5)


def test_same_seed_same_model():
    a, b = model(seed=3), model(seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_word_accuracy_counts_exact_matches_and_rare_words():
    words_ = ["a", "the", "cat", "the", "zyx"]
    counts = Counter({"the": 100, "cat": 10, "a": 50})
    acc = word_accuracy(["the", "ca", "the", "zyx"], words_, [1, 2, 3, 4], counts)
    assert acc["hits"] == 3 and acc["acc"] == 0.75
    assert acc["rare_n"] == 1 and acc["rare_acc"] == 1.0  # "zyx" never seen
    assert smoothed(0, 9) == 0.05


def test_attention_cost_formula():
    c = attention_cost(n_words=10, units_per_word=5.0, n_prefix=4, canvas=10)
    assert c == {"unit_lm": 2500.0, "main": 1600, "within_words": 2 * 10 * 14 ** 2}


def test_canvases_from_words_feed_the_model():
    cfg = WordPoolConfig(canvas=6, n_prefix=2, n_words=3, d_model=16, n_head=2)
    u = encode_words(["def", "f", "("], 6)[None]
    assert model(cfg)(u)[0].shape == (1, 2, 6, cfg.vocab_size)


def test_a_gpt_continuation_predicts_a_word_only_when_the_word_is_closed():
    assert next_word(" def foo") == "def"
    assert next_word(" def") == ""  # not closed: the word might go on
    assert next_word("def ") == ""  # no space before: not the next word
    assert next_word(" ( x") == "("
