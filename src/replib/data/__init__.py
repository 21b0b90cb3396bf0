"""Data that is available offline (scikit-learn, the corpus shipped with replib) and checked downloaders."""
from .download import REMOTES, fetch, load_remote_text
from .tabular import Split, load_tabular, minibatches
from .text import (
                   ByteTokenizer,
                   CharTokenizer,
                   Corpus,
                   TextSplits,
                   book_corpus,
                   lm_batches,
                   lm_eval_windows,
                   lm_splits,
                   split_tokens,
                   unigram_loss,
                   unigram_stalled,
)

__all__ = ["REMOTES", "ByteTokenizer", "CharTokenizer", "Corpus", "Split", "TextSplits", "book_corpus",
           "fetch", "lm_batches", "lm_eval_windows", "lm_splits", "load_remote_text", "load_tabular",
           "minibatches", "split_tokens", "unigram_loss", "unigram_stalled"]
