"""Real data sets for readers with a network (Colab): downloaded once, checksum-verified, cached.

Nothing in the book's own build calls these; they are tested on a small local fixture.
A file whose checksum does not match is deleted and reported, never used.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import ReplibError
from .text import Corpus


@dataclass(frozen=True)
class Remote:
    name: str
    url: str
    sha256: str
    filename: str


REMOTES = {
    "tiny_shakespeare": Remote(
        "tiny_shakespeare",
        "https://raw.githubusercontent.com/karpathy/char-rnn/"
        "6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e/data/tinyshakespeare/input.txt",
        "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",  # 1,115,394 bytes
        "tiny_shakespeare.txt",
    ),
}


def cache_dir() -> Path:
    return Path(os.environ.get("REPLIB_CACHE", Path.home() / ".cache" / "replib"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _resolve(remote: Remote | str) -> Remote:
    if isinstance(remote, Remote):
        return remote
    if remote not in REMOTES:
        raise ReplibError(f"unknown remote data set {remote!r}; valid: {', '.join(REMOTES)}")
    return REMOTES[remote]


def fetch(remote: Remote | str, cache: Path | None = None, timeout: float = 60) -> Path:
    """The verified local copy of ``remote``, downloading it first if the cache lacks it."""
    remote = _resolve(remote)
    target = (cache or cache_dir()) / remote.filename
    if target.exists():
        if sha256_file(target) == remote.sha256:
            return target
        target.unlink()  # a stale or tampered copy: fetch it again
    if os.environ.get("REPLIB_OFFLINE"):
        raise ReplibError(f"{remote.name} is not cached at {target} and REPLIB_OFFLINE is set")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".part")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(remote.url, timeout=timeout) as r:
            shutil.copyfileobj(r, out)
        got = sha256_file(Path(tmp))
        if got != remote.sha256:
            raise ReplibError(f"{remote.name}: checksum mismatch (expected {remote.sha256}, got "
                              f"{got}); the download was discarded")
        os.replace(tmp, target)
    except OSError as e:
        raise ReplibError(f"{remote.name}: download from {remote.url} failed ({e})") from None
    finally:
        Path(tmp).unlink(missing_ok=True)
    return target


def load_remote_text(remote: Remote | str, cache: Path | None = None) -> Corpus:
    remote = _resolve(remote)
    path = fetch(remote, cache)
    return Corpus(remote.name, path.read_text(encoding="utf-8"), remote.sha256,
                  {"source": remote.url})
