r"""Prepacking (Zhao, Israel, Van den Broeck & Grover 2024, arXiv 2404.09529): prefill a batch of
prompts of different lengths by bin-packing them into rows instead of padding every prompt to the
longest one.

Steps, as in the official code (github.com/siyan-zhao/prepacking @04e723a, ``processor.py``,
``utils.py``, ``dataset_utils.py``), for prompts of lengths :math:`\ell_1..\ell_B`:

1. **Pack** (:func:`pack`): best-fit decreasing bin packing of the lengths :math:`\ell_i` into bins of
   capacity :math:`C = \max_i \ell_i` (the official ``binpacking.to_constant_volume``: take prompts
   longest first, put each in the fullest bin it fits, else open a bin). Every prompt lands in
   exactly one bin, :math:`\sum_{i\in\text{bin}}\ell_i \le C`, and
   :math:`\#\text{bins} \ge \lceil\sum_i \ell_i / C\rceil`.
2. **Lay out** (:func:`prepack`): a bin becomes one row, its prompts' tokens concatenated *without
   each prompt's final token* (it is fed in the first decode step), with positions restarted per
   prompt, :math:`\mathrm{pos} = (0..\ell_{i_1}-2,\ 0..\ell_{i_2}-2,\ \dots)`, and the
   block-diagonal causal mask

   .. math:: M_{ts} = [\,\mathrm{seg}(t) = \mathrm{seg}(s)\,]\,[\,s \le t\,],

   so a token attends only to earlier tokens of its own prompt. Rows are right-padded to the
   longest row; padding belongs to no prompt and its mask row and column are empty.
3. **Prefill** the rows once; by RoPE's relative-position property and the mask, every prompt's
   keys, values and hidden states equal those of the prompt run alone.
4. **Unpack** (:func:`unpack`): cut each prompt's KV segment out of its row, left-pad the segments
   into one batch with a key mask, and continue generation (:func:`decode_step`, :func:`greedy`)
   from each prompt's final token at position :math:`\ell_i - 1`. The first decode step gives the
   prompt's last-token logits, so time to first token = pack + prefill + unpack + one step.

Unlike the official ``restart_dict`` (keyed by segment end, so a 1-token prompt's empty segment
collides with its neighbour's), segments here are kept as explicit ``(row, start, length)`` per
prompt: a 1-token prompt has an empty cache and is still unpacked correctly.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import ReplibError
from .llama import Cache, Llama


def pack(lengths: Sequence[int], capacity: int | None = None) -> list[list[int]]:
    """Best-fit decreasing: bins of prompt indices, each bin's lengths summing to ``<= capacity``
    (default: the longest length). Ties in length keep index order, so the packing is deterministic."""
    capacity = max(lengths) if capacity is None else capacity
    if any(n > capacity for n in lengths):
        raise ReplibError(f"a prompt of length {max(lengths)} exceeds the bin capacity {capacity}")
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        fits = [b for b, load in enumerate(loads) if load + lengths[i] <= capacity]
        if fits:
            b = max(fits, key=lambda b: loads[b])  # the fullest bin that still fits
        else:
            b = len(bins)
            bins.append([])
            loads.append(0)
        bins[b].append(i)
        loads[b] += lengths[i]
    return bins


@dataclass
class Packed:
    """Rows ready for one prefill, and where every prompt's segment sits in them."""

    tokens: torch.Tensor  # (rows, S) token ids, padding = pad_id
    positions: torch.Tensor  # (rows, S) restarted positions, padding = 0
    mask: torch.Tensor  # (rows, S, S) bool block-diagonal causal mask
    segment: torch.Tensor  # (rows, S) prompt index of every slot, -1 for padding
    row: torch.Tensor  # (B,) the row of prompt i
    start: torch.Tensor  # (B,) where its segment starts in the row
    length: torch.Tensor  # (B,) segment length (its prompt length minus the held-out token)
    final: torch.Tensor  # (B,) each prompt's final token, fed in the first decode step


def block_causal_mask(segment: torch.Tensor) -> torch.Tensor:
    """``(rows, S, S)``: ``M[t, s] = seg(t) == seg(s) != -1 and s <= t``. Segments are contiguous,
    so within one segment ``s <= t`` is exactly causal order inside that prompt."""
    S = segment.shape[-1]
    same = (segment[:, :, None] == segment[:, None, :]) & (segment[:, :, None] >= 0)
    return same & torch.ones(S, S, dtype=torch.bool, device=segment.device).tril()


def prepack(prompts: Sequence[torch.Tensor], capacity: int | None = None, pad_id: int = 0) -> Packed:
    """Steps 1-2: pack 1-D token tensors (each at least one token) into rows; see the module doc."""
    lengths = [int(p.numel()) for p in prompts]
    if min(lengths) < 1:
        raise ReplibError("every prompt needs at least one token")
    device = prompts[0].device
    bins = pack(lengths, capacity)
    B, S = len(prompts), max(sum(lengths[i] - 1 for i in b) for b in bins)
    tokens = torch.full((len(bins), max(S, 1)), pad_id, dtype=torch.long, device=device)
    positions = torch.zeros_like(tokens)
    segment = torch.full_like(tokens, -1)
    row, start = torch.empty(B, dtype=torch.long), torch.empty(B, dtype=torch.long)
    for r, b in enumerate(bins):
        at = 0
        for i in b:
            n = lengths[i] - 1
            tokens[r, at:at + n] = prompts[i][:-1]
            positions[r, at:at + n] = torch.arange(n, device=device)
            segment[r, at:at + n] = i
            row[i], start[i] = r, at
            at += n
    final = torch.stack([p[-1] for p in prompts])
    return Packed(tokens, positions, block_causal_mask(segment), segment, row.to(device),
                  start.to(device), torch.tensor(lengths, device=device) - 1, final)


def unpack(packed: Packed, cache: Cache) -> tuple[Cache, torch.Tensor]:
    """Step 4: per-prompt KV caches from the packed rows' cache, left-padded into one batch.

    Returns the cache (each ``(B, H, L, d_head)``, ``L`` = the longest segment) and the key mask
    ``(B, L)`` (``True`` = a real key). Prompt ``i``'s keys fill the last ``length_i`` slots."""
    L = int(packed.length.max())
    slot = torch.arange(L, device=packed.length.device)
    offset = slot[None, :] - (L - packed.length[:, None])  # index into the segment, < 0 on padding
    key_mask = offset >= 0
    src = (packed.start[:, None] + offset).clamp(min=0)
    rows = packed.row[:, None].expand_as(src)

    def gather(t: torch.Tensor) -> torch.Tensor:  # (rows, H, S, d) -> (B, H, L, d), padding zeroed
        out = t.permute(0, 2, 1, 3)[rows, src] * key_mask[..., None, None]
        return out.permute(0, 2, 1, 3)

    return [(gather(k), gather(v)) for k, v in cache], key_mask


@torch.no_grad()
def prepacked_prefill(model: Llama, prompts: Sequence[torch.Tensor], capacity: int | None = None
                      ) -> tuple[Cache, torch.Tensor, Packed]:
    """Steps 1-4 without the first decode step: ``(cache, key_mask, packed)`` per prompt."""
    packed = prepack(prompts, capacity)
    _, cache = model(packed.tokens, packed.positions, packed.mask)
    cache, key_mask = unpack(packed, cache)
    return cache, key_mask, packed


@torch.no_grad()
def decode_step(model: Llama, tokens: torch.Tensor, positions: torch.Tensor, cache: Cache,
                key_mask: torch.Tensor) -> tuple[torch.Tensor, Cache, torch.Tensor]:
    """Feed one token per prompt (``(B,)`` ids at ``(B,)`` positions) after a left-padded cache:
    returns its logits ``(B, vocab)``, the extended cache and key mask."""
    key_mask = torch.cat([key_mask, torch.ones_like(key_mask[:, :1])], dim=1)
    logits, cache = model(tokens[:, None], positions[:, None], key_mask[:, None, :], cache)
    return logits[:, -1], cache, key_mask


@torch.no_grad()
def greedy(model: Llama, final: torch.Tensor, positions: torch.Tensor, cache: Cache,
           key_mask: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` greedy tokens ``(B, steps)`` from each prompt's final token and cache, and the
    first step's logits ``(B, vocab)`` (the prompt's last-token logits)."""
    logits, cache, key_mask = decode_step(model, final, positions, cache, key_mask)
    first, out = logits, [logits.argmax(-1)]
    for _ in range(steps - 1):
        positions = positions + 1
        logits, cache, key_mask = decode_step(model, out[-1], positions, cache, key_mask)
        out.append(logits.argmax(-1))
    return torch.stack(out, dim=1), first


@torch.no_grad()
def prepacked_generate(model: Llama, prompts: Sequence[torch.Tensor], steps: int,
                       capacity: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Prepacked prefill, then batched greedy decoding: ``(tokens (B, steps), last-token logits)``."""
    cache, key_mask, packed = prepacked_prefill(model, prompts, capacity)
    return greedy(model, packed.final, packed.length, cache, key_mask, steps)


@torch.no_grad()
def padded_prefill(model: Llama, prompts: Sequence[torch.Tensor], pad_id: int = 0
                   ) -> tuple[torch.Tensor, Cache]:
    """The baseline ("full batching"): right-pad every prompt to the longest, causal mask limited
    to real keys, positions ``0..T-1``; returns each prompt's last-token logits ``(B, vocab)``
    and the padded cache."""
    lengths = torch.tensor([p.numel() for p in prompts], device=prompts[0].device)
    tokens = torch.nn.utils.rnn.pad_sequence(list(prompts), batch_first=True, padding_value=pad_id)
    B, T = tokens.shape
    real = torch.arange(T, device=tokens.device)[None, :] < lengths[:, None]
    mask = torch.ones(T, T, dtype=torch.bool, device=tokens.device).tril()[None] & real[:, None, :]
    logits, cache = model(tokens, torch.arange(T, device=tokens.device).expand(B, T), mask)
    return logits[torch.arange(B), lengths - 1], cache
