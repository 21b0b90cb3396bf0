"""The book pipeline on a two-chapter fixture book: papermill execution on a staged copy, the
execution cache, a failing chapter that does not stop the others, and the rendered site.
tests/test_reliability.py adds interrupts, bad results files and the cache's import closure."""
import json
import re
import shutil
import time
from dataclasses import replace
from pathlib import Path

import nbformat
import pytest

from replib import provenance
from replib.book.chapters import resolve, toc_chapters
from replib.book.execute import execute_many, stage_dir
from replib.book.pages import annotate_chapter
from replib.cli import main
from replib.scales import SCALES

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"scale": "smoke", "device": "cpu"}
# What execute_many sets for its kernels; restored after each test so nothing leaks into the next.
KERNEL_ENV = ("REPLIB_RESULTS_DIR", "JUPYTER_PATH", "TQDM_DISABLE", "REPLIB_STATIC",
              "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _notebook(title: str, body: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell('scale = "cpu"\ndevice = "auto"\nseeds = None')
    params.metadata["tags"] = ["parameters"]
    nb.cells = [nbformat.v4.new_markdown_cell(f"# {title}"), params, nbformat.v4.new_code_cell(body)]
    return nb


@pytest.fixture
def book(tmp_path, monkeypatch):
    shutil.copy(ROOT / "_config.yml", tmp_path)
    (tmp_path / "book").mkdir()
    shutil.copy(ROOT / "book" / "references.bib", tmp_path / "book")
    shutil.copytree(ROOT / "book" / "_static", tmp_path / "book" / "_static")
    (tmp_path / "book" / "intro.md").write_text("# Fixture\n\n```{tableofcontents}\n```\n")
    (tmp_path / "_toc.yml").write_text(
        "format: jb-book\nroot: book/intro\nchapters:\n"
        "  - file: notebooks/01-good\n  - file: notebooks/02-bad\n")
    (tmp_path / "notebooks").mkdir()
    nbformat.write(_notebook("Good", "print('ran at', scale, seeds)"),
                   tmp_path / "notebooks" / "01-good.ipynb")
    nbformat.write(_notebook("Bad", "raise ValueError('boom')"), tmp_path / "notebooks" / "02-bad.ipynb")
    monkeypatch.chdir(tmp_path)
    for var in KERNEL_ENV:  # setenv first: monkeypatch then restores even a variable never set
        monkeypatch.setenv(var, "")
        monkeypatch.delenv(var)
    return tmp_path


def test_execute_cache_and_failure(book):
    chapters = toc_chapters(book)
    assert [c.id for c in chapters] == ["01-good", "02-bad"] and resolve(book, "2").id == "02-bad"
    first = {o.chapter: o for o in execute_many(book, chapters, PARAMS, jobs=2)}
    assert first["01-good"].status == "executed"
    assert first["02-bad"].status == "failed" and "ValueError: boom" in first["02-bad"].error

    staged = nbformat.read(stage_dir(book, "smoke") / "notebooks" / "01-good.ipynb", as_version=4)
    assert "ran at smoke None" in json.dumps(staged.cells[-1].outputs)
    assert not nbformat.read(book / "notebooks" / "01-good.ipynb", as_version=4).cells[-1].outputs
    bad_page = stage_dir(book, "smoke") / "notebooks" / "02-bad.ipynb"
    bad = nbformat.read(bad_page, as_version=4)
    assert bad.cells[0].source == "# Bad"  # the failure notice goes under the title, not above
    assert "failed" in bad.cells[1].source and "ValueError: boom" in bad.cells[1].source
    annotate_chapter(book, stage_dir(book, "smoke"), chapters[1], "smoke", book / "results",
                     "https://example.org/x", "main")
    tags = [c.metadata.get("tags", []) for c in nbformat.read(bad_page, as_version=4).cells[:3]]
    assert tags == [[], ["replib-header"], ["replib-failure"]]  # title, badges, notice

    again = {o.chapter: o for o in execute_many(book, chapters, PARAMS)}
    assert again["01-good"].status == "cached"  # unchanged: nothing executes
    assert again["02-bad"].status == "failed"  # failures are retried, never cached

    other = execute_many(book, chapters[:1], {**PARAMS, "seeds": [3]})[0]
    assert other.status == "executed"  # new parameters, new key

    nb = nbformat.read(book / "notebooks" / "01-good.ipynb", as_version=4)
    nb.cells[-1].source += "\nprint('edited')"
    nbformat.write(nb, book / "notebooks" / "01-good.ipynb")
    assert execute_many(book, chapters[:1], PARAMS)[0].status == "executed"


def test_run_one_chapter_from_the_command_line(book, capsys):
    assert main(["run", "1", "--scale", "smoke", "--device", "cpu", "--seeds", "4,5"]) == 0
    staged = nbformat.read(stage_dir(book, "smoke") / "notebooks" / "01-good.ipynb", as_version=4)
    assert "ran at smoke [4, 5]" in json.dumps(staged.cells[-1].outputs)
    assert main(["run", "02-bad", "--scale", "smoke"]) == 1
    assert "ValueError: boom" in capsys.readouterr().out


def test_a_chapter_over_its_budget_fails_the_build_only_when_asked(book, monkeypatch, capsys):
    (book / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n"
                                   "  - file: notebooks/01-good\n")
    monkeypatch.setattr("replib.book.build.build_html", lambda *a: 0)
    monkeypatch.setitem(SCALES, "smoke", replace(SCALES["smoke"], budget_s=0.01))
    assert main(["book", "--scale", "smoke"]) == 0
    assert "01-good" in capsys.readouterr().out
    assert main(["book", "--scale", "smoke", "--fail-over-budget", "--force"]) == 1
    out = capsys.readouterr().out
    assert "over the smoke budget" in out
    assert "1 to execute, 0 unchanged; under a minute left" in out and "started" in out
    assert "[1/1 done]" in out


def test_site_builds_with_a_failed_chapter(book, capsys):
    assert main(["book", "--scale", "smoke", "--jobs", "2"]) == 1  # the failed chapter, at the end
    assert "failed chapters: 02-bad" in capsys.readouterr().out
    html = book / "_build" / "html"
    assert (html / "notebooks" / "01-good.html").exists()
    assert "failed" in (html / "notebooks" / "02-bad.html").read_text()
    good = (html / "notebooks" / "01-good.html").read_text()
    colab = re.findall(r"https://colab\.research\.google\.com/github/normalization-replicated/"
                       r"normalization-replicated/blob/(\w+)/notebooks/01-good\.ipynb", good)
    commit = provenance.git_commit()["commit"]
    assert len(colab) >= 2 and set(colab) == {commit}  # launch button and badge, at the commit
    assert "replib-header" in good and "pipeline check only" in good  # the generated badge line
    assert "Results at a glance" in good and "Install replib" not in good


def test_a_stalled_cell_fails_the_chapter_instead_of_hanging(book, capsys):
    nb = nbformat.read(book / "notebooks" / "01-good.ipynb", as_version=4)
    nb.cells[-1].source = "import time\ntime.sleep(30)"
    nbformat.write(nb, book / "notebooks" / "01-good.ipynb")
    t0 = time.monotonic()
    assert main(["run", "1", "--scale", "smoke", "--cell-timeout", "2"]) == 1
    assert time.monotonic() - t0 < 25
    assert "timed out" in capsys.readouterr().out.lower()
