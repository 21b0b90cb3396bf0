r"""HyperAttention: sortLSH blocks + sampled residual columns, causal by recursive halving.

Han, Jayaram, Karbasi, Mirrokni, Woodruff, Zandieh (2023), *HyperAttention: Long-context Attention
in Near-Linear Time*, arXiv 2310.05869 (ICLR 2024). Written from the official code,
insuhan/hyper-attn @ 68b91e9 (``models/attention/hyper_attn.py``, ``utils.py``) and
``angular_lsh.py`` @ 9514c93; none of it is copied.

With scale :math:`s = D^{-1/2}`, exact attention of query :math:`q_i` is
:math:`o_i = \sum_j e^{s q_i\cdot k_j} v_j / \sum_j e^{s q_i \cdot k_j}` with log-normaliser
:math:`\ell_i = \log\sum_j e^{s q_i\cdot k_j}`. HyperAttention approximates both:

1. **sortLSH.** :math:`r` Gaussian hyperplanes :math:`P \in \mathbb R^{D\times r}` (drawn once,
   shared by queries and keys) give each vector the bits :math:`[xP > 0]`, an integer id
   :math:`\sum_j 2^j\,\mathrm{bit}_j`, and a sort key through the reflected Gray code
   :math:`g` (``gray_code(r)``). Keys are stable-sorted by it and cut into blocks of ``block_size``
   :math:`b`.
2. **Block diagonal.** Each query attends exactly to the keys of its block:
   :math:`(o^{\mathrm{blk}}_i, \ell^{\mathrm{blk}}_i)`.
3. **Sampled residual.** :math:`m` key indices :math:`t_1..t_m` drawn uniformly with replacement;
   query :math:`i` attends to them with the columns of its own block masked (they are counted in
   step 2), and the normaliser is importance-weighted: :math:`\ell^{\mathrm{res}}_i =
   \log\sum_{u:\,\mathrm{blk}(t_u)\neq \mathrm{blk}(i)} e^{s q_i\cdot k_{t_u}} + \log(n_k/m)`, so
   :math:`E[e^{\ell^{\mathrm{res}}_i}] = \sum_{j \notin \mathrm{blk}(i)} e^{s q_i\cdot k_j}`.
4. **Merge** (:func:`merge_attentions`, the code's ``add_self_attentions``):
   :math:`c = 1/(1+e^{\ell^{\mathrm{res}}-\ell^{\mathrm{blk}}})`,
   :math:`o = c\,o^{\mathrm{blk}} + (1-c)\,o^{\mathrm{res}}`,
   :math:`\ell = \log(e^{\ell^{\mathrm{blk}}} + e^{\ell^{\mathrm{res}}})`.
5. **Causal** (:func:`hyper_attention`): for :math:`n` above ``min_seq_len`` split the sequence in
   halves; the two diagonal halves are causal sub-problems (recursion, processed as extra heads),
   the bottom-left block (second-half queries, first-half keys) is the non-causal algorithm, merged
   into the bottom half by step 4. Exact attention below ``min_seq_len``.

What replib does differently from the code (and why):

- ``query_blocks``. The code sorts queries too and cuts them into equally many blocks, so a query's
  block depends on the *ranks of the other queries*: in the causal recursion an earlier query can
  change block when a later token changes (a leak from the future, measured in the chapter).
  ``"rank"`` is that behaviour; ``"bucket"`` (the default of the registry entry) places a query by
  its own hash among the sorted keys' buckets (the blocks holding its bucket, spread by position),
  so row :math:`i` depends only on tokens :math:`\le i`.
- The block mask on the sampled columns is always applied (the fp32 path of the code ignores it and
  counts in-block samples twice; its Triton path applies it), and zero-padded keys of a last,
  partial block are masked (the code lets them join that block's softmax).
- ``gray``: the code sorts by :math:`g(\mathrm{id})` (``perm[bin_ids]``); the paper's Hamming-sorted
  LSH wants buckets in Gray-code *order*, i.e. the key :math:`g^{-1}(\mathrm{id})`, so neighbouring
  sort keys differ in one hyperplane. The two agree for :math:`r \le 2` only. ``"code"`` is the
  default; ``"paper"`` the alternative.
- Sampling uses an explicit generator: the module draws from ``seed`` (eval: the same draws every
  call, so the module is a deterministic function; training: a new draw per call).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ...errors import ReplibError
from . import register_attention
from .base import Attention
from .softmax import causal_mask

QUERY_BLOCKS = ("bucket", "rank")
GRAY_KEYS = ("code", "paper")


def gray_code(r: int) -> torch.Tensor:
    """The reflected Gray code of ``r`` bits: ``g(r) = [g(r-1), reversed(g(r-1)) + 2^(r-1)]``."""
    g = torch.tensor([0])
    for j in range(r):
        g = torch.cat([g, g.flip(0) + 2 ** j])
    return g


def lsh_sort_keys(x: torch.Tensor, proj: torch.Tensor, gray: str = "code") -> torch.Tensor:
    """Angular-LSH sort keys of ``x`` (..., n, D) with hyperplanes ``proj`` (D, r): (..., n) long."""
    r = proj.shape[-1]
    if r == 0:
        return torch.zeros(x.shape[:-1], dtype=torch.long, device=x.device)
    ids = ((x @ proj > 0).long() * 2 ** torch.arange(r, device=x.device)).sum(-1)
    g = gray_code(r).to(x.device)
    return g[ids] if gray == "code" else torch.argsort(g)[ids]


def exact_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                    causal: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention and its row log-sum-exp ``(..., n_q)``; causal aligns the last rows."""
    s = q @ k.transpose(-2, -1) * scale
    if causal:
        s = s.masked_fill(~causal_mask(k.shape[-2], q.device)[-q.shape[-2]:], float("-inf"))
    return s.softmax(-1) @ v, s.logsumexp(-1)


def merge_attentions(o1: torch.Tensor, lse1: torch.Tensor, o2: torch.Tensor,
                     lse2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over the union of two disjoint key sets from the two parts (``add_self_attentions``)."""
    c = torch.sigmoid(lse1 - lse2).unsqueeze(-1)  # = 1 / (1 + exp(lse2 - lse1))
    return c * o1 + (1 - c) * o2, torch.logaddexp(lse1, lse2)


def _query_blocks(q_keys: torch.Tensor, k_sorted_keys: torch.Tensor, b: int, n_blocks: int,
                  mode: str) -> torch.Tensor:
    """Block index per query (..., n_q), in query order."""
    if mode == "rank":  # the code: sort queries, cut them into n_blocks equal chunks
        rank = torch.argsort(torch.argsort(q_keys, dim=-1, stable=True), dim=-1)
        return rank // math.ceil(q_keys.shape[-1] / n_blocks)
    p = torch.searchsorted(k_sorted_keys, q_keys.contiguous())  # the query's bucket among the keys
    p_end = torch.searchsorted(k_sorted_keys, q_keys.contiguous(), right=True)
    last = k_sorted_keys.shape[-1] - 1
    lo, hi = p.clamp(max=last) // b, (torch.maximum(p_end, p + 1) - 1).clamp(max=last) // b
    pos = torch.arange(q_keys.shape[-1], device=q_keys.device)
    return lo + pos % (hi - lo + 1)  # the blocks holding the query's bucket, spread by position


def _block_part(q, k_s, v_s, q_block, b, scale, equal_groups=False, chunk_elems=2 ** 22):
    """Exact attention of each query to the keys of its block (padded keys masked).

    ``equal_groups`` (the code's rank blocks): queries sorted by block fill equal chunks, one batched
    product per block. Otherwise each query's block is copied out (``index_select`` of whole blocks).
    """
    *batch, n_k, D = k_s.shape
    n_blocks = math.ceil(n_k / b)
    pad = n_blocks * b - n_k
    kb = F.pad(k_s, (0, 0, 0, pad)).view(*batch, n_blocks, b, D)
    vb = F.pad(v_s, (0, 0, 0, pad)).view(*batch, n_blocks, b, v_s.shape[-1])
    valid = (torch.arange(n_blocks * b, device=k_s.device) < n_k).view(n_blocks, b)
    if equal_groups:
        n_q = q.shape[-2]
        bq = math.ceil(n_q / n_blocks)
        order = torch.argsort(q_block, dim=-1, stable=True)
        qs = F.pad(q.gather(-2, order[..., None].expand_as(q)), (0, 0, 0, n_blocks * bq - n_q))
        s = qs.view(*batch, n_blocks, bq, D) @ kb.transpose(-2, -1) * scale
        s = s.masked_fill(~valid[:, None, :], float("-inf"))
        o = (s.softmax(-1) @ vb).reshape(*batch, n_blocks * bq, -1)[..., :n_q, :]
        lse = s.logsumexp(-1).reshape(*batch, n_blocks * bq)[..., :n_q]
        inv = torch.argsort(order, dim=-1)
        return o.gather(-2, inv[..., None].expand_as(o)), lse.gather(-1, inv)
    rows = math.prod(batch)
    kflat, vflat = kb.reshape(rows * n_blocks, b, D), vb.reshape(rows * n_blocks, b, vb.shape[-1])
    offset = (torch.arange(rows, device=q.device) * n_blocks).view(*batch, 1)
    step = max(1, chunk_elems // (rows * b * D))
    outs, lses = [], []
    for i in range(0, q.shape[-2], step):
        idx = q_block[..., i:i + step]
        flat = (idx + offset).reshape(-1)
        kg = kflat.index_select(0, flat).view(*idx.shape, b, D)
        vg = vflat.index_select(0, flat).view(*idx.shape, b, vflat.shape[-1])
        s = (kg @ q[..., i:i + step, :, None]).squeeze(-1) * scale
        s = s.masked_fill(~valid[idx], float("-inf"))
        outs.append((s.softmax(-1).unsqueeze(-2) @ vg).squeeze(-2))
        lses.append(s.logsumexp(-1))
    return torch.cat(outs, -2), torch.cat(lses, -1)


def _sampled_part(q, k_s, v_s, q_block, b, m, scale, generator):
    """Attention to ``m`` uniformly sampled sorted keys, own-block columns masked, weight n_k/m."""
    *batch, n_k, D = k_s.shape
    t = torch.randint(n_k, (*batch, m), generator=generator).to(q.device)
    ks = k_s.gather(-2, t[..., None].expand(*t.shape, D))
    vs = v_s.gather(-2, t[..., None].expand(*t.shape, v_s.shape[-1]))
    s = q @ ks.transpose(-2, -1) * scale
    if b > 0:  # these columns are counted exactly in the block part
        s = s.masked_fill(q_block[..., None] == (t // b)[..., None, :], torch.finfo(s.dtype).min)
    return s.softmax(-1) @ vs, s.logsumexp(-1) + math.log(n_k / m)


def hyper_attention_noncausal(q, k, v, proj, *, block_size=256, sample_size=256, min_seq_len=4096,
                              scale=None, generator=None, query_blocks="bucket", gray="code"):
    """Non-causal HyperAttention: ``(o, lse)`` for q (..., n_q, D), k/v (..., n_k, D)."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    n_q, n_k = q.shape[-2], k.shape[-2]
    if n_q < min_seq_len:
        return exact_attention(q, k, v, scale)
    if block_size <= 0 and sample_size <= 0:
        raise ReplibError("HyperAttention needs block_size > 0 or sample_size > 0")
    k_keys, order = lsh_sort_keys(k, proj, gray).sort(dim=-1, stable=True)
    k_s = k.gather(-2, order[..., None].expand_as(k))
    v_s = v.gather(-2, order[..., None].expand(*order.shape, v.shape[-1]))
    n_blocks = math.ceil(n_k / block_size) if block_size > 0 else 0
    q_block = None
    if block_size > 0:
        q_block = _query_blocks(lsh_sort_keys(q, proj, gray), k_keys, block_size, n_blocks, query_blocks)
        o, lse = _block_part(q, k_s, v_s, q_block, block_size, scale, query_blocks == "rank")
    if sample_size > 0 and n_blocks != 1:
        o_r, lse_r = _sampled_part(q, k_s, v_s, q_block, block_size, sample_size, scale, generator)
        o, lse = merge_attentions(o, lse, o_r, lse_r) if block_size > 0 else (o_r, lse_r)
    return o, lse


def hyper_attention(q, k, v, proj, *, causal=True, block_size=256, sample_size=256, min_seq_len=4096,
                    scale=None, generator=None, query_blocks="bucket", gray="code"):
    """HyperAttention ``(o, lse)`` of q, k, v (..., H, n, D); causal by recursive halving."""
    kw = dict(block_size=block_size, sample_size=sample_size, min_seq_len=min_seq_len,
              scale=q.shape[-1] ** -0.5 if scale is None else scale, generator=generator,
              query_blocks=query_blocks, gray=gray)
    if not causal:
        return hyper_attention_noncausal(q, k, v, proj, **kw)
    n = k.shape[-2]
    if n <= min_seq_len:
        return exact_attention(q, k, v, kw["scale"], causal=True)
    if n % 2:  # a zero row at the end (it sees everything, nothing sees it), dropped below
        q, k, v = (F.pad(t, (0, 0, 0, 1)) for t in (q, k, v))
    *lead, H, n2, D = q.shape
    h = n2 // 2
    halves = [t.reshape(*lead, 2 * H, h, t.shape[-1]) for t in (q, k, v)]  # both halves as heads
    o_d, lse_d = hyper_attention(*halves, proj, causal=True, **kw)
    o_d, lse_d = o_d.reshape(*lead, H, n2, -1), lse_d.reshape(*lead, H, n2)
    o_off, lse_off = hyper_attention_noncausal(q[..., h:, :], k[..., :h, :], v[..., :h, :], proj, **kw)
    o_low, lse_low = merge_attentions(o_d[..., h:, :], lse_d[..., h:], o_off, lse_off)
    o, lse = torch.cat([o_d[..., :h, :], o_low], -2), torch.cat([lse_d[..., :h], lse_low], -1)
    return o[..., :n, :], lse[..., :n]


@register_attention("hyper")
class HyperAttention(Attention):
    """Causal multi-head HyperAttention (code defaults: r=7, b=m=256, exact up to n=4096).

    The hyperplanes are a non-persistent buffer drawn from ``seed``; the sampled columns are drawn
    from ``seed`` too (eval: identical draws every call; training: ``seed`` plus the call count).
    """

    def __init__(self, d_model: int, n_head: int, *, lsh_num_projs: int = 7, block_size: int = 256,
                 sample_size: int = 256, min_seq_len: int = 4096, query_blocks: str = "bucket",
                 gray: str = "code", seed: int = 0, **kwargs):
        super().__init__(d_model, n_head, **kwargs)
        if query_blocks not in QUERY_BLOCKS or gray not in GRAY_KEYS:
            raise ReplibError(f"query_blocks must be one of {QUERY_BLOCKS} and gray one of {GRAY_KEYS}")
        if min_seq_len < 1:
            raise ReplibError(f"min_seq_len must be >= 1, got {min_seq_len}")
        self.hyper_kw = dict(block_size=block_size, sample_size=sample_size, min_seq_len=min_seq_len,
                             query_blocks=query_blocks, gray=gray)
        self.seed, self.calls = seed, 0
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("lsh_proj", torch.randn(self.head_dim, lsh_num_projs, generator=gen),
                             persistent=False)

    def mix(self, q, k, v, x=None):
        if self.training:
            self.calls += 1
        gen = torch.Generator().manual_seed(self.seed + 1 + (self.calls if self.training else 0))
        return hyper_attention(q, k, v, self.lsh_proj, causal=True, generator=gen, **self.hyper_kw)[0]
