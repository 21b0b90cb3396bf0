"""Render a staged, executed book tree into a static site with jupyter-book (1.x)."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import ReplibError
from ..results import check_all
from ..scales import SCALES
from .chapters import Chapter
from .execute import unreadable_path
from .pages import write_generated

STATIC = ("_config.yml", "_toc.yml", "book")


def stage_static(root: Path, stage: Path) -> None:
    """Copy the book's non-notebook sources into the staged tree (fresh each build)."""
    stage.mkdir(parents=True, exist_ok=True)
    for name in STATIC:
        src, dst = root / name, stage / name
        if src.is_dir():
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(src, dst)
        else:
            shutil.copy2(src, dst)


def jupyter_book() -> str:
    exe = Path(sys.executable).parent / "jupyter-book"
    found = str(exe) if exe.exists() else shutil.which("jupyter-book")
    if not found:
        raise ReplibError("jupyter-book is not installed; install replib with the book extra: "
                          "pip install -e '.[book]'")
    return found


def readable_results(root: Path, stage: Path) -> Path:
    """A copy of ``results/`` without the files that cannot be read, which are listed in the
    stage instead: the site is built from the rest and marks those chapters unreadable."""
    view = stage / ".cache" / "results"
    shutil.rmtree(view, ignore_errors=True)
    view.mkdir(parents=True)
    bad = check_all(root / "results")
    for path in (root / "results").glob("*/*.json"):
        if path not in bad and path.parent.name in SCALES:  # not results/bench/
            (view / path.parent.name).mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, view / path.parent.name / path.name)
    listed: dict[str, dict[str, str]] = {}
    for path, why in bad.items():
        listed.setdefault(path.stem, {})[path.parent.name] = why
    unreadable_path(stage).write_text(json.dumps(listed, indent=1))
    return view


def build_html(root: Path, stage: Path, scale: str, chapters: list[Chapter]) -> int:
    """Generate the scoreboard, status page and chapter headers into the staged tree, then
    ``jupyter-book build`` it into ``<root>/_build/html``; warnings are errors."""
    stage_static(root, stage)
    write_generated(root, stage, chapters, scale, readable_results(root, stage))
    cmd = [jupyter_book(), "build", str(stage), "--path-output", str(root),
           "--all", "-W", "-n", "--keep-going", "-q"]
    return subprocess.run(cmd).returncode
