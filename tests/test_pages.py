"""The pages generated at build time: scoreboard, status, chapter headers, the pinned install cell."""
import json
from pathlib import Path

import nbformat
import pytest

from replib import Experiment, ReplibError, Rule, graded, judge
from replib.book import pages
from replib.book.chapters import Chapter
from replib.book.execute import Outcome

ROOT = Path(__file__).resolve().parents[1]


def _result(results: Path, chapter: str, scale: str, verdict_ok: bool, ours: float) -> None:
    exp = Experiment(chapter, scale=scale, device="cpu", seeds=[0])
    rule = Rule("x > 1", lambda m: graded(m["x"].mean > 1))
    exp.record(judge("C1", "x exceeds one", paper="x = 2", rule=rule,
                     metrics={"x": [ours if verdict_ok else 0.5]}))
    exp.save(results)


@pytest.fixture
def book(tmp_path):
    (tmp_path / "notebooks").mkdir()
    for cid, title in [("01-alpha", "Alpha Norm"), ("02-beta", "Beta Norm"), ("03-gamma", "Gamma")]:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {int(cid[:2])}. {title}\n\ntext")]
        nbformat.write(nb, tmp_path / "notebooks" / f"{cid}.ipynb")
    chapters = [Chapter(c, Path("notebooks") / f"{c}.ipynb") for c in ("01-alpha", "02-beta", "03-gamma")]
    results = tmp_path / "results"
    _result(results, "01-alpha", "cpu", True, 3.0)
    _result(results, "01-alpha", "gpu", False, 0.0)  # gpu outranks cpu
    _result(results, "02-beta", "smoke", True, 3.0)  # smoke only: marked, not counted
    return tmp_path, chapters, results


def test_scoreboard_prefers_gpu_marks_smoke_and_lists_chapters_not_run(book):
    root, chapters, results = book
    md = pages.scoreboard_markdown(root, chapters, results)
    assert "**0** replicated" in md and "**1** not replicated" in md  # the gpu verdict, not cpu's
    assert "1 claims with smoke results only" in md and "1 chapters not yet run" in md
    rows = md.split("<tr")
    alpha = next(r for r in rows if "Alpha Norm" in r)
    assert "not replicated" in alpha and ">gpu<" in alpha
    beta = next(r for r in rows if "Beta Norm" in r)
    assert "pipeline check only" in beta and "replicated" in beta
    gamma = next(r for r in rows if "Gamma" in r)
    assert "not yet run" in gamma and "replicated" not in gamma
    assert 'href="../notebooks/03-gamma.html"' in gamma


def test_scoreboard_escapes_text_and_rejects_a_corrupt_results_file(book):
    root, chapters, results = book
    assert "<script>" not in pages.scoreboard_markdown(root, chapters, results)
    (results / "cpu" / "03-gamma.json").write_text("{not json")
    with pytest.raises(ReplibError, match="03-gamma.json: corrupt results file"):
        pages.scoreboard_markdown(root, chapters, results)
    # the build sets such a file aside (build.readable_results) and the scoreboard names it
    (results / "cpu" / "03-gamma.json").unlink()
    md = pages.scoreboard_markdown(root, chapters, results, {"03-gamma": {"cpu": "corrupt results file"}})
    gamma = next(r for r in md.split("<tr") if "Gamma" in r)
    assert "results/cpu/03-gamma.json unreadable" in gamma and "not yet run" not in gamma


def test_header_shows_the_run_and_other_scales_verdicts(book):
    root, chapters, results = book
    cpu = json.loads((results / "cpu" / "01-alpha.json").read_text())
    gpu = json.loads((results / "gpu" / "01-alpha.json").read_text())
    text = pages.header_markdown(chapters[0], "cpu", {"scale": "cpu"}, cpu, None, {"gpu": gpu})
    assert "scale cpu" in text and "seeds 0" in text and "wall time" in text and "replib" in text
    assert "<th>gpu</th><th>cpu (this page)</th>" in text
    assert text.count("not replicated") == 1 and text.count(">replicated<") == 1
    failed = pages.header_markdown(chapters[2], "smoke", {"device": "cpu"}, None,
                                   Outcome("03-gamma", "failed", 2.0, {}), {})
    assert "pipeline check only" in failed and "failed after 2 s" in failed


def test_status_page_reports_budget_share_cache_state_and_errors(tmp_path):
    chapters = [Chapter("01-a", Path("notebooks/01-a.ipynb")), Chapter("02-b", Path("notebooks/02-b.ipynb"))]
    cache = tmp_path / ".cache"
    cache.mkdir()
    (cache / "01-a.json").write_text(json.dumps({"chapter": "01-a", "status": "failed", "seconds": 90.0,
                                                 "parameters": {}, "error": "ValueError: <boom>"}))
    md = pages.status_markdown(chapters, tmp_path, "smoke")
    assert "200%" in md and "ValueError: &lt;boom&gt;" in md  # 90 s of a 45 s budget, escaped
    assert "not run" in md.split("02-b")[1]
    assert "Python" in md and "torch" in md


def test_install_cell_is_pinned_to_the_build_commit():
    nb = nbformat.read(ROOT / "notebooks" / "16-selu-snn.ipynb", as_version=4)
    url, branch = pages.repository(ROOT)
    assert pages.pin_install_cell(nb, url, "0123abc")
    assert f'replib @ git+{url}@0123abc"' in nb.cells[1].source


def test_injected_parameters_are_read_back():
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell('# Parameters\nscale = "smoke"\ndevice = "cpu"\nseeds = [1, 2]\n')
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells = [cell]
    assert pages.injected_parameters(nb) == {"scale": "smoke", "device": "cpu", "seeds": [1, 2]}


def test_scoreboard_counts_reference_checks_inconclusive_and_not_run_apart(tmp_path):
    from replib import Health, Verdict, better, fixed
    (tmp_path / "notebooks").mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 7. Delta\n\ntext")]
    nbformat.write(nb, tmp_path / "notebooks" / "07-delta.ipynb")
    exp = Experiment("07-delta", scale="cpu", device="cpu", seeds=[0, 1, 2])
    exp.record(judge("C1", "an identity", paper="p", rule=fixed(Verdict.REFERENCE, "by construction"),
                     metrics={}))
    exp.record(judge("C2", "gpu only", paper="p", rule=fixed(Verdict.NOT_RUN, "runs at gpu scale"),
                     metrics={}))
    stalled = better("new", "old", metric="loss", health=Health(4.5, 0.05))
    exp.record(judge("C3", "new beats old", paper="p", rule=stalled,
                     metrics={"new": [2.0, 2.1, 2.0], "old": [4.5, 4.5, 4.49]}))
    exp.save(tmp_path / "results")
    md = pages.scoreboard_markdown(tmp_path, [Chapter("07-delta", Path("notebooks/07-delta.ipynb"))],
                                   tmp_path / "results")
    assert "**0** replicated" in md and "**1** inconclusive" in md and "**1** not run" in md
    assert "**1** reference checks" in md
    assert "health gate failed: old did not beat the unigram loss" in md  # the qualifier is shown
