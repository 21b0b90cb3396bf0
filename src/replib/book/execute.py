"""Execute chapters with papermill on a staged copy of the book, with a content-keyed cache.

Each scale has its own staged tree ``_build/stage/<scale>/`` mirroring the book's layout, so
jupyter-book renders it as if it were the checkout (launch buttons still point at
``notebooks/NN-slug.ipynb``) while the source notebooks stay output-free. A chapter is executed
again only when its cache key changes: the notebook's bytes, replib's source, or the parameters.
Failures are not cached: the next build tries again.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable

import nbformat

from ..results import results_dir
from ..scales import SCALES
from .chapters import Chapter

KERNEL = "python3"
REPLIB_SRC = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    chapter: str
    status: str  # "executed" | "cached" | "failed"
    seconds: float
    parameters: dict
    error: str | None = None
    finished_at: str = ""
    key: str = ""

    @property
    def ok(self) -> bool:
        return self.status != "failed"


def cell_timeout(scale: str) -> int:
    """Seconds one cell may run: twice the whole chapter's budget, so a stalled kernel or a lost
    kernel message fails the chapter instead of hanging the build."""
    return int(2 * SCALES[scale].budget_s)


def stage_dir(root: Path, scale: str) -> Path:
    return root / "_build" / "stage" / scale


def source_digest() -> str:
    """sha256 over replib's Python sources (path and bytes), the code every chapter runs."""
    h = hashlib.sha256()
    for path in sorted(REPLIB_SRC.rglob("*.py")):
        h.update(str(path.relative_to(REPLIB_SRC)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


def cache_key(root: Path, chapter: Chapter, parameters: dict, src_digest: str) -> str:
    h = hashlib.sha256()
    h.update((root / chapter.path).read_bytes())
    h.update(src_digest.encode())
    h.update(json.dumps(parameters, sort_keys=True).encode())
    return h.hexdigest()


def _record_path(stage: Path, chapter: Chapter) -> Path:
    return stage / ".cache" / f"{chapter.id}.json"


def result_snapshot(stage: Path, chapter: Chapter) -> Path:
    """The results file the staged page's own execution wrote (its header is made from it)."""
    return stage / ".cache" / f"{chapter.id}.result.json"


def last_outcome(stage: Path, chapter: Chapter) -> Outcome | None:
    path = _record_path(stage, chapter)
    try:
        return Outcome(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _mark_failed(output: Path, source: Path, scale: str, error: str) -> None:
    """Put a visible failure notice at the top of the page (papermill's partial output, or the
    unexecuted source if the kernel never produced any)."""
    nb = nbformat.read(output if output.exists() else source, as_version=4)
    notice = nbformat.v4.new_markdown_cell(
        f":::{{error}}\nThis chapter **failed** when executed at scale `{scale}`:\n\n"
        f"```text\n{error}\n```\n\nThe outputs below stop where it failed.\n:::")
    notice.metadata["tags"] = ["replib-failure"]
    title = 1 if nb.cells and nb.cells[0].cell_type == "markdown" else 0
    nb.cells.insert(title, notice)
    nbformat.write(nb, output)


def execute(root: Path, chapter: Chapter, parameters: dict, *, force: bool = False,
            progress: bool = False) -> Outcome:
    """Execute one chapter into the staged tree of ``parameters["scale"]``, unless cached."""
    import papermill as pm  # the book extra; imported here so the library works without it

    stage = stage_dir(root, parameters["scale"])
    output = stage / chapter.path
    key = cache_key(root, chapter, parameters, source_digest())
    previous = last_outcome(stage, chapter)
    if (not force and previous and previous.ok and previous.key == key and output.exists()):
        return Outcome(chapter.id, "cached", previous.seconds, parameters, None,
                       previous.finished_at, key)
    output.parent.mkdir(parents=True, exist_ok=True)
    snapshot = result_snapshot(stage, chapter)
    snapshot.unlink(missing_ok=True)
    written = results_dir() / parameters["scale"] / f"{chapter.id}.json"
    started = time.time()
    t0 = time.perf_counter()
    error = None
    try:
        pm.execute_notebook(
            str(root / chapter.path), str(output), parameters=parameters, kernel_name=KERNEL,
            cwd=str(output.parent), progress_bar=progress, log_output=False,
            execution_timeout=cell_timeout(parameters["scale"]),
        )
    except pm.PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue} (cell {e.exec_count})"
    except Exception as e:  # a dead kernel, a missing kernelspec, ...: still a page, not a crash
        error = "".join(traceback.format_exception_only(type(e), e)).strip()
    seconds = round(time.perf_counter() - t0, 1)
    if error:
        _mark_failed(output, root / chapter.path, parameters["scale"], error)
    elif written.exists() and written.stat().st_mtime >= started:
        snapshot.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(written, snapshot)
    outcome = Outcome(chapter.id, "failed" if error else "executed", seconds, parameters, error,
                      datetime.now(timezone.utc).isoformat(timespec="seconds"), key)
    record = _record_path(stage, chapter)
    record.parent.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(asdict(outcome), indent=1))
    return outcome


def kernel_environment(root: Path, jobs: int) -> None:
    """Settings every chapter kernel inherits: the ``python3`` kernel is this interpreter (a
    user-wide kernelspec of that name could point at a Python without replib), results go to the
    checkout, no progress widgets in stored pages (papermill shows progress), and a fair share of
    the cores per concurrent kernel."""
    spec = root / "_build" / "jupyter" / "kernels" / KERNEL / "kernel.json"
    spec.parent.mkdir(parents=True, exist_ok=True)
    spec.write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (replib)", "language": "python"}))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(spec.parents[2]), *filter(None, [os.environ.get("JUPYTER_PATH")])])
    os.environ["REPLIB_RESULTS_DIR"] = str(root / "results")
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["REPLIB_STATIC"] = "1"  # widgets show a note instead (no frontend on the site)
    threads = str(max(1, (os.cpu_count() or 1) // jobs))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = threads


def execute_many(root: Path, chapters: Iterable[Chapter], parameters: dict, *, jobs: int = 1,
                 force: bool = False, progress: bool = False,
                 on_done: Callable[[Outcome], None] | None = None) -> list[Outcome]:
    """Execute chapters, ``jobs`` kernels at a time; one chapter's failure never stops the rest."""
    chapters = list(chapters)
    kernel_environment(root, jobs)
    outcomes: dict[str, Outcome] = {}
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {pool.submit(execute, root, ch, parameters, force=force, progress=progress): ch
                   for ch in chapters}
        for fut in as_completed(futures):
            outcome = fut.result()
            outcomes[outcome.chapter] = outcome
            if on_done:
                on_done(outcome)
    return [outcomes[ch.id] for ch in chapters]
