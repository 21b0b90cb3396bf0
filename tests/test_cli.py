"""The replib command's bad-input errors: one line, the valid choices, no traceback."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from replib.cli import main

ROOT = Path(__file__).resolve().parents[1]


def _run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, err


@pytest.mark.parametrize("argv, expected", [
    (["run", "99"], "unknown chapter '99'; valid: 90-all-norms, 91-all-optimizers, 92-attention-zoo, 02-powernorm"),
    (["run", "16", "--scale", "huge"], "unknown scale 'huge'; valid: smoke, cpu, gpu"),
    (["run", "16", "--device", "tpu"], "unknown device 'tpu'; valid: auto, cpu, cuda, mps"),
    (["run", "16", "--seeds", "a,b"], "--seeds takes comma-separated non-negative ints"),
    # chapter 99 does not exist: these must fail on their seeds, before the chapter is looked up
    (["run", "99", "--seeds", ""], "--seeds is empty"),
    (["run", "99", "--seeds", " , "], "--seeds is empty"),
    (["run", "99", "--seeds", "0,1,0"], "--seeds repeats 0; each seed once"),
    (["run", "99", "--seeds", "99999999999"], "--seeds: 99999999999 is too large (at most 4294967295)"),
    (["run", "99", "--cell-timeout", "0"], "argument --cell-timeout: a whole number of seconds >= 1"),
    (["book", "--cell-timeout", "soon"], "--cell-timeout: a whole number of seconds >= 1, got 'soon'"),
    (["run", "99", "--device", "cuda:x"], "unknown device 'cuda:x'; valid: auto, cpu, cuda, mps"),
    (["book", "--jobs", "0"], "auto or a whole number >= 1, got '0'"),
    (["book", "--scale", "tiny"], "valid: smoke, cpu, gpu"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_input_is_one_line(argv, expected, capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, err = _run(argv, capsys)
    assert rc == 2
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_requested_without_cuda(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, err = _run(["run", "16", "--device", "cuda"], capsys)
    assert rc == 2 and "not available on this machine; available: auto" in err


@pytest.mark.skipif(torch.cuda.device_count() > 1, reason="cuda:1 exists here")
def test_one_gpu_of_several_is_a_device_not_a_typo(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)
    rc, err = _run(["run", "99", "--device", "cuda:1"], capsys)
    assert rc == 2 and "device 'cuda:1' is not available on this machine" in err


def test_outside_a_book(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("replib.book.chapters.__file__", str(tmp_path / "x.py"))
    rc, err = _run(["list"], capsys)
    assert rc == 2 and "no book found" in err


def test_installed_command_and_list():
    out = subprocess.run([Path(sys.executable).parent / "replib", "list"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for ch in ("03-layernorm", "10-pre-rmsnorm", "16-selu-snn"):
        assert ch in out.stdout
    benchmark = next(line for line in out.stdout.splitlines() if line.startswith("90-all-norms"))
    assert "benchmark, " in benchmark  # measurements only: no blank summary
