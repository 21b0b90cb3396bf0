"""A toy English command language for file operations: chapter 07's scenario (analog).

The DAHSF paper (You 2024, arXiv 2412.14054) applies its reducer to a Chinese scripting platform
whose data are not available; this grammar stands in for it. Ten intents (open, copy, move, delete,
rename, list, create, search, compress, size) and a new one for the no-forgetting test (print).
Each sentence is a politeness prefix, a verb phrase, its arguments (data words with optional
determiners, prepositional phrases, a sort order) and a closing adverb; every group has 3-9
alternatives, so an intent has 10^2-10^4 surface forms (:func:`replib.textnorm.dahsf.surface_count`).

Samplers, all seeded by a ``numpy`` generator:

- :func:`sample` draws in-grammar sentences with their intent, slot values and the phrase chosen
  for each group (the annotation a lexicon can be harvested from: :func:`seen_grammar`);
- :func:`perturb` turns one into an out-of-grammar paraphrase of one of four kinds: an unseen
  synonym (held-out alternatives, never in the dictionary), a word-order change (the last argument
  moved to the front), inserted filler words, a typo (two adjacent letters of a word swapped).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..textnorm.dahsf import Grammar, expand

# group -> (in-grammar phrases, held-out synonyms); "" = the group may be left out
GROUPS: dict[str, tuple[list[str], list[str]]] = {
    "POLITE": (["", "please", "could you", "can you", "would you please", "kindly", "go ahead and"], []),
    "DET": (["", "the", "my", "this"], []),
    "TAIL": (["", "now", "right away", "for me", "immediately", "asap"], []),
    "TO": (["to", "into", "over to", "onto"], ["towards", "across to"]),
    "IN": (["in", "inside of", "within", "from"], ["throughout", "among"]),
    "SORTED": (["sorted by", "ordered by", "by", "arranged by"], ["ranked by", "grouped by"]),
    "OPEN": (["open", "launch", "display", "bring up", "pull up"], ["view", "load"]),
    "COPY": (["copy", "duplicate", "clone", "make a copy of", "replicate"], ["cp", "xerox"]),
    "MOVE": (["move", "transfer", "relocate", "shift", "send"], ["mv", "migrate"]),
    "DELETE": (["delete", "remove", "erase", "trash", "get rid of"], ["rm", "wipe"]),
    "RENAME": (["rename", "change the name of", "retitle", "relabel", "give a new name to"],
               ["rechristen", "re-label"]),
    "LIST": (["list", "enumerate", "show the contents of", "list the files in", "what is in"],
             ["ls", "browse"]),
    "CREATE": (["create", "make", "make a new folder", "set up", "add"], ["mkdir", "build"]),
    "SEARCH": (["search for", "find", "look for", "grep for", "locate"], ["hunt for", "seek"]),
    "COMPRESS": (["compress", "zip", "archive", "pack", "zip up"], ["gzip", "squash"]),
    "SIZE": (["what is the size of", "how big is", "get the size of", "check the size of", "measure"],
             ["weigh", "how large is"]),
    "PRINT": (["print", "print out", "make a printout of", "output", "produce a hard copy of"],
              ["plot", "typeset"]),
    "TIMES": (["times", "copies", "times over"], ["duplicates", "prints"]),
}
CHOICES = {"ORDER": {"size": ["size", "file size", "bytes"], "date": ["date", "modification time", "age"],
                     "name": ["name", "alphabet", "filename"]}}
DATA = {"text": r'"[^"]*"', "dir": r"~?/[\w./-]*", "file": r"[\w-]+\.[A-Za-z0-9]{1,4}", "number": r"\d+"}
RULES = {
    "FILE": "{DET} <file>",
    "DIR": "{DET} <dir>",
    "BY": "{SORTED} {ORDER}",
    "TO_DIR": "{TO} [DIR]",
    "TO_FILE": "{TO} [FILE]",
    "IN_FILE": "{IN} [FILE]",
}
INTENTS = {
    "open": "{POLITE} {OPEN} [FILE]=file {TAIL}",
    "copy": "{POLITE} {COPY} [FILE]=source [TO_DIR]=target {TAIL}",
    "move": "{POLITE} {MOVE} [FILE]=source [TO_DIR]=target {TAIL}",
    "delete": "{POLITE} {DELETE} [FILE]=file {TAIL}",
    "rename": "{POLITE} {RENAME} [FILE]=source [TO_FILE]=target {TAIL}",
    "list": "{POLITE} {LIST} [DIR]=dir [BY]=order {TAIL}",
    "create": "{POLITE} {CREATE} [DIR]=dir {TAIL}",
    "search": "{POLITE} {SEARCH} <text>=query [IN_FILE]=file {TAIL}",
    "compress": "{POLITE} {COMPRESS} [DIR]=source [TO_FILE]=target {TAIL}",
    "size": "{POLITE} {SIZE} [FILE]=file {TAIL}",
}
NEW_INTENT = {"print": "{POLITE} {PRINT} [FILE]=file <number>=copies {TIMES} {TAIL}"}
NEW_GROUPS = ("PRINT", "TIMES")

FILLERS = ["just", "quickly", "um", "hey", "thanks", "real quick", "if possible", "okay so"]
OOG_KINDS = ("synonym", "order", "filler", "typo")
_NAMES = ["report", "notes", "budget", "photo", "draft", "invoice", "thesis", "backup", "todo",
          "summary", "slides", "data", "log", "readme", "plan", "song", "memo", "resume"]
_EXTS = ["txt", "pdf", "csv", "docx", "png", "md", "py", "zip", "mp3", "json"]
_USERS = ["ana", "bo", "chen", "dev", "eli"]
_FOLDERS = ["docs", "music", "work", "pictures", "downloads", "archive", "projects", "tmp"]
_WORDS = ["error", "deadline", "total", "hello world", "todo", "password", "chapter one", "invoice"]


def grammar(intents=None, *, with_new: bool = False) -> Grammar:
    """The command grammar restricted to ``intents`` (all ten by default); ``with_new`` adds the
    print intent and its groups (C3's update). Groups no kept intent uses are left out."""
    names = list(INTENTS) if intents is None else list(intents)
    chosen = {n: INTENTS[n] for n in names}
    base = Grammar(groups={}, choices={}, data=DATA, rules=RULES, intents=chosen)
    used = {s[1:-1] for n in chosen for s, _ in expand(base, chosen[n]) if s.startswith("{")}
    g = Grammar(groups={k: v[0] for k, v in GROUPS.items() if k in used and k not in NEW_GROUPS},
                choices={k: v for k, v in CHOICES.items() if k in used}, data=DATA, rules=RULES,
                intents=chosen)
    return g.merged(update()) if with_new else g


def update() -> Grammar:
    """What C3 adds to a running reducer: the print intent and its two new groups."""
    return Grammar(groups={k: GROUPS[k][0] for k in NEW_GROUPS}, intents=NEW_INTENT)


@dataclass(frozen=True)
class Example:
    text: str
    intent: str
    slots: dict[str, str]
    pieces: tuple[tuple[str, str, str | None], ...]  # (symbol, surface, role) per template leaf
    kind: str = "in-grammar"


def _data_word(kind: str, rng: np.random.Generator) -> str:
    if kind == "file":
        return f"{rng.choice(_NAMES)}{rng.choice(['', '_2', '_v3', '-old'])}.{rng.choice(_EXTS)}"
    if kind == "dir":
        return (f"~/{rng.choice(_FOLDERS)}" if rng.random() < 0.3 else
                f"/home/{rng.choice(_USERS)}/{rng.choice(_FOLDERS)}")
    if kind == "number":
        return str(int(rng.integers(1, 20)))
    return f'"{rng.choice(_WORDS)}"'


def sample(g: Grammar, n: int, rng: np.random.Generator, intents=None) -> list[Example]:
    """``n`` in-grammar sentences, intents drawn uniformly from ``intents`` (default: all of ``g``)."""
    names = list(intents or g.intents)
    out = []
    for _ in range(n):
        intent = names[int(rng.integers(len(names)))]
        pieces, slots = [], {}
        for sym, role in expand(g, g.intents[intent]):
            name = sym[1:-1]
            if sym.startswith("<"):
                text = _data_word(name, rng)
                slots[role] = text
            elif name in g.choices:
                value = list(g.choices[name])[int(rng.integers(len(g.choices[name])))]
                options = g.choices[name][value]
                text = options[int(rng.integers(len(options)))]
                slots[role] = value
            else:
                text = g.groups[name][int(rng.integers(len(g.groups[name])))]
            pieces.append((sym, text, role))
        out.append(Example(" ".join(t for _, t, _ in pieces if t), intent, slots, tuple(pieces)))
    return out


def per_intent(g: Grammar, k: int, rng: np.random.Generator, intents=None) -> list[Example]:
    """``k`` in-grammar examples of each intent (the few-shot training set), intent by intent."""
    return [ex for name in (intents or g.intents) for ex in sample(g, k, rng, [name])]


def _typo(word: str, rng: np.random.Generator) -> str:
    spots = [j for j in range(len(word) - 1) if word[j] != word[j + 1]]  # a swap that changes the word
    j = spots[int(rng.integers(len(spots)))]
    return word[:j] + word[j + 1] + word[j] + word[j + 2:]


def perturb(ex: Example, rng: np.random.Generator, kind: str) -> Example:
    """An out-of-grammar paraphrase of ``ex`` of the given kind (see the module docstring); intent
    and slot values are unchanged."""
    pieces = [list(p) for p in ex.pieces]
    words = lambda ps: " ".join(t for _, t, _ in ps if t)  # noqa: E731
    if kind == "synonym":  # a held-out alternative of a group that has one
        cand = [i for i, (s, _, _) in enumerate(pieces) if s.startswith("{") and GROUPS.get(s[1:-1], ([], []))[1]]
        i = cand[int(rng.integers(len(cand)))]
        unseen = GROUPS[pieces[i][0][1:-1]][1]
        pieces[i][1] = unseen[int(rng.integers(len(unseen)))]
        text = words(pieces)
    elif kind == "order":  # the last argument (its determiner/preposition with it) moved to the front
        roles = [r for _, _, r in pieces if r]
        last = roles[-1]
        moved = [p for p in pieces if p[2] == last]
        text = words(moved) + ", " + words([p for p in pieces if p[2] != last])
    elif kind == "filler":  # one or two unknown words inserted between words
        toks = words(pieces).split()
        for _ in range(int(rng.integers(1, 3))):
            toks.insert(int(rng.integers(len(toks) + 1)), FILLERS[int(rng.integers(len(FILLERS)))])
        text = " ".join(toks)
    elif kind == "typo":  # two adjacent letters of one dictionary word of 3+ letters swapped
        cand = [(i, w) for i, (s, t, _) in enumerate(pieces) if s.startswith("{")
                for w in t.split() if len(w) >= 3]
        i, w = cand[int(rng.integers(len(cand)))]
        pieces[i][1] = pieces[i][1].replace(w, _typo(w, rng), 1)
        text = words(pieces)
    else:
        raise ValueError(f"unknown perturbation {kind!r}; valid: {', '.join(OOG_KINDS)}")
    return Example(text, ex.intent, ex.slots, ex.pieces, kind)


def out_of_grammar(g: Grammar, n: int, rng: np.random.Generator) -> list[Example]:
    """``n`` out-of-grammar paraphrases, the four kinds in turn (``n/4`` of each)."""
    return [perturb(ex, rng, OOG_KINDS[i % len(OOG_KINDS)]) for i, ex in enumerate(sample(g, n, rng))]


def seen_grammar(g: Grammar, examples: list[Example]) -> Grammar:
    """``g`` with each group's dictionary cut to the phrases that occur in ``examples`` (the lexicon
    a reducer harvests from annotated examples; rules and intents as authored). A group never seen
    keeps no phrase; an optional group stays optional."""
    seen: dict[str, set[str]] = {}
    for ex in examples:
        for sym, text, _ in ex.pieces:
            if sym.startswith("{"):
                seen.setdefault(sym[1:-1], set()).add(text)
    groups = {k: [p for p in v if p in seen.get(k, ()) or p == ""] for k, v in g.groups.items()}
    choices = {k: {val: [p for p in ps if p in seen.get(k, ())] for val, ps in vals.items()}
               for k, vals in g.choices.items()}
    return Grammar(groups=groups, choices=choices, data=g.data, rules=g.rules, intents=g.intents)
