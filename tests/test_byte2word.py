"""Byte2Word (chapter 20): the byte-to-word encoder, the bidirectional encoder, the chapter's data."""
import ast

import pytest
import torch

from replib.data.words import encode_words, split_words
from replib.experiments import byte2word as bx
from replib.nn.bert import BertEncoder, SubwordBert
from replib.nn.byte2word import Byte2Word, Byte2WordBert


def small(dtype=torch.float32, **kw) -> Byte2Word:
    torch.manual_seed(0)
    return Byte2Word(16, d_byte=8, n_latent=2, n_head=2, max_bytes=12, **kw).to(dtype).eval()


def test_shapes_any_leading_dims():
    m = small()
    c = encode_words(["a", "word", "é"], 12)
    assert m(c).shape == (3, 16)
    assert m(c.view(1, 3, 12).expand(2, 3, 12)).shape == (2, 3, 16)


def test_padding_bytes_do_not_change_the_word_vector():
    m = small()
    c = encode_words(["dog", "configparser", "x"], 8)
    wide = torch.cat([c, torch.zeros(3, 4, dtype=torch.long)], 1)  # same words, 4 more pad bytes
    torch.testing.assert_close(m(c), m(wide), atol=1e-6, rtol=1e-6)


def test_byte_order_matters_and_identical_words_agree_whatever_the_context():
    m = small()
    e = m(encode_words(["dog", "god", "dog"], 12))
    assert (e[0] - e[1]).abs().max() > 1e-3  # permutation-sensitive through byte positions
    alone = m(encode_words(["dog"], 12))
    other = m(encode_words(["cat", "the", "dog", "zebra", "dog"], 12))
    torch.testing.assert_close(other[2], alone[0], atol=1e-6, rtol=0)  # no context leakage
    assert torch.equal(e[0], e[2])


def test_unique_word_shortcut_equals_encoding_every_word():
    m = small(torch.float64)
    c = encode_words(split_words("the cat saw the dog , the end"), 12)
    torch.testing.assert_close(m(c), m.encode_unique(c))


def test_empty_canvas_stays_finite():
    m = small()
    assert torch.isfinite(m(torch.zeros(2, 12, dtype=torch.long))).all()


def test_gradcheck_float64():
    m = small(torch.float64)
    c = encode_words(["ab", "abc", "b"], 4)
    names = [n for n, _ in m.named_parameters()]
    params = tuple(p.detach().clone().requires_grad_(True) for p in m.parameters())

    def f(*ps):
        return torch.func.functional_call(m, dict(zip(names, ps)), (c,))

    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, fast_mode=True)


def test_spec_parameter_ratio():
    # the spec's sizes: D=256, WordPiece 8k table against byte emb 64, K=4, 4 heads
    ratio = bx.embedding_ratio(d_model=256, vocab_size=8000, d_byte=64, n_latent=4, n_head=4, max_bytes=24)
    assert ratio <= 0.15
    assert Byte2Word(256, d_byte=64, n_latent=4, n_head=4, max_bytes=24).embedding_params() == 134144


def test_encoder_is_bidirectional_and_ignores_padding():
    torch.manual_seed(0)
    enc = BertEncoder(16, 2, 2, 8).eval()
    x = torch.randn(1, 5, 16)
    y = x.clone()
    y[0, 4] = torch.randn(16)  # change the last position
    assert (enc(x)[0, 0] - enc(y)[0, 0]).abs().max() > 1e-4  # the first position sees it
    pad = torch.tensor([[False, False, False, True, True]])
    z = x.clone()
    z[0, 3:] = torch.randn(2, 16)  # padding content must not matter
    torch.testing.assert_close(enc(x, pad)[0, :3], enc(z, pad)[0, :3])
    torch.testing.assert_close(enc(x, pad)[0, :3], enc(x[:, :3])[0])


def test_mask_vector_replaces_input():
    torch.manual_seed(0)
    m = SubwordBert(20, 16, 1, 2, 8).eval()
    ids = torch.tensor([[1, 2, 3]])
    masked = torch.tensor([[False, True, False]])
    other = torch.tensor([[1, 7, 3]])
    torch.testing.assert_close(m(ids, masked=masked), m(other, masked=masked))
    assert m.mlm_logits(m(ids)[0]).shape == (3, 20)


def test_byte2word_bert_head_shapes_and_determinism():
    def build():
        torch.manual_seed(3)
        return Byte2WordBert(50, 16, 1, 2, 8, n_slots=3,
                             byte2word=dict(d_byte=8, n_latent=2, n_head=2, max_bytes=12))
    c = encode_words(["one", "two", "three"], 12).unsqueeze(0)
    a, b = build()(c), build()(c)
    assert torch.equal(a, b)
    assert build().mlm_logits(a[0]).shape == (3, 3, 50)


def test_modules_cut_at_the_pinned_line_numbers():
    mods = bx.module_texts()
    assert len(mods) == 25 and list(mods)[0] == "argparse" and list(mods)[-1] == "typing"
    for name, text in mods.items():
        ast.parse(text)  # each piece is one whole module
    assert "\n".join(mods.values()) == bx.book_corpus().text


def test_docstring_split_is_fixed_and_disjoint():
    data = bx.docstring_task(n_classes=4, min_words=4)
    assert len(data.classes) == 4
    names = {part: {(d.module, d.lines) for d in docs} for part, docs in data.splits.items()}
    assert not names["train"] & names["val"] and not names["val"] & names["test"]
    again = bx.docstring_task(n_classes=4, min_words=4)
    assert [d.text for d in again.splits["test"]] == [d.text for d in data.splits["test"]]
    lines = data.pretrain_text.split("\n")  # held-out docstrings are blank in the pre-training text
    assert len(lines) == len(bx.book_corpus().text.split("\n"))
    start = dict(zip(bx.module_texts(), bx.MODULE_START_LINES))
    for d in data.splits["val"] + data.splits["test"]:
        assert not any(lines[start[d.module] + d.lines[0] - 1:start[d.module] + d.lines[1]])
    assert all(lines[start[d.module] + d.lines[0] - 1] for d in data.splits["train"])


def test_split_words_is_idempotent():
    text = "def f(x):\n    return x.y, 'z' -- done?"
    words = split_words(text)
    assert split_words(" ".join(words)) == words


def test_noise_is_seeded_and_has_the_asked_rate():
    text = "abcdefghij " * 200
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    a, b = bx.byte_noise(text, 0.1, g1), bx.byte_noise(text, 0.1, g2)
    assert a == b and a != text
    assert bx.byte_noise(text, 0.0, g1) == text
    same = "x" * 5000  # substitutions and insertions bring letters; 2/3 of edits, 25/26 not "x"
    letters = sum(c != "x" for c in bx.byte_noise(same, 0.1, torch.Generator().manual_seed(2)))
    assert 0.05 < letters / len(same) < 0.08  # expected 0.1 * 2/3 * 25/26 = 0.064
