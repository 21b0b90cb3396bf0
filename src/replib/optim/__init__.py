"""Normalised optimisers, each a ``torch.optim.Optimizer`` in a module of its own, the wrappers
that act on any optimiser's step, and the registry that builds any of them by name for a model.
Each module cites its paper and the official code it follows."""
from .sinkgd import SinkGD
from .conda import Conda
from .nap import NaP, nap_targets
from .registry import create_optimizer, describe_optimizer, list_optimizers, register_optimizer

__all__ = ["Conda", "NaP", "SinkGD", "create_optimizer", "describe_optimizer", "list_optimizers",
           "nap_targets", "register_optimizer"]
