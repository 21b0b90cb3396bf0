"""Training runs and depth profiles for the Curse of Depth chapter (Sun et al. 2025, arXiv 2502.05795).

The paper's LayerNorm Scaling (LNS) multiplies the normalised input of every sub-layer in block
:math:`\\ell` by :math:`1/\\sqrt{\\ell}`; it lives in :class:`~replib.nn.TinyGPT` as
``GPTConfig(layer_scaling=True)``. Here: the model configuration the chapter compares (Pre-LN vs
Pre-LN + LNS, RMSNorm, plain normal(0, 0.02) init as the LNS code uses), one training run per
(variant, seed) with Adam + linear warm-up + cosine decay, and the per-layer measurements the
claims need (residual variance, angular distance, layer-drop loss deltas, mean norm gains), all
read through :mod:`replib.nn.instrument` hooks.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data import lm_batches
from ..nn import GPTConfig, TinyGPT
from ..nn.instrument import angular_distances, layer_drop_deltas, residual_stats
from ..runtime import seed_everything
from ..train import History, lm_loss, train, warmup_cosine

VARIANTS = {"Pre-LN": False, "Pre-LN + LNS": True}  # name -> layer_scaling


def lns_factors(n_layer: int) -> list[float]:
    """LayerNorm Scaling's constant per block :math:`\\ell = 1..L`: :math:`1/\\sqrt{\\ell}`."""
    return [1.0 / math.sqrt(ell) for ell in range(1, n_layer + 1)]


def depth_config(layer_scaling: bool, *, n_layer: int, d_model: int, n_head: int, seq_len: int,
                 d_ff: int | None = None, vocab_size: int = 256) -> GPTConfig:
    """A LLaMA-flavoured TinyGPT: Pre-RMSNorm, no biases, normal(0, 0.02) everywhere.

    ``scaled_init=False`` follows the LNS README's caveat: scaled output-projection init
    (0.02/sqrt(2L)) largely cancels LNS's gain, and the LNS code does not use it.
    """
    return GPTConfig(vocab_size=vocab_size, seq_len=seq_len, n_layer=n_layer, n_head=n_head,
                     d_model=d_model, d_ff=d_ff, norm="rmsnorm", placement="pre",
                     layer_scaling=layer_scaling, scaled_init=False, bias=False)


@dataclass
class DepthRun:
    variant: str
    seed: int
    model: TinyGPT
    history: History

    @property
    def final_loss(self) -> float:
        return self.history.final("loss")


def train_depth_lm(variant: str, seed: int, train_tokens: torch.Tensor,
                   val: tuple[torch.Tensor, torch.Tensor], *, n_layer: int, d_model: int,
                   n_head: int, seq_len: int, batch_size: int, steps: int, lr: float,
                   warmup_frac: float, eval_every: int, grad_clip: float | None, device,
                   progress: bool = True) -> DepthRun:
    """Train one byte-level LM (``variant`` in :data:`VARIANTS`) for ``steps`` Adam steps.

    The seed fixes both the initial weights and the batch order, so the two variants of one seed
    start from identical weights (LNS adds no parameters) and see identical batches.
    ``History.evals`` holds the validation ``loss`` in nats per byte.
    """
    gen = seed_everything(seed)
    model = TinyGPT(depth_config(VARIANTS[variant], n_layer=n_layer, d_model=d_model,
                                 n_head=n_head, seq_len=seq_len)).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac, min_ratio=0.1))
    hist = train(model, opt, lm_batches(train_tokens, batch_size, seq_len, gen, device),
                 lambda m, b: m(b[0], b[1])[1], steps, scheduler=sched,
                 evaluate=lambda m: {"loss": lm_loss(m, *val)}, eval_every=eval_every,
                 grad_clip=grad_clip, desc=f"{variant} s{seed}", progress=progress)
    model.eval()
    return DepthRun(variant, seed, model, hist)


def sweep_runner(train_tokens: torch.Tensor, val, test, *, keep: dict, **kw):
    """``run(variant, lr, seed)`` for :func:`replib.train.lr_sweep`: trains one model (keyword
    arguments as :func:`train_depth_lm`, without ``lr``) and returns its final validation and test
    loss (nats/byte, NaN when it diverged) and its validation curve. The trained model goes into
    ``keep[(variant, lr, seed)]`` (``None`` when it diverged) for the probes and C4."""
    def run(variant: str, lr: float, seed: int) -> dict:
        r = train_depth_lm(variant, seed, train_tokens, val, lr=lr, **kw)
        ok = not r.history.diverged
        test_loss = lm_loss(r.model, *test) if ok else math.nan
        keep[(variant, lr, seed)] = r.model if ok else None
        steps, curve = r.history.eval_series("loss")
        return {"val": r.final_loss, "test": test_loss, "curve": curve, "curve_steps": steps}
    return run


def mean_gains(model: TinyGPT) -> list[float]:
    """Mean RMSNorm gain per block, averaged over the block's two input norms (init: 1)."""
    return [float((b.norm1.weight.mean() + b.norm2.weight.mean()) / 2) for b in model.blocks]


@torch.no_grad()
def depth_profile(model: TinyGPT, val: tuple[torch.Tensor, torch.Tensor],
                  probe_windows: int) -> dict[str, list[float]]:
    """Per-layer measurements on held-out windows.

    - ``variance``: :math:`\\mathrm{Var}(h_\\ell)` for the residual stream entering block
      :math:`\\ell = 1..L` and leaving block :math:`L` (``L + 1`` values; per-token variance over
      features, averaged over tokens);
    - ``angular``: :math:`\\arccos(\\cos(h_\\ell, h_{\\ell+1}))/\\pi` per block, averaged over all
      tokens of the probe windows (``L`` values);
    - ``drop``: validation-loss increase when block :math:`\\ell` is skipped (``L`` values);
    - ``gain``: mean RMSNorm gain per block (``L`` values).
    """
    was_training = model.training
    model.eval()
    probe = val[0][:probe_windows]
    out = {"variance": residual_stats(model, probe)["variance"],
           "angular": angular_distances(model, probe, last_token=False),
           "drop": layer_drop_deltas(model, lambda m: lm_loss(m, *val)),
           "gain": mean_gains(model)}
    model.train(was_training)
    return out


def variance_growth(variance: list[float]) -> float:
    """:math:`\\mathrm{Var}(h_L)/\\mathrm{Var}(h_1)`, with :math:`h_\\ell` the input of block
    :math:`\\ell` (so ``variance[L-1] / variance[0]``, as the spec defines it)."""
    n_layer = len(variance) - 1
    return variance[n_layer - 1] / variance[0]


def thirds(values: list[float]) -> tuple[float, float]:
    """Mean over the first and over the last third of a per-layer list (``L // 3`` layers each)."""
    k = max(1, len(values) // 3)
    return float(np.mean(values[:k])), float(np.mean(values[-k:]))


# --- C4: a supervised fine-tuning analog -------------------------------------------------------

def addition_task(n_windows: int, seq_len: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Windows of ``seq_len`` bytes packed with problems ``"a+b=c\n"`` (a, b in 10..99), and
    next-byte targets that are ``-100`` (ignored) except where the next byte is part of an answer
    (the digits of ``c`` and its newline): the prompt is given, only the answer is trained on."""
    g = torch.Generator().manual_seed(seed)
    xs, ys = [], []
    for _ in range(n_windows):
        text, is_answer = b"", []
        while len(text) < seq_len + 1:
            a, b = (int(v) for v in torch.randint(10, 100, (2,), generator=g))
            prompt, answer = f"{a}+{b}=".encode(), f"{a + b}\n".encode()
            text += prompt + answer
            is_answer += [False] * len(prompt) + [True] * len(answer)
        t = torch.tensor(list(text[:seq_len + 1]))
        mask = torch.tensor(is_answer[1:seq_len + 1])
        xs.append(t[:-1])
        ys.append(torch.where(mask, t[1:], torch.full_like(t[1:], -100)))
    return torch.stack(xs), torch.stack(ys)


def answer_unigram(train_y: torch.Tensor, test_y: torch.Tensor) -> float:
    """The answer bytes' unigram loss: training answers' byte frequencies scored on the test
    answers (the level a model reaches that knows which bytes answers use, and nothing of a, b)."""
    from ..data import unigram_loss
    return unigram_loss(train_y[train_y != -100], test_y[test_y != -100])


@torch.no_grad()
def answer_loss(model: TinyGPT, x: torch.Tensor, y: torch.Tensor, chunk: int = 64) -> float:
    """Mean cross-entropy (nats per answer byte) over the answer positions of ``(x, y)``."""
    was = model.training
    model.eval()
    total, count = 0.0, 0
    for i in range(0, x.shape[0], chunk):
        logits = model(x[i:i + chunk])[0]
        yb = y[i:i + chunk]
        total += float(torch.nn.functional.cross_entropy(logits.flatten(0, 1), yb.flatten(),
                                                         ignore_index=-100, reduction="sum"))
        count += int((yb != -100).sum())
    model.train(was)
    return total / count


def finetune_sft(model: TinyGPT, data: tuple[torch.Tensor, torch.Tensor], val, test, *, lr: float,
                 steps: int, batch_size: int, warmup_frac: float, seed: int, device,
                 progress: bool = False) -> dict:
    """Fine-tune a copy of ``model`` on the answer bytes of ``data`` (Adam, warm-up + cosine to
    10 % of ``lr``, as in pre-training; batches drawn with ``seed``). Returns the final validation
    and test answer loss (NaN when it diverged) and the validation curve."""
    m = copy.deepcopy(model).to(device).train()
    gen = torch.Generator().manual_seed(seed)
    x, y = data

    def batches():
        while True:
            i = torch.randint(len(x), (batch_size,), generator=gen)
            yield x[i].to(device), y[i].to(device)

    opt = torch.optim.Adam(m.parameters(), lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(steps, warmup_frac=warmup_frac, min_ratio=0.1))
    hist = train(m, opt, batches(), lambda mm, b: mm(b[0], b[1])[1], steps, scheduler=sched,
                 evaluate=lambda mm: {"loss": answer_loss(mm, *val)}, eval_every=max(1, steps // 4),
                 desc=f"SFT lr {lr:g} s{seed}", progress=progress)
    ok = not hist.diverged
    return {"val": hist.final("loss"), "test": answer_loss(m, *test) if ok else math.nan,
            "curve": hist.eval_series("loss")[1]}


def _count(a: list[float], b: list[float], better) -> tuple[int, int]:
    """How many seeds (finite in both) satisfy ``better(a_s, b_s)``, and how many there are."""
    pairs = [(x, y) for x, y in zip(a, b) if math.isfinite(x) and math.isfinite(y)]
    return sum(bool(better(x, y)) for x, y in pairs), len(pairs)


def findings_markdown(claims: dict, *, test_loss: dict, best: dict, growth: dict, ang_last: dict,
                      first_third: dict, last_third: dict, gain_last: dict, sft_loss: dict | None,
                      unigram: float, scale: str) -> str:
    """"What we learned", written from the measured numbers and verdicts (arms "Pre-LN", "LNS")."""
    from ..claims import Stat

    def mean(v):
        return Stat.of(v).mean

    v = {cid: c.verdict.value for cid, c in claims.items()}
    lines = []
    k, n = _count(test_loss["LNS"], test_loss["Pre-LN"], lambda a, b: a < b)
    stalled = {arm: sum(math.isfinite(x) and x > unigram - 0.05 for x in vals) for arm, vals in test_loss.items()}
    lines.append(
        f"- **Perplexity (C2: {v.get('C2', '—')}).** Each variant at its own best learning rate (Pre-LN "
        f"{best.get('Pre-LN')}, LNS {best.get('LNS')}), LNS's test loss is lower than Pre-LN's in {k} of {n} "
        f"paired seeds (mean {mean(test_loss['LNS']):.4f} vs {mean(test_loss['Pre-LN']):.4f} nats/byte, "
        f"perplexity {math.exp(mean(test_loss['LNS'])):.3f} vs {math.exp(mean(test_loss['Pre-LN'])):.3f}). "
        + ("Seeds still on the byte-unigram plateau: " + ", ".join(f"{a} {s}/{n}" for a, s in stalled.items())
           + "; the health gate makes such a comparison inconclusive. "
           if any(stalled.values()) else "No seed of either variant stalled on the byte-unigram plateau. ")
        + (claims["C2"].qualifiers[0] + "." if "C2" in claims and claims["C2"].qualifiers else ""))
    g_ratio = mean(growth["LNS"]) / mean(growth["Pre-LN"]) if mean(growth["Pre-LN"]) else math.nan
    ka, na = _count(ang_last["LNS"], ang_last["Pre-LN"], lambda a, b: a > b)
    lines.append(
        f"- **Variance and rotation (C3: {v.get('C3', '—')}).** After training, Var(h_L)/Var(h_1) is "
        f"{mean(growth['LNS']):.3g} with LNS and {mean(growth['Pre-LN']):.3g} with Pre-LN (LNS/Pre-LN = "
        f"{g_ratio:.2g}; the rule asks for at most 1/3). LNS's last-third blocks turn the stream "
        + ("*more*" if mean(ang_last["LNS"]) > mean(ang_last["Pre-LN"]) else "*less*")
        + f" than Pre-LN's (mean angular distance {mean(ang_last['LNS']):.4f} vs {mean(ang_last['Pre-LN']):.4f}; "
        f"larger with LNS in {ka} of {na} seeds)"
        + (": a slower-growing stream did not make the deep blocks change it more, the opposite of the paper's "
           "mechanism." if mean(ang_last["LNS"]) <= mean(ang_last["Pre-LN"]) else "."))
    kd, nd = _count(last_third["LNS"], last_third["Pre-LN"], lambda a, b: a > b)
    pre_ratio = mean(last_third["Pre-LN"]) / mean(first_third["Pre-LN"]) if mean(first_third["Pre-LN"]) else math.nan
    lines.append(
        f"- **Which layers matter (C1: {v.get('C1', '—')}).** Dropping one of Pre-LN's last-third blocks costs "
        f"{mean(last_third['Pre-LN']):.4f} nats/byte on average, {pre_ratio:.2g}x what dropping one of its "
        f"first-third blocks costs ({mean(first_third['Pre-LN']):.4f}). For LNS a last-third block costs "
        f"{mean(last_third['LNS']):.4f} (more than Pre-LN's in {kd} of {nd} seeds)"
        + (": **LNS's deep layers are less useful than Pre-LN's here**, the reverse of what LNS is meant to do."
           if mean(last_third["LNS"]) < mean(last_third["Pre-LN"]) else
           ": LNS's deep layers matter more, as the paper argues."))
    lines.append(
        f"- **The gains.** The mean RMSNorm gain of the last third of blocks ends at {mean(gain_last['LNS']):.3f} "
        f"with LNS (Pre-LN {mean(gain_last['Pre-LN']):.3f}; both start at 1)"
        + (": within our short runs the model does not learn to undo the $1/\\sqrt\\ell$ factor through γ."
           if abs(mean(gain_last["LNS"]) - 1) < 0.25 else
           ": the gains moved far from 1, so γ partly compensates the factor."))
    if sft_loss is not None:
        ks, ns = _count(sft_loss["LNS"], sft_loss["Pre-LN"], lambda a, b: a < b)
        lines.append(
            f"- **Fine-tuning (C4: {v.get('C4', '—')}).** After fine-tuning on addition, LNS's test loss per "
            f"answer byte is {mean(sft_loss['LNS']):.4f} vs Pre-LN's {mean(sft_loss['Pre-LN']):.4f} (lower with "
            f"LNS in {ks} of {ns} seeds).")
    if scale == "smoke":
        lines.insert(0, "*Smoke scale: a pipeline check; these sentences are written from its numbers but are "
                        "not results.*")
    return "\n".join(lines)
