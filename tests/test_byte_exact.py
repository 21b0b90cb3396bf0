"""Chapter 36: replib BPE, the Markov word source, and exact byte probabilities from token LMs."""
import itertools

import numpy as np
import pytest
import torch

from replib.data.markov import MarkovWords
from replib.experiments import byte_exact as bx
from replib.nn.transformer import GPTConfig, TinyGPT
from replib.tokenize import byte_exact as be
from replib.tokenize.bpe import BPE, split_chunks


@pytest.fixture(scope="module")
def setup():
    src = MarkovWords(seed=0)
    tok_a, tok_b = bx.tokenizers(src, [6, 12], 30_000)
    words = src.words()
    return src, tok_a, tok_b, be.ChunkPushforwardLM(tok_a, words), be.ChunkPushforwardLM(tok_b, words)


def partial_words(src, max_letters):
    """Every letters-only word start the source can produce, up to ``max_letters`` bytes."""
    out = []
    for m in range(1, max_letters + 1):
        for q in itertools.product(src.letters, repeat=m):
            if src.continuation_prob(b"", bytes(q)) > 0:
                out.append(bytes(q))
    return out


def test_bpe_merge_priority_roundtrip_and_validity():
    tok = BPE(b"abc", [(b"b", b"c"), (b"a", b"b"), (b"a", b"bc")], boundary=b" ")
    # "abc": the rank-0 merge (b, c) wins over (a, b), then (a, bc)
    assert [tok.tokens[t] for t in tok.encode(b"abc")] == [b"abc"]
    assert [tok.tokens[t] for t in tok.encode(b"abab")] == [b"ab", b"ab"]
    for s in [b"", b"a", b"cab", b"abcabc", b"bbca"]:
        assert tok.decode(tok.encode(s)) == s and tok.is_valid(tok.encode(s))
    assert not tok.is_valid([tok.ids[b"a"], tok.ids[b"bc"]])  # spells "abc", not canonical
    assert split_chunks(b"ab ba c") == [b"ab ", b"ba ", b"c"]


def test_bpe_training_tiny_alphabet_deterministic():
    sample = MarkovWords(seed=3).sample(5_000, np.random.default_rng(0))
    a, b = BPE.train(sample, 5), BPE.train(sample, 5)
    assert a.merges == b.merges and len(a.merges) == 5 and a.alphabet == b" abc"
    assert a.vocab_size == 4 + 5
    assert a.decode(a.encode(sample)) == sample


def test_prefix_of_canonical_encoding_is_canonical(setup):
    src, tok, *_ = setup
    for w in src.words():
        enc = tok.encode(w)
        assert all(tok.is_valid(enc[:j]) for j in range(len(enc) + 1))


def test_markov_source_is_normalised_and_seeded():
    src = MarkovWords(seed=1)
    assert sum(src.words().values()) == pytest.approx(1.0, abs=1e-12)
    assert np.allclose(src.transition.sum(1), 1)
    assert np.array_equal(src.transition, MarkovWords(seed=1).transition)
    assert not np.array_equal(src.transition, MarkovWords(seed=2).transition)
    assert src.next_byte_probs(b"a" * (src.max_len - 1))[src.index[src.sep]] == 1.0  # forced separator
    s1, s2 = (src.sample(1000, np.random.default_rng(7)) for _ in range(2))
    assert s1 == s2 and s1.endswith(b" ")


def test_cover_enumeration_hand_built_vocab():
    # vocab {a, b, ab, abb}: "ab" is always merged, so [a, b] is not a valid cover of "ab"
    tok = BPE(b"ab", [(b"a", b"b"), (b"ab", b"b")], boundary=b" ")
    covers = {(tuple(tok.tokens[t] for t in c.left), tok.tokens[c.last]) for c in be.cover_encodings(tok, b"ab")}
    assert covers == {((), b"ab"), ((), b"abb")}
    assert not tok.is_valid([tok.ids[b"a"], tok.ids[b"b"]])


def test_cover_enumeration_equals_brute_force(setup):
    src, tok, *_ = setup
    for q in partial_words(src, 3):
        found = {c.left + (c.last,) for c in be.cover_encodings(tok, q)}
        brute = set()
        for k in range(1, len(q) + 1):
            for seq in itertools.product(range(tok.vocab_size), repeat=k):
                head, full = tok.decode(seq[:-1]), tok.decode(seq)
                if len(head) < len(q) and q.startswith(head) and full.startswith(q) and tok.is_valid(seq):
                    brute.add(seq)
        assert found == brute, q


def test_btr_recovers_the_source_exactly_and_normalises(setup):
    src, tok, _, exact, _ = setup
    prompts = [ctx + q for q in partial_words(src, src.max_len - 1) for ctx in (b"", b"ab c ")]
    probs, totals = be.next_byte_btr(exact, tok, prompts)
    truth = np.array([src.next_byte_probs(x) for x in prompts])
    assert np.abs(probs - truth).max() < 1e-12
    assert np.allclose(probs.sum(1), 1.0)
    # sum_b P(x b) = P(x): the cover sum is the probability that the current word starts with q
    for x, total in zip(prompts, totals):
        q = x[tok.chunk_start(x):]
        assert total == pytest.approx(src.continuation_prob(b"", q), rel=1e-10)


def test_empty_prefix_and_chunk_boundary_equal_first_byte_marginal(setup):
    src, tok, _, exact, _ = setup
    for x in [b"", b"ab ", b"c a "]:
        probs, totals = be.next_byte_btr(exact, tok, [x])
        assert totals[0] == pytest.approx(1.0)  # P(empty prefix of the new word) = 1
        assert np.allclose(probs, be.next_byte_naive(exact, tok, [x]), atol=1e-12)
        assert np.allclose(probs[0], src.next_byte_probs(x), atol=1e-12)


def test_naive_prompting_is_biased_mid_token(setup):
    src, tok, _, exact, _ = setup
    prompts = partial_words(src, 3)
    truth = np.array([src.next_byte_probs(x) for x in prompts])
    naive = be.next_byte_naive(exact, tok, prompts)
    assert bx.tv(naive, truth).max() > 0.5
    # a byte the source allows but the canonical context rules out
    assert ((truth > 0.05) & (naive < 1e-12)).any()


def test_byte_chain_equals_token_likelihood(setup):
    src, tok, _, exact, _ = setup
    rng = np.random.default_rng(0)
    for _ in range(5):
        text = src.sample(30, rng)  # ends at a word boundary: the one cover is enc(text)
        probs, _ = be.next_byte_btr(exact, tok, [text[:i] for i in range(len(text))])
        byte_ll = np.log(probs[np.arange(len(text)), [src.alphabet.index(b) for b in text]]).sum()
        enc = tuple(tok.encode(text))
        lp = exact.next_logprobs([enc[:j] for j in range(len(enc))])
        assert byte_ll == pytest.approx(lp[np.arange(len(enc)), enc].sum(), abs=1e-9)


def test_byte_distribution_invariant_to_tokenizer_and_context(setup):
    src, tok_a, tok_b, exact_a, exact_b = setup
    prompts = [b"b", b"ab c", b"cab b", b"acb"]
    pa, _ = be.next_byte_btr(exact_a, tok_a, prompts)
    pb, _ = be.next_byte_btr(exact_b, tok_b, [b"c " + x for x in prompts])
    assert np.abs(pa - pb).max() < 1e-12
    # byte mixture of two exact models with different vocabularies is the source itself
    assert np.allclose(0.5 * (pa + pb), [src.next_byte_probs(x) for x in prompts], atol=1e-12)


def test_greedy_btr_follows_the_source_argmax(setup):
    src, tok, _, exact, _ = setup
    prompts = [b"ab b", b"c"]
    for x, out in zip(prompts, be.greedy_btr(exact, tok, prompts, 4)):
        for j, b in enumerate(out):
            p = src.next_byte_probs(x + out[:j])
            assert p[src.index[b]] == pytest.approx(p.max())


def test_transformer_wrapper_matches_direct_forward():
    torch.manual_seed(0)
    model = TinyGPT(GPTConfig(vocab_size=7, seq_len=8, n_layer=1, n_head=2, d_model=16)).eval()
    lm = bx.TransformerLM(model, batch=2)
    contexts = [(1,), (2, 3, 4), (5, 6) * 6, (0, 1, 2)]
    got = lm.next_logprobs(contexts)
    for row, c in enumerate(contexts):
        c = c[-8:]
        with torch.no_grad():
            want = torch.log_softmax(model(torch.tensor([c]))[0][0, -1].double(), -1).numpy()
        assert np.allclose(got[row], want, atol=1e-6)
    assert np.allclose(np.exp(got).sum(1), 1)


def test_prompt_ruled_out_by_the_model_gives_uniform_not_nan():
    tok = BPE(b" ab", [(b"a", b"b")])
    lm = be.ChunkPushforwardLM(tok, {b"a ": 0.5, b"b ": 0.5})  # no word starts with "ab"
    probs, totals = be.next_byte_btr(lm, tok, [b"ab"])
    assert totals[0] == 0 and np.allclose(probs, 1 / 3)
