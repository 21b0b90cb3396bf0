"""A small Sphinx extension for the book (``_config.yml``: ``sphinx.extra_extensions``).

Sphinx 7.4 spells an inline script's missing file two ways: ``app.add_js_file(None, body=...)``
hands ``None`` to the builder, while the builder, copying the registry's scripts again before it
writes (``prepare_writing``), adds ``''``. The two are different ``_JavaScript`` objects, so every
inline script an extension adds once the builder exists reaches each page twice: sphinx-thebe's
``const THEBE_JS_URL = ...`` (a SyntaxError in the browser: "Identifier 'THEBE_JS_URL' has already
been declared") and sphinx-togglebutton's selector. This extension spells them ``''`` before the
builder copies the registry (so the copy finds them), and each page keeps every script once.
myst-nb also loads require.js and the Jupyter widget manager from CDNs on pages whose notebooks
once held widgets, which the static site shows as notes: those two are dropped.

Every image a notebook cell outputs becomes a figure: numbered in its chapter ("Figure 3."), with
a caption, and with alt text that says what it shows, both from the words
:func:`replib.plotting.describe` stored as the figure's plain-text form (its first line is the
caption). Sphinx's own figure numbers (``numfig``) run on across the whole book, so these are
added after they are assigned, before myst-nb picks which form of each output to show.

One citation style across the book: the chapters cite author-year ("[Ba et al., 2016]",
``bibtex_reference_style: author_year``), and the references page labels each entry the same way
(the ``replib-author-year`` bibliography style registered here) instead of pybtex's default
alpha labels ("[BKH16]").
"""
from __future__ import annotations

import re

from docutils import nodes
from pybtex.plugin import register_plugin
from pybtex.style.formatting.plain import Style as PlainStyle
from pybtex.style.labels import BaseLabelStyle
from sphinx.transforms.post_transforms import SphinxPostTransform

DROPPED = ("require.min.js", "@jupyter-widgets/html-manager")


def _script_key(js) -> tuple:
    """A script's identity: its file ('' for an inline one, however spelled) and attributes."""
    filename = getattr(js, "filename", js) or ""
    attributes = getattr(js, "attributes", {}) or {}
    return (str(filename), tuple(sorted((k, str(v)) for k, v in attributes.items())))


def _unique(scripts) -> list:
    kept, seen = [], set()
    for js in scripts:
        key = _script_key(js)
        if key in seen or any(d in key[0] for d in DROPPED):
            continue
        seen.add(key)
        kept.append(js)
    return kept


def _inline_spelled_empty(js):
    """``_JavaScript(None, ...)`` as ``_JavaScript('', ...)``, the builder's own spelling."""
    if getattr(js, "filename", "") is None:
        return type(js)("", priority=js.priority, **js.attributes)
    return js


def unique_builder_scripts(app, env) -> None:
    """Once the sources are read, before the builder copies the registry's scripts again: the
    builder's list with inline scripts spelled as that copy spells them, each once."""
    scripts = getattr(app.builder, "_js_files", None)
    if isinstance(scripts, list):
        scripts[:] = _unique(_inline_spelled_empty(js) for js in scripts)


def unique_scripts(app, pagename, templatename, context, doctree) -> None:
    """Each page's scripts once, for scripts added while the page is written."""
    context["script_files"] = _unique(context.get("script_files", []))


OLD_REPR_RE = re.compile(r"^<Figure size \d+x\d+ with (\d+) Axes>$")


def figure_words(plain: str) -> tuple[str, str]:
    """(caption, alt text) from a figure's plain-text form; a bare matplotlib repr (a notebook
    executed before figures described themselves) still says how many panels it has."""
    plain = plain.strip()
    old = OLD_REPR_RE.match(plain)
    if old or not plain:
        n = int(old.group(1)) if old else 1
        words = f"A figure with {n} panels." if n > 1 else "A figure."
        return words, words
    caption, _, details = plain.partition("\n")
    alt = caption if not details or details.rstrip(".") == caption.rstrip(".") else \
        f"{caption} {details}"
    return caption, alt


class NumberedFigures(SphinxPostTransform):
    """Each cell output with an image, wrapped in a figure: "Figure n." and its caption, the
    image's alt text (:func:`figure_words`); numbered in the page's order."""

    default_priority = 3  # before myst-nb's SelectMimeType (4) drops the plain-text form

    def run(self, **kwargs) -> None:
        def is_bundle(node) -> bool:
            return isinstance(node, nodes.container) and node.get("nb_element") == "mime_bundle"

        number = 0
        for bundle in list(self.document.findall(is_bundle)):
            forms = {child.get("mime_type", ""): child for child in bundle.children}
            if not any(m.startswith("image/") for m in forms):
                continue
            number += 1
            caption, alt = figure_words(forms["text/plain"].astext() if "text/plain" in forms
                                        else "")
            for image in bundle.findall(nodes.image):
                image["alt"] = alt
            figure = nodes.figure(ids=[f"figure-{number}"], classes=["replib-figure"])
            bundle.replace_self(figure)
            figure += bundle
            figure += nodes.caption("", "", nodes.strong("", f"Figure {number}."),
                                    nodes.Text(f" {caption}"))


def author_year(entry) -> str:
    """"Ba et al., 2016", "Ioffe and Szegedy, 2015", "Klambauer et al., 2017": the form the
    author_year citations in the text take (surname; two joined by "and"; more: "et al.")."""
    people = entry.persons.get("author") or entry.persons.get("editor") or []
    surnames = [" ".join(p.prelast_names + p.last_names) for p in people] or [entry.key]
    names = (surnames[0] if len(surnames) == 1 else " and ".join(surnames) if len(surnames) == 2
             else f"{surnames[0]} et al.")
    names = names.replace("{", "").replace("}", "")
    return f"{names}, {entry.fields.get('year', 'n.d.')}"


class AuthorYearLabels(BaseLabelStyle):
    """Bibliography labels in the text's author-year form; a letter tells two apart that
    would read the same ("Zhu et al., 2025a")."""

    def format_labels(self, sorted_entries):
        entries = list(sorted_entries)
        labels = [author_year(e) for e in entries]
        seen: dict[str, int] = {}
        for label in labels:
            seen[label] = seen.get(label, 0) + 1
        used: dict[str, int] = {}
        for label in labels:
            if seen[label] > 1:
                used[label] = used.get(label, 0) + 1
                yield f"{label}{chr(ord('a') + used[label] - 1)}"
            else:
                yield label


class AuthorYearStyle(PlainStyle):
    """pybtex's plain entries, sorted by author and year, labelled author-year."""
    default_label_style = AuthorYearLabels
    default_sorting_style = "author_year_title"


register_plugin("pybtex.style.labels", "replib-author-year", AuthorYearLabels)
register_plugin("pybtex.style.formatting", "replib-author-year", AuthorYearStyle)


def setup(app):
    app.add_post_transform(NumberedFigures)
    app.connect("env-updated", unique_builder_scripts)
    app.connect("html-page-context", unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
