"""Normalised optimisers, each a ``torch.optim.Optimizer`` in a module of its own, and the wrappers
that act on any optimiser's step. Each module cites its paper and the official code it follows."""
from .sinkgd import SinkGD
from .conda import Conda
from .nap import NaP, nap_targets
