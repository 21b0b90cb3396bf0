"""Chapter 07: the DAHSF-style reducer and the command grammar (the spec's reference checks)."""
import math

import numpy as np
import pytest

from replib.data import commands as cm
from replib.errors import ReplibError
from replib.textnorm import dahsf as dh


@pytest.fixture(scope="module")
def g():
    return cm.grammar()


@pytest.fixture(scope="module")
def forest(g):
    return dh.Forest(g)


@pytest.fixture(scope="module")
def table(g):
    return dh.FlatTable(g)


@pytest.fixture(scope="module")
def samples(g):
    rng = np.random.default_rng(0)
    return cm.sample(g, 1000, rng), cm.out_of_grammar(g, 400, rng)


def test_multiplication_rule_counts(g, forest, table):
    for intent in g.intents:  # the flat table holds prod s_i distinct forms per intent
        n = sum(1 for v in table.table.values() if v[0] == intent)
        assert n == dh.surface_count(g, intent) == math.prod(dh.group_sizes(g, intent))
        assert 100 <= n <= 100_000
    stored = forest.storage()
    assert stored["phrases"] == sum(len([p for p in g.phrases(s) if p]) for s in [*g.groups, *g.choices])
    assert stored["patterns"] == len(g.rules) + len(g.intents)
    assert [len(layer) for layer in forest.layers] == [3, 3, 10]  # phrase -> slot phrase -> intent


def test_every_in_grammar_sentence_parses(forest, table, samples):
    for ex in samples[0]:
        for parser in (forest, table):
            p = parser.parse(ex.text)
            assert (p.intent, p.slots) == (ex.intent, ex.slots), ex.text


def test_normalise_idempotent_and_parse_invariant(forest, samples):
    for ex in samples[0] + samples[1]:
        once = forest.normalise(ex.text)
        assert forest.normalise(once) == once, ex.text
        a, b = forest.parse(ex.text), forest.parse(once)
        assert (a.intent, a.slots) == (b.intent, b.slots), ex.text


def test_canonical_sentence_and_longest_match(forest):
    text = "Could you make a copy of the report.txt into my /home/ana/docs right away"
    assert forest.normalise(text) == "copy report.txt to /home/ana/docs"
    p = forest.parse(text)
    assert p.intent == "copy" and p.slots == {"source": "report.txt", "target": "/home/ana/docs"}
    assert [c.symbol for c in p.tree.children] == ["POLITE", "COPY", "FILE", "TO_DIR", "TAIL"]
    assert forest.parse("make /home/ana/new").intent == "create"  # "make" alone is the create verb
    p = forest.parse("list ~/work sorted by modification time")
    assert p.slots == {"dir": "~/work", "order": "date"}


def test_unknown_words_are_set_aside_but_order_matters(forest):
    p = forest.parse("um please delete the notes.txt thanks")
    assert p.intent == "delete" and p.unknown == ("um", "thanks")
    assert forest.parse("to /home/ana/docs, copy report.txt").intent is None
    assert forest.parse("xerox report.txt to /home/ana/docs").intent is None


def test_adding_an_intent_forgets_nothing(forest, g, samples):
    grown = forest.extended(cm.update())
    for ex in samples[0] + samples[1]:
        assert grown.parse(ex.text) == forest.parse(ex.text)
    new = cm.sample(grown.grammar, 100, np.random.default_rng(1), ["print"])
    assert all((p := grown.parse(ex.text)).intent == "print" and p.slots == ex.slots for ex in new)
    assert all(forest.parse(ex.text).intent is None for ex in new)


def test_conflicting_phrases_and_names_are_refused(forest):
    with pytest.raises(ReplibError, match="means both"):
        forest.extended(dh.Grammar(groups={"ZAP": ["delete", "zap"]}))
    with pytest.raises(ReplibError, match="defined twice"):
        forest.extended(dh.Grammar(intents={"copy": "{COPY} [FILE]"}))


def test_samplers_are_seeded(g):
    a = cm.out_of_grammar(g, 50, np.random.default_rng(3))
    b = cm.out_of_grammar(g, 50, np.random.default_rng(3))
    assert a == b
    assert a != cm.out_of_grammar(g, 50, np.random.default_rng(4))
    assert [ex.kind for ex in a[:4]] == list(cm.OOG_KINDS)
    rng = np.random.default_rng(5)
    for ex in cm.sample(g, 40, rng):  # a paraphrase changes the text, not the intent or slots
        for kind in cm.OOG_KINDS:
            para = cm.perturb(ex, rng, kind)
            assert para.text != ex.text and (para.intent, para.slots, para.kind) == (ex.intent, ex.slots, kind)


def test_seen_grammar_keeps_only_seen_phrases(g):
    train = cm.per_intent(g, 2, np.random.default_rng(0))
    assert [ex.intent for ex in train] == [i for i in g.intents for _ in range(2)]
    small = cm.seen_grammar(g, train)
    seen = {(s[1:-1], t) for ex in train for s, t, _ in ex.pieces if s.startswith("{")}
    for sym in small.groups:
        assert all(p == "" or (sym, p) in seen for p in small.groups[sym])
    f = dh.Forest(small)
    for ex in train:
        assert f.parse(ex.text).intent == ex.intent
    assert f.storage()["phrases"] < dh.Forest(g).storage()["phrases"]


def test_smaller_grammar_and_table_agree(g):
    small = cm.grammar(["copy", "delete"])
    assert set(small.intents) == {"copy", "delete"} and "ORDER" not in small.choices
    assert len(dh.FlatTable(small).table) == dh.surface_count(g, "copy") + dh.surface_count(g, "delete")


def test_latencies_interleave_and_thin_the_slow_arm():
    from replib.experiments import dahsf as dx
    calls = []
    fns = {"a": lambda q: calls.append(("a", q)), "b": lambda q: calls.append(("b", q))}
    out = dx.latencies(fns, list(range(9)), {"b": 3})
    assert len(out["a"]) == 9 and len(out["b"]) == 3 and (out["a"] >= 0).all()
    timed = calls[10:]  # after 5 warm-up calls of each arm
    assert timed[:3] == [("a", 0), ("b", 0), ("a", 1)] and ("b", 3) in timed and ("b", 4) not in timed
    assert timed[timed.index(("a", 3)) - 1] == ("b", 3)  # the order rotates query by query
