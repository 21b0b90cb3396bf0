"""The pages generated at build time: scoreboard, status, chapter headers, the pinned install cell."""
import json
from pathlib import Path

import nbformat
import pytest
import yaml

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
    alpha = next(r for r in rows if "Alpha Norm" in r)  # the chapter's row, then its claims'
    assert "not replicated" in alpha and ">gpu<" in rows[rows.index(alpha) + 1]
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
    assert "scale cpu" in text and "1 seed (0)" in text and "wall time" in text and "replib" in text
    assert "seeds 0" not in text
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


# ---------------------------------------------------------------- the reader's pages (issue 12)

from replib.show import (VERDICT_COLORS, SMOKE_COLOR, contrast, format_spread, ours_text,  # noqa: E402
                         seeds_label, tidy_numbers)


@pytest.mark.parametrize("mean, sd, unit, ratio, text", [
    (3.65123, 0.0213, "bits/byte", False, "3.651 ± 0.021 bits/byte"),  # two digits of the spread
    (0.7839, 0.02382, "", True, "0.784× ± 0.024"),  # the × on the mean
    (12.236, 0.840, "ppl", False, "12.24 ± 0.84 ppl"),
    (721.0, 195.0, "", False, "720 ± 200"),
    (0.5, 0.0996, "", False, "0.50 ± 0.10"),  # rounding up to a new digit keeps two
    (1.023e-06, 1.279e-07, "", False, "(1.02 ± 0.13) × 10⁻⁶"),  # one shared power of ten
    (2.0, None, "nats", False, "2 nats"),  # one seed: no spread
])
def test_numbers_are_formatted_by_their_uncertainty(mean, sd, unit, ratio, text):
    assert format_spread(mean, sd, unit, ratio=ratio) == text


@pytest.mark.parametrize("raw, tidy", [
    ("ratio 0.7839 ± 0.02382x (LM 0.104 ± 0.00114)", "ratio 0.784× ± 0.024 (LM 0.104 ± 0.001)"),
    ("LN 2.986 ± 0.021, PN 3.012 ± 0.043 bits/byte", "LN 2.986 ± 0.021, PN 3.012 ± 0.043 bits/byte"),
    ("first/last 5.22e+00 ± 3.13e+00", "first/last 5.2 ± 3.1"),
    ("1.045 ± 0.006x (cpu)", "1.045× ± 0.006 (cpu)"),  # never more digits than were written
    ("slope -1.00 ± 0.00", "slope -1.00 ± 0.00"),
])
def test_chapter_texts_are_tidied_keeping_words_and_units(raw, tidy):
    assert tidy_numbers(raw) == tidy


def test_judges_default_text_is_rebuilt_from_the_exact_summary():
    exp = Experiment("01-alpha", scale="cpu", device="cpu", seeds=[0, 1, 2])
    rule = Rule("x > 1", lambda m: graded(m["x"].mean > 1))
    claim = exp.record(judge("C1", "s", paper="p", rule=rule, metrics={"x": [3.0, 3.00002, 2.99]}))
    assert claim.ours == "x = 2.997 ± 0.005779"  # judge's four digits
    assert ours_text(claim.to_json()) == "x = 2.9967 ± 0.0058"


def test_seeds_are_counted_in_words():
    assert seeds_label([0]) == "1 seed (0)" and seeds_label([0, 1, 2]) == "3 seeds (0, 1, 2)"


def test_every_badge_colour_reads_at_wcag_aa():
    from replib.show import badge
    for color in [*VERDICT_COLORS.values(), SMOKE_COLOR, pages.GREY, pages.BLUE, "#e37400"]:
        html_ = badge("x", color)
        fg = html_.split("color:")[1][:7]
        assert contrast(fg, color) >= 4.5, (color, fg)


def test_one_wall_time_for_a_chapter(book):
    root, chapters, results = book
    cpu = json.loads((results / "cpu" / "01-alpha.json").read_text())
    ran = Outcome("01-alpha", "executed", 123.4, {})
    assert pages.wall_time(ran, cpu) == 123.4  # the execution's, as on the status page
    assert "wall time 123 s" in pages.header_markdown(chapters[0], "cpu", {}, cpu, ran, {})
    assert pages.wall_time(None, cpu) == cpu["wall_time_s"]
    assert pages.wall_time(Outcome("01-alpha", "failed", 9.0, {}), None) is None


def test_scoreboard_groups_by_chapter_and_links_claims_to_their_sections(book):
    root, chapters, results = book
    md = pages.scoreboard_markdown(root, chapters, results)
    assert md.count('class="replib-chapter') == 3
    assert 'href="../notebooks/01-alpha.html#claim-01-alpha-c1"' in md
    assert "1 claim at gpu scale: 1 not replicated" in md
    assert '<div class="replib-scroll"><table class="replib-scoreboard">' in md


def test_landing_page_counts_papers_rolls_up_and_grids_the_claims(book):
    root, chapters, results = book
    (root / "book").mkdir()
    (root / "book" / "papers.yml").write_text(yaml.safe_dump([
        {"id": "01-alpha", "title": "Alpha", "arxiv": "1", "authors": ["A. One", "B. Two"],
         "year": 2020, "venue": "ICML 2020", "code": None},
        {"id": "02-beta", "title": "Beta", "arxiv": "2", "authors": ["C. Three"], "year": 2021,
         "venue": "arXiv preprint", "code": "https://example.org/b"},
        {"id": "04-delta", "title": "Delta", "arxiv": "4", "authors": ["D. Four"], "year": 2022,
         "venue": "arXiv preprint", "code": None}]))
    md = pages.landing_markdown(root, chapters[:2], results)
    assert "2 of the 3 papers have a chapter" in md and "the other 1 are planned" in md
    assert md.count("<em>planned</em>") == 1 and "Delta" in md
    assert 'href="../notebooks/01-alpha.html#claim-01-alpha-c1"' in md  # the grid cell
    assert md.count('class="replib-cell"') == 2
    assert "pipeline check only" in md  # beta: smoke only


def test_chapter_header_has_the_paper_colab_and_results_at_a_glance(book):
    root, chapters, results = book
    paper = {"id": "01-alpha", "title": "Alpha", "arxiv": "2003.07845", "year": 2020,
             "authors": ["Sheng Shen", "Zhewei Yao"], "venue": "ICML 2020",
             "code": "https://github.com/x/y"}
    colab = pages.colab_url("https://github.com/o/r", "abc123", chapters[0])
    assert colab == "https://colab.research.google.com/github/o/r/blob/abc123/notebooks/01-alpha.ipynb"
    head = pages.paper_markdown(paper, colab)
    assert "https://arxiv.org/abs/2003.07845" in head and "https://github.com/x/y" in head
    assert "Sheng Shen, Zhewei Yao" in head and "ICML 2020" in head and colab in head
    found = pages.best_result(pages.recorded("01-alpha", results))
    box = pages.glance_markdown(chapters[0], found, "smoke")
    assert "Results at a glance" in box and 'href="#claim-01-alpha-c1"' in box
    assert "results/gpu/01-alpha.json" in box and "this page's own run at scale smoke" in box
    assert "x = 0" in box and "not replicated" in box


def test_claim_targets_land_on_the_claims_sections():
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("# 1. T"),
                nbformat.v4.new_markdown_cell("## C1, C3: both\n\ntext\n\n### C3: its own part"),
                nbformat.v4.new_markdown_cell("## C1-training: other"),
                nbformat.v4.new_markdown_cell("## Verdicts")]
    where = pages.add_claim_targets(nb, "01-alpha", ["C1", "C3", "C1-training", "C4b", "C9"])
    where = pages.add_claim_targets(nb, "01-alpha", ["C1", "C3", "C1-training", "C4b", "C9"])
    assert where == {"C1": "## C1, C3: both", "C3": "### C3: its own part",
                     "C1-training": "## C1-training: other", "C4b": "## Verdicts", "C9": "## Verdicts"}
    assert nb.cells[1].source.startswith("(claim-01-alpha-c1)=\n## C1, C3")
    assert nb.cells[1].source.count("(claim-") == 2  # idempotent
    assert "(claim-01-alpha-c4b)=\n(claim-01-alpha-c9)=\n## Verdicts" in nb.cells[3].source


def test_cells_are_tagged_and_outputs_scrubbed(tmp_path):
    nb = nbformat.v4.new_notebook()
    install = nbformat.v4.new_code_cell('%pip install -q "replib @ git+https://github.com/o/r@main"')
    params = nbformat.v4.new_code_cell('scale = "cpu"')
    params.metadata["tags"] = ["parameters"]
    injected = nbformat.v4.new_code_cell('scale = "smoke"')
    injected.metadata["tags"] = ["injected-parameters"]
    sizes = nbformat.v4.new_code_cell("cfg = exp.sizes({})")
    figure = nbformat.v4.new_code_cell("fig, ax = plt.subplots()\nax.plot([1])")
    record = nbformat.v4.new_code_cell("sweep = rl.lr_sweep(arms)\nax.plot(x)")
    table = nbformat.v4.new_code_cell("exp.verdict_table()")
    save = nbformat.v4.new_code_cell("exp.save()")
    save.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "PosixPath('/x/y.json')"}),
                    nbformat.v4.new_output("stream", text=f"{tmp_path}/src/a.py:9: Warning\n")]
    mixed = nbformat.v4.new_code_cell("print(seconds)\ndisplay(exp.verdict_table())\nexp.save();")
    mixed.outputs = [nbformat.v4.new_output("stream", text="4 claims, 0 measurements recorded in "
                                            "01-a.json (wall time 27 s at scale smoke)\n")]
    echo = nbformat.v4.new_code_cell("claim.verdict.value")
    echo.outputs = [nbformat.v4.new_output("execute_result", {"text/plain": "'inconclusive'"}),
                    nbformat.v4.new_output("execute_result", {"text/plain": "Claim(id='C1')"})]
    widget = nbformat.v4.new_code_cell("train()")
    widget.outputs = [nbformat.v4.new_output("display_data", {
        "application/vnd.jupyter.widget-view+json": {"model_id": "m"}, "text/plain": "0%|"})]
    nb.cells = [install, params, injected, sizes, figure, record, table, save, widget, mixed, echo]
    nb.metadata["widgets"] = {"state": {}}
    pages.polish_cells(nb, tmp_path)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert all("remove-cell" in t for t in (tags[0], tags[1], tags[2], tags[7]))
    assert "hide-input" in tags[3] and "hide-input" in tags[4] and "hide-input" not in tags[5]
    assert tags[6] == ["remove-input"] and not widget.outputs and "widgets" not in nb.metadata
    assert [o.output_type for o in save.outputs] == ["stream"]
    assert save.outputs[0].text == "src/a.py:9: Warning\n"
    assert tags[9] == ["remove-input"] and not mixed.outputs  # one wall time: the header's
    assert [o.data["text/plain"] for o in echo.outputs] == ["inconclusive"]


def test_one_seed_is_counted_in_the_singular_in_outputs(tmp_path):
    cell = nbformat.v4.new_code_cell("report()")
    cell.outputs = [nbformat.v4.new_output("stream", text="22 runs: 11 norms x 2 lrs x 1 seeds, "
                                           "diverged in 1/1 seeds; 11 seeds; 21 seeds\n")]
    nb = nbformat.v4.new_notebook()
    nb.cells = [cell]
    pages.polish_cells(nb, tmp_path)
    assert cell.outputs[0].text == ("22 runs: 11 norms x 2 lrs x 1 seed, diverged in 1/1 seeds; "
                                    "11 seeds; 21 seeds\n")


def test_what_we_learned_opens_with_the_finding(book):
    root, chapters, results = book
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_markdown_cell("## What we learned\n\nLong text."),
                nbformat.v4.new_markdown_cell("## Other")]
    found = pages.best_result(pages.recorded("01-alpha", results))
    assert pages.add_finding(nb, found) and pages.add_finding(nb, found)  # idempotent
    src = nb.cells[0].source
    assert src.count("replib-learned") == 1 and src.startswith("## What we learned\n\n<p")
    assert "Of the paper's 1 claim we tested at gpu scale (1 seed (0)), not replicated: C1." in src
    assert src.endswith("Long text.")


# ---------------------------------------------------------------- figures and citations

def test_a_figure_describes_itself_for_its_alt_text_and_caption():
    """replib.plotting.describe reads what a figure shows off the figure (title, each panel's
    axes, log scales, legend entries or categories); sphinx_ext.figure_words splits it into
    caption and alt text, and still says something of an old bare repr."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from replib import plotting
    from replib.book.sphinx_ext import figure_words

    fig, (a, b) = plt.subplots(1, 2)
    a.plot([1, 2], [3, 4], label="LayerNorm")
    a.plot([1, 2], [4, 5], label="$\\sigma$Norm")
    a.set(xlabel="step", ylabel="loss (bits/byte)", yscale="log", title="Validation loss")
    a.legend()
    plotting.seed_dots(b, {"BN": [1.0, 2.0], "LN": [2.0, 3.0]}, "accuracy")
    fig.suptitle("LayerNorm against BatchNorm")
    words = plotting.describe(fig)
    caption, alt = figure_words(words)
    assert caption == "LayerNorm against BatchNorm."
    for part in ("2 panels", "loss (bits/byte) against step", "y on a log scale",
                 "legend: LayerNorm, sigmaNorm", "categories: BN, LN", "Validation loss"):
        assert part in alt, (part, alt)
    fig.suptitle("")
    caption, alt = figure_words(plotting.describe(fig))
    assert caption == "Validation loss." and alt.count("Validation loss") == 1  # said once
    plt.close(fig)
    assert figure_words("<Figure size 1320x418 with 2 Axes>") == ("A figure with 2 panels.",) * 2


def test_bibliography_labels_read_like_the_text_citations():
    from pybtex.database import Entry, Person

    from replib.book.sphinx_ext import AuthorYearLabels, author_year

    def entry(key, year, *names):
        e = Entry("article", fields={"year": year})
        e.persons["author"] = [Person(n) for n in names]
        e.key = key
        return e
    assert author_year(entry("a", "2016", "Jimmy Lei Ba", "Jamie Kiros", "Geoffrey Hinton")) == \
        "Ba et al., 2016"
    assert author_year(entry("b", "2015", "Sergey Ioffe", "Christian Szegedy")) == \
        "Ioffe and Szegedy, 2015"
    twins = [entry("c", "2025", "Jiachen Zhu", "X Chen"), entry("d", "2025", "Jiachen Zhu", "Y Li")]
    twins += [entry("e", "2025", "Ann Zhu")]
    assert list(AuthorYearLabels().format_labels(twins)) == [
        "Zhu and Chen, 2025", "Zhu and Li, 2025", "Zhu, 2025"]
    same = [entry("f", "2025", "A Zhu", "B X", "C Y"), entry("g", "2025", "A Zhu", "D X", "E Y")]
    assert list(AuthorYearLabels().format_labels(same)) == ["Zhu et al., 2025a", "Zhu et al., 2025b"]


def test_a_claims_note_is_tidied_like_its_numbers():
    from replib.show import claim_cells
    claim = {"id": "C1", "statement": "s", "paper": "p", "ours": "1.2 ± 0.1", "verdict": "replicated",
             "rule": "r", "note": "weights grew at most 1.031 ± 0.001x in 15 epochs"}
    cells = claim_cells(claim, "cpu")
    assert "1.031× ± 0.001 in 15 epochs" in cells and "0.001x" not in cells
    claim["note"] = "state growth 1 ± 0x over all lengths"  # no spread to round by: the × still moves
    assert "state growth 1× ± 0 over" in claim_cells(claim, "cpu")
