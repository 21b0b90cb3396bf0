r"""A DAHSF-style reducer: text normalisation and semantic parsing by layered symbolic digestion.

Kevin You (2024), *Digestion Algorithm in Hierarchical Symbolic Forests: A Fast Text Normalization
Algorithm and Semantic Parsing Framework for Specific Scenarios and Lightweight Deployment*,
arXiv 2412.14054. No code was released and the paper's body was not read for this book: only the
ideas its abstract names are the paper's (a multilayer framework of hierarchical symbolic forests,
"digestion", text normalisation and semantic parsing in one workflow, the multiplication rule,
small data, lightweight local use). Everything below (the layers, the matching rule, the data
structures) is **our reconstruction**, not the paper's algorithm.

**Layer 0 (lexical).** Data words (file names, paths, numbers, quoted strings) are recognised by
typed regular expressions and become placeholder symbols that carry their text as a value; every
other word is matched against a synonym dictionary, greedy longest match left to right, so each
surface phrase becomes one canonical symbol. Words the dictionary lacks are set aside (digestion
consumes only what it recognises; our choice).

**Layers 1..L (digestion).** Each layer holds patterns; a pattern is a sequence of elements (a
symbol, optional or not, possibly naming a slot *role*) and the higher-level symbol it becomes.
A layer is one left-to-right pass: at each position the longest matching pattern replaces its span
by one node (ties: the pattern declared first). A rule's layer is one above the deepest rule it
refers to; sentence symbols (intents) form the last layer. A sentence is parsed when one intent
node remains.

**The multiplication rule.** An intent whose template has groups of sizes :math:`s_1..s_k` has

.. math:: N_\text{surface} = \prod_i s_i \quad\text{surface forms, but the forest stores}\quad
          \sum_{\text{groups}} s_g + N_\text{patterns}

entries (a group shared by several intents is stored once). :class:`FlatTable` is the
"no multiplication rule" comparator: every surface form stored whole.

Outputs: :meth:`Forest.parse` (intent and slot values: semantic parsing) and :meth:`Forest.normalise`
(the canonical sentence: optional groups dropped, every phrase replaced by its group's first one,
data words kept). :meth:`Forest.extended` adds groups, rules and intents without touching what is
stored (the no-forgetting property is then a matter of the new phrases not overlapping old ones,
which it checks).
"""
from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

from ..errors import ReplibError

TOKEN_RE = re.compile(r'"[^"]*"|\S+')


@dataclass(frozen=True)
class Grammar:
    """What an author writes: synonym groups, choice groups, data-word types, rules and intents.

    ``groups``: symbol -> its phrases (``""`` among them makes the group optional: a filler).
    ``choices``: symbol -> value -> phrases (a slot whose words select a value, e.g. a sort key).
    ``data``: type -> regular expression (full match on one token).
    ``rules``/``intents``: templates of elements ``{GROUP}``, ``<type>``, ``[RULE]``, each optionally
    followed by ``=role`` (the slot its value fills).
    """

    groups: Mapping[str, Sequence[str]] = field(default_factory=dict)
    choices: Mapping[str, Mapping[str, Sequence[str]]] = field(default_factory=dict)
    data: Mapping[str, str] = field(default_factory=dict)
    rules: Mapping[str, str] = field(default_factory=dict)
    intents: Mapping[str, str] = field(default_factory=dict)

    def merged(self, extra: "Grammar") -> "Grammar":
        """This grammar plus ``extra``'s entries; a name defined twice is an error."""
        parts = {}
        for name in ("groups", "choices", "data", "rules", "intents"):
            a, b = getattr(self, name), getattr(extra, name)
            clash = set(a) & set(b)
            if clash:
                raise ReplibError(f"{name} defined twice: {sorted(clash)}")
            parts[name] = {**a, **b}
        return Grammar(**parts)

    def phrases(self, symbol: str) -> list[str]:
        """The surface alternatives of a group or a choice group (all values)."""
        if symbol in self.groups:
            return list(self.groups[symbol])
        return [p for ps in self.choices[symbol].values() for p in ps]


@dataclass(frozen=True)
class Element:
    symbol: str
    optional: bool = False
    role: str | None = None


@dataclass(frozen=True)
class Pattern:
    symbol: str
    elements: tuple[Element, ...]

    @property
    def starts(self) -> frozenset[str]:
        """Symbols a match can begin with (the elements up to the first required one)."""
        out = set()
        for e in self.elements:
            out.add(e.symbol)
            if not e.optional:
                break
        return frozenset(out)

    def match(self, seq: Sequence["Token"], i: int) -> tuple[int, tuple[str | None, ...]]:
        """The longest match at ``seq[i:]``: its length (0: none) and the role of each consumed token."""
        best: tuple[str | None, ...] | None = None
        for roles in self._matches(seq, i, 0):
            if best is None or len(roles) > len(best):
                best = roles
        return (len(best), best) if best else (0, ())

    def _matches(self, seq, i, k) -> Iterator[tuple[str | None, ...]]:
        if k == len(self.elements):
            yield ()
            return
        e = self.elements[k]
        if i < len(seq) and seq[i].symbol == e.symbol:
            for rest in self._matches(seq, i + 1, k + 1):
                yield (e.role, *rest)
        if e.optional:
            yield from self._matches(seq, i, k + 1)


@dataclass(frozen=True)
class Token:
    """A digested symbol: a leaf (a phrase, a data word, an unknown word: ``symbol=None``) or a node."""

    symbol: str | None
    text: str
    value: str | None = None
    children: tuple["Token", ...] = ()
    roles: tuple[str | None, ...] = ()

    @property
    def data_value(self) -> str | None:
        """A leaf's value, or the values under a node joined by spaces (a slot's content)."""
        if not self.children:
            return self.value
        vals = [v for c in self.children if (v := c.data_value) is not None]
        return " ".join(vals) if vals else None


@dataclass(frozen=True)
class Parse:
    intent: str | None
    slots: dict[str, str]
    tree: Token | None
    unknown: tuple[str, ...]


def parse_template(template: str, optional_groups: set[str]) -> tuple[Element, ...]:
    """``"{POLITE} {COPY} [FILE]=source"`` -> elements (a group with ``""`` is optional)."""
    out = []
    for item in template.split():
        body, _, role = item.partition("=")
        m = re.fullmatch(r"\{(\w+)\}|<(\w+)>|\[(\w+)\]", body)
        if not m:
            raise ReplibError(f"bad template element {item!r} in {template!r}")
        group, data, rule = m.groups()
        symbol = f"<{data}>" if data else group or rule
        out.append(Element(symbol, optional=bool(group) and group in optional_groups, role=role or None))
    return tuple(out)


class Forest:
    """The hierarchical symbolic forest built from a :class:`Grammar` (see the module docstring)."""

    def __init__(self, grammar: Grammar):
        self.grammar = grammar
        self.data = [(f"<{t}>", re.compile(rx)) for t, rx in grammar.data.items()]
        self.lexicon: dict[tuple[str, ...], tuple[str, str | None]] = {}  # phrase -> (symbol, value)
        self.canonical: dict[tuple[str, str | None], str] = {}  # (symbol, value) -> its first phrase
        for sym, phrases in grammar.groups.items():
            self._add_phrases(sym, None, phrases)
        for sym, values in grammar.choices.items():
            for value, phrases in values.items():
                self._add_phrases(sym, value, phrases)
        self.fillers = {s for s, ps in grammar.groups.items() if "" in ps}
        self.max_phrase = max((len(p) for p in self.lexicon), default=1)
        self.layers = self._layers()
        self.intents = set(grammar.intents)

    def _add_phrases(self, symbol, value, phrases):
        for text in phrases:
            if not text:
                continue
            key = tuple(text.split())
            if key in self.lexicon and self.lexicon[key] != (symbol, value):
                raise ReplibError(f"phrase {text!r} means both {self.lexicon[key]} and {(symbol, value)}")
            self.lexicon[key] = (symbol, value)
            self.canonical.setdefault((symbol, value), text)

    def _layers(self) -> list[list[Pattern]]:
        g = self.grammar
        names = [*g.groups, *g.choices, *(f"<{t}>" for t in g.data), *g.rules, *g.intents]
        if len(set(names)) != len(names):
            raise ReplibError(f"a name is used twice: {sorted(n for n in names if names.count(n) > 1)}")
        pats = {name: Pattern(name, parse_template(t, self.fillers))
                for name, t in {**g.rules, **g.intents}.items()}
        depth: dict[str, int] = {}

        def level(name, seen=()):
            if name not in pats:
                return 0
            if name in seen:
                raise ReplibError(f"rule {name} refers to itself through {seen}")
            if name not in depth:
                depth[name] = 1 + max(level(e.symbol, (*seen, name)) for e in pats[name].elements)
            return depth[name]

        for r in g.rules:
            level(r)
        top = 1 + max((level(r) for r in g.rules), default=0)
        for name in g.intents:  # sentence symbols are digested last
            level(name)
            depth[name] = max(depth[name], top)
        layers = [[] for _ in range(max(depth.values(), default=0))]
        for name, p in pats.items():
            layers[depth[name] - 1].append(p)
        return layers

    # ---- layer 0 ---------------------------------------------------------------------------
    def lex(self, text: str) -> list[Token]:
        """Data words -> typed placeholders; phrases -> symbols (greedy longest match); unknown
        words -> ``symbol=None`` leaves, kept in place."""
        raw = [t.rstrip(",;!?") or t for t in TOKEN_RE.findall(text)]
        out: list[Token] = []
        i = 0
        while i < len(raw):
            kind = next((sym for sym, rx in self.data if rx.fullmatch(raw[i])), None)
            if kind:
                out.append(Token(kind, raw[i], raw[i]))
                i += 1
                continue
            words = []  # the run of plain words from i, lowercased, to the next data word
            for t in raw[i:i + self.max_phrase]:
                if any(rx.fullmatch(t) for _, rx in self.data):
                    break
                words.append(t.lower().rstrip("."))
            for n in range(len(words), 0, -1):
                hit = self.lexicon.get(tuple(words[:n]))
                if hit:
                    out.append(Token(hit[0], " ".join(words[:n]), hit[1]))
                    i += n
                    break
            else:
                out.append(Token(None, words[0]))
                i += 1
        return out

    # ---- layers 1..L -----------------------------------------------------------------------
    @staticmethod
    def reduce(seq: list[Token], layer: Sequence[Pattern]) -> list[Token]:
        """One left-to-right pass: the longest pattern matching at each position becomes a node."""
        out, i = [], 0
        while i < len(seq):
            best, roles, sym = 0, (), None
            for p in layer:
                if seq[i].symbol in p.starts:
                    n, r = p.match(seq, i)
                    if n > best:
                        best, roles, sym = n, r, p.symbol
            if best:
                span = tuple(seq[i:i + best])
                out.append(Token(sym, " ".join(t.text for t in span), None, span, roles))
                i += best
            else:
                out.append(seq[i])
                i += 1
        return out

    def digest(self, text: str) -> tuple[list[Token], list[Token]]:
        """The layer-0 tokens and the sequence left after every layer (unknown words set aside)."""
        leaves = self.lex(text)
        seq = [t for t in leaves if t.symbol is not None]
        for layer in self.layers:
            seq = self.reduce(seq, layer)
        return leaves, seq

    def parse(self, text: str) -> Parse:
        """Intent and slot values (``intent=None`` when the sentence does not digest to one intent)."""
        leaves, seq = self.digest(text)
        unknown = tuple(t.text for t in leaves if t.symbol is None)
        if len(seq) != 1 or seq[0].symbol not in self.intents:
            return Parse(None, {}, None, unknown)
        return Parse(seq[0].symbol, slots(seq[0]), seq[0], unknown)

    def render(self, tok: Token, drop_fillers: bool = True) -> str:
        """The canonical text of a token: data words as written, each phrase as its group's first."""
        if tok.children:
            parts = (self.render(c, drop_fillers) for c in tok.children)
            return " ".join(p for p in parts if p)
        if tok.symbol is None or tok.symbol.startswith("<"):
            return tok.text
        if drop_fillers and tok.symbol in self.fillers:
            return ""
        return self.canonical[(tok.symbol, tok.value)]

    def normalise(self, text: str) -> str:
        """The canonical sentence of a parsed input; otherwise each recognised phrase replaced by its
        group's canonical phrase, unknown words kept (text we cannot digest is not deleted)."""
        p = self.parse(text)
        if p.tree is not None:
            return self.render(p.tree)
        return " ".join(self.render(t, drop_fillers=False) for t in self.lex(text))

    # ---- storage and growth ----------------------------------------------------------------
    def extended(self, extra: Grammar) -> "Forest":
        """A forest with ``extra``'s groups, rules and intents added; the old entries are kept as
        they are, and a new phrase that re-uses an old one (which could change old parses) is an
        error."""
        return Forest(self.grammar.merged(extra))

    def to_json(self) -> dict:
        return {"data": self.grammar.data,
                "lexicon": {" ".join(k): list(v) for k, v in self.lexicon.items()},
                "fillers": sorted(self.fillers),
                "layers": [[[p.symbol, [[e.symbol, e.optional, e.role] for e in p.elements]] for p in layer]
                           for layer in self.layers]}

    def storage(self) -> dict[str, int]:
        """Stored entries (dictionary phrases, patterns) and serialised bytes (compact JSON)."""
        return {"phrases": len(self.lexicon), "patterns": sum(len(layer) for layer in self.layers),
                "bytes": len(json.dumps(self.to_json(), separators=(",", ":")).encode())}


def slots(tree: Token) -> dict[str, str]:
    """Slot role -> value, collected over the whole tree."""
    out = {}
    for child, role in zip(tree.children, tree.roles):
        if role:
            out[role] = child.data_value
        out.update(slots(child))
    return out


# ---- the multiplication rule ----------------------------------------------------------------
def expand(grammar: Grammar, template: str, role: str | None = None) -> list[tuple[str, str | None]]:
    """A template's leaves in order, rules expanded: ``(symbol, role)`` where the role is the
    nearest one named above the leaf (``"{GROUP}"`` or ``"<type>"`` symbols as in templates)."""
    out = []
    for item in template.split():
        body, _, r = item.partition("=")
        r = r or role
        name = body[1:-1]
        if body.startswith("[") and name in grammar.rules:
            out.extend(expand(grammar, grammar.rules[name], r))
        elif body.startswith("["):
            raise ReplibError(f"unknown rule {body} in {template!r}")
        else:
            out.append((body, r))
    return out


def group_sizes(grammar: Grammar, intent: str) -> list[int]:
    """:math:`s_i`: the number of surface alternatives of each group in an intent's expanded template."""
    return [len(grammar.phrases(sym[1:-1])) for sym, _ in expand(grammar, grammar.intents[intent])
            if sym.startswith("{")]


def surface_count(grammar: Grammar, intent: str) -> int:
    """:math:`\\prod_i s_i`: the surface forms of one intent (data words held as placeholders)."""
    return math.prod(group_sizes(grammar, intent))


def surfaces(grammar: Grammar, intent: str) -> Iterator[tuple[str, tuple, tuple]]:
    """Every surface form of an intent with data words as ``<type>`` placeholders, the role of each
    placeholder in order, and the ``(role, value)`` pairs its choice phrases fix (what the flat
    table stores)."""
    leaves = expand(grammar, grammar.intents[intent])

    def options(sym, role):
        name = sym[1:-1]
        if name in grammar.choices:
            return [(p, (role, v)) for v, ps in grammar.choices[name].items() for p in ps]
        return [(p, None) for p in grammar.groups[name]] if sym.startswith("{") else [(sym, None)]

    roles = tuple(r for sym, r in leaves if sym.startswith("<"))
    for combo in itertools.product(*(options(sym, r) for sym, r in leaves)):
        yield (" ".join(w for w, _ in combo if w), roles, tuple(c for _, c in combo if c))


class FlatTable:
    """The comparator without the multiplication rule: every surface form stored whole, with its
    intent, its data slots' roles and the values its choice phrases fix; a query is looked up exactly after data words become
    placeholders (the same layer 0 as the forest's)."""

    def __init__(self, grammar: Grammar):
        self.data = [(f"<{t}>", re.compile(rx)) for t, rx in grammar.data.items()]
        self.grammar = grammar
        self.table: dict[str, tuple[str, tuple, tuple]] = {}
        for intent in grammar.intents:
            for text, roles, fixed in surfaces(grammar, intent):
                self.table[text] = (intent, roles, fixed)

    def key(self, text: str) -> tuple[str, list[str]]:
        words, values = [], []
        for raw in TOKEN_RE.findall(text):
            t = raw.rstrip(",;!?") or raw
            kind = next((sym for sym, rx in self.data if rx.fullmatch(t)), None)
            if kind:
                words.append(kind)
                values.append(t)
            else:
                words.append(t.lower().rstrip("."))
        return " ".join(words), values

    def parse(self, text: str) -> Parse:
        key, values = self.key(text)
        hit = self.table.get(key)
        if hit is None:
            return Parse(None, {}, None, ())
        intent, roles, fixed = hit
        out: dict[str, str] = dict(fixed)
        for role, v in zip(roles, values):  # a role that spans two data words joins them, as the forest
            out[role] = f"{out[role]} {v}" if role in out else v
        return Parse(intent, out, None, ())

    def storage(self) -> dict[str, int]:
        return {"entries": len(self.table), "bytes": len(json.dumps(
            {"data": self.grammar.data, "table": self.table}, separators=(",", ":")).encode())}
