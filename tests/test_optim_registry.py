"""Common tests for every entry of the optimizer registry (as tests/test_norms.py for norms)."""
import copy

import pytest
import torch

from replib.errors import ReplibError
from replib.optim import create_optimizer, describe_optimizer, list_optimizers, register_optimizer
from replib.optim.common import LlamaConfig, TinyLlama

CFG = LlamaConfig(seq_len=16, n_layer=1, n_head=2, d_model=16)


def _model(seed=0):
    torch.manual_seed(seed)
    return TinyLlama(CFG)


def _batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, CFG.vocab_size, (4, CFG.seq_len), generator=g)
    return x, x.roll(-1, 1)


def _steps(model, opt, n, batch):
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        model(*batch)[1].backward()
        opt.step()


def test_registry_lists_the_baselines_first():
    names = list_optimizers()
    assert names[:2] == ["adamw", "sgd-momentum"] and {"sinkgd", "conda"} <= set(names)


@pytest.mark.parametrize("name", list_optimizers())
def test_memorises_one_batch_at_some_lr(name):
    batch = _batch()
    falls = []
    for lr in (1e-3, 1e-2, 1e-1):
        model = _model()
        first = float(model(*batch)[1])
        _steps(model, create_optimizer(name, model, lr), 40, batch)
        falls.append(first - float(model(*batch)[1]))
    assert max(falls) > 1.0, f"{name}: loss fell by {falls} at lr 1e-3/1e-2/1e-1"


@pytest.mark.parametrize("name", list_optimizers())
def test_state_dict_round_trip_continues_identically(name):
    batch = _batch()
    model = _model()
    opt = create_optimizer(name, model, 1e-2)
    _steps(model, opt, 3, batch)
    clone = copy.deepcopy(model)
    opt2 = create_optimizer(name, clone, 1e-2)
    opt2.load_state_dict(copy.deepcopy(opt.state_dict()))
    _steps(model, opt, 3, batch)
    _steps(clone, opt2, 3, batch)
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", list_optimizers())
def test_closure_and_determinism(name):
    batch = _batch()
    runs = []
    for _ in range(2):
        model = _model()
        opt = create_optimizer(name, model, 1e-2)

        def closure():
            opt.zero_grad(set_to_none=True)
            loss = model(*batch)[1]
            loss.backward()
            return loss

        loss = opt.step(closure)
        assert torch.is_tensor(loss) and torch.isfinite(loss)
        runs.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


@pytest.mark.parametrize("name", list_optimizers())
def test_described(name):
    assert describe_optimizer(name) and describe_optimizer(name)[0].isupper()


def test_errors_are_one_line():
    with pytest.raises(ReplibError, match="unknown optimizer 'lion'; valid: adamw, sgd-momentum"):
        create_optimizer("lion", _model(), 1e-3)
    with pytest.raises(ReplibError, match="already registered"):
        register_optimizer("adamw")(lambda model, lr: None)
