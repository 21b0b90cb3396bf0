r"""A tiny convolutional network for 8x8 digit images, with no norm, batch norm or layer norm.

``conv3x3(1->16) -> N -> ReLU -> maxpool2 -> conv3x3(16->32) -> N -> ReLU -> global avg pool -> linear``.

* ``norm="batchnorm"``: statistics per channel over the batch and all positions,
  :math:`\mu_c = \mathbb E_{n,h,w}[x_{nchw}]` (``BatchNorm2d``), via the registry's batch norm
  applied channel-last.
* ``norm="layernorm"``: statistics per example over all channels and positions (Ba et al. 2016,
  the convolutional case): :math:`\mu_n = \mathbb E_{c,h,w}[x_{nchw}]`,
  :math:`\sigma_n^2 = \mathrm{Var}_{c,h,w}[x_{nchw}]`, followed by a per-channel gain and bias
  (the same number of affine parameters as batch norm; equal to ``GroupNorm(1, C)``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from .norms import create_norm

CNN_NORMS = ("none", "batchnorm", "layernorm")


class ChannelLayerNorm(nn.Module):
    r"""LayerNorm over ``(C, H, W)`` of each example, then a per-channel gain :math:`g_c` and bias :math:`b_c`.

    .. math:: y_{nchw} = g_c \frac{x_{nchw} - \mu_n}{\sqrt{\sigma_n^2 + \epsilon}} + b_c
    """

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.channels, self.eps = channels, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.layer_norm(x, x.shape[1:], eps=self.eps)
        return y * self.weight[:, None, None] + self.bias[:, None, None]


class ChannelLast(nn.Module):
    """Apply a last-dimension registry norm to the channels of ``(B, C, H, W)`` maps."""

    def __init__(self, norm: nn.Module):
        super().__init__()
        self.norm = norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def conv_norm(norm: str, channels: int) -> nn.Module:
    if norm == "none":
        return nn.Identity()
    if norm == "batchnorm":
        return ChannelLast(create_norm("batchnorm", channels))
    if norm == "layernorm":
        return ChannelLayerNorm(channels)
    raise ReplibError(f"unknown CNN norm {norm!r}; valid: {', '.join(CNN_NORMS)}")


class TinyCNN(nn.Module):
    """Two 3x3 conv layers (``channels`` = 16, 32) for ``(B, 1, 8, 8)`` images; norm before ReLU."""

    def __init__(self, n_classes: int = 10, norm: str = "none", channels: tuple[int, int] = (16, 32)):
        super().__init__()
        c1, c2 = channels
        self.conv1 = nn.Conv2d(1, c1, 3, padding=1)
        self.norm1 = conv_norm(norm, c1)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.norm2 = conv_norm(norm, c2)
        self.head = nn.Linear(c2, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:  # flat 64-pixel vectors
            x = x.view(x.shape[0], 1, 8, 8)
        x = F.max_pool2d(F.relu(self.norm1(self.conv1(x))), 2)
        x = F.relu(self.norm2(self.conv2(x)))
        return self.head(x.mean(dim=(2, 3)))
