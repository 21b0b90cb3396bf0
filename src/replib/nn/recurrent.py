r"""LSTMs with a choice of normalisation: plain, layer-normalised (LN-LSTM), batch-normalised (BN-LSTM).

Layer normalisation for recurrent networks follows Ba, Kiros & Hinton (2016, arXiv 1607.06450) as
the authors' Theano code (``ryankiros/layer-norm``, ``lnlstm_layer``) wires it. With gates in the
order input, forget, output, candidate, hidden size ``H`` and one time step ``t``:

.. math::

    a_t &= N_x(W x_t) + N_h(U h_{t-1}) + b \in \mathbb R^{4H} \\
    i, f, o &= \sigma(a_t^{(i)}),\ \sigma(a_t^{(f)}),\ \sigma(a_t^{(o)}), \qquad g = \tanh(a_t^{(g)}) \\
    c_t &= f \odot c_{t-1} + i \odot g \\
    h_t &= o \odot \tanh(N_c(c_t))

* ``norm="none"``: :math:`N_x = N_h = N_c = \mathrm{id}` (the plain LSTM).
* ``norm="layernorm"``: three separate LayerNorms, each with its own gain and bias: :math:`N_x`
  over all four gates of :math:`W x_t` jointly (``4H`` units), :math:`N_h` over :math:`U h_{t-1}`
  (``4H``), :math:`N_c` over the cell (``H``). The gate bias :math:`b` is added after the two
  LNs, and the *recurrent* cell state :math:`c_t` that is carried to the next step stays
  un-normalised: only the copy fed to the output ``tanh`` is normalised. Statistics are per
  example and per time step, so training and test compute the same thing.
* ``norm="batchnorm"``: a recurrent batch norm in the spirit of Cooijmans et al. (2016):
  :math:`N_x` and :math:`N_h` are batch norms applied at every time step with that step's
  batch statistics, and :math:`N_c = \mathrm{id}`. One batch-norm module (one gain/bias, one set of
  running estimates) is shared by all time steps; Cooijmans et al. keep separate population
  statistics per step, so sharing them across time is an approximation that only matters in
  ``eval()`` mode.

All three variants use the same initialisation as the authors' code: input weights
:math:`W \sim \mathcal N(0, 0.01^2)`, recurrent weights orthogonal per gate block, :math:`b = 0`.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ReplibError
from .norms import create_norm

RNN_NORMS = ("none", "layernorm", "batchnorm")


def _registry_name(norm: str) -> str:
    if norm not in RNN_NORMS:
        raise ReplibError(f"unknown LSTM norm {norm!r}; valid: {', '.join(RNN_NORMS)}")
    return "identity" if norm == "none" else norm


class NormLSTMCell(nn.Module):
    """One LSTM step with the normalisation ``norm`` in {"none", "layernorm", "batchnorm"}.

    ``forward(x, state)`` takes ``x`` of shape ``(B, d_in)`` and ``state = (h, c)`` (zeros when
    None) and returns the new ``(h, c)``; ``c`` is the un-normalised cell state.
    """

    def __init__(self, d_in: int, hidden: int, norm: str = "none"):
        super().__init__()
        name = _registry_name(norm)
        self.d_in, self.hidden, self.norm = d_in, hidden, norm
        self.W = nn.Linear(d_in, 4 * hidden, bias=False)
        self.U = nn.Linear(hidden, 4 * hidden, bias=False)
        self.bias = nn.Parameter(torch.zeros(4 * hidden))
        self.norm_x = create_norm(name, 4 * hidden)  # on W x_t, all four gates jointly
        self.norm_h = create_norm(name, 4 * hidden)  # on U h_{t-1}
        self.norm_c = create_norm("layernorm" if norm == "layernorm" else "identity", hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.W.weight, std=0.01)
        with torch.no_grad():
            for k in range(4):  # orthogonal block per gate, as ortho_weight in the authors' code
                nn.init.orthogonal_(self.U.weight[k * self.hidden:(k + 1) * self.hidden])
        nn.init.zeros_(self.bias)

    def zero_state(self, batch: int, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = like.new_zeros(batch, self.hidden)
        return z, z

    def step(self, wx: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
        """One step given the already normalised input term ``wx = N_x(W x_t)``."""
        h, c = state
        a = wx + self.norm_h(self.U(h)) + self.bias  # gate bias after the two norms
        i, f, o, g = a.chunk(4, dim=-1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)  # carried un-normalised
        h = torch.sigmoid(o) * torch.tanh(self.norm_c(c))
        return h, c

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        if state is None:
            state = self.zero_state(x.shape[0], x)
        return self.step(self.norm_x(self.W(x)), state)


class NormLSTM(nn.Module):
    """A one-layer LSTM over ``(B, T, d_in)`` sequences, built on :class:`NormLSTMCell`.

    Returns ``(outputs, (h_T, c_T))`` with ``outputs`` of shape ``(B, T, H)``. For the per-example
    norms the input term :math:`N_x(W x_t)` is computed for all steps at once (it does not depend
    on the recurrence); the batch norm takes its statistics step by step.
    """

    def __init__(self, d_in: int, hidden: int, norm: str = "none"):
        super().__init__()
        self.cell = NormLSTMCell(d_in, hidden, norm)

    def forward(self, x: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        cell = self.cell
        B, T, _ = x.shape
        wx = cell.W(x)
        if cell.norm == "batchnorm":  # statistics over the batch at each time step
            wx = torch.stack([cell.norm_x(wx[:, t]) for t in range(T)], dim=1)
        else:  # per-example statistics: every (example, step) row on its own
            wx = cell.norm_x(wx)
        state = cell.zero_state(B, x) if state is None else state
        outs = []
        for t in range(T):
            state = cell.step(wx[:, t], state)
            outs.append(state[0])
        return torch.stack(outs, dim=1), state


class LSTMClassifier(nn.Module):
    """Read a sequence with a :class:`NormLSTM` and classify from the last hidden state."""

    def __init__(self, d_in: int, hidden: int, n_classes: int, norm: str = "none"):
        super().__init__()
        self.rnn = NormLSTM(d_in, hidden, norm)
        self.head = nn.Linear(hidden, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, (h, _) = self.rnn(x)
        return self.head(h)


class CharLSTM(nn.Module):
    """Character language model: embedding, :class:`NormLSTM`, linear read-out at every step."""

    def __init__(self, vocab_size: int, d_embed: int, hidden: int, norm: str = "none"):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, d_embed)
        self.rnn = NormLSTM(d_embed, hidden, norm)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(self.embed(idx))
        return self.head(out)
