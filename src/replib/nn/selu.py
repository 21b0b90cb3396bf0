"""Self-normalizing networks: SELU, alpha dropout and the mean-field moment map.

Klambauer, Unterthiner, Mayr and Hochreiter, *Self-Normalizing Neural Networks*, NeurIPS 2017
(arXiv 1706.02515); official code github.com/bioinf-jku/SNNs (``selu.py``, ``dropout_selu``).

The scaled exponential linear unit is

.. math::
    \\mathrm{selu}(x) = \\lambda \\begin{cases} x & x > 0 \\\\ \\alpha (e^x - 1) & x \\le 0 \\end{cases}

with :math:`\\alpha_{01} \\approx 1.6733`, :math:`\\lambda_{01} \\approx 1.0507`, the unique pair for which
:math:`z \\sim \\mathcal N(0, 1)` gives :math:`\\mathrm E[\\mathrm{selu}(z)] = 0` and
:math:`\\mathrm E[\\mathrm{selu}(z)^2] = 1`.

For a unit with weights :math:`w` (:math:`\\omega = \\sum_i w_i`, :math:`\\tau = \\sum_i w_i^2`) whose inputs
have mean :math:`\\mu` and variance :math:`\\nu`, the summed input is (central limit theorem)
:math:`z \\sim \\mathcal N(\\mu\\omega, \\nu\\tau)` and the layer maps the moments by

.. math::
    g(\\mu, \\nu) = (\\tilde\\mu, \\tilde\\nu),\\quad \\tilde\\mu = \\mathrm E[\\mathrm{selu}(z)],\\quad
    \\tilde\\nu = \\mathrm E[\\mathrm{selu}(z)^2] - \\tilde\\mu^2 .

Theorem 1 of the paper: for :math:`\\omega = 0, \\tau = 1` (and nearby) :math:`g` has the attracting
fixed point :math:`(0, 1)`. :func:`moment_map` evaluates :math:`g` in closed form (float64, differentiable,
so its Jacobian is available), :func:`moment_map_quadrature` by Gauss-Legendre quadrature on each side
of the kink (an independent check), :func:`iterate_moment_map` iterates it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..errors import ReplibError

# Full precision, as in the paper's derivation and the official ``selu.py``.
ALPHA_01 = 1.6732632423543772848170429916717
LAMBDA_01 = 1.0507009873554804934193349852946
# SELU's negative saturation value: lim_{x -> -inf} selu(x) = -lambda * alpha.
ALPHA_PRIME = -LAMBDA_01 * ALPHA_01


def selu(x: torch.Tensor, alpha: float = ALPHA_01, scale: float = LAMBDA_01) -> torch.Tensor:
    """selu(x) = scale * x for x > 0, scale * alpha * (exp(x) - 1) for x <= 0.

    ``expm1`` is applied to ``min(x, 0)`` so the unused branch never overflows (finite gradients).
    """
    return scale * torch.where(x > 0, x, alpha * torch.expm1(torch.clamp(x, max=0.0)))


class SELU(nn.Module):
    """The SELU activation as a module (same constants as ``torch.nn.SELU``)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return selu(x)


def alpha_dropout_params(q: float, mu_fp: float = 0.0, var_fp: float = 1.0,
                         alpha_prime: float = ALPHA_PRIME) -> tuple[float, float]:
    """The affine correction (a, b) of alpha dropout with keep probability ``q`` (official ``dropout_selu``).

    Dropped units are set to ``alpha_prime`` (x_d = x d + alpha' (1 - d), d ~ Bernoulli(q)); then
    a x_d + b has the mean ``mu_fp`` and variance ``var_fp`` of the input again:

        a = sqrt(var_fp / (q ((1 - q)(alpha' - mu_fp)^2 + var_fp)))
        b = mu_fp - a (q mu_fp + (1 - q) alpha')

    For (mu_fp, var_fp) = (0, 1): a = (q + alpha'^2 q (1 - q))^{-1/2}, b = -a (1 - q) alpha'.
    """
    if not 0.0 < q <= 1.0:
        raise ReplibError(f"keep probability q must be in (0, 1], got {q}")
    a = math.sqrt(var_fp / (q * ((1 - q) * (alpha_prime - mu_fp) ** 2 + var_fp)))
    b = mu_fp - a * (q * mu_fp + (1 - q) * alpha_prime)
    return a, b


def alpha_dropout(x: torch.Tensor, rate: float, mask: torch.Tensor | None = None,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Alpha dropout in training mode: a (x d + alpha' (1 - d)) + b with d ~ Bernoulli(1 - rate).

    ``mask`` (same shape as ``x``, 1 = keep) fixes d, e.g. for gradient checks; otherwise it is
    drawn from ``generator`` (or the global generator).
    """
    if not 0.0 <= rate < 1.0:
        raise ReplibError(f"dropout rate must be in [0, 1), got {rate}")
    if rate == 0.0:
        return x
    q = 1.0 - rate
    a, b = alpha_dropout_params(q)
    if mask is None:
        probs = torch.full(x.shape, q, dtype=x.dtype)
        mask = torch.bernoulli(probs, generator=generator).to(x.device)
    mask = mask.to(x.dtype)
    return a * (x * mask + ALPHA_PRIME * (1 - mask)) + b


class AlphaDropout(nn.Module):
    """Alpha dropout written from the paper's formulas; identity in eval mode.

    Same distribution as ``torch.nn.AlphaDropout(rate)`` (tested: given the same mask, same output).
    """

    def __init__(self, rate: float = 0.05):
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ReplibError(f"dropout rate must be in [0, 1), got {rate}")
        self.rate = rate

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        return alpha_dropout(x, self.rate, mask=mask)

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


# ---------------------------------------------------------------- the mean-field moment map

def _as64(v) -> torch.Tensor:
    return torch.as_tensor(v, dtype=torch.float64)


def selu_moments(m, s2, alpha: float = ALPHA_01, scale: float = LAMBDA_01):
    """First and second moments of selu(z) for z ~ N(m, s2), in closed form (float64 tensors).

    With s = sqrt(s2), Phi the normal cdf and phi its density:

        E[z 1{z>0}]             = m Phi(m/s) + s phi(m/s)
        E[z^2 1{z>0}]           = (m^2 + s2) Phi(m/s) + m s phi(m/s)
        E[(e^z - 1) 1{z<=0}]    = e^{m + s2/2} Phi(-(m + s2)/s) - Phi(-m/s)
        E[(e^z - 1)^2 1{z<=0}]  = e^{2m + 2 s2} Phi(-(m + 2 s2)/s) - 2 e^{m + s2/2} Phi(-(m + s2)/s) + Phi(-m/s)

    mean = scale (E1 + alpha E3), second moment = scale^2 (E2 + alpha^2 E4). The exponential
    factors are combined with log Phi so large variances do not overflow.
    """
    m, s2 = _as64(m), _as64(s2)
    s = torch.sqrt(s2)
    u = m / s
    phi = torch.exp(-0.5 * u * u) / math.sqrt(2 * math.pi)
    cdf = torch.special.ndtr(u)
    e1 = m * cdf + s * phi
    e2 = (m * m + s2) * cdf + m * s * phi
    lnd = torch.special.log_ndtr
    t1 = torch.exp(m + s2 / 2 + lnd(-(m + s2) / s))
    t2 = torch.exp(2 * m + 2 * s2 + lnd(-(m + 2 * s2) / s))
    p_neg = torch.special.ndtr(-u)
    e3 = t1 - p_neg
    e4 = t2 - 2 * t1 + p_neg
    mean = scale * (e1 + alpha * e3)
    second = scale ** 2 * (e2 + alpha ** 2 * e4)
    return mean, second


def moment_map(mu, nu, omega=0.0, tau=1.0, alpha: float = ALPHA_01, scale: float = LAMBDA_01):
    """The paper's map g: (mu, nu) -> (mu~, nu~) for z ~ N(mu omega, nu tau) (closed form, float64).

    mu~ = E[selu(z)], nu~ = E[selu(z)^2] - mu~^2. Differentiable in (mu, nu) through autograd.
    """
    mean, second = selu_moments(_as64(mu) * _as64(omega), _as64(nu) * _as64(tau), alpha, scale)
    return mean, second - mean * mean


def moment_map_quadrature(mu: float, nu: float, omega: float = 0.0, tau: float = 1.0,
                          n: int = 200, alpha: float = ALPHA_01,
                          scale: float = LAMBDA_01) -> tuple[float, float]:
    """The same map g by numerical quadrature (float64), independent of the closed form.

    E[f(z)] = int f(z) N(z; m, s^2) dz, split at the kink z = 0 and integrated by n-point
    Gauss-Legendre on [m - 12 s, 0] and [0, m + 12 s] (each piece is smooth, so the rule converges
    exponentially; the truncated tails weigh < 1e-30).
    """
    m, s = mu * omega, math.sqrt(nu * tau)
    lo, hi = min(m - 12 * s, 0.0), max(m + 12 * s, 0.0)
    x, w = np.polynomial.legendre.leggauss(n)
    e1 = e2 = 0.0
    for a, b in ((lo, 0.0), (0.0, hi)):
        if b <= a:
            continue
        z = 0.5 * (b - a) * x + 0.5 * (b + a)
        wz = 0.5 * (b - a) * w * np.exp(-0.5 * ((z - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))
        f = scale * np.where(z > 0, z, alpha * np.expm1(np.minimum(z, 0.0)))
        e1 += float(np.sum(wz * f))
        e2 += float(np.sum(wz * f * f))
    return e1, e2 - e1 * e1


@dataclass
class MomentPath:
    mu: np.ndarray  # mu after 0..n layers
    nu: np.ndarray


def iterate_moment_map(mu0: float, nu0: float, layers: int, omega: float = 0.0,
                       tau: float = 1.0) -> MomentPath:
    """Apply g ``layers`` times from (mu0, nu0): the mean-field prediction of a deep SELU net."""
    mus, nus = [float(mu0)], [float(nu0)]
    mu, nu = _as64(mu0), _as64(nu0)
    for _ in range(layers):
        mu, nu = moment_map(mu, nu, omega, tau)
        mus.append(float(mu))
        nus.append(float(nu))
    return MomentPath(np.array(mus), np.array(nus))


def fixed_point(omega: float = 0.0, tau: float = 1.0, mu0: float = 0.0, nu0: float = 1.0,
                tol: float = 1e-13, max_iter: int = 10_000) -> tuple[float, float]:
    """The fixed point of g for given (omega, tau), by iterating the map until it stops moving."""
    mu, nu = _as64(mu0), _as64(nu0)
    for _ in range(max_iter):
        mu_n, nu_n = moment_map(mu, nu, omega, tau)
        if abs(float(mu_n - mu)) < tol and abs(float(nu_n - nu)) < tol:
            return float(mu_n), float(nu_n)
        mu, nu = mu_n, nu_n
    raise ReplibError(f"moment map did not converge from ({mu0}, {nu0}) for omega={omega}, tau={tau}")


def moment_map_jacobian(mu: float, nu: float, omega: float = 0.0, tau: float = 1.0) -> torch.Tensor:
    """The 2x2 Jacobian d(mu~, nu~)/d(mu, nu) of g (autograd through the closed form)."""
    def g(v: torch.Tensor) -> torch.Tensor:
        return torch.stack(moment_map(v[0], v[1], omega, tau))

    return torch.autograd.functional.jacobian(g, _as64([mu, nu]))


def spectral_radius(matrix: torch.Tensor) -> float:
    return float(torch.linalg.eigvals(matrix).abs().max())


# ---------------------------------------------------------------- random deep networks

# (activation, init) pairs of the paper's comparison: SELU with LeCun normal, ReLU with He normal.
ARMS = {"selu": ("selu", "lecun"), "relu": ("relu", "he"), "tanh": ("tanh", "lecun"),
        "elu": ("elu", "lecun")}


@torch.no_grad()
def propagate_moments(x: torch.Tensor, depth: int, width: int, activation: str = "selu",
                      init: str = "lecun", groups: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Push ``x`` through a random ``depth``-layer fully-connected net (biases 0) and record the
    mean and variance of every hidden layer's activations, pooled over units and samples.

    Layer i computes h_i = act(W_i h_{i-1}) with W_i initialised exactly as in ``replib.nn.MLP``
    (``init_linear``: LeCun normal Var(w) = 1/fan_in, He normal 2/fan_in), and the same
    activations. The layers are drawn one at a time and discarded, so depth 1000 x width 4096
    needs the memory of one layer, not of the whole network.

    ``x`` may stack ``groups`` equally sized input distributions (e.g. differently perturbed
    starts) along the batch dimension; they share the network and get separate statistics.
    Returns arrays of shape (groups, depth + 1); column 0 is the input. Seed the global torch
    generator first (the weights come from it).
    """
    from .mlp import ACTIVATIONS, init_linear  # local import: mlp imports nothing from here

    if x.shape[0] % groups:
        raise ReplibError(f"batch {x.shape[0]} does not split into {groups} groups")
    act = ACTIVATIONS[activation]()
    means = np.empty((groups, depth + 1))
    vars_ = np.empty((groups, depth + 1))

    def record(j: int, h: torch.Tensor) -> None:
        h = h.reshape(groups, -1).double()
        means[:, j] = h.mean(1).cpu().numpy()
        vars_[:, j] = h.var(1).cpu().numpy()

    record(0, x)
    h = x
    for i in range(depth):
        lin = nn.Linear(h.shape[1], width, device=x.device, dtype=x.dtype)
        init_linear(lin, init)
        h = act(lin(h))
        record(i + 1, h)
    return means, vars_
