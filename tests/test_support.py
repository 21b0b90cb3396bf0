"""Experiment support: provenance, source display, plotting helpers."""
import math
import os
import subprocess
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from replib import Experiment, provenance, show_source  # noqa: E402
from replib.nn import create_norm  # noqa: E402
from replib.plotting import mean_band, seed_dots  # noqa: E402


def test_git_commit_is_the_checkout_replib_lives_in():
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          cwd=provenance.__file__.rsplit("/", 1)[0]).stdout.strip()
    git = provenance.git_commit()
    assert git["source"] == "git" and git["commit"] == head


def test_git_commit_override(monkeypatch):
    monkeypatch.setenv("REPLIB_GIT_COMMIT", "abc123")
    assert provenance.git_commit()["commit"] == "abc123"


def test_versions_and_hardware():
    v = provenance.library_versions()
    assert {"python", "torch", "numpy", "replib"} <= set(v)
    hw = provenance.hardware(Experiment("03-layernorm", scale="smoke", device="cpu").device)
    assert hw["device"] == "cpu" and hw["cpu_count"] >= 1


def test_provenance_line_in_the_notebook():
    line = Experiment("03-layernorm", scale="smoke", device="cpu", seeds=[4])._repr_markdown_()
    for part in ("`smoke`", "`cpu`", "`[4]`", "torch"):
        assert part in line


def test_show_source_shows_the_running_code():
    md = show_source(type(create_norm("rmsnorm", 4))).data
    assert md.count("```") == 2 and "class RMSNorm" in md and "F.rms_norm" in md
    assert "replib.nn.norms.RMSNorm" in md


def test_mean_band_draws_mean_and_seed_range_ignoring_diverged_seeds():
    fig, ax = plt.subplots()
    runs = [[1.0, 2.0, 3.0], [3.0, 4.0, math.nan]]
    mean_band(ax, [0, 1, 2], runs, "x")
    (line,) = ax.get_lines()
    np.testing.assert_allclose(line.get_ydata(), [2.0, 3.0, 3.0])
    assert line.get_label() == "x (2 runs)" and len(ax.collections) == 1
    plt.close(fig)


def test_seed_dots_marks_diverged_seeds():
    fig, ax = plt.subplots()
    seed_dots(ax, {"a": [1.0, 2.0], "b": [1.0, math.nan]}, ylabel="loss")
    assert [t.get_text() for t in ax.texts] == ["1 diverged"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["a", "b"]
    plt.close(fig)


def test_seed_dots_without_bars_works_on_a_log_axis():
    fig, ax = plt.subplots()
    ax.set_yscale("log")
    seed_dots(ax, {"a": [1e-3, 2e-3], "b": [10.0, math.nan]}, ylabel="ratio", bars=False)
    assert not ax.patches  # no bars rising from an arbitrary floor
    assert len(ax.collections) >= 2 and [t.get_text() for t in ax.texts] == ["1 diverged"]
    fig.canvas.draw()
    plt.close(fig)


def test_seed_dots_takes_a_colour_per_group():
    from matplotlib.colors import to_rgba
    fig, ax = plt.subplots()
    seed_dots(ax, {"a": [1.0, 2.0], "b": [3.0, 4.0]}, ylabel="loss", colors={"a": "red", "b": "blue"},
              markers={"b": "s"})
    from matplotlib.collections import PathCollection
    dots = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert [tuple(c.get_facecolor()[0]) for c in dots] == [to_rgba("red"), to_rgba("blue")]
    plt.close(fig)


def test_dirty_means_modified_code_not_written_results(tmp_path):
    import shutil
    from pathlib import Path

    root = Path(provenance.__file__).resolve().parents[2]
    if not (root / ".git").exists():
        import pytest
        pytest.skip("needs the git checkout")
    repo = tmp_path / "repo"
    shutil.copytree(root / "src", repo / "src")
    (repo / "results").mkdir()
    (repo / "results" / "x.json").write_text("{}")
    run = lambda *a: subprocess.run(["git", "-C", str(repo), *a], check=True, capture_output=True)  # noqa: E731
    run("init", "-q"); run("add", "-A")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "x")
    here = repo / "src" / "replib" / "provenance.py"
    import importlib.util
    spec = importlib.util.spec_from_file_location("prov_copy", here)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    assert mod.git_commit()["dirty"] is False
    (repo / "results" / "x.json").write_text('{"new": 1}')
    assert mod.git_commit()["dirty"] is False  # a written result is not a code change
    here.write_text(here.read_text() + "\n# edit\n")
    assert mod.git_commit()["dirty"] is True


def test_progress_bar_honours_tqdm_disable():
    # tqdm reads TQDM_* when it is imported, so each case runs in a fresh interpreter
    code = "from replib.train import progress_bar as p; print(p(range(3)).disable, p(range(3), False).disable)"
    def run(**env):
        base = {k: v for k, v in os.environ.items() if not k.startswith("TQDM_")}
        out = subprocess.run([sys.executable, "-c", code], env={**base, **env}, capture_output=True, text=True,
                             check=True)
        return out.stdout.split()
    assert run(TQDM_DISABLE="1") == ["True", "True"]  # what a book build sets for every kernel
    assert run() == ["False", "True"]


def test_mean_band_geometric_takes_the_mean_of_logs():
    fig, ax = plt.subplots()
    mean_band(ax, [0, 1], [[1.0, 1.0], [100.0, 10000.0]], "g", geometric=True)
    assert np.allclose(ax.lines[0].get_ydata(), [10.0, 100.0])
    plt.close(fig)
