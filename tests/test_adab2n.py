"""AdaB²N against the official equations (lvyilin/AdaB2N @ 2536317, models/utils/adab2n.py and
models/er_ace_ada.py ``set_counts``), transcribed below on (B, C, H, W) maps, and the spec's
reference checks."""
import io

import pytest
import torch
import torch.nn.functional as F

from replib import ReplibError
from replib.nn import create_norm
from replib.nn.adab2n import AdaB2N, end_task, eta_schedule, regulariser, set_batch_tasks


class OfficialEta:
    """``get_eta`` as in the official code: a recurrence kept in ``last_eta``."""

    def __init__(self, momentum, kappa):
        self.m, self.k, self.last, self.t = momentum, kappa, None, 0

    def __call__(self):
        self.t += 1
        if self.k == 0.0:
            return 1.0 / self.t
        if self.k == 1.0:
            return self.m
        if self.last is None:
            self.last = self.m ** self.k
            return self.last
        self.last = self.last / (self.last + (1 - self.m) ** self.k)
        return self.last


def official_stats(x, labels, n_classes_per_task, cur_task, task_weight):
    """``set_counts`` + the weighted branch of ``training_forward`` on (B, C, H, W)."""
    task_indices, inverse, task_counts = torch.unique(labels // n_classes_per_task, return_inverse=True,
                                                      return_counts=True)
    sample_task_indices = task_indices[inverse]
    sample_task_counts = task_counts[inverse]
    ext = labels.new_zeros(cur_task + 1)
    ext[task_indices] = task_counts
    conc = task_weight[: cur_task + 1].exp() + ext
    tw = conc / conc.sum()
    sw = tw[sample_task_indices] / sample_task_counts
    mean = x.mean([2, 3]).t().matmul(sw).view(1, -1, 1, 1)
    var = (x - mean).square().mean([2, 3]).t().matmul(sw).view(1, -1, 1, 1)
    return mean.flatten(), var.flatten()


def channel_last(norm, x):
    return norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


@pytest.mark.parametrize("kappa", [0.0, 0.1, 0.4, 0.7, 1.0])
def test_eta_closed_form_equals_the_official_recurrence(kappa):
    off = OfficialEta(0.1, kappa)
    for t in range(1, 200):
        assert eta_schedule(t, 0.1, kappa) == pytest.approx(off(), rel=1e-12)


def test_eta_known_values():
    assert eta_schedule(1, 0.1, 0.4) == pytest.approx(0.1 ** 0.4, abs=1e-6)
    assert eta_schedule(1, 0.1, 0.4) == pytest.approx(0.398107, abs=1e-6)
    assert eta_schedule(2, 0.1, 0.4) == pytest.approx(0.293408, abs=1e-6)
    assert all(eta_schedule(t, 0.1, 1.0) == 0.1 for t in (1, 2, 50))
    with pytest.raises(ReplibError, match="kappa"):
        eta_schedule(3, 0.1, 1.5)


def test_kappa_zero_running_mean_is_the_cumulative_mean_of_batch_means():
    torch.manual_seed(0)
    n = AdaB2N(4, kappa=0.0).double()
    means = []
    for _ in range(50):
        x = torch.randn(8, 4, dtype=torch.float64) * 3 + torch.rand(4, dtype=torch.float64) * 5
        means.append(x.mean(0))
        n(x)
    torch.testing.assert_close(n.running_mean, torch.stack(means).mean(0), rtol=1e-6, atol=1e-9)


def test_first_task_equals_batch_norm_with_biased_running_var():
    torch.manual_seed(1)
    x = torch.randn(6, 3, 4, 4, dtype=torch.float64) * 2 + 1
    n = AdaB2N(3, kappa=1.0).double()
    with torch.no_grad():
        n.weight.normal_(); n.bias.normal_()
    y = channel_last(n, x)
    ref = F.batch_norm(x, None, None, n.weight, n.bias, training=True, eps=1e-5)
    torch.testing.assert_close(y, ref, rtol=0, atol=1e-10)
    var, mean = torch.var_mean(x, [0, 2, 3], correction=0)
    torch.testing.assert_close(n.running_mean, 0.1 * mean)
    torch.testing.assert_close(n.running_var, 0.9 + 0.1 * var)  # biased, unlike nn.BatchNorm2d


@pytest.mark.parametrize("kappa", [0.1, 0.4, 1.0])
def test_weighted_statistics_running_update_and_loss_match_the_official_code(kappa):
    torch.manual_seed(2)
    C, cpt = 5, 2
    n = AdaB2N(C, num_tasks=5, kappa=kappa).double()
    with torch.no_grad():
        n.task_weight.normal_(); n.weight.normal_(); n.bias.normal_()
    off_eta = OfficialEta(0.1, kappa)
    rm, rv = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    for step in range(6):
        if step == 2:
            n.end_task(); n.end_task()  # now in task 2: labels 0..5
        cur = int(n.cur_tasks)
        x = torch.randn(12, C, 3, 3, dtype=torch.float64) * 2 + 0.5
        labels = torch.randint(0, 2 * (cur + 1), (12,))
        labels[0] = 2 * cur  # the current task is always present
        n.set_tasks(labels // cpt)
        y = channel_last(n, x)
        eta = off_eta()
        if cur > 0:
            mean, var = official_stats(x, labels, cpt, cur, n.task_weight.detach())
        else:
            var, mean = torch.var_mean(x, [0, 2, 3], correction=0)
        ref = (x - mean.view(1, -1, 1, 1)) / torch.sqrt(var.view(1, -1, 1, 1) + 1e-5)
        ref = n.weight.detach().view(1, -1, 1, 1) * ref + n.bias.detach().view(1, -1, 1, 1)
        torch.testing.assert_close(y, ref, rtol=0, atol=1e-10)
        rm = rm + eta * (mean - rm)
        rv = rv * (1 - eta) + eta * var
        torch.testing.assert_close(n.running_mean, rm, rtol=0, atol=1e-12)
        torch.testing.assert_close(n.running_var, rv, rtol=0, atol=1e-12)
        loss = F.mse_loss(mean, rm) + F.mse_loss(var, rv)
        torch.testing.assert_close(n.reg_loss.detach(), loss, rtol=0, atol=1e-12)


def test_two_tasks_known_weights():
    """N = (8, 2), task_weight = 0: pi = (9, 3) / 12; w = 0.75/8 and 0.25/2."""
    n = AdaB2N(3, num_tasks=2).double()
    n.end_task()
    x = torch.randn(10, 3, dtype=torch.float64)
    tasks = torch.tensor([0] * 8 + [1] * 2)
    n.set_tasks(tasks)
    w = n._weights(10, x.device)
    torch.testing.assert_close(w, torch.tensor([0.75 / 8] * 8 + [0.25 / 2] * 2, dtype=torch.float64))
    n(x)
    eta = n.eta()
    torch.testing.assert_close(n.running_mean, eta * (w @ x))


def test_one_task_present_gives_plain_batch_statistics():
    n = AdaB2N(3, num_tasks=3).double()
    with torch.no_grad():
        n.task_weight.normal_()
    n.end_task(); n.end_task()
    x = torch.randn(7, 3, dtype=torch.float64)
    n.set_tasks(torch.full((7,), 1))
    # pi_1 < 1 (absent tasks keep their prior mass, as in the official code): y uses w = pi_1 / 7
    w = n._weights(7, x.device)
    assert torch.allclose(w, w[0].expand(7))
    pi1 = float(w.sum().detach())
    mean = pi1 * x.mean(0)
    var = pi1 * ((x - mean) ** 2).mean(0)
    torch.testing.assert_close(n(x), (x - mean) / torch.sqrt(var + 1e-5) * n.weight + n.bias)
    # with the other tasks' prior mass negligible, the statistics are the batch's own
    with torch.no_grad():
        n.task_weight.copy_(torch.tensor([-40.0, 0.0, -40.0]))
    torch.testing.assert_close(n(x), F.batch_norm(x, None, None, n.weight, n.bias, True, 0.0, 1e-5),
                               rtol=0, atol=1e-6)


def test_eval_is_batch_norm_with_running_statistics():
    n = create_norm("adab2n", 4).double()
    for _ in range(3):
        n(torch.randn(9, 4, dtype=torch.float64) * 2 + 1)
    n.eval()
    x = torch.randn(5, 4, dtype=torch.float64)
    torch.testing.assert_close(n(x), F.batch_norm(x, n.running_mean, n.running_var, n.weight, n.bias, False,
                                                  0.0, 1e-5))


def test_gradient_reaches_task_weight_only_after_the_first_task():
    n = AdaB2N(4, num_tasks=3)
    x = torch.randn(10, 4)
    n.set_tasks(torch.tensor([0] * 10))
    (n(x) ** 3).sum().backward()
    assert n.task_weight.grad is None or not n.task_weight.grad.any()
    n.zero_grad(); n.end_task()
    n.set_tasks(torch.tensor([0] * 4 + [1] * 6))
    ((n(x) ** 3).sum() + n.reg_loss).backward()
    assert n.task_weight.grad[:2].abs().sum() > 0 and n.task_weight.grad[2] == 0


def test_gradcheck_weighted_branch_float64():
    n = AdaB2N(3, num_tasks=3).double()
    n.end_task(); n.end_task()
    n.set_tasks(torch.tensor([0, 0, 1, 2, 2, 2]))
    x = torch.randn(6, 2, 3, dtype=torch.float64, requires_grad=True)
    tw = torch.randn(3, dtype=torch.float64, requires_grad=True)

    def f(x, tw):
        return torch.func.functional_call(n, {"task_weight": tw}, (x,), strict=False)
    assert torch.autograd.gradcheck(f, (x, tw))


def test_mask_positions_never_shape_the_statistics():
    n1, n2 = AdaB2N(3, num_tasks=2).double(), AdaB2N(3, num_tasks=2).double()
    for n in (n1, n2):
        n.end_task(); n.set_tasks(torch.tensor([0, 1, 1]))
    x = torch.randn(3, 5, 3, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], dtype=torch.bool)
    x2 = x.clone(); x2[~mask] = 1e3
    torch.testing.assert_close(n1(x, mask)[mask], n2(x2, mask)[mask])
    torch.testing.assert_close(n1.running_var, n2.running_var)


def test_state_dict_keeps_the_momentum_schedule_and_task():
    a = AdaB2N(3, kappa=0.4)
    for _ in range(5):
        a(torch.randn(8, 3))
    a.end_task()
    buf = io.BytesIO(); torch.save(a.state_dict(), buf)
    b = AdaB2N(3, kappa=0.4); b.load_state_dict(torch.load(io.BytesIO(buf.getvalue())))
    assert b.eta() == a.eta() == pytest.approx(eta_schedule(5, 0.1, 0.4)) and int(b.cur_tasks) == 1


def test_model_helpers_and_errors():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), AdaB2N(4, num_tasks=2), torch.nn.Linear(4, 2),
                                AdaB2N(2, num_tasks=2))
    assert float(regulariser(model)) == 0.0
    end_task(model)
    set_batch_tasks(model, torch.tensor([0, 1, 1, 0]))
    model(torch.randn(4, 3))
    r = regulariser(model)
    assert r.requires_grad and float(r) == pytest.approx(float(model[1].reg_loss + model[3].reg_loss))
    set_batch_tasks(model, torch.tensor([0, 2, 1, 0]))
    with pytest.raises(ReplibError, match="task ids must lie"):
        model(torch.randn(4, 3))
    set_batch_tasks(model, torch.tensor([0, 1]))
    with pytest.raises(ReplibError, match="task ids for 2 samples"):
        model(torch.randn(4, 3))
    with pytest.raises(ReplibError, match="kappa"):
        AdaB2N(3, kappa=-0.1)
