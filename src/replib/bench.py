r"""Training throughput of the book's shared models: ``replib bench`` and the Performance page.

For each workload (TinyGPT at chapter 05's ``cpu`` and ``gpu`` sizes, the TinyViT of the image
analogs, chapter 16's MLP) one optimizer step is timed on random inputs of the real shapes,
after untimed warm-up steps (the first one, which includes any ``torch.compile``, is reported
on its own):

- **throughput**: tokens (LMs) or samples per second, from the wall time of the timed loop,
  ended by a device synchronisation;
- **whole-run throughput**: every step's units (warm-up included) over the whole run from the
  model's build, so a compile's cost counts; with ``--budget`` the run stops when the whole of it
  has lasted ``--seconds``: what a fixed budget buys, as a chapter's does;
- **processes** (``--processes N``, CPU): N copies trained at once, one process each, as
  ``replib book --jobs N`` runs chapters; their throughputs add up;
- **the step split** into forward (zero-grad, forward, loss), backward and optimizer. On CUDA the
  boundaries are CUDA events on the GPU's timeline (no host synchronisation inside the loop, so
  the split does not slow the step it measures); on the CPU ``perf_counter``. The three parts sum
  to the event-to-event step time exactly, and that to the wall-clock step up to loop overhead;
- **peak memory**: CUDA ``max_memory_allocated`` during the timed loop; on the CPU the process's
  peak resident set (``VmHWM`` of ``/proc/self/status``, reset before each workload through
  ``/proc/self/clear_refs``; where that is impossible, ``ru_maxrss`` since the process started),
  named in ``memory_kind``: the CPU figure counts the whole process (Python, torch, the data);
- **MFU** (model FLOPs utilisation, GPU only), nanoGPT's ``estimate_mfu`` (Karpathy, nanoGPT
  ``model.py``): :math:`6N + 12 L H Q T` FLOPs per token for a transformer with :math:`N`
  non-embedding parameters, :math:`L` layers, :math:`H` heads of width :math:`Q` and context
  :math:`T`; :math:`6N` per sample for the MLP; over the device's dense bf16 peak
  (:data:`PEAK_BF16_FLOPS`; an unknown GPU gets no MFU). Counted per timed step as nanoGPT does,
  whatever ``--amp`` says.

**The compile costs** (``--compile-costs``, :func:`compile_cost_rows`): the first and second step
of TinyGPT eager, then compiled for a first model, a new model of the same shape and one with
another norm, in one process with a cold compile cache, as a chapter builds its models.

**The norm kernels** (``--norm-kernels``, :func:`norm_kernel_rows`): forward and forward+backward
time of each registry norm that has a fused Triton kernel (:mod:`replib.nn.kernels`), per hidden
size and token count, for the variants ``eager`` (the PyTorch module, ``REPLIB_TRITON=0``),
``triton`` (CUDA only), ``compile`` (``torch.compile`` of the eager module), ``native``
(``F.rms_norm``/``F.layer_norm`` where the norm is one) and ``liger`` (Liger-Kernel's module, when
installed). The achieved bandwidth counts the ideal traffic, one read of ``x`` and one write of
``y`` forward, reads of ``x`` and ``dy`` and a write of ``dx`` backward, over the device's
measured copy bandwidth (``y.copy_(x)`` of 256 MiB, read plus write).

Results go to ``results/bench/<device-kind>.json`` (written atomically, with provenance); a run
replaces the entries of the same workload and settings and keeps the others, so eager and
``--compile`` runs sit side by side. :func:`performance_markdown` renders every file as the
book's Performance page.
"""
from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import re
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import provenance
from .errors import ReplibError
from .results import write_json_atomic
from .nn import MLP, GPTConfig, TinyGPT, TinyViT
from .runtime import resolve_device, synchronize, torch_threads
from .train import adamw

SCHEMA_NAME, SCHEMA_VERSION = "replib.bench", 1
GPU_ONLY = {"tinygpt-gpu"}  # measured off a GPU only when named (tens of seconds a step on 2 cores)
AMP = {"none": None, "bf16": torch.bfloat16}
# Dense (no sparsity) bf16 tensor-core peaks from NVIDIA's data sheets, FLOP/s. Longest name first.
PEAK_BF16_FLOPS = {"H100 PCIe": 756e12, "H100 NVL": 835e12, "H100": 989e12, "H200": 989e12,
                   "A100": 312e12, "L4": 121e12, "A10G": 70e12}


@dataclass(frozen=True)
class Workload:
    """A model, its batch and what one step processes. ``build(device)`` returns the model and a
    loss function of it (the batch is fixed inside)."""

    name: str
    describe: str
    units: str  # "tokens" or "samples"
    units_per_step: int
    build: Callable[[torch.device], tuple[torch.nn.Module, Callable[[torch.nn.Module], torch.Tensor]]]
    flops_per_step: Callable[[torch.nn.Module], float]


def gpt_workload(name: str, batch_size: int, **cfg) -> Workload:
    """TinyGPT on random byte tokens; nanoGPT's FLOPs per step."""
    config = GPTConfig(**cfg)

    def build(device):
        model = TinyGPT(config).to(device)
        g = torch.Generator().manual_seed(0)
        idx = torch.randint(0, config.vocab_size, (batch_size, config.seq_len + 1), generator=g)
        x, y = idx[:, :-1].to(device), idx[:, 1:].to(device)
        return model, lambda m: m(x, y)[1]

    def flops(model):
        n = model.num_params() - model.pos_emb.weight.numel() - model.tok_emb.weight.numel()
        L, H, T = config.n_layer, config.n_head, config.seq_len
        Q = (config.d_attn or config.d_model) // H
        return (6 * n + 12 * L * H * Q * T) * T * batch_size

    shape = ", ".join(f"{k}={v}" for k, v in cfg.items())
    return Workload(name, f"TinyGPT({shape}), batch {batch_size}", "tokens",
                    batch_size * config.seq_len, build, flops)


def vit_workload(name: str, batch_size: int, **cfg) -> Workload:
    """TinyViT on random 8x8 images and labels."""
    def build(device):
        model = TinyViT(**cfg).to(device)
        g = torch.Generator().manual_seed(0)
        images = torch.randn(batch_size, model.image ** 2, generator=g).to(device)
        labels = torch.randint(0, 10, (batch_size,), generator=g).to(device)
        return model, lambda m: F.cross_entropy(m(images), labels)

    def flops(model):
        n = sum(p.numel() for p in model.parameters()) - model.pos.numel()
        T = model.pos.shape[1]
        L, H = len(model.blocks), model.blocks[0].attn.n_head
        Q = model.pos.shape[2] // H
        return (6 * n + 12 * L * H * Q * T) * T * batch_size

    shape = ", ".join(f"{k}={v}" for k, v in cfg.items())
    return Workload(name, f"TinyViT({shape}), batch {batch_size}", "samples", batch_size, build, flops)


def mlp_workload(name: str, batch_size: int, d_in: int, width: int, depth: int, d_out: int,
                 **kw) -> Workload:
    """The MLP of replib.nn on random features and labels; 6N FLOPs per sample."""
    def build(device):
        model = MLP(d_in, width, depth, d_out, **kw).to(device)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(batch_size, d_in, generator=g).to(device)
        y = torch.randint(0, d_out, (batch_size,), generator=g).to(device)
        return model, lambda m: F.cross_entropy(m(x), y)

    return Workload(name, f"MLP({d_in}, {width}, depth {depth}, {d_out}), batch {batch_size}",
                    "samples", batch_size, build,
                    lambda m: 6 * sum(p.numel() for p in m.parameters()) * batch_size)


def default_workloads() -> dict[str, Workload]:
    """The shared models at the sizes the chapters train them (chapter 05 for TinyGPT, chapter 16's
    cpu C2 for the MLP, the image analogs' TinyViT)."""
    ws = [
        gpt_workload("tinygpt-cpu", 16, n_layer=8, d_model=64, n_head=4, seq_len=64),
        gpt_workload("tinygpt-gpu", 64, n_layer=12, d_model=256, n_head=8, seq_len=256),
        vit_workload("tinyvit", 128, d_model=64, depth=4, n_head=4, mlp_ratio=4),
        mlp_workload("mlp", 64, 64, 256, 8, 10, activation="selu", init="lecun"),
    ]
    return {w.name: w for w in ws}


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def device_kind(device: torch.device) -> str:
    """The results file's name: the GPU's model, or the CPU's model and core count."""
    if device.type == "cuda":
        return _slug(torch.cuda.get_device_name(device))
    if device.type == "mps":
        return "mps-" + _slug(provenance.cpu_name())
    return f"cpu-{_slug(provenance.cpu_name())}-{os.cpu_count()}cores"


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0]))
                 if k in name), None)


class _Memory:
    """Peak memory of the code between :meth:`reset` and :meth:`peak` (see the module docstring)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = "cuda_max_memory_allocated" if device.type == "cuda" else "process_peak_rss"

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            Path("/proc/self/clear_refs").write_text("5")  # 5: reset the peak RSS (Linux >= 4.0)
        except OSError:
            self.kind = "process_peak_rss_since_start"

    def peak(self) -> int:
        if self.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.device))
        if self.kind == "process_peak_rss":
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


class _Clock:
    """Step boundaries: CUDA events on the GPU's timeline, else ``perf_counter``."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def mark(self):
        if not self.cuda:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def seconds(self, a, b) -> float:  # after a synchronisation
        return a.elapsed_time(b) / 1e3 if self.cuda else b - a


@contextlib.contextmanager
def _cold_compile_cache():
    """An empty torch.compile cache, in memory and on disk (inductor reads its directory at each
    compile): the compile time a new machine's first run pays."""
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    torch._dynamo.reset()
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("TORCHINDUCTOR_CACHE_DIR")
            else:
                os.environ["TORCHINDUCTOR_CACHE_DIR"] = before


def measure(workload: Workload, device: torch.device, *, seconds: float = 10.0,
            warmup: int = 3, compile: bool = False, amp: str = "none", min_steps: int = 3,
            budget: bool = False) -> dict:
    """Train ``workload`` for ``warmup`` untimed steps, then for about ``seconds`` (``budget``:
    until the whole run, build and compile included, has lasted ``seconds``); one result row."""
    if amp not in AMP:
        raise ReplibError(f"unknown --amp {amp!r}; valid: {', '.join(AMP)}")
    torch.manual_seed(0)
    start = time.perf_counter()
    model, loss_fn = workload.build(device)
    flops = workload.flops_per_step(model)
    params = sum(p.numel() for p in model.parameters())
    run = torch.compile(model) if compile else model
    opt = adamw(model, lr=1e-4)
    clock, memory = _Clock(device), _Memory(device)
    dtype = AMP[amp]

    def step(marks: list | None = None) -> None:
        if marks is not None:
            marks.append(clock.mark())
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = loss_fn(run)
        if marks is not None:
            marks.append(clock.mark())
        loss.backward()
        if marks is not None:
            marks.append(clock.mark())
        opt.step()
        if marks is not None:
            marks.append(clock.mark())

    run.train()
    t0 = time.perf_counter()
    with _cold_compile_cache() if compile else contextlib.nullcontext():
        step()
        synchronize(device)
    first = time.perf_counter() - t0
    for _ in range(max(warmup - 1, 0)):
        step()
    synchronize(device)
    memory.reset()
    marks: list[list] = []
    t0 = time.perf_counter()
    clock_start = start if budget else t0
    while len(marks) < min_steps or time.perf_counter() - clock_start < seconds:
        marks.append([])
        step(marks[-1])
    synchronize(device)
    end = time.perf_counter()
    wall = end - t0
    n = len(marks)
    parts = [[clock.seconds(m[i], m[i + 1]) for i in range(3)] for m in marks]
    fwd, bwd, opt_s = (sum(p[i] for p in parts) / n for i in range(3))
    step_s = wall / n
    peak = peak_bf16_flops(device)
    return {
        "model": workload.name, "describe": workload.describe, "params": params,
        "units": workload.units, "units_per_step": workload.units_per_step,
        "settings": {"compile": compile, "amp": amp, "threads": torch.get_num_threads(),
                     "processes": 1, "kernels": _kernels_state(device), "budget": budget},
        "warmup_steps": max(warmup, 1), "first_step_s": first, "steps": n, "wall_s": wall,
        "step_s": step_s, "throughput": workload.units_per_step / step_s,
        "run_s": end - start,  # the whole run: build, compile, warm-up and the timed loop
        "run_throughput": workload.units_per_step * (max(warmup, 1) + n) / (end - start),
        "split_s": {"forward": fwd, "backward": bwd, "optimizer": opt_s},
        "peak_memory_bytes": memory.peak(), "memory_kind": memory.kind,
        "flops_per_step": float(flops), "peak_flops": peak,
        "mfu": flops / step_s / peak if peak else None,
        "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def _measure_named(name: str, device: str, threads: int, kw: dict) -> dict:
    torch.set_num_threads(threads)
    return measure(default_workloads()[name], torch.device(device), **kw)


def measure_processes(name: str, device: torch.device, processes: int, threads: int,
                      **kw) -> dict:
    """``processes`` copies of the default workload ``name`` trained at once, each in its own
    process with ``threads`` threads, as ``replib book --jobs N`` runs chapters side by side.
    Throughputs add up; step time and its split are the processes' mean, peak memory the
    largest process's, first step the slowest one's. The copies start within a second or two of
    each other, small beside the minutes such a comparison needs."""
    ctx = multiprocessing.get_context("spawn")  # a fork would inherit torch's thread pools
    with ProcessPoolExecutor(processes, mp_context=ctx) as pool:
        rows = list(pool.map(_measure_named, [name] * processes, [str(device)] * processes,
                             [threads] * processes, [kw] * processes))
    row, mean = dict(rows[0]), lambda key: sum(r[key] for r in rows) / processes
    row.update(
        settings={**row["settings"], "processes": processes},
        steps=sum(r["steps"] for r in rows), step_s=mean("step_s"),
        throughput=sum(r["throughput"] for r in rows),
        run_throughput=sum(r["run_throughput"] for r in rows),
        wall_s=max(r["wall_s"] for r in rows), run_s=max(r["run_s"] for r in rows),
        first_step_s=max(r["first_step_s"] for r in rows),
        split_s={k: sum(r["split_s"][k] for r in rows) / processes for k in row["split_s"]},
        peak_memory_bytes=max(r["peak_memory_bytes"] for r in rows),
        memory_kind=row["memory_kind"] + "_per_process")
    return row


COMPILE_CASES = (  # (what a chapter does, TinyGPT overrides of tinygpt-cpu's shape, compiled)
    ("eager", {}, False),
    ("compiled, the first model", {}, True),
    ("compiled, a new model of the same shape", {}, True),
    ("compiled, the same shape with another norm", {"norm": "rmsnorm"}, True),
)


def _compile_costs(device: str) -> list[dict]:
    torch.set_num_threads(1)
    shape = dict(n_layer=8, d_model=64, n_head=4, seq_len=64)
    with _cold_compile_cache():  # one cache for all the cases, as in a chapter's process
        return [_first_steps(case, gpt_workload(case, 16, **shape, **overrides), compiled,
                             torch.device(device)) | {"overrides": overrides}
                for case, overrides, compiled in COMPILE_CASES]


def _first_steps(case: str, workload: Workload, compiled: bool, device: torch.device) -> dict:
    model, loss_fn = workload.build(device)
    run, opt = (torch.compile(model) if compiled else model), adamw(model, lr=1e-4)
    times = []
    for _ in range(2):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss_fn(run).backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"case": case, "first_step_s": times[0], "second_step_s": times[1],
            "threads": torch.get_num_threads()}


def compile_cost_rows(device: torch.device) -> list[dict]:
    """What ``torch.compile`` costs a chapter, which builds a new model for every arm, lr and
    seed: the first and second training step of TinyGPT at the ``tinygpt-cpu`` shape, eager, then
    compiled for the first model, for a fresh model of the same shape and for one with another
    norm, in that order in one fresh process with an empty compile cache (a new machine's first
    run; one thread)."""
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        rows = pool.submit(_compile_costs, str(device)).result()
    when = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return [{**r, "measured_at": when} for r in rows]


def _kernels_state(device: torch.device) -> str:
    """Whether the registry norms ran their Triton kernels (CUDA only; see replib.nn.kernels)."""
    from .nn import kernels
    if device.type != "cuda":
        return "eager (not CUDA)"
    return "triton" if kernels.enabled() else "eager (REPLIB_TRITON=0 or no triton)"


SECTIONS = {  # a file's lists of rows, and what makes two rows the same measurement
    "runs": ("model", "settings"),
    "compile_costs": ("case",),
    "norm_kernels": ("norm", "hidden", "tokens", "dtype", "variant"),
}


def write_results(path: Path, device: torch.device, rows: list[dict], section: str = "runs") -> Path:
    """Merge ``rows`` into ``section`` of the file at ``path`` atomically: a row of the same
    measurement (:data:`SECTIONS`) is replaced, every other row of every section kept."""
    old: dict[str, list] = {}
    if path.exists():
        try:
            data = json.loads(path.read_text())
            if data.get("schema") == SCHEMA_NAME and data.get("schema_version") == SCHEMA_VERSION:
                old = {k: data.get(k, []) for k in SECTIONS}
        except (OSError, ValueError):
            pass  # unreadable: replaced by this run
    same = SECTIONS[section]
    new_keys = [tuple(r[k] for k in same) for r in rows]
    kept = [r for r in old.get(section, []) if tuple(r[k] for k in same) not in new_keys]
    record = {"schema": SCHEMA_NAME, "schema_version": SCHEMA_VERSION,
              "device_kind": device_kind(device), "hardware": provenance.hardware(device),
              "versions": provenance.library_versions(), "git": provenance.git_commit(),
              **{k: old.get(k, []) for k in SECTIONS}, section: kept + rows}
    return write_json_atomic(record, path)


KERNEL_NORMS = ("rmsnorm", "layernorm", "crmsnorm", "dyt", "bhyt", "seednorm")
NORM_VARIANTS = ("eager", "triton", "compile", "native", "liger")
_NATIVE = {"rmsnorm": lambda m, x: F.rms_norm(x, (m.dim,), m.weight, m.eps),
           "layernorm": lambda m, x: F.layer_norm(x, (m.dim,), m.weight, m.bias, m.eps)}
_LIGER = {"rmsnorm": ("liger_kernel.transformers.rms_norm", "LigerRMSNorm"),
          "layernorm": ("liger_kernel.transformers.layer_norm", "LigerLayerNorm")}


def copy_bandwidth(device: torch.device, mib: int = 256, reps: int = 20) -> float:
    """Measured device memory bandwidth in bytes/s: ``y.copy_(x)`` reads and writes ``mib`` MiB."""
    from .timing import time_call

    x = torch.empty(mib * 2**20, dtype=torch.uint8, device=device)
    y = torch.empty_like(x)
    t = time_call(lambda: y.copy_(x), device, warmup=3, reps=reps)
    return 2 * x.numel() / t.median


def _eager_only():
    """``REPLIB_TRITON=0`` for the duration of a call (the registry modules then run eager)."""
    from contextlib import contextmanager

    @contextmanager
    def ctx():
        before = os.environ.get("REPLIB_TRITON")
        os.environ["REPLIB_TRITON"] = "0"
        try:
            yield
        finally:
            if before is None:
                os.environ.pop("REPLIB_TRITON", None)
            else:
                os.environ["REPLIB_TRITON"] = before
    return ctx()


def _norm_variants(name: str, module: torch.nn.Module, device: torch.device,
                   variants: tuple[str, ...]) -> dict[str, Callable]:
    """``{variant: f(x) -> y}`` for the variants that exist here (see the module docstring)."""
    from .nn import kernels

    def eager(x):
        with _eager_only():
            return module(x)

    out: dict[str, Callable] = {}
    for v in variants:
        if v == "eager":
            out[v] = eager
        elif v == "triton" and device.type == "cuda" and kernels.enabled():
            out[v] = module
        elif v == "compile":  # replib.nn.kernels keeps the eager code under torch.compile
            out[v] = torch.compile(module, dynamic=False)
        elif v == "native" and name in _NATIVE:
            out[v] = lambda x: _NATIVE[name](module, x)
        elif v == "liger" and name in _LIGER and device.type == "cuda":
            try:
                import importlib

                cls = getattr(importlib.import_module(_LIGER[name][0]), _LIGER[name][1])
            except ImportError:
                continue
            liger = cls(module.dim).to(device)
            out[v] = liger
    return out


def norm_kernel_rows(device: torch.device, *, norms: tuple[str, ...] = KERNEL_NORMS,
                     hidden: tuple[int, ...] = (512, 2048, 8192),
                     tokens: tuple[int, ...] = (4096, 65536), dtype: str = "bf16",
                     variants: tuple[str, ...] = NORM_VARIANTS, reps: int = 20,
                     echo: Callable[[str], None] = print) -> list[dict]:
    """Forward and forward+backward times of the norm kernels (module docstring), one row per
    norm, shape and variant, timed interleaved with :func:`replib.timing.compare`."""
    from .nn import create_norm
    from .timing import compare

    dt = {"bf16": torch.bfloat16, "fp32": torch.float32}[dtype]
    bandwidth = copy_bandwidth(device) if device.type == "cuda" else None
    rows = []
    for name in norms:
        for h in hidden:
            for t in tokens:
                torch.manual_seed(0)
                module = create_norm(name, h).to(device, dt)  # same dtype as x: F.rms_norm fuses
                x = torch.randn(t, h, device=device, dtype=dt, requires_grad=True)
                dy = torch.randn(t, h, device=device, dtype=dt)
                fns = _norm_variants(name, module, device, variants)

                def forward(f):
                    def call():
                        with torch.no_grad():
                            f(x)
                    return call

                def both(f):
                    def call():
                        x.grad = None
                        f(x).backward(dy)
                    return call

                fwd = compare({v: forward(f) for v, f in fns.items()}, device, warmup=3, reps=reps)
                fb = compare({v: both(f) for v, f in fns.items()}, device, warmup=3, reps=reps)
                size = t * h * x.element_size()
                for v in fns:
                    row = {"norm": name, "hidden": h, "tokens": t, "dtype": dtype, "variant": v,
                           "forward_s": fwd[v].median, "forward_backward_s": fb[v].median,
                           "reps": reps, "bytes_forward": 2 * size, "bytes_forward_backward": 5 * size,
                           "copy_bandwidth": bandwidth,
                           "bandwidth_fraction": (5 * size / fb[v].median / bandwidth
                                                  if bandwidth else None),
                           "measured_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}
                    rows.append(row)
                echo(f"  {name:<10} {h:>5} x {t:>6}: " + ", ".join(
                    f"{v} {1e3 * fb[v].median:.3f} ms" for v in fns) + " (forward+backward)")
    return rows


def _writable(path: Path) -> Path:
    """Fail now, not after the measurements, when ``path`` cannot be written."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path.parent).close()
    except OSError as e:
        raise ReplibError(f"cannot write results to {path.parent}: {e.strerror or e}") from None
    return path


def bench_norm_kernels(root: Path, *, device: str = "auto", out: Path | None = None,
                       echo: Callable[[str], None] = print, **kw) -> Path:
    """:func:`norm_kernel_rows` into ``results/bench/<device-kind>.json`` (section ``norm_kernels``)."""
    if unknown := [n for n in kw.get("norms", ()) if n not in KERNEL_NORMS]:
        raise ReplibError(f"no fused kernel for norm {unknown[0]!r}; valid: {', '.join(KERNEL_NORMS)}")
    dev = resolve_device(device)
    path = _writable(out or root / "results" / "bench" / f"{device_kind(dev)}.json")
    return write_results(path, dev, norm_kernel_rows(dev, echo=echo, **kw), "norm_kernels")


def bench_compile_costs(root: Path, *, device: str = "auto", out: Path | None = None) -> Path:
    """:func:`compile_cost_rows` into ``results/bench/<device-kind>.json`` (``compile_costs``)."""
    dev = resolve_device(device)
    path = _writable(out or root / "results" / "bench" / f"{device_kind(dev)}.json")
    return write_results(path, dev, compile_cost_rows(dev), "compile_costs")


def bench(root: Path, *, device: str = "auto", models: list[str] | None = None,
          seconds: float = 10.0, warmup: int = 3, compile: bool = False, threads: int | None = None,
          processes: int = 1, budget: bool = False, amp: str = "none", out: Path | None = None,
          workloads: dict[str, Workload] | None = None, echo: Callable[[str], None] = print) -> Path:
    """Measure ``models`` into ``root/results/bench/<device-kind>.json``; by default all of them
    on CUDA, all but :data:`GPU_ONLY` elsewhere. ``processes`` > 1 (CPU only) trains that many
    copies at once (:func:`measure_processes`), ``threads`` each (default: the cores shared out)."""
    available = workloads or default_workloads()
    dev = resolve_device(device)
    names = models or [m for m in available if dev.type == "cuda" or m not in GPU_ONLY]
    if unknown := [m for m in names if m not in available]:
        raise ReplibError(f"unknown model {unknown[0]!r}; valid: {', '.join(available)}")
    if not seconds > 0:
        raise ReplibError(f"--seconds must be positive, got {seconds}")
    if threads is not None and threads < 1:
        raise ReplibError(f"--threads must be >= 1, got {threads}")
    if amp not in AMP:
        raise ReplibError(f"unknown --amp {amp!r}; valid: {', '.join(AMP)}")
    if processes < 1:
        raise ReplibError(f"--processes must be >= 1, got {processes}")
    if processes > 1 and (dev.type != "cpu" or workloads is not None):
        raise ReplibError("--processes is for the default workloads on a CPU")
    path = _writable(out or root / "results" / "bench" / f"{device_kind(dev)}.json")
    kw = dict(seconds=seconds, warmup=warmup, compile=compile, amp=amp, budget=budget)
    with torch_threads(threads):
        for name in names:  # written after each model: an interrupted run keeps what it measured
            if processes > 1:
                row = measure_processes(name, dev, processes,
                                        threads or max(1, (os.cpu_count() or 1) // processes), **kw)
            else:
                row = measure(available[name], dev, **kw)
            echo(summary_line(row))
            write_results(path, dev, [row])
    return path


def summary_line(row: dict) -> str:
    split = row["split_s"]
    parts = "/".join(f"{1e3 * split[k]:.1f}" for k in ("forward", "backward", "optimizer"))
    mfu = f", MFU {100 * row['mfu']:.1f} %" if row["mfu"] is not None else ""
    return (f"  {row['model']:<12} {row['throughput']:>10,.0f} {row['units']}/s  step "
            f"{1e3 * row['step_s']:.1f} ms (fwd/bwd/opt {parts} ms), peak "
            f"{row['peak_memory_bytes'] / 2**20:.0f} MiB{mfu}")


# ---------------------------------------------------------------- the Performance page

def _settings_text(s: dict) -> str:
    words = ["compiled" if s["compile"] else "eager"]
    words += [] if s["amp"] == "none" else [f"autocast {s['amp']}"]
    words.append(f"{s['threads']} thread{'s' * (s['threads'] != 1)}")
    if s.get("budget"):
        words.insert(0, "fixed budget")
    if s.get("processes", 1) > 1:
        words[-1] += f" x {s['processes']} processes"
    return ", ".join(words)


def _table(data: dict) -> str:
    hw = data["hardware"]
    where = hw.get("gpu") or f"{hw.get('cpu')}, {hw.get('cpu_count')} cores"
    git = data.get("git", {})
    lines = [f"## {data['device_kind']}", "",
             f"{where}; torch {data.get('versions', {}).get('torch', '?')}, commit "
             f"`{(git.get('commit') or 'unknown')[:10]}`"
             + (" (modified checkout)" if git.get("dirty") else "") + "."]
    if not data.get("runs"):
        return "\n".join(lines)
    lines += ["", "| model | settings | throughput | whole run | step (ms) | "
             "forward / backward / optimizer | peak memory (MiB) | MFU | measured |",
             "|---|---|---:|---:|---:|---|---:|---:|---|"]
    for r in sorted(data.get("runs", []), key=lambda r: (r["model"], r["measured_at"])):
        split, step = r["split_s"], sum(r["split_s"].values())
        shares = " / ".join(f"{100 * split[k] / step:.0f} %"
                            for k in ("forward", "backward", "optimizer"))
        mem = r["peak_memory_bytes"] / 2**20
        mem_text = f"{mem:,.0f}" + ("" if r["memory_kind"].startswith("cuda") else " (process RSS)")
        mfu = f"{100 * r['mfu']:.1f} %" if r.get("mfu") is not None else "n/a"
        whole = (f"{r['run_throughput']:,.0f} in {r['run_s']:.0f} s" if "run_throughput" in r
                 else "")
        lines.append(f"| {r['model']} | {_settings_text(r['settings'])} | "
                     f"{r['throughput']:,.0f} {r['units']}/s | {whole} | {1e3 * r['step_s']:.1f} | "
                     f"{shares} | {mem_text} | {mfu} | {r['measured_at'][:10]}, {r['steps']} steps |")
    return "\n".join(lines)


def _compile_table(rows: list[dict]) -> str:
    lines = ["", "torch.compile's cost as a chapter meets it (TinyGPT at the `tinygpt-cpu` shape, one "
             "process with a cold cache, cases in this order, 1 thread):", "",
             "| case | first step (s) | second step (ms) |", "|---|---:|---:|"]
    lines += [f"| {r['case']} | {r['first_step_s']:.2f} | {1e3 * r['second_step_s']:.1f} |"
              for r in rows]
    return "\n".join(lines)


MIN_GAIN = 1.10  # a setting replaces the default only with >= 10 % more tokens per budget
RUN_S = 30.0  # a typical chapter training run (s), for what one compile must pay back


def _plain(row: dict) -> str:  # a fixed-budget row's settings, without saying so
    return _settings_text({**row["settings"], "budget": False})


def _key(s: dict) -> tuple[bool, int, int]:
    return s["compile"], s["threads"], s.get("processes", 1)


def cpu_settings_decision(data: dict, model: str = "tinygpt-cpu") -> str | None:
    """The Performance page's rule applied to a CPU file's fixed-budget rows of ``model``: a
    setting replaces the default (eager, 1 thread, 1 process) only if its whole-run throughput is
    at least :data:`MIN_GAIN` times the default's, the fastest such one wins; a compiled setting
    must also pay back its compile within one :data:`RUN_S`-second run: each of the compile-cost
    probe's new models (same shape; another norm) must cost less in its first step than
    ``RUN_S * (1 - compiled step / eager step)`` (steps of the same threads and processes). The
    decision in words, or None without the default's row."""
    rows = {_key(r["settings"]): r for r in data.get("runs", [])
            if r["model"] == model and r["settings"].get("budget") and r["settings"]["amp"] == "none"}
    base = rows.get((False, 1, 1))
    if base is None:
        return None
    costs = {r["case"]: r["first_step_s"] for r in data.get("compile_costs", [])}
    new_models = [c for c, _, compiled in COMPILE_CASES[2:] if compiled]
    lines, winners = [], []
    for key, r in sorted(rows.items()):
        if key == (False, 1, 1):
            continue
        gain = r["run_throughput"] / base["run_throughput"]
        text = f"{_plain(r)}: {gain:.2f}x the default's tokens in the budget"
        ok = gain >= MIN_GAIN
        if ok and key[0]:
            eager = rows.get((False, *key[1:]))
            saved = RUN_S * (1 - r["step_s"] / eager["step_s"]) if eager else None
            missing = [c for c in new_models if c not in costs]
            if saved is None or missing:
                ok, text = False, text + "; compile payback not measured"
            else:
                worst = max(costs[c] for c in new_models)
                ok = worst < saved
                text += (f"; a new model's compile {worst:.1f} s vs {max(saved, 0):.1f} s saved "
                         f"over a {RUN_S:.0f} s run")
        lines.append(f"- {text}: {'passes' if ok else 'fails'} the rule")
        if ok:
            winners.append((gain, key, r))
    if winners:
        gain, _, r = max(winners, key=lambda w: w[0])
        head = (f"**Rule applied:** {_plain(r)} replaces the default "
                f"({gain:.2f}x its tokens in the same budget).")
    else:
        head = "**Rule applied:** no setting beats the default by the margin; the default stays."
    return "\n".join(["", head, "", *lines])


def _kernel_table(rows: list[dict]) -> str:
    lines = ["", "Norm kernels, forward + backward (ms; in brackets the share of the measured copy "
             "bandwidth the ideal traffic reaches; speed-up over eager):", "",
             "| norm | hidden x tokens | dtype | " + " | ".join(NORM_VARIANTS) + " |",
             "|---|---|---|" + "---:|" * len(NORM_VARIANTS)]
    shapes: dict[tuple, dict[str, dict]] = {}
    for r in rows:
        shapes.setdefault((r["norm"], r["hidden"], r["tokens"], r["dtype"]), {})[r["variant"]] = r
    for (norm, h, t, dtype), by in sorted(shapes.items()):
        base = by.get("eager")
        cells = []
        for v in NORM_VARIANTS:
            r = by.get(v)
            if r is None:
                cells.append("")
                continue
            text = f"{1e3 * r['forward_backward_s']:.3f}"
            if r.get("bandwidth_fraction") is not None:
                text += f" ({100 * r['bandwidth_fraction']:.0f} %)"
            if base is not None and v != "eager":
                text += f", {base['forward_backward_s'] / r['forward_backward_s']:.2f}x"
            cells.append(text)
        lines.append(f"| {norm} | {h} x {t} | {dtype} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def performance_markdown(bench_dir: Path) -> str:
    """The Performance page's tables: one per ``bench_dir/*.json`` (one per device kind)."""
    files = sorted(Path(bench_dir).glob("*.json"))
    tables, gpu = [], False
    for path in files:
        try:
            data = json.loads(path.read_text())
            if data.get("schema") != SCHEMA_NAME:
                raise ValueError("not a replib.bench file")
            parts = [_table(data),
                     data.get("compile_costs") and _compile_table(data["compile_costs"]),
                     data["hardware"].get("device") == "cpu" and cpu_settings_decision(data),
                     data.get("norm_kernels") and _kernel_table(data["norm_kernels"])]
            tables.append("\n\n".join(p.strip("\n") for p in parts if p))
            gpu = gpu or data["hardware"].get("device", "").startswith("cuda")
        except (OSError, ValueError, KeyError) as e:
            tables.append(f"## {path.stem}\n\nunreadable ({e}).")
    if not tables:
        return "No measurements yet: run `replib bench` (they land in `results/bench/`).\n"
    note = [] if gpu else ["*No GPU measurement yet: these numbers are from CPUs only.*", ""]
    models = "\n".join(f"- `{w.name}`: {w.describe}" for w in default_workloads().values())
    return "\n".join(note + ["The workloads:", "", models, "", *tables]) + "\n"


__all__ = ["Workload", "default_workloads", "measure", "measure_processes", "bench",
           "write_results", "compile_cost_rows", "bench_compile_costs", "cpu_settings_decision",
           "norm_kernel_rows",
           "bench_norm_kernels", "copy_bandwidth",
           "performance_markdown", "device_kind", "PEAK_BF16_FLOPS"]
