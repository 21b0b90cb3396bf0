"""Execute chapters with papermill on a staged copy of the book, with a content-keyed cache.

Each scale has its own staged tree ``_build/stage/<scale>/`` mirroring the book's layout, so
jupyter-book renders it as if it were the checkout (launch buttons still point at
``notebooks/NN-slug.ipynb``) while the source notebooks stay output-free. A chapter is executed
again only when its cache key changes: the notebook's bytes, the replib modules it imports (its
import closure, never the book machinery), the versions of the libraries that compute results, or
the parameters.

Only a chapter that ran to its end is ever cached or published: its record is removed before it
runs and written last, and its kernel writes the results file to a pending folder that is moved into
``results/`` only on success. An interrupt (Ctrl-C, SIGTERM) kills the running kernels at once.

Two executors run the chapters: ``local`` (threads of this process, ``jobs`` kernels at a time) and
``dask`` (:func:`execute_many_dask`: one task per chapter on a Dask distributed cluster, each
worker running :func:`execute` as the local executor does, so the cache and the results files are
the same).
"""
from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.metadata as md
import json
import os
import queue
import shutil
import signal
import sys
import threading
import time
import traceback
import uuid
import weakref
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

from ..errors import ReplibError
from ..results import read, write
from ..scales import SCALES
from .chapters import Chapter

KERNEL = "python3"
REPLIB_SRC = Path(__file__).resolve().parents[1]
# What computes a chapter's numbers and figures besides replib; papermill and jupyter do not.
KEY_LIBRARIES = ("torch", "numpy", "scipy", "scikit-learn", "pandas", "matplotlib", "seaborn")
PAPERMILL_ERROR_TAG = "papermill-error-cell-tag"
FAILURE_TAG = "replib-failure"
STOP_WAIT_S = 10  # how long an interrupt waits for the killed kernels' threads to finish


@dataclass
class Outcome:
    chapter: str
    status: str  # "executed" | "cached" | "failed" | "interrupted" (never recorded)
    seconds: float
    parameters: dict
    error: str | None = None
    finished_at: str = ""
    key: str = ""

    @property
    def ok(self) -> bool:
        return self.status in ("executed", "cached")


def cell_timeout(scale: str) -> int:
    """Seconds one cell may run before its kernel counts as hung: generous (30 minutes, or ten
    times the whole chapter's budget), so a correct chapter on a slow or loaded machine never
    fails. The budget itself is measured (``--fail-over-budget``), never enforced by killing."""
    return int(max(1800, 10 * SCALES[scale].budget_s))


def stage_dir(root: Path, scale: str) -> Path:
    return root / "_build" / "stage" / scale


def pending_dir(root: Path) -> Path:
    """Where this process's kernels write results files until their chapter has finished."""
    return root / "_build" / "pending" / str(os.getpid())


# ---------------------------------------------------------------- the cache key

def _module_file(name: str, src: Path) -> Path | None:
    """The source file of module ``replib.a.b`` under ``src`` (the replib package folder)."""
    base = src.joinpath(*name.split(".")[1:])
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    return None


def _imported_names(tree: ast.AST, package: str) -> set[str]:
    """Every module name an import in ``tree`` may load, with the packages above it (importing
    ``a.b.c`` runs ``a`` and ``a.b`` too); ``from m import x`` counts ``m.x``: x may be a module."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the package, one level up per extra dot
                parts = package.split(".")
                parts = parts[:len(parts) - node.level + 1] + ([node.module] if node.module else [])
                base = ".".join(parts)
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {".".join(n.split(".")[:i]) for n in names for i in range(1, n.count(".") + 2)}


def _notebook_tree(path: Path) -> ast.Module:
    """The notebook's code cells as one Python module (IPython magics turned into calls)."""
    from IPython.core.inputtransformer2 import TransformerManager

    cells = json.loads(path.read_text())["cells"]
    body = []
    for cell in cells:
        if cell["cell_type"] == "code":
            source = "".join(cell["source"])
            try:
                body += ast.parse(TransformerManager().transform_cell(source)).body
            except SyntaxError:  # such a cell fails when run, and failures are never cached
                continue
    return ast.Module(body=body, type_ignores=[])


@functools.lru_cache(maxsize=None)
def _file_imports(path: Path, stamp: tuple[int, int], package: str) -> frozenset[str]:
    """A module's imported names, parsed once per version of the file (``stamp``)."""
    return frozenset(_imported_names(ast.parse(path.read_bytes()), package))


def import_closure(notebook: Path, src: Path = REPLIB_SRC) -> list[Path]:
    """The replib source files a notebook loads, found statically from its imports and theirs.

    An import built from a string at run time (``importlib.import_module(name)``) is not seen.
    """
    seen: dict[str, Path] = {}
    todo = list(_imported_names(_notebook_tree(notebook), ""))
    while todo:
        name = todo.pop()
        if name.split(".")[0] != src.name or name in seen:
            continue
        path = _module_file(name, src)
        if path is not None:
            seen[name] = path
            package = name if path.name == "__init__.py" else name.rpartition(".")[0]
            stat = path.stat()
            todo += _file_imports(path, (stat.st_mtime_ns, stat.st_size), package)
    return sorted(seen.values())


def library_versions() -> dict[str, str]:
    versions = {"python": sys.version}  # the build too: the stdlib corpus differs between builds
    for name in KEY_LIBRARIES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            continue
    return versions


def cache_key(root: Path, chapter: Chapter, parameters: dict, src: Path = REPLIB_SRC) -> str:
    h = hashlib.sha256()
    h.update((root / chapter.path).read_bytes())
    for path in import_closure(root / chapter.path, src):
        h.update(str(path.relative_to(src)).encode())
        h.update(path.read_bytes())
    h.update(json.dumps([library_versions(), parameters], sort_keys=True).encode())
    return h.hexdigest()


# ---------------------------------------------------------------- records in the stage

def _record_path(stage: Path, chapter: Chapter) -> Path:
    return stage / ".cache" / f"{chapter.id}.json"


def result_snapshot(stage: Path, chapter: Chapter) -> Path:
    """The results file the staged page's own execution wrote (its header is made from it)."""
    return stage / ".cache" / f"{chapter.id}.result.json"


def unreadable_path(stage: Path) -> Path:
    """The results files the last site build could not read: {chapter: {scale: why}}."""
    return stage / ".cache" / "unreadable.json"


def unreadable_results(stage: Path) -> dict[str, dict[str, str]]:
    try:
        return json.loads(unreadable_path(stage).read_text())
    except (OSError, ValueError):
        return {}


def last_outcome(stage: Path, chapter: Chapter) -> Outcome | None:
    path = _record_path(stage, chapter)
    try:
        return Outcome(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _cached(root: Path, chapter: Chapter, parameters: dict, key: str) -> Outcome | None:
    stage = stage_dir(root, parameters["scale"])
    previous = last_outcome(stage, chapter)
    if previous and previous.ok and previous.key == key and (stage / chapter.path).exists():
        return Outcome(chapter.id, "cached", previous.seconds, parameters, None,
                       previous.finished_at, key)
    return None


def up_to_date(root: Path, chapter: Chapter, parameters: dict) -> bool:
    """Whether executing the chapter now would find it in the cache."""
    return _cached(root, chapter, parameters, cache_key(root, chapter, parameters)) is not None


def expected_seconds(root: Path, chapter: Chapter, scale: str) -> float:
    """The chapter's last recorded wall time at ``scale``: its last complete execution here, else
    its results file, else the scale's budget."""
    previous = last_outcome(stage_dir(root, scale), chapter)
    if previous and previous.status == "executed":
        return previous.seconds
    try:
        return float(read(root / "results" / scale / f"{chapter.id}.json")["wall_time_s"])
    except ReplibError:
        return SCALES[scale].budget_s


# ---------------------------------------------------------------- the page of a failed chapter

def split_title(nb) -> int:
    """Give the chapter's ``# title`` a cell of its own; the index right under it (0: no title)."""
    import nbformat

    first = nb.cells[0] if nb.cells else None
    if first is None or first.cell_type != "markdown" or not first.source.startswith("# "):
        return 0
    title, _, rest = first.source.partition("\n")
    if rest.strip():
        first.source = title
        nb.cells.insert(1, nbformat.v4.new_markdown_cell(rest.strip()))
    return 1


def _mark_failed(output: Path, source: Path, scale: str, error: str) -> None:
    """Put a visible failure notice right under the title (papermill's partial output, or the
    unexecuted source if the kernel never produced any). Papermill's own message, which it puts
    above the title, is dropped; its anchor at the failing cell stays and the notice links it."""
    import nbformat

    nb = nbformat.read(output if output.exists() else source, as_version=4)
    anchored = False
    if nb.cells and PAPERMILL_ERROR_TAG in nb.cells[0].get("metadata", {}).get("tags", []):
        nb.cells.pop(0)
        anchored = True
    link = ' <a href="#papermill-error-cell">Go to the failing cell.</a>' if anchored else ""
    notice = nbformat.v4.new_markdown_cell(
        f":::{{error}}\nThis chapter **failed** when executed at scale `{scale}`:\n\n"
        f"```text\n{error}\n```\n\nThe outputs below stop where it failed.{link}\n:::")
    notice.metadata["tags"] = [FAILURE_TAG]
    nb.cells.insert(split_title(nb), notice)
    nbformat.write(nb, output)


# ---------------------------------------------------------------- kernels an interrupt can stop

_LIVE_KERNELS: weakref.WeakSet = weakref.WeakSet()


@functools.cache
def _kernel_manager_class() -> type:
    from jupyter_client import AsyncKernelManager

    class TrackedKernelManager(AsyncKernelManager):
        """nbclient's kernel manager, remembered so that an interrupt can kill its kernel."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            _LIVE_KERNELS.add(self)

    return TrackedKernelManager


def stop_kernels() -> None:
    """Kill every running kernel of this process with its children (each leads its own process
    group); nbclient then sees a dead kernel and papermill returns within a second."""
    for km in list(_LIVE_KERNELS):
        process = getattr(km.provisioner, "process", None)
        if process is not None and process.poll() is None:
            try:
                os.killpg(km.provisioner.pgid, signal.SIGKILL)
            except (AttributeError, OSError, TypeError):  # no process group (Windows)
                process.kill()


# ---------------------------------------------------------------- executing

def _publish(pending: Path, results: Path, snapshot: Path) -> None:
    """Move the results file a finished chapter wrote into ``results/`` (validated, atomic)."""
    if pending.exists():
        record = read(pending)
        write(record, results)
        write(record, snapshot)
        pending.unlink()


def execute(root: Path, chapter: Chapter, parameters: dict, *, force: bool = False,
            progress: bool = False, timeout: int | None = None,
            stop: threading.Event | None = None) -> Outcome:
    """Execute one chapter into the staged tree of ``parameters["scale"]``, unless cached.

    ``stop`` set while it runs (an interrupt) makes it return "interrupted", publishing nothing.
    """
    import papermill as pm  # the book extra; imported here so the library works without it

    scale = parameters["scale"]
    key = cache_key(root, chapter, parameters)
    if not force and (cached := _cached(root, chapter, parameters, key)):
        return cached
    stage = stage_dir(root, scale)
    record = _record_path(stage, chapter)
    record.unlink(missing_ok=True)  # a run that never finishes leaves no record to be cached
    output = stage / chapter.path
    output.parent.mkdir(parents=True, exist_ok=True)
    snapshot = result_snapshot(stage, chapter)
    snapshot.unlink(missing_ok=True)
    pending = pending_dir(root) / scale / f"{chapter.id}.json"
    pending.unlink(missing_ok=True)
    t0 = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(
            str(root / chapter.path), str(output), parameters=parameters, kernel_name=KERNEL,
            cwd=str(output.parent), progress_bar=progress, log_output=False,
            execution_timeout=timeout or cell_timeout(scale),
            kernel_manager_class=_kernel_manager_class(),
        )
    except pm.PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue} (cell {e.exec_count})"
    except Exception as e:  # a dead kernel, a missing kernelspec, ...: still a page, not a crash
        error = "".join(traceback.format_exception_only(type(e), e)).strip()
    seconds = round(time.perf_counter() - t0, 1)
    if stop is not None and stop.is_set():
        return Outcome(chapter.id, "interrupted", seconds, parameters, error)
    if not error:
        try:
            _publish(pending, root / "results" / scale / f"{chapter.id}.json", snapshot)
        except (OSError, ReplibError) as e:
            error = f"its results file could not be published: {e}"
    if error:
        _mark_failed(output, root / chapter.path, scale, error)
    outcome = Outcome(chapter.id, "failed" if error else "executed", seconds, parameters, error,
                      datetime.now(timezone.utc).isoformat(timespec="seconds"), key)
    _write_atomic(record, json.dumps(asdict(outcome), indent=1))  # last: the chapter is complete
    return outcome


def kernel_environment(root: Path, jobs: int) -> None:
    """Settings every chapter kernel inherits: the ``python3`` kernel is this interpreter (a
    user-wide kernelspec of that name could point at a Python without replib), results go to the
    pending folder, no progress widgets in stored pages (papermill shows progress), and a fair
    share of the cores per concurrent kernel."""
    spec = root / "_build" / "jupyter" / "kernels" / KERNEL / "kernel.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (replib)", "language": "python"}))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(spec.parents[2]), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    os.environ["REPLIB_RESULTS_DIR"] = str(pending_dir(root))
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["REPLIB_STATIC"] = "1"  # widgets show a note instead (no frontend on the site)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads


def _stop(stop: threading.Event, workers: list[threading.Thread]) -> None:
    """Take no further chapter and kill the running kernels (again for any that was starting)."""
    stop.set()
    deadline = time.monotonic() + STOP_WAIT_S
    while any(w.is_alive() for w in workers) and time.monotonic() < deadline:
        stop_kernels()
        for w in workers:
            w.join(0.2)


EXECUTORS = ("local", "dask")


def execute_many(root: Path, chapters: Iterable[Chapter], parameters: dict, *, jobs: int = 1,
                 force: bool = False, progress: bool = False, timeout: int | None = None,
                 on_start: Callable[[Chapter], None] | None = None,
                 on_done: Callable[[Outcome], None] | None = None,
                 executor: str = "local", scheduler: str | None = None) -> list[Outcome]:
    """Execute chapters, ``jobs`` kernels at a time; one chapter's failure never stops the rest.

    An interrupt (KeyboardInterrupt, raised in the main thread) stops the kernels, starts no
    further chapter and is raised again; the interrupted chapters publish nothing.
    ``executor="dask"`` fans the chapters out over a Dask cluster (:func:`execute_many_dask`).
    """
    if executor not in EXECUTORS:
        raise ReplibError(f"unknown executor {executor!r}; valid: {', '.join(EXECUTORS)}")
    if executor == "dask":
        return execute_many_dask(root, chapters, parameters, jobs=jobs, force=force,
                                 timeout=timeout, on_start=on_start, on_done=on_done,
                                 scheduler=scheduler)
    chapters = list(chapters)
    kernel_environment(root, jobs)
    todo: queue.SimpleQueue = queue.SimpleQueue()
    for ch in chapters:
        todo.put(ch)
    done: queue.SimpleQueue = queue.SimpleQueue()
    stop = threading.Event()

    def work() -> None:
        while not stop.is_set():
            try:
                ch = todo.get_nowait()
            except queue.Empty:
                return
            try:
                if on_start and (force or not up_to_date(root, ch, parameters)):
                    on_start(ch)
                done.put(execute(root, ch, parameters, force=force, progress=progress,
                                 timeout=timeout, stop=stop))
            except BaseException as e:  # raised again in the main thread
                done.put(e)

    workers = [threading.Thread(target=work, daemon=True) for _ in range(min(jobs, len(chapters)))]
    outcomes: dict[str, Outcome] = {}
    try:
        for w in workers:
            w.start()
        for _ in chapters:
            item = done.get()
            if isinstance(item, BaseException):
                raise item
            outcomes[item.chapter] = item
            if on_done:
                on_done(item)
    except BaseException:
        _stop(stop, workers)
        raise
    finally:
        shutil.rmtree(pending_dir(root), ignore_errors=True)
    return [outcomes[ch.id] for ch in chapters]


# ---------------------------------------------------------------- the Dask executor

_WORKER_STOPS: dict[str, threading.Event] = {}  # per run, in each worker process
_WORKER_ROOTS: set[Path] = set()


def _stop_event(run: str) -> threading.Event:
    return _WORKER_STOPS.setdefault(run, threading.Event())


def _execute_on_worker(root: Path, chapter: Chapter, parameters: dict, force: bool,
                       timeout: int | None, kernels_per_machine: int, pin_gpu: bool,
                       run: str) -> Outcome:
    """One chapter on a Dask worker: :func:`execute` with this worker's kernel settings."""
    if root not in _WORKER_ROOTS:
        kernel_environment(root, kernels_per_machine)
        _WORKER_ROOTS.add(root)
    if pin_gpu:  # a LocalCluster on a GPU machine: worker k (named k) drives GPU k alone
        from distributed import get_worker

        os.environ["CUDA_VISIBLE_DEVICES"] = str(get_worker().name)
    try:
        return execute(root, chapter, parameters, force=force, timeout=timeout,
                       stop=_stop_event(run))
    finally:
        shutil.rmtree(pending_dir(root), ignore_errors=True)  # a failed chapter's results file


def _interrupt_worker(run: str) -> None:
    _stop_event(run).set()
    stop_kernels()


def _gpus_wanted(parameters: dict) -> int:
    """GPUs on this machine when the chapters are to use them (device auto or cuda), else 0."""
    if parameters.get("device") not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count()


def execute_many_dask(root: Path, chapters: Iterable[Chapter], parameters: dict, *,
                      jobs: int = 1, force: bool = False, timeout: int | None = None,
                      on_start: Callable[[Chapter], None] | None = None,
                      on_done: Callable[[Outcome], None] | None = None,
                      scheduler: str | None = None) -> list[Outcome]:
    """Execute chapters as tasks of a Dask distributed cluster, one chapter per worker at a time.

    Why Dask and not Ray: a chapter is one long task that starts its own Jupyter kernel and
    shares nothing with the others, so all that is needed is a task queue with per-worker
    resources. Dask's ``distributed`` is pure Python and pip-installable, its ``LocalCluster``
    starts in seconds without a daemon, and the same code reaches SLURM/PBS (dask-jobqueue) and
    Kubernetes clusters; Ray brings a C++ runtime and an object store this does not use.

    Without ``scheduler`` a ``LocalCluster`` is started for the run: one worker per GPU with the
    resource ``GPU=1`` (each pinned to its GPU) when the chapters run on CUDA here, else ``jobs``
    CPU workers. With ``scheduler`` (``tcp://host:8786``) the chapters go to that cluster; start
    its workers with ``--nthreads 1`` and, on GPU machines, one per GPU with
    ``--resources GPU=1`` and ``CUDA_VISIBLE_DEVICES`` set. Every worker must see this checkout at
    the same path (a shared file system): each writes the staged page, the cache record and the
    results file exactly as :func:`execute` does locally, so a later local run finds them.

    Cached chapters are answered here without a task; ``on_start`` is called as a chapter is
    submitted. A chapter whose task fails (a worker died) is reported as failed, never raised.
    An interrupt stops every worker's kernels and is raised again; nothing is published.
    """
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ReplibError("the dask executor needs dask and distributed: pip install -e "
                          "'.[cluster]'") from None
    chapters = list(chapters)
    outcomes: dict[str, Outcome] = {}
    todo = []
    for ch in chapters:
        key = cache_key(root, ch, parameters)
        cached = None if force else _cached(root, ch, parameters, key)
        if cached:
            outcomes[ch.id] = cached
            if on_done:
                on_done(cached)
        else:
            todo.append(ch)
    if not todo:
        return [outcomes[ch.id] for ch in chapters]

    gpus = 0 if scheduler else _gpus_wanted(parameters)
    cluster = None if scheduler else LocalCluster(
        n_workers=gpus or min(jobs, len(todo)), threads_per_worker=1, processes=True,
        dashboard_address=None, resources={"GPU": 1} if gpus else None)
    client = Client(scheduler or cluster, set_as_default=False)
    run = uuid.uuid4().hex
    futures = {}
    try:
        workers = client.scheduler_info()["workers"].values()
        needs_gpu = any("GPU" in w.get("resources", {}) for w in workers)
        per_machine = len(workers) if cluster else 1
        for ch in todo:
            if on_start:
                on_start(ch)
            future = client.submit(_execute_on_worker, root, ch, parameters, force, timeout,
                                   per_machine, bool(gpus), run, key=f"chapter-{ch.id}-{run}",
                                   resources={"GPU": 1} if needs_gpu else None, pure=False)
            futures[future] = ch
        with client.as_current():
            for future in as_completed(futures):
                ch = futures[future]
                try:
                    outcome = future.result()
                except Exception as e:  # the task, not the chapter, failed (its worker died)
                    error = "".join(traceback.format_exception_only(type(e), e)).strip()
                    outcome = Outcome(ch.id, "failed", 0.0, parameters, f"dask task failed: {error}")
                outcomes[ch.id] = outcome
                if on_done:
                    on_done(outcome)
    except BaseException:
        with contextlib.suppress(Exception):  # the interrupt, not a broken cluster, is the news
            client.run(_interrupt_worker, run)
            client.cancel(list(futures))
        raise
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return [outcomes[ch.id] for ch in chapters]
