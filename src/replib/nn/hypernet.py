r"""Hypernetworks, default and magnitude-invariant (MIP): Ortiz, Guttag & Dalca, "Magnitude Invariant
Parametrizations Improve Hypernetwork Learning" (arXiv 2304.07645, ICLR 2024).

A hypernetwork :math:`h(\gamma;\phi)` maps a conditioning input :math:`\gamma\in[0,1]^k` to the
weights :math:`\theta` of a primary network :math:`f(x;\theta)`. Its backbone is an MLP
(``Linear -> LeakyReLU(0.01)`` per hidden layer, then an output ``Linear``):

.. math:: a_0 = E(\gamma),\quad a_{l} = \mathrm{LeakyReLU}(W_l a_{l-1} + b_l),\quad
          \theta = W_{\rm out}\, a_L + \theta_0 .

*Default* formulation: :math:`E(\gamma)=\gamma` (raw input) and :math:`\theta_0` (the output layer's
bias) starts at 0. With zero biases the map is positively homogeneous,
:math:`h(c\gamma)=c\,h(\gamma)` for :math:`c>0`, so the predicted weights scale with
:math:`\lVert\gamma\rVert`.

*MIP* changes two things:

1. input encoding ``"cos|sin"``: :math:`E(\gamma)=[\cos(\tfrac\pi2\gamma_1),\dots,\cos(\tfrac\pi2\gamma_k),
   \sin(\tfrac\pi2\gamma_1),\dots,\sin(\tfrac\pi2\gamma_k)]` (all cosines, then all sines), so
   :math:`\lVert E(\gamma)\rVert_2=\sqrt k` for every :math:`\gamma\in[0,1]^k`;
2. additive output: :math:`\theta=\theta_0+\Delta\theta(\gamma)` with :math:`\theta_0` the
   *independent weights*, initialised as an ordinary network would be (every primary ``*.weight``
   Kaiming-normal, fan-in, LeakyReLU gain; every ``*.bias`` 0), and the output layer initialised
   block by block, one block per primary tensor, Kaiming-normal *fan-out* with the block's own size
   (``output_split_init``), so that :math:`\Delta\theta` starts small next to :math:`\theta_0`.

In both formulations the hidden layers are Kaiming-normal fan-out (LeakyReLU gain), biases 0, as in
the library. The default's output layer is Kaiming-normal fan-in over the whole layer with its bias
at 0 (the spec's "naive" baseline); :math:`\theta_0` is the same learnable vector in every arm (it
*is* the output bias), only its initialisation differs.

Official code (read, transcribed into ``tests/test_hypernet.py`` on random inputs):
``github.com/JJGO/hyperlight`` at commit ``a3e210812ba2b9aede34cdb0550e823241a11e42``,
``hyperlight/hypernet/model.py`` (``HyperNet``, ``FullyConnectedNet``, ``_init_output_split``,
``init_independent_weights``), ``encoding.py`` (``encode_input``) and ``initialization.py``.
Where we differ: the library flattens several named inputs in sorted-name order (we take one input
vector); at that commit every output block, biases' included, gets the fan-out init (we follow
it), while the PyPI release ``hyperlight 0.0.5`` zeroes the output rows that predict a
``*.bias`` (so predicted biases start exactly at :math:`\theta_0=0`); ``reset_parameters`` re-runs
the output init inside its module loop (harmless; we run it once).
"""
from __future__ import annotations

import math
from collections import OrderedDict
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError

ENCODINGS = (None, "cos|sin", "z|1-z")
NEGATIVE_SLOPE = 0.01  # nn.LeakyReLU's default, the library's nonlinearity
LEAKY_GAIN = math.sqrt(2.0 / (1 + NEGATIVE_SLOPE ** 2))  # init.calculate_gain("leaky_relu")


def encode_input(z: torch.Tensor, mode: str | None = "cos|sin") -> torch.Tensor:
    r"""The library's input encodings along the last dimension: ``None`` (raw), ``"cos|sin"``
    (:math:`[\cos\frac{\pi z}{2}, \sin\frac{\pi z}{2}]`, unit norm per coordinate) or ``"z|1-z"``
    (:math:`[z, 1-z]`, constant L1 norm on :math:`[0,1]`). Raises for ``cos|sin`` outside [0, 1]."""
    if mode is None:
        return z
    if mode == "cos|sin":
        if (z < 0).any() or (z > 1).any():
            raise ReplibError("the cos|sin encoding expects inputs in [0, 1]")
        s = math.pi * z / 2
        return torch.cat([torch.cos(s), torch.sin(s)], dim=-1)
    if mode == "z|1-z":
        return torch.cat([z, 1 - z], dim=-1)
    raise ReplibError(f"unknown encoding {mode!r}; valid: {', '.join(map(str, ENCODINGS))}")


def _kaiming_normal(t: torch.Tensor, fan: int, gain: float, generator: torch.Generator | None) -> None:
    with torch.no_grad():
        t.normal_(0.0, gain / math.sqrt(fan), generator=generator)


class HyperNet(nn.Module):
    """A hypernetwork predicting the tensors ``output_shapes`` (name -> shape) from a
    ``input_dim``-vector :math:`\\gamma`.

    ``encoding``: ``None`` (default formulation) or ``"cos|sin"`` (MIP). ``additive=True``: the
    independent weights :math:`\\theta_0` and the split fan-out output init (MIP); ``False``: the
    default formulation's zero output bias and fan-in output init. ``MIP`` is
    ``HyperNet(..., encoding="cos|sin", additive=True)``, the library's defaults.
    """

    def __init__(self, input_dim: int, output_shapes: Mapping[str, Sequence[int]],
                 hidden_sizes: Sequence[int], *, encoding: str | None = "cos|sin", additive: bool = True,
                 generator: torch.Generator | None = None):
        super().__init__()
        if encoding not in ENCODINGS:
            raise ReplibError(f"unknown encoding {encoding!r}; valid: {', '.join(map(str, ENCODINGS))}")
        if input_dim < 1 or not output_shapes:
            raise ReplibError("a hypernetwork needs an input dimension >= 1 and at least one output tensor")
        self.input_dim, self.encoding, self.additive = input_dim, encoding, additive
        self.output_shapes = OrderedDict((k, tuple(int(s) for s in v)) for k, v in output_shapes.items())
        self.offsets: dict[str, tuple[int, int]] = {}
        off = 0
        for name, shape in self.output_shapes.items():
            self.offsets[name] = (off, math.prod(shape))
            off += math.prod(shape)
        self.n_out = off
        d = input_dim * (1 if encoding is None else 2)
        self.hidden = nn.ModuleList()
        for h in hidden_sizes:
            self.hidden.append(nn.Linear(d, h))
            d = h
        self.out = nn.Linear(d, self.n_out, bias=False)
        self.theta0 = nn.Parameter(torch.zeros(self.n_out))  # the library's output bias
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        for lin in self.hidden:  # kaiming_normal_fanout, leaky_relu gain, bias 0
            _kaiming_normal(lin.weight, lin.out_features, LEAKY_GAIN, generator)
            lin.bias.zero_()
        w = self.out.weight
        self.theta0.zero_()
        if not self.additive:  # the default: fan-in over the whole layer, bias 0
            _kaiming_normal(w, w.shape[1], LEAKY_GAIN, generator)
            return
        for name, shape in self.output_shapes.items():
            off, n = self.offsets[name]
            _kaiming_normal(w[off:off + n], n, LEAKY_GAIN, generator)  # fan-out of the block
            if name.endswith(".weight") and len(shape) >= 2:  # independent weights: fan-in
                _kaiming_normal(self.theta0[off:off + n], math.prod(shape[1:]), LEAKY_GAIN, generator)

    def encode(self, gamma: torch.Tensor) -> torch.Tensor:
        return encode_input(gamma, self.encoding)

    def flat(self, gamma: torch.Tensor) -> torch.Tensor:
        """All predicted weights as one vector (``(..., n_out)``) for ``gamma`` of shape ``(..., k)``."""
        if gamma.shape[-1] != self.input_dim:
            raise ReplibError(f"expected gamma with last dimension {self.input_dim}, got {tuple(gamma.shape)}")
        a = self.encode(gamma)
        for lin in self.hidden:
            a = F.leaky_relu(lin(a), NEGATIVE_SLOPE)
        return self.out(a) + self.theta0

    def unflatten(self, flat: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        lead = flat.shape[:-1]
        return OrderedDict((name, flat[..., off:off + n].reshape(*lead, *self.output_shapes[name]))
                           for name, (off, n) in self.offsets.items())

    def independent_weights(self) -> "OrderedDict[str, torch.Tensor]":
        """:math:`\\theta_0` split into the primary tensors."""
        return self.unflatten(self.theta0)

    def forward(self, gamma: torch.Tensor) -> "OrderedDict[str, torch.Tensor]":
        """The predicted tensors by name; a batch of ``gamma`` (``(B, k)``) gives ``(B, *shape)``."""
        return self.unflatten(self.flat(gamma))


class PrimaryMLP:
    """A functional MLP whose weights come from outside (a hypernetwork): sizes ``d_0 .. d_L``,
    ``Linear -> LeakyReLU(0.01)`` between layers, logits out. Holds no parameters."""

    def __init__(self, sizes: Sequence[int]):
        if len(sizes) < 2:
            raise ReplibError("a primary MLP needs at least an input and an output size")
        self.sizes = tuple(int(s) for s in sizes)

    def external_shapes(self) -> "OrderedDict[str, tuple[int, ...]]":
        out = OrderedDict()
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            out[f"{i}.weight"] = (b, a)
            out[f"{i}.bias"] = (b,)
        return out

    def __call__(self, x: torch.Tensor, params: Mapping[str, torch.Tensor]) -> torch.Tensor:
        n = len(self.sizes) - 1
        for i in range(n):
            x = F.linear(x, params[f"{i}.weight"], params[f"{i}.bias"])
            if i < n - 1:
                x = F.leaky_relu(x, NEGATIVE_SLOPE)
        return x


def mip_hypernet(input_dim: int, output_shapes, hidden_sizes, **kw) -> HyperNet:
    """The MIP hypernetwork (cos|sin encoding, additive output): the library's defaults."""
    return HyperNet(input_dim, output_shapes, hidden_sizes, encoding="cos|sin", additive=True, **kw)


def default_hypernet(input_dim: int, output_shapes, hidden_sizes, **kw) -> HyperNet:
    """The default ("naive") hypernetwork: raw input, zero-initialised output bias, fan-in output init."""
    return HyperNet(input_dim, output_shapes, hidden_sizes, encoding=None, additive=False, **kw)
