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
from typing import Callable, Iterator, NamedTuple

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

    The split is fixed by the file: :func:`lm_splits` holds out its last 10 % and cuts that into
    validation and test windows.
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


class TextSplits(NamedTuple):
    """A token stream cut for training, choosing and judging (:func:`lm_splits`); unpacks as
    ``train, val, test = lm_splits(...)``."""

    train: torch.Tensor  # 1-D token ids: the training stream (CPU), sampled by random windows
    val: tuple[torch.Tensor, torch.Tensor]  # (x, y) validation windows: choose learning rates here
    test: tuple[torch.Tensor, torch.Tensor] | None  # (x, y) test windows: judge here (None: none asked for)


Windows = Callable[..., tuple[torch.Tensor, torch.Tensor]]  # (tokens, seq_len, max_windows, device)


def lm_splits(text_or_tokens: str | torch.Tensor, seq_len: int, val_windows: int, test_windows: int, *,
              held_out: float = 0.1, windows: Windows = lm_eval_windows,
              device: torch.device | str = "cpu") -> TextSplits:
    """The book's split of a language-model text into training tokens, validation and test windows.

    A string is byte-tokenised (:class:`ByteTokenizer`); a tensor of token ids is used as it is.
    The last ``held_out`` fraction of the stream is held out (:func:`split_tokens`) and never
    trained on. It is cut at its midpoint: up to ``val_windows`` validation windows come from the
    start of the first half and up to ``test_windows`` test windows from the start of the second,
    so no token is in both, validation comes before test, and the windows are the same on every
    call. ``test_windows=0`` asks for no test part: the validation windows then come from the
    whole held-out tail (``test`` is ``None``).

    ``windows(tokens, seq_len, max_windows, device)`` cuts one part into ``(x, y)`` windows:
    :func:`lm_eval_windows` (non-overlapping, next-token targets) unless a chapter needs another
    kind (chapter 26 passes its BOS-prefixed windows).
    """
    tokens = (ByteTokenizer().encode(text_or_tokens) if isinstance(text_or_tokens, str)
              else text_or_tokens)
    train, held = split_tokens(tokens, held_out)
    if not test_windows:
        return TextSplits(train, windows(held, seq_len, val_windows, device), None)
    half = len(held) // 2
    return TextSplits(train, windows(held[:half], seq_len, val_windows, device),
                      windows(held[half:], seq_len, test_windows, device))


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
