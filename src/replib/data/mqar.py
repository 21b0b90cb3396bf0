r"""Multi-query associative recall (MQAR), the synthetic recall task of Zoology.

Arora et al. (2023), *Zoology: measuring and improving recall in efficient language models*,
arXiv 2312.04927 (code: HazyResearch/zoology, ``zoology/data/associative_recall.py``; this
generator follows its layout, not its code). A sequence holds ``n_pairs`` key–value pairs, then a
query region in which every key appears again, at a random position, followed by its value:

.. code-block:: text

    k_1 v_1 k_2 v_2 ... k_P v_P | 0 0 k_3 v_3 0 k_1 v_1 0 ... k_2 v_2 0

Keys come from ``[1, vocab/2)`` and are distinct within a sequence; values from ``[vocab/2, vocab)``
(with replacement); 0 pads the query region. A language model reads ``x = seq[:-1]`` and is scored
only where ``x`` is a query key: there the target ``y = seq[1:]`` is that key's value; every other
target is ``-100`` (cross-entropy's ``ignore_index``). Chance accuracy is ``1 / (vocab - vocab//2)``.
"""
from __future__ import annotations

import torch

IGNORE = -100


def mqar(n_seq: int, n_pairs: int, seq_len: int, vocab_size: int, seed: int,
         device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """``n_seq`` MQAR sequences: inputs ``x`` and targets ``y``, both ``(n_seq, seq_len)`` int64.

    ``seq_len + 1`` tokens are drawn per sequence (``2 n_pairs`` for the pairs, the rest for the
    queries, which need ``2 n_pairs`` of them); ``seed`` fixes every draw.
    """
    half = vocab_size // 2
    query_len = seq_len + 1 - 2 * n_pairs
    if n_pairs < 1 or half - 1 < n_pairs:
        raise ValueError(f"need 1 <= n_pairs <= vocab_size//2 - 1 = {half - 1} distinct keys, got {n_pairs}")
    if query_len < 2 * n_pairs:
        raise ValueError(f"seq_len={seq_len} leaves {query_len} tokens for {n_pairs} queries (needs {2 * n_pairs})")
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(n_seq, half - 1, generator=g).argsort(-1)[:, :n_pairs] + 1  # distinct per sequence
    values = torch.randint(half, vocab_size, (n_seq, n_pairs), generator=g)
    pairs = torch.stack([keys, values], -1).flatten(1)  # k_1 v_1 k_2 v_2 ...
    # the query slots: n_pairs non-overlapping 2-token slots among the query region's even offsets
    # shifted by a random gap, so queries land anywhere (positions of slot j: 2j + extra_j)
    extra = torch.rand(n_seq, n_pairs + 1, generator=g)  # the spare tokens split into n_pairs+1 gaps
    spare = query_len - 2 * n_pairs
    gaps = torch.floor(spare * extra / extra.sum(-1, keepdim=True)).long()
    starts = 2 * torch.arange(n_pairs) + gaps[:, :n_pairs].cumsum(-1)  # non-decreasing gaps keep slots apart
    order = torch.rand(n_seq, n_pairs, generator=g).argsort(-1)  # which pair is asked in which slot
    queries = torch.zeros(n_seq, query_len, dtype=torch.long)
    rows = torch.arange(n_seq)[:, None]
    queries[rows, starts] = keys.gather(1, order)
    queries[rows, starts + 1] = values.gather(1, order)
    seq = torch.cat([pairs, queries], 1)
    x, y = seq[:, :-1], seq[:, 1:].clone()
    is_query = torch.zeros_like(seq, dtype=torch.bool)
    is_query[rows, 2 * n_pairs + starts] = True
    y[~is_query[:, :-1]] = IGNORE
    return x.to(device), y.to(device)


def chance_accuracy(vocab_size: int) -> float:
    """Accuracy of guessing a uniform value token."""
    return 1.0 / (vocab_size - vocab_size // 2)


__all__ = ["IGNORE", "chance_accuracy", "mqar"]
