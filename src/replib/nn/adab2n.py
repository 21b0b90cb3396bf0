r"""AdaB²N: batch normalisation balanced across continual-learning tasks (Lyu et al., NeurIPS 2023,
arXiv 2310.08855, "Overcoming Recency Bias of Normalization Statistics in Continual Learning:
Balance and Adaptation").

A drop-in for batch norm in replay-based continual learning. Training statistics are a
task-balanced weighted average, and the running statistics use a momentum that interpolates
between an EMA and a cumulative mean, so that they are not pulled toward the latest task.

Follows the official code, ``models/utils/adab2n.py`` of github.com/lvyilin/AdaB2N at commit
``253631724ab8c87c31df54e75c10f8108c10191f`` (read, not copied; the equations are transcribed
into ``tests/test_adab2n.py`` and checked on random inputs). Registry entry ``adab2n``; like every
registry norm it acts on ``(..., C)``: sample :math:`n` is the first dimension, its "positions"
(the spatial map of a conv layer, channel-last) are the dimensions in between.

**Balanced batch statistics.** Before a training forward the continual learner tells the layer
each sample's task :math:`t_n` (:meth:`AdaB2N.set_tasks`, or :func:`set_batch_tasks` for a whole
model). With :math:`N_t` the samples of task :math:`t` in the batch (0 when absent), for
:math:`t=0..T` (:math:`T` = ``cur_tasks``, the index of the current task) and a learnable
``task_weight`` :math:`\omega` (init 0):

.. math::
    c_t = e^{\omega_t} + N_t,\qquad \pi_t = c_t / \textstyle\sum_s c_s,\qquad
    w_n = \pi_{t_n} / N_{t_n}

(the posterior mean of a Dirichlet with prior :math:`e^{\omega}` and counts :math:`N`). Then,
per channel, with :math:`\bar x_n` the mean of sample :math:`n` over its positions,

.. math::
    \mu = \textstyle\sum_n w_n \bar x_n,\qquad
    \sigma^2 = \textstyle\sum_n w_n\,\overline{(x_n-\mu)^2},\qquad
    y = \gamma\,(x-\mu)/\sqrt{\sigma^2+\epsilon}+\beta .

As in the official code, a seen task absent from the batch keeps its share of the mass
(:math:`\sum_n w_n<1`, the weights are not renormalised). Gradients reach :math:`\omega` through
:math:`\mu` and :math:`\sigma^2`. In the first task (``cur_tasks == 0``) or without task labels the
statistics are the plain biased batch statistics over samples and positions.

**Adaptive momentum** for the running statistics (the official ``get_eta``): with batch-norm
momentum :math:`m` and :math:`\kappa\in[0,1]`,

.. math::
    \eta_1 = m^\kappa,\qquad \eta_t = \frac{\eta_{t-1}}{\eta_{t-1} + (1-m)^\kappa},

so :math:`\kappa=1` gives the EMA (:math:`\eta_t=m`) and :math:`\kappa=0` the cumulative mean
(:math:`\eta_t=1/t`). The official code keeps :math:`\eta_{t-1}` in a plain attribute (lost on a
save and restore); here it is computed in closed form from ``num_batches_tracked``,
:math:`1/\eta_t = \sum_{k=0}^{t-2} a^k + a^{t-1} m^{-\kappa}` with :math:`a=(1-m)^\kappa`, which is
the same sequence (the official code advances both once per training forward) and survives a
``state_dict`` round trip. Running statistics:
:math:`r_\mu \leftarrow r_\mu + \eta_t(\mu - r_\mu)`,
:math:`r_{\sigma^2} \leftarrow (1-\eta_t)\,r_{\sigma^2} + \eta_t\sigma^2` (the *biased* variance,
unlike ``nn.BatchNorm``).

**Regulariser** (computed after the running update, running statistics detached):
:math:`L_{bn} = \mathrm{MSE}(\mu, r_\mu) + \mathrm{MSE}(\sigma^2, r_{\sigma^2})`, kept in
``reg_loss``; the learner adds :math:`\lambda\sum_{\text{layers}} L_{bn}` (:func:`regulariser`).
Evaluation is ``F.batch_norm`` with the running statistics.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplibError
from .norms import register_norm


def eta_schedule(t: int, momentum: float, kappa: float) -> float:
    r"""The running-statistics step size :math:`\eta_t` at training step ``t >= 1`` (closed form of
    the official recurrence; see the module docstring)."""
    if t < 1:
        raise ReplibError(f"eta is defined from the first training batch on (t >= 1), not t={t}")
    if not 0.0 <= kappa <= 1.0:
        raise ReplibError(f"kappa must lie in [0, 1], got {kappa}")
    if kappa == 0.0:
        return 1.0 / t
    if kappa == 1.0:
        return float(momentum)
    a = (1.0 - momentum) ** kappa
    inv = (1.0 - a ** (t - 1)) / (1.0 - a) + a ** (t - 1) * momentum ** (-kappa)
    return 1.0 / inv


@register_norm("adab2n")
class AdaB2N(nn.Module):
    """AdaB²N over the last dimension (channels); see the module docstring for the equations.

    ``num_tasks`` sizes the learnable ``task_weight``; ``kappa`` sets the momentum schedule
    (1: EMA, 0: cumulative mean). Call :meth:`end_task` after each task and :meth:`set_tasks`
    before each training forward on a batch that mixes tasks.
    """

    #: parameters a batch without task ids never reaches: the Dirichlet task weights balance tasks only
    idle_without_tasks = ("task_weight",)

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float = 0.1, affine: bool = True,
                 num_tasks: int = 5, kappa: float = 0.4, init_weight: float = 0.0):
        super().__init__()
        if not 0.0 <= kappa <= 1.0:
            raise ReplibError(f"kappa must lie in [0, 1], got {kappa}")
        if num_tasks < 1:
            raise ReplibError(f"num_tasks must be >= 1, got {num_tasks}")
        self.dim, self.eps, self.momentum, self.kappa = dim, eps, momentum, kappa
        self.num_tasks = num_tasks
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None
        self.task_weight = nn.Parameter(torch.full((num_tasks,), float(init_weight)))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))
        self.register_buffer("cur_tasks", torch.tensor(0, dtype=torch.long))
        self.sample_tasks: torch.Tensor | None = None
        self.reg_loss: torch.Tensor | None = None

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, momentum={self.momentum}, kappa={self.kappa}, num_tasks={self.num_tasks}"

    def end_task(self) -> None:
        """The learner finished a task: one more task's statistics enter the balance."""
        if int(self.cur_tasks) + 1 >= self.num_tasks:
            # the last task ends: nothing follows; keep the index in range
            self.cur_tasks.fill_(self.num_tasks - 1)
        else:
            self.cur_tasks.add_(1)

    def set_tasks(self, task_ids: torch.Tensor | None) -> None:
        """Each sample's task index for the next training forward (None: plain batch statistics)."""
        if task_ids is not None:
            task_ids = torch.as_tensor(task_ids).long()
            if task_ids.dim() != 1:
                raise ReplibError("task ids must be one index per sample (1-D)")
        self.sample_tasks = task_ids

    def eta(self) -> float:
        return eta_schedule(int(self.num_batches_tracked), self.momentum, self.kappa)

    def _weights(self, n: int, device) -> torch.Tensor | None:
        T = int(self.cur_tasks)
        if self.sample_tasks is None or T == 0:
            return None
        tasks = self.sample_tasks.to(device)
        if tasks.numel() != n:
            raise ReplibError(f"task ids for {tasks.numel()} samples, batch has {n}")
        if int(tasks.min()) < 0 or int(tasks.max()) > T:
            raise ReplibError(f"task ids must lie in 0..{T} (the tasks seen so far)")
        counts = torch.bincount(tasks, minlength=T + 1).to(self.task_weight.dtype)
        conc = self.task_weight[: T + 1].exp() + counts
        pi = conc / conc.sum()
        return pi[tasks] / counts[tasks]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is not None and mask.shape != x.shape[:-1]:
            raise ReplibError(f"mask shape {tuple(mask.shape)} does not match input {tuple(x.shape[:-1])}")
        if not self.training:
            mean, var = self.running_mean, self.running_var
        else:
            if x.dim() < 2:
                raise ReplibError("AdaB2N needs a batch dimension: input (batch, ..., channels)")
            n = x.shape[0]
            flat = x.reshape(n, -1, x.shape[-1])  # (samples, positions, channels)
            m = (torch.ones(flat.shape[:2], dtype=x.dtype, device=x.device) if mask is None
                 else mask.reshape(n, -1).to(x.dtype))
            if float(m.sum()) < 2:
                raise ReplibError("AdaB2N needs at least 2 real positions in training")
            w = self._weights(n, x.device)
            if w is None:  # plain biased batch statistics over samples and positions
                tot = m.sum()
                mean = (flat * m[..., None]).sum((0, 1)) / tot
                var = ((flat - mean).pow(2) * m[..., None]).sum((0, 1)) / tot
            else:
                cnt = m.sum(1, keepdim=True).clamp_min(1)  # real positions per sample
                w = w.to(x.dtype)
                mean = w @ ((flat * m[..., None]).sum(1) / cnt)
                var = w @ (((flat - mean).pow(2) * m[..., None]).sum(1) / cnt)
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                eta = self.eta()
                self.running_mean.add_(mean.detach() - self.running_mean, alpha=eta)
                self.running_var.mul_(1 - eta).add_(var.detach(), alpha=eta)
            self.reg_loss = F.mse_loss(mean, self.running_mean) + F.mse_loss(var, self.running_var)
        y = (x - mean) * torch.rsqrt(var + self.eps)
        return y * self.weight + self.bias if self.weight is not None else y


def _layers(model: nn.Module) -> list[AdaB2N]:
    return [m for m in model.modules() if isinstance(m, AdaB2N)]


def set_batch_tasks(model: nn.Module, task_ids: torch.Tensor | None) -> None:
    """Tell every AdaB²N layer of ``model`` each sample's task (the official ``set_counts``)."""
    for m in _layers(model):
        m.set_tasks(task_ids)


def end_task(model: nn.Module) -> None:
    """Advance every AdaB²N layer of ``model`` to the next task."""
    for m in _layers(model):
        m.end_task()


def regulariser(model: nn.Module) -> torch.Tensor:
    r""":math:`\sum_\text{layers} L_{bn}` of the last training forward (0 if the model has none)."""
    losses = [m.reg_loss for m in _layers(model) if m.reg_loss is not None]
    if not losses:
        p = next(model.parameters(), None)
        return torch.zeros((), device=p.device if p is not None else None)
    return torch.stack(losses).sum()
