"""A small Sphinx extension for the book (``_config.yml``: ``sphinx.extra_extensions``).

jupyter-book 1.x registers sphinx-thebe's configuration script once per read of the sources, so a
full build declares ``const THEBE_JS_URL`` twice on every page and the browser logs a SyntaxError;
and myst-nb loads require.js and the Jupyter widget manager from CDNs on pages whose notebooks
once held widgets, which the static site shows as notes. Each page gets every script once, and
neither of those two.
"""
from __future__ import annotations

DROPPED = ("require.min.js", "@jupyter-widgets/html-manager")


def _script_key(js) -> tuple:
    attributes = getattr(js, "attributes", {}) or {}
    return (getattr(js, "filename", None) or str(js), attributes.get("body", ""))


def _unique(scripts) -> list:
    kept, seen = [], set()
    for js in scripts:
        key = _script_key(js)
        if key in seen or any(d in str(key[0]) for d in DROPPED):
            continue
        seen.add(key)
        kept.append(js)
    return kept


def unique_builder_scripts(app, env) -> None:
    """Once the sources are read: the builder's script list without repeats (every page's)."""
    for name in ("_js_files", "_orig_js_files"):
        scripts = getattr(app.builder, name, None)
        if isinstance(scripts, list):
            scripts[:] = _unique(scripts)


def unique_scripts(app, pagename, templatename, context, doctree) -> None:
    """And each page's, for scripts added while the page is written."""
    context["script_files"] = _unique(context.get("script_files", []))


def setup(app):
    app.connect("env-updated", unique_builder_scripts)
    app.connect("html-page-context", unique_scripts, priority=900)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
