"""The chapters of the book: the notebooks ``_toc.yml`` lists, in its order."""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ..errors import ReplibError

CHAPTER_RE = re.compile(r"^(\d\d)-[a-z0-9-]+$")


@dataclass(frozen=True)
class Chapter:
    id: str  # "16-selu-snn"
    path: Path  # notebooks/16-selu-snn.ipynb, relative to the book root

    @property
    def number(self) -> int:
        return int(self.id[:2])


def book_root(start: Path | None = None) -> Path:
    """The checkout that holds ``_toc.yml`` and ``notebooks/``: above ``start`` (the working
    directory), else above replib's own source (an editable install)."""
    candidates = [start or Path.cwd()]
    candidates.append(Path(__file__).resolve())
    for base in candidates:
        for parent in [base, *base.parents]:
            if (parent / "_toc.yml").is_file() and (parent / "notebooks").is_dir():
                return parent
    raise ReplibError("no book found: run inside the checkout (the folder with _toc.yml)")


def _toc_files(node) -> list[str]:
    files = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("file", "root") and isinstance(value, str):
                files.append(value)
            else:
                files += _toc_files(value)
    elif isinstance(node, list):
        for item in node:
            files += _toc_files(item)
    return files


def toc_chapters(root: Path) -> list[Chapter]:
    try:
        toc = yaml.safe_load((root / "_toc.yml").read_text())
    except yaml.YAMLError as e:
        raise ReplibError(f"{root / '_toc.yml'}: not valid YAML ({e})") from None
    chapters = []
    for entry in _toc_files(toc):
        path = Path(entry)
        if path.parent.name == "notebooks" and CHAPTER_RE.match(path.stem):
            nb = path.with_suffix(".ipynb")
            if not (root / nb).is_file():
                raise ReplibError(f"_toc.yml lists {entry} but {nb} does not exist")
            chapters.append(Chapter(path.stem, nb))
    return chapters


def resolve(root: Path, ref: str) -> Chapter:
    """A chapter by number (``16``, ``3``) or full id (``16-selu-snn``)."""
    chapters = toc_chapters(root)
    ref = ref.strip()
    for ch in chapters:
        if ref == ch.id or (ref.isdigit() and int(ref) == ch.number):
            return ch
    raise ReplibError(f"unknown chapter {ref!r}; valid: {', '.join(c.id for c in chapters)}")
