"""Tokenizers and what they do to a model: one module per idea, the paper cited in its docstring.

Import the modules themselves (``from replib.tokenize import digits``); this package re-exports
nothing, so each chapter's module stays independent of the others.
"""
