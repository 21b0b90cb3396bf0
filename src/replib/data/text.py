"""The book's text corpus, byte- and character-level tokenisation, and language-model batching.

Every language-model chapter trains on one fixed text shipped with replib as package data: 25
modules of the Python 3.11.7 standard library's sources, concatenated (1,497,642 characters), under
the Python Software Foundation License (``corpus/LICENSE-PSF.txt``), which allows redistribution.
Shipping the bytes, instead of reading the running interpreter's stdlib, gives Colab, a wheel and
every Python version the same text; the loader checks its sha256 and refuses a modified file.
"""
from __future__ import annotations

import hashlib
import lzma
import math
from dataclasses import dataclass, field
from importlib import resources
from typing import Iterator

import torch

from ..errors import ReplibError

BOOK_CORPUS = "python-stdlib-3.11.7"
BOOK_CORPUS_SHA256 = "e164c3a4c50e18d88c06838ac9315f51d31e03b4b973020a541e1c67f8926550"  # the text
BOOK_CORPUS_LICENSE = "PSF-2.0"
# The 25 single-file modules it was cut from, in order, joined by one newline.
STDLIB_FILES = (
    "argparse.py", "ast.py", "calendar.py", "configparser.py", "csv.py", "dataclasses.py",
    "difflib.py", "doctest.py", "enum.py", "fractions.py", "functools.py", "heapq.py",
    "inspect.py", "pprint.py", "pydoc.py", "random.py", "shutil.py", "statistics.py",
    "string.py", "subprocess.py", "tarfile.py", "textwrap.py", "threading.py", "tokenize.py",
    "typing.py",
)


@dataclass
class Corpus:
    name: str
    text: str
    sha256: str
    meta: dict = field(default_factory=dict)

    def provenance(self) -> dict:
        return {"sha256": self.sha256, "chars": len(self.text), **self.meta}


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def corpus_path():
    """The shipped, xz-compressed corpus file (inside the installed package)."""
    return resources.files(__package__).joinpath("corpus", f"{BOOK_CORPUS}.txt.xz")


def book_corpus() -> Corpus:
    """The book's fixed text, checked against its sha256: the same bytes on every machine.

    The train/validation split is fixed by the file: :func:`split_tokens` holds out its last 10 %.
    """
    path = corpus_path()
    try:
        raw = lzma.decompress(path.read_bytes())
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise ReplibError(f"the book corpus {path} is missing; reinstall replib") from None
    except (lzma.LZMAError, UnicodeDecodeError) as e:
        raise ReplibError(f"the book corpus {path} is damaged ({e}); reinstall replib") from None
    digest = hashlib.sha256(raw).hexdigest()
    if digest != BOOK_CORPUS_SHA256:
        raise ReplibError(f"the book corpus {path} has sha256 {digest}, expected "
                          f"{BOOK_CORPUS_SHA256}; refusing a modified corpus (reinstall replib)")
    return Corpus(BOOK_CORPUS, text, digest,
                  {"licence": BOOK_CORPUS_LICENSE, "source": "CPython 3.11.7 Lib/, "
                   f"{len(STDLIB_FILES)} modules", "file": f"replib/data/corpus/{path.name}"})


class ByteTokenizer:
    """UTF-8 bytes as tokens: a fixed vocabulary of 256, nothing out of vocabulary."""

    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(text.encode("utf-8")), dtype=torch.uint8).long()

    def decode(self, ids: torch.Tensor) -> str:
        return bytes(ids.tolist()).decode("utf-8", errors="replace")


class CharTokenizer:
    """Characters as tokens, the vocabulary being the sorted characters of a reference text."""

    def __init__(self, text: str):
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        try:
            return torch.tensor([self.index[c] for c in text], dtype=torch.long)
        except KeyError as e:
            raise ReplibError(f"character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, ids: torch.Tensor) -> str:
        return "".join(self.chars[i] for i in ids.tolist())


def split_tokens(tokens: torch.Tensor, val_fraction: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """Contiguous train/validation split: the last ``val_fraction`` of the stream is held out."""
    cut = int(len(tokens) * (1 - val_fraction))
    return tokens[:cut], tokens[cut:]


def lm_batches(tokens: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator,
               device: torch.device | str = "cpu") -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Endless (input, next-token target) batches of random windows drawn with ``generator``."""
    if len(tokens) <= seq_len + 1:
        raise ReplibError(f"{len(tokens)} tokens are too few for windows of {seq_len}")
    offsets = torch.arange(seq_len + 1)
    while True:
        starts = torch.randint(len(tokens) - seq_len - 1, (batch_size,), generator=generator)
        win = tokens[starts[:, None] + offsets]
        yield win[:, :-1].to(device), win[:, 1:].to(device)


def lm_eval_windows(tokens: torch.Tensor, seq_len: int, max_windows: int,
                    device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Non-overlapping windows from the start of ``tokens``: the same evaluation set every time."""
    n = min(max_windows, (len(tokens) - 1) // seq_len)
    if n < 1:
        raise ReplibError(f"{len(tokens)} tokens are too few for one window of {seq_len}")
    x = tokens[: n * seq_len].view(n, seq_len)
    y = tokens[1: n * seq_len + 1].view(n, seq_len)
    return x.to(device), y.to(device)


def unigram_loss(train_tokens: torch.Tensor, targets: torch.Tensor, vocab_size: int = 256,
                 smoothing: float = 1.0) -> float:
    r"""Cross-entropy (nats per token) of ``targets`` under the training stream's token frequencies.

    The reference a language model must beat to have learned anything beyond token counts:
    :math:`-\frac1N\sum_i \log \hat p(y_i)`, :math:`\hat p(t) = (c_t + a)/(\sum_u c_u + a V)`
    (add-``a`` smoothing, so unseen tokens have finite loss).
    """
    counts = torch.bincount(train_tokens.flatten().long().cpu(), minlength=vocab_size).double()
    if counts.numel() > vocab_size:
        raise ReplibError(f"token ids exceed vocab_size={vocab_size}")
    logp = torch.log((counts + smoothing) / (counts.sum() + smoothing * vocab_size))
    return float(-logp[targets.flatten().long().cpu()].mean())


def unigram_stalled(loss: float, unigram: float, margin: float = 0.05) -> bool:
    """A finite final ``loss`` that did not get ``margin`` below the unigram loss: the model learned
    token frequencies and little or nothing else (a diverged, non-finite loss is not counted here)."""
    return math.isfinite(loss) and loss > unigram - margin
