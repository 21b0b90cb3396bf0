r"""Chapter 37 (Prepacking, Zhao et al. 2024, arXiv 2404.09529): the experiments behind its claims.

- :func:`docstring_prompts`, :func:`lognormal_prompts`: prompt sets with a long-tailed real length
  distribution (the book corpus's triple-quoted strings, byte tokens) or synthetic lognormal lengths
  whose spread is set by :math:`\sigma`;
- :func:`reference_errors`: C4, prepacked prefill and greedy decoding against each prompt run alone;
- :func:`time_settings`: C1-C3, time to first token of full batching, length-ordered batching and
  prepacking on the same prompts, interleaved and rotated per round, with the padding and attention
  proxies (and peak CUDA memory on a GPU);
- the verdict rules (:func:`speedup_rule`, :func:`growth_rule`) and ``plot_*`` figures.
"""
from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from ..claims import Rule, Verdict, all_of, at_least, decide_side, log_paired, paired
from ..data.text import book_corpus
from ..nn.llama import Llama
from ..nn.prepack import greedy, pack, padded_prefill, prepack, prepacked_generate, prepacked_prefill
from ..runtime import synchronize
from ..timing import peak_cuda_bytes

ARMS = ("full-batching", "length-ordered", "prepacking")


def docstring_prompts(max_len: int, min_len: int = 2) -> list[torch.Tensor]:
    """Every triple-quoted string of the book corpus (mostly docstrings) of ``min_len..max_len``
    UTF-8 bytes, as byte-token tensors: a real, long-tailed prompt-length distribution."""
    texts = re.findall(r'"""(.*?)"""', book_corpus().text, re.S)
    data = [s.encode() for s in texts]
    return [torch.tensor(list(b)) for b in data if min_len <= len(b) <= max_len]


def lognormal_prompts(n: int, median: float, sigma: float, max_len: int, generator: torch.Generator,
                      min_len: int = 2) -> list[torch.Tensor]:
    """``n`` prompts of random byte tokens whose lengths are ``median * exp(sigma * z)``, rounded
    and clipped to ``[min_len, max_len]``: ``sigma`` sets the spread of lengths."""
    z = torch.randn(n, generator=generator, dtype=torch.float64)
    lengths = (median * torch.exp(sigma * z)).round().clamp(min_len, max_len).long()
    return [torch.randint(0, 256, (int(k),), generator=generator) for k in lengths]


@dataclass(frozen=True)
class Setting:
    """One prompt distribution at one batch size: ``sigma=None`` draws docstrings."""

    batch: int
    sigma: float | None = None

    @property
    def name(self) -> str:
        dist = "docstrings" if self.sigma is None else f"lognormal σ={self.sigma:g}"
        return f"{dist}, B={self.batch}"


def draw(setting: Setting, n_batches: int, pool: Sequence[torch.Tensor], median: float, max_len: int,
         generator: torch.Generator) -> list[torch.Tensor]:
    """A "dataset" of ``n_batches * batch`` prompts of ``setting``'s distribution, in random order."""
    n = n_batches * setting.batch
    if setting.sigma is None:
        idx = torch.randint(0, len(pool), (n,), generator=generator)
        return [pool[int(i)] for i in idx]
    return lognormal_prompts(n, median, setting.sigma, max_len, generator)


@torch.no_grad()
def reference_errors(model: Llama, prompts: Sequence[torch.Tensor], steps: int) -> dict[str, float]:
    """C4: prepacked prefill + batched greedy decoding against every prompt run alone (its own
    forward, its own cache, one token at a time). Returns the largest absolute differences of the
    last-token logits and of the KV caches (every layer, keys and values), of the padded baseline's
    last-token logits, and the fraction of the ``steps`` greedy tokens that match (1.0 = all)."""
    cache, key_mask, packed = prepacked_prefill(model, prompts)
    tokens, first = greedy(model, packed.final, packed.length, cache, key_mask, steps)
    padded_logits, _ = padded_prefill(model, prompts)
    err = {"last-token logits": 0.0, "KV cache": 0.0, "padded last-token logits": 0.0}
    match = 0
    for i, p in enumerate(prompts):
        logits, alone = model(p[None])
        err["last-token logits"] = max(err["last-token logits"], (logits[0, -1] - first[i]).abs().max().item())
        err["padded last-token logits"] = max(err["padded last-token logits"],
                                              (logits[0, -1] - padded_logits[i]).abs().max().item())
        n, L = p.numel() - 1, key_mask.shape[1]
        for (k, v), (k1, v1) in zip(cache, alone):
            for packed_t, alone_t in ((k, k1), (v, v1)):
                if n:
                    d = (packed_t[i, :, L - n:] - alone_t[0, :, :n]).abs().max().item()
                    err["KV cache"] = max(err["KV cache"], d)
        ref = [logits[0, -1].argmax()]
        pos = p.numel()
        while len(ref) < steps:
            step_logits, alone = model(ref[-1].view(1, 1), torch.tensor([[pos]], device=p.device), None, alone)
            ref.append(step_logits[0, -1].argmax())
            pos += 1
        match += int((torch.stack(ref) == tokens[i]).sum())
    return {**err, "greedy tokens matching": match / (steps * len(prompts))}


def arm_fn(arm: str, model: Llama, batch: int) -> Callable[[list[torch.Tensor]], torch.Tensor]:
    """Prompts in, every prompt's last-token logits out (in the prompts' order), by one method:
    full batching (consecutive batches, padded), length-ordered (the dataset sorted by length, then
    batched and padded: the dataset-level baseline), or prepacking (consecutive batches, packed;
    packing, unpacking and the first decode step included)."""
    def chunks(order):
        return [order[i:i + batch] for i in range(0, len(order), batch)]

    def run(prompts: list[torch.Tensor]) -> torch.Tensor:
        order = list(range(len(prompts)))
        if arm == "length-ordered":
            order.sort(key=lambda i: prompts[i].numel())
        out = [None] * len(prompts)
        for idx in chunks(order):
            group = [prompts[i] for i in idx]
            logits = (prepacked_generate(model, group, 1)[1] if arm == "prepacking"
                      else padded_prefill(model, group)[0])
            for i, row in zip(idx, logits):
                out[i] = row
        return torch.stack(out)
    return run


def proxies(prompts: Sequence[torch.Tensor], batch: int) -> dict[str, float]:
    """Padding and attention cost of full batching vs prepacking on the same consecutive batches:
    padded-token fraction (full: :math:`1-\\sum\\ell/(B\\max\\ell)`; prepacked: :math:`1-\\sum(\\ell-1)/(R\\,S)`),
    token slots (activation and prefill KV memory scale with them) and attention score entries
    (:math:`B\\,T^2` vs :math:`R\\,S^2`)."""
    slots_f = slots_p = attn_f = attn_p = real_f = real_p = 0
    for i in range(0, len(prompts), batch):
        lengths = [p.numel() for p in prompts[i:i + batch]]
        T = max(lengths)
        rows = pack(lengths)
        S = max(1, max(sum(lengths[j] - 1 for j in b) for b in rows))
        slots_f, attn_f, real_f = slots_f + len(lengths) * T, attn_f + len(lengths) * T * T, real_f + sum(lengths)
        slots_p, attn_p = slots_p + len(rows) * S, attn_p + len(rows) * S * S
        real_p += sum(lengths) - len(lengths)
    return {"pad fraction full": 1 - real_f / slots_f, "pad fraction prepacked": 1 - real_p / slots_p,
            "token slots full/prepacked": slots_f / slots_p, "attention entries full/prepacked": attn_f / attn_p}


def time_settings(model: Llama, settings: Sequence[Setting], *, rounds: int, n_batches: int,
                  pool: Sequence[torch.Tensor], median: float, max_len: int, device: torch.device,
                  seed: int = 0, arms: Sequence[str] = ARMS, atol: float = 1e-3) -> dict:
    """Seconds per dataset for every arm, setting and round, paired by round.

    Round ``r`` draws one dataset per setting (generator ``seed + r``) and times every arm on it,
    interleaved, the arm order rotated each round so drift hits every arm alike; every call is
    bracketed by :func:`~replib.runtime.synchronize`. Round 0 is an untimed warm-up whose outputs
    are checked to agree across arms within ``atol`` (a fast arm must also be right). Returns
    ``{"seconds": {setting: {arm: [...]}}, "proxies": {setting: {name: [...]}},
    "peak_bytes": {setting: {arm: [...]}}`` (peak CUDA memory, NaN off CUDA)."""
    out = {k: {s.name: {} for s in settings} for k in ("seconds", "proxies", "peak_bytes")}
    for r in tqdm(range(rounds + 1), desc="timing rounds", leave=False):
        g = torch.Generator().manual_seed(seed + r)
        for s in settings:
            prompts = [p.to(device) for p in draw(s, n_batches, pool, median, max_len, g)]
            fns = {a: arm_fn(a, model, s.batch) for a in arms}
            if r == 0:
                ref = fns[arms[0]](prompts)
                for a in arms[1:]:
                    err = (fns[a](prompts) - ref).abs().max().item()
                    assert err < atol, f"{a} disagrees with {arms[0]} by {err:.2e} on {s.name}"
                continue
            k = (r - 1) % len(arms)
            for a in list(arms[k:]) + list(arms[:k]):
                synchronize(device)
                t0 = time.perf_counter()
                fns[a](prompts)
                synchronize(device)
                out["seconds"][s.name].setdefault(a, []).append(time.perf_counter() - t0)
                out["peak_bytes"][s.name].setdefault(a, []).append(  # NaN off CUDA, without a call
                    peak_cuda_bytes(lambda: fns[a](prompts), device))
            for name, v in proxies([p.cpu() for p in prompts], s.batch).items():
                out["proxies"][s.name].setdefault(name, []).append(v)
    return out


def speedups(seconds: Mapping[str, Sequence[float]], baseline: str = "full-batching",
             arm: str = "prepacking") -> list[float]:
    """Per-round speedup ``baseline / arm`` (paired rounds)."""
    return [b / a for b, a in zip(seconds[baseline], seconds[arm])]


def speedup_rule(setting: str, on_gpu: bool) -> Rule:
    """C1, the spec's tiers: prepacking faster than full batching by >= 2x on a GPU (replicated)
    or >= 1.3x on a CPU (partially replicated: the spec's CPU-only tier), on per-round log ratios."""
    need, word = (2.0, Verdict.REPLICATED) if on_gpu else (1.3, Verdict.PARTIAL)
    text = (f"Claim: prepacking's time to first token is at least {need:g}x shorter than full batching's "
            f"({setting}). Per-round log(full-batching / prepacking) over interleaved paired rounds, "
            f"95% Student-t interval: {word.value} if it lies wholly at or above log {need:g} "
            f"({'the GPU tier' if on_gpu else 'the spec tier for a CPU speedup; replicated needs >= 2x on a GPU'}), "
            f"not replicated if it lies wholly below log {need:g}, inconclusive otherwise. The outputs of "
            "both methods are checked equal before timing (C4).")

    def decide(m):
        p = log_paired(m["full-batching"], m["prepacking"], names=("log full", "log prepacked"), unit="round")
        part = at_least(p, math.log(need))
        return (word if part else Verdict.NOT_REPLICATED if part is False else Verdict.INCONCLUSIVE), \
            f"log speedup {p}; geometric mean {math.exp(p.mean):.2f}x"
    return Rule(text, decide)


def growth_rule(high: str, low: str, big: str, small: str) -> Rule:
    """C3: the speedup grows with the spread of lengths and with batch size, each part on per-round
    differences of log speedups (both parts must hold)."""
    text = (f"Claim: prepacking's speedup over full batching grows with the variance of prompt lengths "
            f"and with batch size. Part A: per-round log speedup at [{high}] minus at [{low}]; part B: "
            f"at [{big}] minus at [{small}]; paired over rounds, 95% Student-t interval. Replicated if "
            "both intervals lie above 0, not replicated if either lies wholly at or below 0, "
            "inconclusive otherwise.")

    def decide(m):
        log = {k: [math.log(x) for x in v.values] for k, v in m.items()}
        a = paired(log[high], log[low], names=(high, low), unit="round")
        b = paired(log[big], log[small], names=(big, small), unit="round")
        va, vb = decide_side(a, claimed="above"), decide_side(b, claimed="above")
        return all_of(va, vb), f"A (variance): {va.value}, {a}; B (batch size): {vb.value}, {b}"
    return Rule(text, decide)


def memory_rule() -> Rule:
    """C2 on a GPU: prepacking's peak CUDA memory below full batching's, on per-round log ratios."""
    text = ("Claim: prepacking's peak CUDA memory is lower than full batching's. Per-round log(full / "
            "prepacking) of torch.cuda.max_memory_allocated, 95% Student-t interval: replicated if it lies "
            "wholly above 0, not replicated if wholly at or below 0, inconclusive otherwise.")

    def decide(m):
        p = log_paired(m["full-batching"], m["prepacking"], names=("log full", "log prepacked"), unit="round")
        return decide_side(p, claimed="above"), f"log memory ratio {p}; geometric mean {math.exp(p.mean):.2f}x"
    return Rule(text, decide)


def plot_packing(ax, prompts: Sequence[torch.Tensor], title: str = "") -> None:
    """The packed rows' block-diagonal causal masks side by side (one panel, rows concatenated)."""
    packed = prepack(prompts)
    img = torch.cat([m.float() * (1 + (seg[:, None] % 7)) for m, seg in zip(packed.mask, packed.segment)], dim=1)
    ax.imshow(img.numpy(), cmap="tab20c", interpolation="nearest", aspect="auto")
    ax.set_xlabel(f"key slot, {len(packed.mask)} packed rows side by side")
    ax.set_ylabel("query slot")
    ax.set_title(title or f"block-diagonal causal masks of {len(prompts)} prompts")
    ax.grid(False)


def plot_speedups(ax, timing: Mapping, settings: Sequence[Setting]) -> None:
    """Per-round speedup over full batching of prepacking and length-ordered batching, per setting."""
    names = [s.name for s in settings]
    for j, arm in enumerate(a for a in ("prepacking", "length-ordered")
                            if a in timing["seconds"][names[0]]):
        for i, n in enumerate(names):
            sp = speedups(timing["seconds"][n], arm=arm)
            x = i + (j - 0.5) * 0.3 + np.linspace(-0.08, 0.08, len(sp))
            ax.scatter(x, sp, s=14, color=f"C{j}", label=arm if i == 0 else None, zorder=3)
            ax.plot([i + (j - 0.5) * 0.3 - 0.12, i + (j - 0.5) * 0.3 + 0.12], [np.exp(np.mean(np.log(sp)))] * 2,
                    color=f"C{j}", lw=2)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_xticks(range(len(names)), [n.replace(", ", "\n") for n in names])
    ax.set_ylabel("speedup over full batching (x)")
    ax.legend()


def plot_proxies(ax, timing: Mapping, settings: Sequence[Setting]) -> None:
    """Padded-token fraction of full batching vs prepacking, per setting (mean over rounds)."""
    names = [s.name for s in settings]
    for j, key in enumerate(("pad fraction full", "pad fraction prepacked")):
        vals = [np.mean(timing["proxies"][n][key]) for n in names]
        ax.bar(np.arange(len(names)) + (j - 0.5) * 0.35, vals, width=0.35, label=key.replace("pad fraction ", ""))
    ax.set_xticks(range(len(names)), [n.replace(", ", "\n") for n in names])
    ax.set_ylabel("fraction of token slots that are padding")
    ax.legend()
