"""Notebook hygiene: what every chapter must have for papermill, Colab and the book."""
import re
from pathlib import Path

import nbformat
import pytest
import yaml

from replib.book.chapters import toc_chapters

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
PAPERS = {p["id"]: p for p in yaml.safe_load((ROOT / "book" / "papers.yml").read_text())}
CONFIG = yaml.safe_load((ROOT / "_config.yml").read_text())
REPO = CONFIG["repository"]["url"]
INSTALL_CELL = f'''# Install replib when it is missing (Colab); a local checkout already has it.
try:
    import replib
except ImportError:
    %pip install -q "replib @ git+{REPO}@{CONFIG["repository"]["branch"]}"
    import replib'''


def _code(nb):
    return [c for c in nb.cells if c.cell_type == "code"]


def test_there_are_chapters():
    assert len(NOTEBOOKS) >= 3


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_stored_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in _code(nb):
        assert not cell.outputs and cell.execution_count is None, f"{path.name} has outputs"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_install_then_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    code = _code(nb)
    assert code[0].source.strip() == INSTALL_CELL, "first code cell must be the install cell"
    params = [c for c in code if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and params[0] is code[1]
    names = dict(re.findall(r"^(\w+)\s*=\s*(.+)$", params[0].source, flags=re.M))
    assert names == {"scale": '"cpu"', "device": '"auto"', "seeds": "None"}
    assert nb.metadata["kernelspec"]["name"] == "python3"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_named_and_recorded_as_its_paper(path):
    assert path.stem in PAPERS or re.match(r"^9\d-", path.stem), \
        f"{path.stem} matches no paper in book/papers.yml"
    text = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells)
    assert f'Experiment("{path.stem}"' in text, "the chapter must record under its own id"
    assert "{cite}" in text, "the chapter must cite its paper"


def test_every_notebook_is_in_the_toc_and_every_toc_entry_exists():
    in_toc = {c.id for c in toc_chapters(ROOT)}
    assert in_toc == {p.stem for p in NOTEBOOKS}


def test_papers_list_is_complete():
    assert len(PAPERS) == 40 and all(re.match(r"^\d\d-[a-z0-9-]+$", k) for k in PAPERS)
    assert [int(k[:2]) for k in PAPERS] == list(range(1, 41))


def test_papers_status_says_which_have_a_chapter():
    written = {p.stem for p in NOTEBOOKS}
    assert {k for k, p in PAPERS.items() if p["status"] == "chapter"} == written & set(PAPERS)
    assert all(p["status"] in ("chapter", "planned") for p in PAPERS.values())
