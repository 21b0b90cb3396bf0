"""`replib bench` (replib.bench): the results file, the step split, merging, errors, the page."""
import json

import pytest
import torch

from replib import bench as rb
from replib.cli import main

TINY = {
    "gpt": rb.gpt_workload("gpt", 2, n_layer=1, d_model=16, n_head=2, seq_len=8),
    "mlp": rb.mlp_workload("mlp", 4, 8, 16, 2, 3),
}
ROW_KEYS = {"model", "describe", "params", "units", "units_per_step", "settings", "warmup_steps",
            "first_step_s", "steps", "wall_s", "step_s", "throughput", "split_s",
            "peak_memory_bytes", "memory_kind", "flops_per_step", "peak_flops", "mfu", "measured_at",
            "run_s", "run_throughput"}


def _bench(tmp_path, **kw):
    out = tmp_path / "cpu.json"
    kw = {"device": "cpu", "seconds": 0.15, "warmup": 1, "workloads": TINY, "echo": lambda s: None, **kw}
    rb.bench(tmp_path, out=out, **kw)
    return json.loads(out.read_text())


def test_results_file_schema_and_step_split(tmp_path):
    data = _bench(tmp_path)
    assert data["schema"] == "replib.bench" and data["schema_version"] == 1
    assert data["device_kind"].startswith("cpu-") and data["hardware"]["device"] == "cpu"
    assert {"commit", "dirty"} <= data["git"].keys() and "torch" in data["versions"]
    assert [r["model"] for r in data["runs"]] == ["gpt", "mlp"]
    for r in data["runs"]:
        assert r.keys() == ROW_KEYS
        assert r["steps"] >= 3 and r["memory_kind"] == "process_peak_rss" and r["mfu"] is None
        assert r["throughput"] == pytest.approx(r["units_per_step"] / r["step_s"])
        assert r["step_s"] == pytest.approx(r["wall_s"] / r["steps"])
        split = r["split_s"]
        assert min(split.values()) > 0
        # the three phases are timed separately from the loop's wall clock: they must cover it
        assert sum(split.values()) == pytest.approx(r["step_s"], rel=0.2)
        assert r["peak_memory_bytes"] > 10 * 2**20  # a process with torch loaded
        # the whole run counts every step (warm-up included) over a longer time (build, first step)
        assert r["run_s"] > r["wall_s"] + r["first_step_s"]
        assert r["run_throughput"] == pytest.approx(
            r["units_per_step"] * (r["warmup_steps"] + r["steps"]) / r["run_s"])
        assert r["run_throughput"] < r["throughput"] * (r["warmup_steps"] + r["steps"]) / r["steps"]
    assert data["runs"][0]["units"] == "tokens" and data["runs"][0]["units_per_step"] == 16
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left nothing behind


def test_nanogpt_flops_per_step():
    """6N + 12 L H Q T per token, N without the embeddings (nanoGPT's estimate_mfu)."""
    w = TINY["gpt"]
    model, _ = w.build(torch.device("cpu"))
    n = sum(p.numel() for name, p in model.named_parameters() if "emb" not in name)
    assert w.flops_per_step(model) == (6 * n + 12 * 1 * 2 * 8 * 8) * 8 * 2


def test_runs_merge_by_model_and_settings(tmp_path):
    _bench(tmp_path, models=["mlp"])
    data = _bench(tmp_path, models=["mlp"], threads=1)
    assert sorted(r["settings"]["threads"] for r in data["runs"]) == sorted({1, torch.get_num_threads()})
    before = len(data["runs"])
    data = _bench(tmp_path, models=["mlp"], threads=1)  # the same setting again: replaced
    assert len(data["runs"]) == before


def test_a_budget_counts_the_whole_run(tmp_path):
    """--budget: the run stops once build, warm-up and timed steps together reach --seconds."""
    data = _bench(tmp_path, models=["gpt"], seconds=0.4, budget=True)
    (row,) = data["runs"]
    assert row["settings"]["budget"] is True
    assert 0.4 <= row["run_s"] < 0.4 + 5 * row["step_s"] + row["first_step_s"]
    assert row["wall_s"] < row["run_s"]
    assert "fixed budget" in rb.performance_markdown(tmp_path)


def test_processes_add_their_throughputs(tmp_path):
    """Two copies of the default MLP at once, one process and one thread each: one row whose
    throughput is the sum of the copies' (each at least a fair share of what it managed)."""
    out = tmp_path / "cpu.json"
    rb.bench(tmp_path, out=out, device="cpu", models=["mlp"], seconds=0.3, warmup=1,
             processes=2, threads=1, echo=lambda s: None)
    (row,) = json.loads(out.read_text())["runs"]
    assert row["settings"]["processes"] == 2 and row["settings"]["threads"] == 1
    assert row["memory_kind"] == "process_peak_rss_per_process"
    # each copy ran at least 3 timed steps; the sum of two rates exceeds one copy's mean rate
    assert row["steps"] >= 6
    assert row["throughput"] > row["units_per_step"] / row["step_s"]
    assert "1 thread x 2 processes" in rb.performance_markdown(tmp_path)


def test_compile_cost_rows_are_recorded_and_rendered(tmp_path, monkeypatch):
    """The compile-cost probe's rows (replaced here by a fast stand-in: compiling takes a minute)
    merge by case into the results file and render as their own table."""
    fake = [{"case": c, "overrides": o, "first_step_s": 30.0 if comp else 0.1,
             "second_step_s": 0.08, "threads": 1, "measured_at": "2026-12-06T00:00:00+00:00"}
            for c, o, comp in rb.COMPILE_CASES]
    monkeypatch.setattr(rb, "compile_cost_rows", lambda device: fake)
    out = tmp_path / "cpu.json"
    _bench(tmp_path, models=["mlp"])
    rb.bench_compile_costs(tmp_path, device="cpu", out=out)
    rb.bench_compile_costs(tmp_path, device="cpu", out=out)  # replaced, not doubled
    data = json.loads(out.read_text())
    assert len(data["compile_costs"]) == len(rb.COMPILE_CASES) and len(data["runs"]) == 1
    page = rb.performance_markdown(tmp_path)
    assert "| compiled, the first model | 30.00 | 80.0 |" in page


def test_first_steps_time_a_compiled_model():
    """The probe's step timer on a tiny model, compiled for real (a few seconds)."""
    row = rb._first_steps("t", TINY["mlp"], True, torch.device("cpu"))
    assert row["first_step_s"] > row["second_step_s"] > 0


@pytest.mark.parametrize("argv,words", [
    (["--models", "nope"], "unknown model 'nope'"),
    (["--seconds", "0"], "--seconds"),
    (["--amp", "fp8"], "--amp"),
    (["--threads", "0"], "--threads"),
    (["--processes", "0"], "--processes"),
    (["--device", "tpu"], "unknown device"),
])
def test_errors_are_one_line(tmp_path, capsys, argv, words):
    assert main(["bench", "--out", str(tmp_path / "x.json"), *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("replib: error:") and words in err
    assert not (tmp_path / "x.json").exists()


def test_an_unwritable_results_folder_fails_before_measuring(tmp_path, capsys):
    (tmp_path / "file").write_text("")
    assert main(["bench", "--models", "mlp", "--out", str(tmp_path / "file" / "x.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot write results to" in err


def test_peak_flops_prefers_the_longest_name(monkeypatch):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 PCIe")
    assert rb.peak_bf16_flops(torch.device("cuda")) == 756e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "NVIDIA H100 80GB HBM3")
    assert rb.peak_bf16_flops(torch.device("cuda")) == 989e12
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda d=None: "Some GPU")
    assert rb.peak_bf16_flops(torch.device("cuda")) is None


def test_performance_page(tmp_path):
    assert "No measurements yet" in rb.performance_markdown(tmp_path)
    _bench(tmp_path, models=["gpt"])
    (tmp_path / "broken.json").write_text("{")
    page = rb.performance_markdown(tmp_path)
    assert "No GPU measurement yet" in page
    row = next(line for line in page.splitlines() if line.startswith("| gpt |"))
    assert "tokens/s" in row and "(process RSS)" in row and "n/a" in row
    assert "## broken" in page and "unreadable" in page


def test_norm_kernel_rows_and_their_table(tmp_path):
    """The norm-kernel benchmark on CPU (eager and native only: no Triton off CUDA), merged into the
    same file as the model runs, and rendered."""
    _bench(tmp_path, models=["mlp"])
    out = tmp_path / "cpu.json"
    rb.bench_norm_kernels(tmp_path, device="cpu", out=out, norms=("rmsnorm", "dyt"), hidden=(8,),
                          tokens=(16,), variants=("eager", "triton", "native"), reps=2,
                          echo=lambda s: None)
    data = json.loads(out.read_text())
    assert [r["model"] for r in data["runs"]] == ["mlp"]  # the other section is kept
    got = {(r["norm"], r["variant"]) for r in data["norm_kernels"]}
    assert got == {("rmsnorm", "eager"), ("rmsnorm", "native"), ("dyt", "eager")}
    r = data["norm_kernels"][0]
    assert r["bytes_forward_backward"] == 5 * 16 * 8 * 2 and r["bandwidth_fraction"] is None
    assert 0 < r["forward_s"] and 0 < r["forward_backward_s"]
    page = rb.performance_markdown(tmp_path)
    assert "| rmsnorm | 8 x 16 | bf16 |" in page and "x |" in page  # a speed-up over eager
    with pytest.raises(rb.ReplibError, match="no fused kernel for norm 'batchnorm'"):
        rb.bench_norm_kernels(tmp_path, device="cpu", out=out, norms=("batchnorm",))


def _budget_row(compile, threads, processes, tokens_per_s, step_ms):
    return {"model": "tinygpt-cpu", "run_throughput": tokens_per_s, "step_s": step_ms / 1e3,
            "settings": {"compile": compile, "amp": "none", "threads": threads,
                         "processes": processes, "budget": True}}


def _costs(new_model_s):
    return [{"case": c, "first_step_s": 40.0 if i == 1 else (new_model_s if comp else 0.1)}
            for i, (c, _, comp) in enumerate(rb.COMPILE_CASES)]


def test_cpu_settings_decision_known_answers():
    """The page's rule on made-up rows: >= 10 % more tokens in the budget than eager/1/1, fastest
    wins; a compiled setting must also pay back a new model's compile within a 30 s run."""
    base = _budget_row(False, 1, 1, 10_000, 96)
    assert rb.cpu_settings_decision({"runs": []}) is None
    assert "the default stays" in rb.cpu_settings_decision({"runs": [base]})
    near = _budget_row(False, 2, 1, 10_900, 88)  # +9 %: below the margin
    assert "the default stays" in rb.cpu_settings_decision({"runs": [base, near]})
    two = _budget_row(False, 1, 2, 19_000, 101)
    comp = _budget_row(True, 1, 1, 13_000, 70)  # 27 % faster steps: saves 8.1 s of a 30 s run
    out = rb.cpu_settings_decision({"runs": [base, near, two, comp], "compile_costs": _costs(40.0)})
    assert "eager, 1 thread x 2 processes replaces the default (1.90x" in out
    assert "compiled, 1 thread: 1.30x" in out and "compile 40.0 s vs 8.1 s saved" in out
    assert out.count("passes the rule") == 1
    cheap = rb.cpu_settings_decision({"runs": [base, comp], "compile_costs": _costs(2.0)})
    assert "compiled, 1 thread replaces the default (1.30x" in cheap
    unmeasured = rb.cpu_settings_decision({"runs": [base, comp]})
    assert "compile payback not measured" in unmeasured and "the default stays" in unmeasured
    unbudgeted = dict(two, settings={**two["settings"], "budget": False})  # not a fixed budget
    assert "the default stays" in rb.cpu_settings_decision({"runs": [base, unbudgeted]})
