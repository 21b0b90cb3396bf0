"""A fully-connected network whose activation, norm, initialisation and dropout are options.

Each hidden layer is ``Linear -> norm -> activation -> dropout``: the norm acts on the summed
inputs before the nonlinearity, as in the LayerNorm and BatchNorm papers. Any registry norm fits.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import ReplibError
from .norms import create_norm

ACTIVATIONS = {"relu": nn.ReLU, "selu": nn.SELU, "elu": nn.ELU, "tanh": nn.Tanh,
               "gelu": nn.GELU, "identity": nn.Identity}
# Weight variance = gain / fan_in: LeCun normal (SELU, tanh), He/MSRA normal (ReLU).
INIT_GAINS = {"lecun": 1.0, "he": 2.0}


def init_linear(layer: nn.Linear, init: str) -> None:
    if init == "torch":
        return  # PyTorch's default (Kaiming-uniform with a=sqrt(5))
    if init not in INIT_GAINS:
        raise ReplibError(f"unknown init {init!r}; valid: torch, {', '.join(INIT_GAINS)}")
    nn.init.normal_(layer.weight, std=math.sqrt(INIT_GAINS[init] / layer.in_features))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


class MLP(nn.Module):
    def __init__(self, d_in: int, width: int, depth: int, d_out: int, *, activation: str = "relu",
                 norm: str = "identity", init: str = "he", dropout: float = 0.0,
                 alpha_dropout: bool = False):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ReplibError(f"unknown activation {activation!r}; valid: {', '.join(ACTIVATIONS)}")
        if depth < 1:
            raise ReplibError(f"depth must be >= 1 hidden layer, got {depth}")
        drop = nn.AlphaDropout if alpha_dropout else nn.Dropout
        self.layers = nn.ModuleList()
        for i in range(depth):
            lin = nn.Linear(d_in if i == 0 else width, width)
            init_linear(lin, init)
            self.layers.append(nn.ModuleDict({
                "linear": lin, "norm": create_norm(norm, width),
                "act": ACTIVATIONS[activation](), "drop": drop(dropout)}))
        self.head = nn.Linear(width, d_out)
        init_linear(self.head, init)

    def hidden_states(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The output of every hidden layer (after activation and dropout), first to last."""
        states = []
        for layer in self.layers:
            x = layer["drop"](layer["act"](layer["norm"](layer["linear"](x))))
            states.append(x)
        return states

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.hidden_states(x)[-1])
