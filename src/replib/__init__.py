"""replib: the shared code of *Normalization, Replicated*.

Floors, imports pointing down only:

1. ground: :mod:`~replib.runtime` (devices, seeds), :mod:`~replib.provenance`
2. library: :mod:`replib.nn`, :mod:`replib.data` (pure PyTorch/NumPy)
3. experiment support: :mod:`~replib.scales`, :mod:`~replib.train`, :mod:`~replib.claims`,
   :mod:`~replib.results`, :mod:`~replib.experiment`, :mod:`~replib.plotting`, :mod:`~replib.show`
4. book machinery: :mod:`replib.book`, :mod:`replib.cli`
"""
from importlib.metadata import PackageNotFoundError, version

from .claims import (Claim, Health, Rule, Stat, Verdict, better, fixed, graded, judge, no_worse,
                     paired, parity, undertrained_note)
from .errors import ReplibError
from .experiment import Experiment
from .runtime import resolve_device, seed_everything
from .show import show_source
from .train import History, Sweep, lr_sweep, train

try:
    __version__ = version("replib")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["Claim", "Experiment", "Health", "History", "ReplibError", "Rule", "Stat", "Sweep",
           "Verdict", "better", "fixed", "graded", "judge", "lr_sweep", "no_worse", "paired", "parity",
           "resolve_device", "seed_everything", "show_source", "train", "undertrained_note"]
