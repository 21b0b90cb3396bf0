import pytest
import torch

from replib import ReplibError, resolve_device, seed_everything
from replib.runtime import available_devices


def test_auto_picks_an_available_device():
    assert resolve_device("auto").type == available_devices()[0]
    assert resolve_device("cpu") == torch.device("cpu")


def test_unknown_device_lists_choices():
    with pytest.raises(ReplibError, match="valid: auto, cpu, cuda, mps"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_an_error_not_a_fallback():
    with pytest.raises(ReplibError, match="not available"):
        resolve_device("cuda")


def test_seed_fixes_every_draw():
    g1 = seed_everything(7)
    a = (torch.randn(3), torch.randn(3, generator=g1))
    g2 = seed_everything(7)
    b = (torch.randn(3), torch.randn(3, generator=g2))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    seed_everything(8)
    assert not torch.equal(torch.randn(3), a[0])


@pytest.mark.parametrize("bad", [-1, 1.5, "0", True])
def test_bad_seed(bad):
    with pytest.raises(ReplibError):
        seed_everything(bad)


def test_auto_jobs_is_a_chapter_per_core_within_memory(monkeypatch):
    """--jobs auto: one chapter per core on a CPU, capped at one per 2 GiB of memory; one on a GPU."""
    import os

    from replib.runtime import auto_jobs
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 24 * 2**30 // 4096}  # 24 GiB
    monkeypatch.setattr(os, "sysconf", lambda name: pages[name])
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert auto_jobs(torch.device("cpu")) == 2
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    assert auto_jobs(torch.device("cpu")) == 12  # memory, not cores, limits
    monkeypatch.setattr(os, "cpu_count", lambda: None)
    assert auto_jobs(torch.device("cpu")) == 1
    assert auto_jobs(torch.device("cuda")) == 1
