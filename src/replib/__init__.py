"""replib: the shared code of *Normalization, Replicated*.

Floors, imports pointing down only:

1. ground: :mod:`~replib.runtime` (devices, seeds), :mod:`~replib.provenance`
2. library: :mod:`replib.nn`, :mod:`replib.data` (pure PyTorch/NumPy)
3. experiment support: :mod:`~replib.scales`, :mod:`~replib.train`, :mod:`~replib.claims`,
   :mod:`~replib.results`, :mod:`~replib.experiment`, :mod:`~replib.plotting`, :mod:`~replib.show`
4. book machinery: :mod:`replib.book`, :mod:`replib.cli`
"""
from importlib.metadata import PackageNotFoundError, version

from .claims import Claim, Rule, Stat, Verdict, graded, judge
from .errors import ReplibError
from .experiment import Experiment
from .runtime import resolve_device, seed_everything
from .show import show_source
from .train import History, train

try:
    __version__ = version("replib")
except PackageNotFoundError:  # running from a source tree without installing
    __version__ = "0+unknown"

__all__ = ["Claim", "Experiment", "History", "ReplibError", "Rule", "Stat", "Verdict",
           "graded", "judge", "resolve_device", "seed_everything", "show_source", "train"]
