"""The pipeline under interrupts, bad files and slow machines (issue 11): a chapter that did not run
to its end is never cached or published, Ctrl-C and SIGTERM stop the kernels at once, bad results
files are named up front and the site is still built, and the cache re-runs only the chapters whose
imported replib modules changed. Signals go to a real ``replib`` process running a quick chapter."""
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path

import nbformat
import pytest
from test_book import PARAMS, ROOT, _notebook, book  # noqa: F401  (book is a fixture)

from replib.book.chapters import resolve, toc_chapters
from replib.book.execute import (Outcome, cache_key, cell_timeout, import_closure, stage_dir,
                                 up_to_date)
from replib.cli import Progress, main
from replib.experiment import Experiment
from replib.results import check_all, write
from replib.scales import SCALES

REPLIB = Path(sys.executable).parent / "replib"
SLOW = 300  # seconds the quick chapter sleeps when a test is to interrupt it


def _record(chapter: str, value: float, scale: str = "smoke") -> dict:
    exp = Experiment(chapter, scale=scale, device="cpu", seeds=[0])
    exp.measure("m", "a number", {"x": [value]})
    return exp.to_json()


def _toc(root: Path, *ids: str) -> None:
    (root / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                   + "".join(f"  - file: notebooks/{i}\n" for i in ids))


def _quick_chapter(root: Path, chapter: str) -> None:
    """A chapter that says it started (its kernel's pid), sleeps $QUICK_SLEEP s, then writes its
    results where replib tells kernels to (without importing torch, to start fast)."""
    nb = _notebook("Quick", "import os, pathlib, time\n"
                   f"pathlib.Path(os.environ['QUICK_MARKS'], {chapter!r}).write_text(str(os.getpid()))\n"
                   "time.sleep(float(os.environ.get('QUICK_SLEEP', '0')))")
    nb.cells.append(nbformat.v4.new_code_cell(
        f"out = pathlib.Path(os.environ['REPLIB_RESULTS_DIR'], scale, '{chapter}.json')\n"
        "out.parent.mkdir(parents=True, exist_ok=True)\n"
        f"out.write_text({json.dumps(json.dumps(_record(chapter, 2.0)))})"))
    nbformat.write(nb, root / "notebooks" / f"{chapter}.ipynb")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] == "Z")


def _interrupt(root: Path, argv: list[str], signum: int, group: bool) -> tuple[int, float, int]:
    """Start ``replib argv`` in its own process group, signal it once its first chapter's kernel
    is running; its exit status, seconds from the signal to its exit, and that kernel's pid."""
    marks = root / "marks"
    marks.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "REPLIB_RESULTS_DIR"}
    env.update(QUICK_MARKS=str(marks), QUICK_SLEEP=str(SLOW))
    # as a shell starts it: SIGINT at its default (an ignored SIGINT would be inherited from this process)
    proc = subprocess.Popen([str(REPLIB), *argv], cwd=root, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        deadline = time.monotonic() + 120
        while not (marks / "01-quick").exists() or not (marks / "01-quick").read_text():
            assert proc.poll() is None and time.monotonic() < deadline, "the chapter never started"
            time.sleep(0.1)
        kernel = int((marks / "01-quick").read_text())
        (os.killpg if group else os.kill)(proc.pid, signum)
        t0 = time.monotonic()
        rc = proc.wait(timeout=SLOW / 2)
        return rc, time.monotonic() - t0, kernel
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)


def _gone(pid: int) -> bool:
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    return not _alive(pid)


@pytest.fixture
def quick(book):
    """The fixture book with the quick chapter, a previous result and a cached complete run."""
    _toc(book, "01-quick", "02-queued")
    _quick_chapter(book, "01-quick")
    _quick_chapter(book, "02-queued")
    previous = write(_record("01-quick", 1.0), book / "results" / "smoke" / "01-quick.json")
    chapter = resolve(book, "1")
    stage = stage_dir(book, "smoke")
    (stage / "notebooks").mkdir(parents=True)
    nbformat.write(_notebook("Quick", "print('complete')"), stage / chapter.path)
    done = Outcome(chapter.id, "executed", 1.0, PARAMS, key=cache_key(book, chapter, PARAMS))
    (stage / ".cache").mkdir()
    (stage / ".cache" / "01-quick.json").write_text(json.dumps(asdict(done)))
    assert up_to_date(book, chapter, PARAMS)
    return book, chapter, previous, previous.read_bytes()


# ---------------------------------------------------------------- items 1 and 2: interrupts

def test_a_killed_run_stops_its_kernel_and_is_never_cached(quick):
    root, chapter, previous, before = quick
    rc, seconds, kernel = _interrupt(root, ["run", "1", "--scale", "smoke", "--device", "cpu"],
                                     signal.SIGTERM, group=False)
    assert rc == 143 and seconds < 60  # not after the chapter's 300 s
    assert _gone(kernel), "the kernel outlived the killed run"
    assert previous.read_bytes() == before  # the previous results file, untouched
    assert not up_to_date(root, chapter, PARAMS)  # the truncated page is never "cached"


def test_ctrl_c_stops_the_book_at_once(quick):
    root, chapter, previous, before = quick
    rc, seconds, kernel = _interrupt(root, ["book", "--scale", "smoke", "--device", "cpu", "--force",
                                            "--jobs", "1"], signal.SIGINT, group=True)  # as a terminal
    assert rc == 130 and seconds < 60 and _gone(kernel)
    assert not (root / "marks" / "02-queued").exists()  # the queued chapter never started
    assert previous.read_bytes() == before and not up_to_date(root, chapter, PARAMS)
    assert not any((root / "_build" / "pending").glob("*/*/*.json"))


# ---------------------------------------------------------------- item 3: bad results files

def test_bad_results_files_are_named_first_and_the_site_still_builds(book, monkeypatch, capsys):
    _toc(book, "01-good")
    base = book / "results"
    (base / "smoke").mkdir(parents=True)
    (base / "smoke" / "01-good.json").write_text("{")  # corrupt
    write(_record("01-good", 1.0, "cpu"), base / "cpu" / "01-good.json")
    future = {**_record("01-good", 1.0, "cpu"), "schema_version": 99}
    (base / "cpu" / "01-good.json").write_text(json.dumps(future))
    (base / "cpu" / "07-foreign.json").write_text('{"hello": 1}')
    write(_record("01-good", 1.0), base / "gpu" / "01-good.json")  # a smoke record, misfiled
    assert len(check_all(base)) == 4

    monkeypatch.setattr("replib.book.build.jupyter_book", lambda: "true")  # all but the render
    assert main(["book", "--scale", "smoke", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    assert out.index("unreadable results files") < out.index("executing")
    for name in ("smoke/01-good.json", "cpu/01-good.json", "cpu/07-foreign.json",
                 "gpu/01-good.json"):
        assert out.count(name) == 2  # before executing, and in the summary
    assert "schema version 99" in out and "not a replib results record" in out
    stage = stage_dir(book, "smoke")
    status = (stage / "book" / "_generated" / "status.md").read_text()
    assert "`results/cpu/01-good.json`: schema version 99" in status
    header = nbformat.read(stage / "notebooks" / "01-good.ipynb", as_version=4).cells[1].source
    assert "results/gpu/01-good.json unreadable" in header
    assert (stage / "book" / "_generated" / "scoreboard.md").exists()


# ---------------------------------------------------------------- item 4: the import closure

def _fake_replib(src: Path) -> Path:
    files = {
        "__init__.py": "from . import core\n",
        "core.py": "X = 1\n",
        "experiments/__init__.py": "",
        "experiments/a.py": "from ..nn import layers\n",
        "experiments/b.py": "from replib.core import X\n",
        "nn/__init__.py": "from .layers import L\n",
        "nn/layers.py": "L = 1\n",
        "book/__init__.py": "",
        "book/pages.py": "from ..experiments import a, b\n",
        "cli.py": "from .book import pages\n",
    }
    for name, text in files.items():
        (src / "replib" / name).parent.mkdir(parents=True, exist_ok=True)
        (src / "replib" / name).write_text(text)
    return src / "replib"


def test_a_change_re_runs_exactly_the_chapters_that_import_it(book, tmp_path):
    src = _fake_replib(tmp_path / "src")
    _toc(book, "01-good", "02-bad")
    nbformat.write(_notebook("A", "%matplotlib inline\nimport replib\n"
                                  "from replib.experiments import a as A"),
                   book / "notebooks" / "01-good.ipynb")
    nbformat.write(_notebook("B", "def later():\n    from replib.experiments import b"),
                   book / "notebooks" / "02-bad.ipynb")
    chapters = toc_chapters(book)

    def keys():
        return [cache_key(book, ch, PARAMS, src) for ch in chapters]

    def changed(path: str) -> list[bool]:
        before = keys()
        (src / path).write_text((src / path).read_text() + "# a comment\n")
        return [a != b for a, b in zip(before, keys())]

    assert changed("experiments/a.py") == [True, False]
    assert changed("nn/layers.py") == [True, False]  # through experiments/a.py
    assert changed("experiments/b.py") == [False, True]
    assert changed("core.py") == [True, True]  # replib/__init__.py imports it
    assert changed("book/pages.py") == [False, False]  # the book machinery: never
    assert changed("cli.py") == [False, False]


def test_no_chapter_depends_on_the_book_machinery_nor_on_another_chapters_experiment():
    closures = {nb.stem: {p.relative_to(ROOT / "src" / "replib").as_posix()
                          for p in import_closure(nb)}
                for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))}
    for chapter, files in closures.items():
        assert not any(f.startswith("book/") or f == "cli.py" for f in files), chapter
    assert [c for c, files in closures.items() if "experiments/selu_map.py" in files] \
        == ["16-selu-snn"]


# ---------------------------------------------------------------- items 5, 6, 8, 9

def test_cells_get_a_generous_timeout_by_default():
    assert all(cell_timeout(s) >= 1800 for s in SCALES)


def test_progress_counts_chapters_and_the_time_left():
    progress = Progress(3, {"01-a": 120.0, "02-b": 600.0}, jobs=1)
    assert progress.left().startswith("about 12 min left (done near ")
    first = progress.done(Outcome("01-a", "executed", 130.0, PARAMS))
    assert first.startswith("[1/3 done, 2 to go, about 10 min left (done near ")
    assert Progress(1, {"01-a": 1.0}, jobs=1).done(Outcome("01-a", "cached", 0, PARAMS)) \
        == "[1/1 done]"


def test_list_marks_results_stale_when_the_last_run_failed(book, capsys):
    _toc(book, "01-good", "02-bad")
    for ch in ("01-good", "02-bad"):
        write(_record(ch, 1.0), book / "results" / "smoke" / f"{ch}.json")
    later = "2999-01-01T00:00:00+00:00"
    failed = Outcome("02-bad", "failed", 3.0, PARAMS, "ValueError: boom", later)
    (stage_dir(book, "smoke") / ".cache").mkdir(parents=True)
    (stage_dir(book, "smoke") / ".cache" / "02-bad.json").write_text(json.dumps(asdict(failed)))
    assert main(["list"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert "STALE: the last run failed (2999-01-01)" in lines["02-bad"]
    assert "STALE" not in lines["01-good"]
    assert "benchmark, 1 measurements" in lines["01-good"]  # not a blank summary


def test_results_files_are_readable_by_everyone(tmp_path):
    path = write(_record("01-good", 1.0), tmp_path / "smoke" / "01-good.json")
    assert path.stat().st_mode & 0o777 == 0o644


def test_a_results_folder_that_cannot_be_written_stops_before_the_compute(book, capsys):
    (book / "results").mkdir()
    (book / "results" / "smoke").write_text("")  # as unwritable as a read-only mount, even as root
    assert main(["run", "1", "--scale", "smoke", "--device", "cpu"]) == 2
    assert "cannot write results to" in capsys.readouterr().err
    assert not (stage_dir(book, "smoke") / "notebooks").exists()  # no kernel ran


def _make(tmp_path: Path, torch: str) -> str:
    out = subprocess.run(["make", "-f", str(ROOT / "Makefile"), "setup", f"VENV={tmp_path / 'v'}",
                          "PYTHON=true", "PY=true", f"TORCH={torch}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_reinstalls_torch_when_asked_for_another_version(tmp_path):
    assert "torch==1.0" in _make(tmp_path, "torch==1.0")
    assert "pip install" not in _make(tmp_path, "torch==1.0")  # unchanged: nothing to do
    assert "torch==2.0" in _make(tmp_path, "torch==2.0")


def test_readme_says_how_to_get_the_cpu_torch():
    setup = (ROOT / "README.md").read_text().split("## Set up")[1].split("\n## ")[0]
    assert "CUDA" in setup and "TORCH_INDEX=https://download.pytorch.org/whl/cpu" in setup
