"""What the site says at a glance, generated at build time from ``results/``, ``book/papers.yml``
and the executions, so the stored notebooks stay clean and every chapter, new ones too, gets it:

- the **landing page** (``book/intro.md`` includes ``_generated/landing.md``): how many of the
  papers have a chapter, a roll-up per chapter, a chapters x claims grid coloured by verdict, and
  the planned papers;
- the **scoreboard** (``book/scoreboard.md`` includes ``_generated/scoreboard.md``): every claim,
  grouped by chapter under a one-line roll-up, from the best scale on record (gpu over cpu over
  smoke; smoke is marked *pipeline check only* and never counted as a result), each claim linking
  to its section;
- the **status page** (``book/status.md`` includes ``_generated/status.md``): each chapter's last
  execution against its scale's budget, cache state, failures, the environment and the commit;
- in each staged chapter: under the title the **paper** (authors, venue and year, arXiv and code
  links), an **Open in Colab** badge at the build's commit and **Results at a glance**, then the
  run's badges; a target on each claim's section; "What we learned" opened by the finding in one
  sentence; the cells' tags (install, parameters and save cells removed, plotting and size cells
  folded) and outputs scrubbed of widget views, object reprs and this machine's paths; a verdict
  table from an older replib re-rendered; the install cell pinned to the build's commit.

Numbers are shown by their uncertainty and badges in the colours of :mod:`replib.show`.
Everything is regenerated on every build, so a result committed from a GPU run shows on a site
built on a CPU without re-executing anything.
"""
from __future__ import annotations

import html
import json
import re
from pathlib import Path

import nbformat
import torch
import yaml

from .. import provenance
from ..bench import performance_markdown
from ..claims import Verdict
from ..errors import ReplibError
from ..results import read
from ..scales import SCALES
from ..show import (CLAIM_HEAD, SMOKE_COLOR, VERDICT_COLORS, VerdictTable, badge, claim_cells,
                    ours_text, seeds_label, text_color, verdict_badge)
from .chapters import Chapter
from .execute import last_outcome, result_snapshot, split_title, unreadable_results

SCALE_ORDER = ("gpu", "cpu", "smoke")  # strongest evidence first
SUMMARY_ORDER = [(Verdict.REPLICATED, "replicated"), (Verdict.PARTIAL, "partially replicated"),
                 (Verdict.NOT_REPLICATED, "not replicated"), (Verdict.INCONCLUSIVE, "inconclusive"),
                 (Verdict.NOT_TESTABLE, "not testable"), (Verdict.NOT_RUN, "not run"),
                 (Verdict.REFERENCE, "reference checks (hold by construction; not replications)")]
HEADER_TAG = "replib-header"
INSTALL_RE = re.compile(r'(replib @ git\+)(https://[^"@\s]+)@([^"\s]+)"')
GREY, BLUE = "#455a64", "#1565c0"


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def chapter_title(root: Path, chapter: Chapter) -> str:
    """The notebook's first heading without its number: '# 16. Self-Normalizing ...'."""
    nb = nbformat.read(root / chapter.path, as_version=4)
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            for line in cell.source.splitlines():
                if line.startswith("# "):
                    return re.sub(r"^#\s+\d+\.\s*", "", line).strip()
    return chapter.id


def chapter_href(chapter: Chapter, page_dir: str = "book") -> str:
    """A relative link from a page in ``page_dir`` to the chapter's rendered HTML."""
    up = "../" * len(Path(page_dir).parts)
    return f"{up}{chapter.path.with_suffix('.html').as_posix()}"


def claim_anchor(chapter_id: str, claim_id: str) -> str:
    """The id of a claim's section on its chapter's page (a MyST target the build inserts)."""
    return "claim-" + re.sub(r"[^a-z0-9]+", "-", f"{chapter_id}-{claim_id}".lower()).strip("-")


def claim_href(chapter: Chapter, claim_id: str, page_dir: str = "book") -> str:
    return f"{chapter_href(chapter, page_dir)}#{claim_anchor(chapter.id, claim_id)}"


def recorded(chapter: str, results_root: Path) -> dict[str, dict]:
    """The chapter's results file at each scale that has one (a corrupt file is an error)."""
    return {scale: read(results_root / scale / f"{chapter}.json")
            for scale in SCALES if (results_root / scale / f"{chapter}.json").exists()}


def best_result(results: dict[str, dict]) -> tuple[str, dict] | None:
    for scale in SCALE_ORDER:
        if scale in results:
            return scale, results[scale]
    return None


def load_papers(root: Path) -> dict[str, dict]:
    """``book/papers.yml`` by chapter id (empty when the book has none, as a test fixture)."""
    path = root / "book" / "papers.yml"
    if not path.exists():
        return {}
    try:
        return {p["id"]: p for p in yaml.safe_load(path.read_text())}
    except (yaml.YAMLError, KeyError, TypeError) as e:
        raise ReplibError(f"{path}: not a list of papers ({e})") from None


def wall_time(outcome, record: dict | None) -> float | None:
    """A chapter's one wall time: its last execution's (what the status page shows), else what
    its results file recorded."""
    if outcome is not None and outcome.ok:
        return outcome.seconds
    return record["wall_time_s"] if record else None


def tally(claims: list[dict]) -> dict[str, int]:
    counts = {v.value: 0 for v in Verdict}
    for c in claims:
        counts[Verdict(c["verdict"]).value] += 1
    return counts


def rollup_text(claims: list[dict], scale: str) -> str:
    """"4 claims at cpu scale: 2 replicated, 1 not replicated, 1 inconclusive"."""
    counts = tally(claims)
    parts = [f"{n} {v}" for v, n in counts.items() if n]
    where = "smoke scale (pipeline check only)" if scale == "smoke" else f"{scale} scale"
    return f"{len(claims)} claim{'' if len(claims) == 1 else 's'} at {where}: " + ", ".join(parts)


def rollup_badge(claims: list[dict], scale: str) -> str:
    """One badge per chapter: how many of its judged claims held."""
    if scale == "smoke":
        return badge("pipeline check only", SMOKE_COLOR)
    judged = [c for c in claims if Verdict(c["verdict"]).judged]
    held = sum(Verdict(c["verdict"]) in (Verdict.REPLICATED, Verdict.PARTIAL) for c in judged)
    if not judged:
        return badge("no judged claim", VERDICT_COLORS["inconclusive"])
    color = (VERDICT_COLORS["replicated"] if held == len(judged) else
             VERDICT_COLORS["partially replicated"] if held else
             VERDICT_COLORS["not replicated"] if any(c["verdict"] == "not replicated" for c in judged)
             else VERDICT_COLORS["inconclusive"])
    return badge(f"{held} of {len(judged)} judged held", color,
                 title="replicated or partially replicated, of the claims judged at this scale")


# ---------------------------------------------------------------- scoreboard

def _chapter_rows(root: Path, chapters: list[Chapter], results_root: Path,
                  unreadable: dict[str, dict[str, str]] | None):
    """Per chapter: (chapter, title, scale or None, claims, record, bad-files)."""
    for ch in chapters:
        found = best_result(recorded(ch.id, results_root))
        scale, record = found if found else (None, None)
        yield (ch, chapter_title(root, ch), scale, (record or {}).get("claims") or [], record,
               (unreadable or {}).get(ch.id, {}))


def scoreboard_markdown(root: Path, chapters: list[Chapter], results_root: Path,
                        unreadable: dict[str, dict[str, str]] | None = None) -> str:
    """Every claim, grouped by chapter under a one-line roll-up; each claim links to its section.
    ``unreadable``: chapter -> {scale: why} for results files the build set aside."""
    counts = {v.value: 0 for v, _ in SUMMARY_ORDER}
    smoke_only, not_run, rows = 0, 0, []
    for ch, title, scale, claims, record, bad in _chapter_rows(root, chapters, results_root,
                                                               unreadable):
        link = f'<a href="{chapter_href(ch)}">{_e(ch.id[:2])}. {_e(title)}</a>'
        if record is None:
            not_run += 1
            what = (" ".join(badge(f"results/{s}/{ch.id}.json unreadable", VERDICT_COLORS[
                "not replicated"], title=why) for s, why in bad.items()) if bad
                else badge("not yet run", VERDICT_COLORS["inconclusive"]))
            kind = "replib-unreadable" if bad else "replib-not-run"
            rows.append(f'<tr class="replib-chapter {kind}"><th colspan="5">{link}<br>{what}'
                        "</th></tr>")
            continue
        if not claims:  # a benchmark: measurements, no verdicts
            rows.append(f'<tr class="replib-chapter"><th colspan="5">{link}<br><small>benchmark: '
                        f'{len(record.get("measurements", []))} measurements at {_e(scale)} scale, '
                        "no paper claims</small></th></tr>")
            continue
        rows.append(f'<tr class="replib-chapter"><th colspan="5">{link} '
                    f'{rollup_badge(claims, scale)}<br><small>{_e(rollup_text(claims, scale))}'
                    "</small></th></tr>")
        for c in claims:
            if scale == "smoke":
                smoke_only += 1
            else:
                counts[Verdict(c["verdict"]).value] += 1
            rows.append(f"<tr>{claim_cells(c, scale, claim_href(ch, c['id']))}"
                        f"<td>{_e(scale)}</td></tr>")
    summary = " · ".join(f"**{counts[v.value]}** {label}" for v, label in SUMMARY_ORDER)
    summary += f" · {smoke_only} claims with smoke results only (pipeline check only)" \
        if smoke_only else ""
    summary += f" · {not_run} chapters not yet run" if not_run else ""
    head = f"<thead><tr>{CLAIM_HEAD}<th>scale</th></tr></thead>"
    table = ('<div class="replib-scroll"><table class="replib-scoreboard">\n' + head
             + "\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table></div>")
    return (f"Claims judged at cpu or gpu scale: {summary}.\n\n"
            f"{len(chapters)} chapters in the book.\n\n{table}\n")


# ---------------------------------------------------------------- landing page

def landing_markdown(root: Path, chapters: list[Chapter], results_root: Path,
                     unreadable: dict[str, dict[str, str]] | None = None) -> str:
    """The landing page's generated part: how many of the papers have a chapter, a roll-up per
    chapter, a chapters x claims grid coloured by verdict, and the planned papers."""
    papers = load_papers(root)
    written = {ch.id for ch in chapters}
    with_chapter = [p for p in papers if p in written]
    planned = [p for pid, p in papers.items() if pid not in written]
    extra = [ch for ch in chapters if ch.id not in papers]  # benchmarks (9x-...)
    rows, grid = [], []
    for ch, title, scale, claims, record, bad in _chapter_rows(root, chapters, results_root,
                                                               unreadable):
        paper = papers.get(ch.id)
        link = f'<a href="{chapter_href(ch)}">{_e(ch.id[:2])}. {_e(title)}</a>'
        cite = (f"{_e(_short_authors(paper['authors'], 1))}, {_e(_venue(paper))}"
                if paper else "benchmark")
        if record is None:
            state = (badge("results unreadable", VERDICT_COLORS["not replicated"]) if bad
                     else badge("not yet run", VERDICT_COLORS["inconclusive"]))
            rows.append(f"<tr><td>{link}</td><td>{cite}</td>"
                        f'<td colspan="5">—</td><td>—</td><td>{state}</td></tr>')
            grid.append(f'<div class="replib-grid-row"><span class="replib-grid-name">{link}</span>'
                        f"<span>{state}</span></div>")
            continue
        n = tally(claims)
        other = n["reference check"] + n["not run"] + n["not testable"]
        nums = "".join(f"<td>{x or '·'}</td>" for x in (
            n["replicated"], n["partially replicated"], n["not replicated"], n["inconclusive"],
            other))
        summary = (rollup_badge(claims, scale) if claims else
                   badge(f"benchmark: {len(record.get('measurements', []))} measurements", GREY))
        rows.append(f"<tr><td>{link}</td><td>{cite}</td>{nums}<td>{_e(scale)}</td>"
                    f"<td>{summary}</td></tr>")
        cells = "".join(
            f'<a class="replib-cell" href="{claim_href(ch, c["id"])}" style="{_colors(c, scale)}"'
            f' title="{_e(c["id"])}: {_e(c["statement"])} ({_e(Verdict(c["verdict"]).value)}, '
            f'{_e(scale)})"><span>{_e(c["id"])}</span></a>' for c in claims) or \
            '<span class="replib-grid-note">benchmark, no claims</span>'
        grid.append(f'<div class="replib-grid-row"><span class="replib-grid-name">{link}</span>'
                    f'<span class="replib-grid-cells">{cells}</span></div>')
    legend = " ".join(badge(v.value, VERDICT_COLORS[v.value]) for v, _ in SUMMARY_ORDER)
    head = ("<thead><tr><th>chapter</th><th>paper</th><th>replicated</th><th>partially</th>"
            "<th>not replicated</th><th>inconclusive</th><th>other</th><th>strongest scale</th>"
            "<th>held</th></tr></thead>")
    table = (f'<div class="replib-scroll"><table class="replib-rollup">{head}<tbody>'
             + "".join(rows) + "</tbody></table></div>")
    plan = "".join(
        f'<li>{_e(p["id"][:2])}. {_e(p["title"])} ({_e(_short_authors(p["authors"], 1))}, '
        f'{_e(_venue(p))}; <a href="https://arxiv.org/abs/{_e(p["arxiv"])}">'
        f'arXiv:{_e(p["arxiv"])}</a>) <em>planned</em></li>' for p in planned)
    bench = (f" and {len(extra)} benchmark{'s' if len(extra) > 1 else ''} across them"
             if extra else "")
    return (f'<p class="replib-count"><b>{len(with_chapter)} of the {len(papers)} papers have a '
            f"chapter</b>{bench}; the other {len(planned)} are planned (listed below).</p>\n\n"
            "## Every chapter at a glance\n\n"
            "Each chapter's claims at the strongest scale on record (gpu over cpu; smoke only "
            "checks the pipeline). *Held*: replicated or partially replicated, of the claims "
            "the run could judge; reference checks, inconclusive and not-run claims are counted "
            "apart.\n\n"
            f"{table}\n\n"
            "## Chapters × claims\n\n"
            "Each square is one claim, coloured by its verdict; it links to the claim's "
            "section.\n\n"
            f'<div class="replib-grid">{"".join(grid)}</div>\n'
            f'<p class="replib-legend">{legend} {badge("smoke: pipeline check only", SMOKE_COLOR)}'
            "</p>\n\n"
            f"## Planned chapters\n\n"
            f'<details class="replib-planned"><summary>{len(planned)} papers without a chapter '
            f"yet</summary><ul>{plan}</ul></details>\n")


def _venue(paper: dict) -> str:
    """"ICML 2020"; "arXiv preprint, 2016" (the year added where the venue lacks it)."""
    year = str(paper.get("year", ""))
    return paper["venue"] + ("" if not year or year in paper["venue"] else f", {year}")


def _colors(claim: dict, scale: str) -> str:
    background = (SMOKE_COLOR if scale == "smoke" else
                  VERDICT_COLORS[Verdict(claim["verdict"]).value])
    return f"background:{background};color:{text_color(background)}"


def _short_authors(authors: list[str], keep: int = 3) -> str:
    """"Ba, Kiros and Hinton"; past ``keep`` authors, the first one's surname and "et al."."""
    surnames = [a.split()[-1] for a in authors] or ["?"]
    if len(surnames) > keep:
        return f"{surnames[0]} et al."
    return surnames[0] if len(surnames) == 1 else ", ".join(surnames[:-1]) + " and " + surnames[-1]


# ---------------------------------------------------------------- status

def environment() -> dict[str, str]:
    versions = provenance.library_versions()
    cuda = torch.cuda.is_available()
    return {
        "Python": versions["python"], "torch": versions["torch"],
        "replib": versions.get("replib", "?"),
        "CUDA": (torch.version.cuda or "none") + ("" if cuda else " (no GPU visible)"),
        "device": torch.cuda.get_device_name(0) if cuda else provenance.cpu_name(),
        "CPU cores": str(provenance.hardware(torch.device("cpu"))["cpu_count"]),
    }


def status_markdown(chapters: list[Chapter], stage: Path, scale: str,
                    commit: str | None = None) -> str:
    """``commit``: the one the site is built from (the chapters' Colab links open it)."""
    budget, n_seeds = SCALES[scale].budget_s, SCALES[scale].n_seeds
    rows = []
    for ch in chapters:
        o = last_outcome(stage, ch)
        if o is None:
            rows.append(f"<tr><td>{_e(ch.id)}</td><td>{badge('not run', GREY)}</td>"
                        "<td>—</td><td>—</td><td>—</td><td></td></tr>")
            continue
        seconds = wall_time(o, None) or o.seconds
        share = seconds / budget
        color = (VERDICT_COLORS["not replicated"] if o.status == "failed" else
                 VERDICT_COLORS["partially replicated"] if share > 1 else VERDICT_COLORS["replicated"])
        state = {"executed": "executed", "cached": "cached (unchanged)",
                 "failed": "failed"}.get(o.status, o.status)
        error = f"<code>{_e(o.error)}</code>" if o.error else ""
        rows.append(f"<tr><td>{_e(ch.id)}</td><td>{badge(state, color)}</td>"
                    f"<td>{seconds:.0f}</td><td>{share:.0%}</td><td>{_e(o.finished_at)}</td>"
                    f"<td>{error}</td></tr>")
    env = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in environment().items())
    bad = [f"- `results/{s}/{ch}.json`: {why}"
           for ch, scales in unreadable_results(stage).items() for s, why in scales.items()]
    bad_text = ("\n\n:::{warning}\nThese results files could not be read; the site is built "
                "without them and marks their chapters unreadable:\n\n" + "\n".join(bad)
                + "\n:::\n") if bad else ""
    built = (f'\n\nBuilt from commit <code class="replib-commit">{_e(commit)}</code>; each '
             "chapter's Colab link opens its notebook at that commit." if commit else "")
    return (f"Scale of this build: `{scale}` (budget {budget:.0f} s per chapter, "
            f"{n_seeds} seed{'' if n_seeds == 1 else 's'}, on {SCALES[scale].hardware})."
            f"{built}{bad_text}\n\n"
            '<div class="replib-scroll"><table class="replib-status">\n<thead><tr><th>chapter</th><th>last execution</th>'
            "<th>wall time (s)</th><th>of budget</th><th>finished (UTC)</th><th>error</th></tr>"
            "</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table></div>\n\n"
            "## Environment of this build\n\n"
            f'<div class="replib-scroll"><table class="replib-env"><tbody>{env}</tbody></table>'
            "</div>\n")


# ---------------------------------------------------------------- chapter header

def injected_parameters(nb) -> dict:
    """The parameters papermill injected (its ``injected-parameters`` cell), as a dict."""
    for cell in nb.cells:
        if "injected-parameters" in cell.get("metadata", {}).get("tags", []):
            params = {}
            for line in cell.source.splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    key, value = line.split("=", 1)
                    try:
                        params[key.strip()] = json.loads(value.strip().replace("None", "null")
                                                         .replace("'", '"'))
                    except json.JSONDecodeError:
                        params[key.strip()] = value.strip()
            return params
    return {}


def header_markdown(chapter: Chapter, scale: str, params: dict, record: dict | None,
                    outcome, others: dict[str, dict],
                    unreadable: dict[str, str] | None = None) -> str:
    """A badge line for the run that produced this page, then other scales' verdicts; a results
    file of this chapter that could not be read is named, with why, in a red badge."""
    parts = [badge(f"this page: scale {scale}" + (" · pipeline check only" if scale == "smoke"
                                                   else ""),
                   SMOKE_COLOR if scale == "smoke" else BLUE)]
    parts += [badge(f"results/{s}/{chapter.id}.json unreadable", VERDICT_COLORS["not replicated"],
                    title=why) for s, why in (unreadable or {}).items()]
    seconds = wall_time(outcome, record)
    if record:
        hw = record["hardware"]
        where = hw.get("gpu") or hw.get("cpu", "?")
        commit = (record["git"].get("commit") or "unknown")[:10]
        commit += " (modified)" if record["git"].get("dirty") else ""
        parts += [badge(f"device {record['device']} · {where}", GREY),
                  badge(seeds_label(record["seeds"]), GREY),
                  badge(f"wall time {seconds:.0f} s", GREY),
                  badge(f"replib {record['versions'].get('replib', '?')} @ {commit}", GREY),
                  badge(f"torch {record['versions']['torch']}", GREY),
                  badge(record["started_at"][:10], GREY)]
    else:
        seeds = params.get("seeds")
        parts += [badge(f"device {params.get('device', '?')}", GREY),
                  badge(seeds_label(seeds) if seeds else "default seeds", GREY)]
        if outcome is not None:
            parts.append(badge(f"{outcome.status} after {outcome.seconds:.0f} s",
                               VERDICT_COLORS["not replicated"] if outcome.status == "failed"
                               else GREY))
    text = '<p class="replib-header">' + " ".join(parts) + "</p>\n"
    if others:
        scales = [s for s in SCALE_ORDER if s in others or s == scale]
        this = {c["id"]: c for c in (record or {}).get("claims", [])}
        ids = list(dict.fromkeys([*this, *(c["id"] for s in others
                                           for c in others[s]["claims"])]))
        head = "".join(f"<th>{_e(s)}{' (this page)' if s == scale else ''}</th>" for s in scales)
        rows = []
        for cid in ids:
            cells = []
            for s in scales:
                claims = this if s == scale else {c["id"]: c for c in others[s]["claims"]}
                c = claims.get(cid)
                cells.append(f"<td>{verdict_badge(c['verdict'], s)}<br><small>"
                             f"{_e(ours_text(c))}</small></td>" if c else "<td>—</td>")
            rows.append(f"<tr><td>{_e(cid)}</td>{''.join(cells)}</tr>")
        if rows:
            text += ("<details class=\"replib-other-scales\"><summary>Verdicts at every scale "
                     "on record</summary>\n<div class=\"replib-scroll\"><table><thead><tr>"
                     "<th>claim</th>" + head + "</tr></thead><tbody>" + "".join(rows)
                     + "</tbody></table></div>\n</details>\n")
    return text


def colab_url(url: str, ref: str, chapter: Chapter) -> str:
    owner_repo = re.sub(r"^https://github\.com/", "", url.rstrip("/"))
    return (f"https://colab.research.google.com/github/{owner_repo}/blob/{ref}/"
            f"{chapter.path.as_posix()}")


def paper_markdown(paper: dict | None, colab: str) -> str:
    """Under the title: the paper (authors, venue and year, arXiv, official code) and the
    "Open in Colab" badge (the notebook at the commit the site is built from)."""
    open_colab = (f'<a class="replib-colab" href="{_e(colab)}">'
                  f'{badge("Open in Colab", "#e37400")}</a>')
    if paper is None:  # a benchmark of the book's own, no paper
        return f'<div class="replib-paper"><p>A benchmark of this book. {open_colab}</p></div>'
    authors = paper["authors"]
    names = ", ".join(authors[:8]) + (f" and {len(authors) - 8} more" if len(authors) > 8 else "")
    venue = _venue(paper)
    code = (f'<a href="{_e(paper["code"])}">official code</a>' if paper.get("code")
            else "no official code found")
    return (f'<div class="replib-paper"><p class="replib-paper-cite"><b>{_e(paper["title"])}</b>'
            f"<br>{_e(names)} · <em>{_e(venue)}</em></p>"
            f'<p class="replib-paper-links"><a href="https://arxiv.org/abs/{_e(paper["arxiv"])}">'
            f'arXiv:{_e(paper["arxiv"])}</a> · {code} · {open_colab}</p></div>')


def glance_markdown(chapter: Chapter, found: tuple[str, dict] | None, page_scale: str) -> str:
    """"Results at a glance": each claim in one sentence, the paper's number, ours with its
    spread and the verdict badge, linking to the claim's section; from the strongest scale on
    record (the one the scoreboard shows), which may differ from this page's own run."""
    if found is None:
        body = "<p>No results on record yet: this chapter has not run at cpu or gpu scale.</p>"
        src = ""
    else:
        scale, record = found
        src = (f'<p class="replib-glance-source">From <code>results/{_e(scale)}/{_e(chapter.id)}'
               f".json</code>: scale {_e(scale)}, {_e(seeds_label(record['seeds']))}, "
               f"{_e(record['started_at'][:10])}"
               + (f"; the figures below are this page's own run at scale {_e(page_scale)}"
                  + (" (a pipeline check)" if page_scale == "smoke" else "")
                  if page_scale != scale else "") + ".</p>")
        items = []
        for c in record.get("claims") or []:
            href = f"#{claim_anchor(chapter.id, c['id'])}"
            items.append(
                f'<li>{verdict_badge(Verdict(c["verdict"]).value, scale)} '
                f'<a href="{href}"><b>{_e(c["id"])}</b></a> {_e(c["statement"])}'
                f'<br><small><span class="replib-k">paper</span> {_e(c["paper"])}'
                f'<br><span class="replib-k">ours</span> {_e(ours_text(c))}</small></li>')
        if items:
            body = f'<ul class="replib-glance-claims">{"".join(items)}</ul>'
        else:
            body = (f"<p>A benchmark: {len(record.get('measurements', []))} measurements, no "
                    "paper claims; the tables below hold them.</p>")
    return (f'<div class="replib-glance"><p class="replib-glance-title">Results at a glance</p>'
            f"{src}{body}</div>\n")


# ---------------------------------------------------------------- the staged notebook

TARGET_RE = re.compile(r"^\(claim-[a-z0-9-]+\)=\n", re.M)
FIGURE_RE = re.compile(r"plt\.(subplots|figure|show)\b|\bplotting\.|_figure\(|\bax\.|\baxes\[")
# Code that is the story (training, sweeps, recording a claim) stays in view beside its figure.
STORY_RE = re.compile(r"\.record\(|\bjudge\(|\blr_sweep\(|\btrain\w*\(|_sweep\(|\bbenchmark\(|"
                      r"\bfinetune\(|\bholdout\(|\brun_\w+\(|\bfit\(")
SAVE_RE = re.compile(r"^\s*(\w+\s*=\s*)?(\w+\.)?save\(\)\s*;?\s*$")
TABLE_RE = re.compile(r"^\s*(display\()?exp\.verdict_table\(\)\)?\s*$")
# Bare reprs a cell's last expression leaves: paths, recorded claims, matplotlib objects.
PATH_REPR_RE = re.compile(r"^((Posix|Windows)?Path\(|Claim\(|<Figure size|\[?<matplotlib\.|Text\(|"
                          r"<[\w.]+ object at 0x)")
STRING_REPR_RE = re.compile(r"^'[^'\\\n]*'$")
SAVED_RE = re.compile(r"^\d+ claims, \d+ measurements recorded in \S+ \(wall time .*\n?", re.M)
OLD_TABLE_RE = re.compile(r"<th>verdict</th>\s*<th>qualified by</th>\s*<th>rule</th>")


LEARNED_RE = re.compile(r"^(#{2,3}\s+.*what we learned.*)$", re.I | re.M)
FINDING_RE = re.compile(r"\n*<p class=\"replib-learned\">.*?</p>\n*", re.S)
FINDING_WORDS = [(Verdict.REPLICATED, "replicated"), (Verdict.PARTIAL, "partially replicated"),
                 (Verdict.NOT_REPLICATED, "not replicated"), (Verdict.INCONCLUSIVE, "inconclusive"),
                 (Verdict.NOT_RUN, "not run at this scale"), (Verdict.NOT_TESTABLE, "not testable"),
                 (Verdict.REFERENCE, "reference checks (hold by construction)")]


def finding_sentence(found: tuple[str, dict] | None) -> str:
    """The chapter's finding in one sentence, from the record the scoreboard shows."""
    if found is None or not found[1].get("claims"):
        return ""
    scale, record = found
    claims = record["claims"]
    parts = []
    for verdict, words in FINDING_WORDS:
        ids = [c["id"] for c in claims if Verdict(c["verdict"]) is verdict]
        if ids:
            parts.append(f"{words}: {', '.join(ids)}")
    where = ("at smoke scale (a pipeline check, not a result)" if scale == "smoke"
             else f"at {scale} scale ({seeds_label(record['seeds'])})")
    n = f"{len(claims)} claim{'' if len(claims) == 1 else 's'}"
    return f"Of the paper's {n} we tested {where}, " + "; ".join(parts) + "."


def add_finding(nb, found: tuple[str, dict] | None) -> bool:
    """Open the "What we learned" section with the finding in one sentence (idempotent)."""
    sentence = finding_sentence(found)
    for cell in nb.cells:
        if cell.cell_type != "markdown":
            continue
        cell.source = FINDING_RE.sub("\n\n", cell.source).rstrip("\n") if "replib-learned" in \
            cell.source else cell.source
        if sentence and LEARNED_RE.search(cell.source):
            cell.source = LEARNED_RE.sub(
                lambda m: f'{m.group(1)}\n\n<p class="replib-learned"><b>In one sentence.</b> '
                          f"{html.escape(sentence, quote=False)}</p>\n", cell.source, count=1)
            return True
    return False


def render_verdict_tables(nb, record: dict | None) -> int:
    """A verdict table an older replib printed as a pandas DataFrame, rendered again from the
    page's own record like the scoreboard (no re-execution needed); how many were replaced."""
    if not record or not record.get("claims"):
        return 0
    n = 0
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            value = out.get("data", {}).get("text/html")
            text = "".join(value) if isinstance(value, list) else value
            if text and OLD_TABLE_RE.search(text):
                table = VerdictTable(record["claims"], record["scale"])
                out["data"]["text/html"] = table._repr_html_()
                out["data"].pop("text/plain", None)
                n += 1
    return n


def _heading_for(headings: list[tuple[int, int, str]], claim_id: str):
    """The heading of a claim's section: one that starts with its id, else one that names it,
    else its base id's (C4 for C4b), else the verdicts section."""
    def names(text, cid):
        return re.search(rf"(?<![\w-]){re.escape(cid)}(?![\w-])", text)
    base = re.match(r"C\d+", claim_id)
    for test in (lambda t: names(t.lstrip("# "), claim_id) and
                 t.lstrip("# ").startswith(claim_id),
                 lambda t: names(t, claim_id),
                 lambda t: base and names(t, base.group(0)),
                 lambda t: re.match(r"#+\s+Verdicts", t)):
        for h in headings:
            if test(h[2]):
                return h
    return None


def add_claim_targets(nb, chapter_id: str, claim_ids: list[str]) -> dict[str, str]:
    """Put a MyST target ``(claim-NN-slug-c1)=`` above each claim's section heading (idempotent);
    returns claim id -> the heading it landed on."""
    headings = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown":
            cell.source = TARGET_RE.sub("", cell.source)
            for j, line in enumerate(cell.source.split("\n")):
                if re.match(r"#{2,4}\s", line):
                    headings.append((i, j, line))
    placed: dict[tuple[int, int], list[str]] = {}
    where = {}
    for cid in dict.fromkeys(claim_ids):
        h = _heading_for(headings, cid)
        if h is not None:
            placed.setdefault(h[:2], []).append(claim_anchor(chapter_id, cid))
            where[cid] = h[2]
    for (i, j), labels in sorted(placed.items(), reverse=True):
        lines = nb.cells[i].source.split("\n")
        lines[j:j] = [f"({label})=" for label in labels]
        nb.cells[i].source = "\n".join(lines)
    return where


def _tag(cell, tag: str) -> None:
    tags = cell.metadata.setdefault("tags", [])
    if tag not in tags:
        tags.append(tag)


ONE_SEEDS_RE = re.compile(r"(?<![\d/.,])\b1 seeds\b")


def _scrub_text(text: str, root: Path) -> str:
    """Absolute paths of the build machine out of an output's text, and a count of one seed in
    the singular ("x 1 seeds" from a format string that assumed several reads "x 1 seed")."""
    text = ONE_SEEDS_RE.sub("1 seed", text.replace(f"{root}/", ""))
    return re.sub(r"(/[^\s/'\"]+)+/(site-packages|dist-packages)/", r"…/\2/", text)


def polish_cells(nb, root: Path) -> None:
    """What the page shows of the code: the install, parameters (papermill's injected one too)
    and save cells removed, plotting and size-table cells folded (``hide-input``), a cell that
    only shows the verdict table without its one line of code; no widget views (a note stands in
    for each on the static site), no object reprs of paths, no absolute paths of this machine."""
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        src, tags = cell.source, cell.metadata.get("tags", [])
        lines = src.strip().splitlines()
        if (INSTALL_RE.search(src) or {"parameters", "injected-parameters"} & set(tags)
                or (lines and all(SAVE_RE.match(line) for line in lines))):
            _tag(cell, "remove-cell")
        elif TABLE_RE.match(src.strip()) or any(SAVE_RE.match(line) for line in lines):
            _tag(cell, "remove-input")  # the verdict table shows; the bookkeeping code does not
        elif ((".sizes(" in src or FIGURE_RE.search(src)) and not STORY_RE.search(src)
              and "remove-input" not in tags):
            _tag(cell, "hide-input")
        outputs = []
        for out in cell.get("outputs", []):
            data = out.get("data", {})
            if "application/vnd.jupyter.widget-view+json" in data:
                continue
            if out.get("output_type") == "execute_result" and set(data) == {"text/plain"}:
                text = str(data["text/plain"])
                if PATH_REPR_RE.match(text):
                    continue
                if STRING_REPR_RE.match(text):  # a verdict echoed: the word, not its repr
                    data["text/plain"] = text[1:-1]
            if "text" in out:
                out["text"] = SAVED_RE.sub("", _scrub_text(out["text"], root))
                if not out["text"].strip():
                    continue  # only "... recorded in NN-slug.json (wall time ...)": the header says
            for mime in ("text/plain", "text/html", "text/markdown"):
                if mime in data:
                    value = data[mime]
                    data[mime] = (_scrub_text(value, root) if isinstance(value, str)
                                  else [_scrub_text(v, root) for v in value])
            outputs.append(out)
        cell["outputs"] = outputs
    nb.metadata.pop("widgets", None)  # no widget manager or require.js on the static site


def pin_install_cell(nb, url: str, ref: str) -> bool:
    """Point the install cell at ``url@ref`` (the commit the site is built from)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and INSTALL_RE.search(cell.source):
            cell.source = INSTALL_RE.sub(lambda m: f'{m.group(1)}{url}@{ref}"', cell.source)
            return True
    return False


def annotate_chapter(root: Path, stage: Path, chapter: Chapter, scale: str,
                     results_root: Path, url: str, ref: str) -> None:
    """Rewrite the staged notebook's generated parts (idempotent): under the title the paper,
    the Colab badge, "Results at a glance" and this run's badges; targets on each claim's
    section; the cells' tags and outputs (:func:`polish_cells`); the install cell pinned."""
    path = stage / chapter.path
    if not path.exists():
        return
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if HEADER_TAG not in c.get("metadata", {}).get("tags", [])]
    try:  # a snapshot from an older replib (another schema version) is not this page's record
        record = read(result_snapshot(stage, chapter))
    except ReplibError:
        record = None
    on_record = recorded(chapter.id, results_root)
    others = {s: r for s, r in on_record.items() if s != scale}
    best = best_result(on_record)
    paper = load_papers(root).get(chapter.id)
    cell = nbformat.v4.new_markdown_cell(
        paper_markdown(paper, colab_url(url, ref, chapter))
        + glance_markdown(chapter, best, scale)
        + header_markdown(chapter, scale, injected_parameters(nb), record,
                          last_outcome(stage, chapter), others,
                          unreadable_results(stage).get(chapter.id)))
    cell.metadata["tags"] = [HEADER_TAG]
    nb.cells.insert(split_title(nb), cell)  # right under the title, above the summary
    ids = [c["id"] for r in [record, *on_record.values()] if r for c in r.get("claims") or []]
    add_claim_targets(nb, chapter.id, ids)
    render_verdict_tables(nb, record)
    add_finding(nb, best)
    pin_install_cell(nb, url, ref)
    polish_cells(nb, root)
    nbformat.write(nb, path)


# ---------------------------------------------------------------- all together

def repository(root: Path) -> tuple[str, str]:
    """The repository URL and branch of ``_config.yml``: the one place that names them."""
    try:
        repo = yaml.safe_load((root / "_config.yml").read_text())["repository"]
        return repo["url"].rstrip("/"), str(repo.get("branch", "main"))
    except (OSError, KeyError, TypeError, yaml.YAMLError) as e:
        raise ReplibError(f"{root / '_config.yml'}: no repository url/branch ({e})") from None


def build_ref(default: str) -> str:
    """The commit the site is built from (HEAD, which a moving branch is not), else ``default``."""
    git = provenance.git_commit()
    return git["commit"] or default


def stage_config(root: Path, stage: Path, ref: str) -> None:
    """The staged ``_config.yml`` with the repository's branch set to ``ref``: jupyter-book's
    launch buttons then open the notebook at the commit the site is built from."""
    path = stage / "_config.yml"
    config = yaml.safe_load(path.read_text())
    config.setdefault("repository", {})["branch"] = ref
    path.write_text(yaml.safe_dump(config, sort_keys=False, allow_unicode=True))


def write_generated(root: Path, stage: Path, chapters: list[Chapter], scale: str,
                    results_root: Path) -> None:
    generated = stage / "book" / "_generated"
    generated.mkdir(parents=True, exist_ok=True)
    unreadable = unreadable_results(stage)
    url, branch = repository(root)
    ref = build_ref(branch)
    (generated / "scoreboard.md").write_text(scoreboard_markdown(root, chapters, results_root,
                                                                 unreadable))
    (generated / "landing.md").write_text(landing_markdown(root, chapters, results_root,
                                                           unreadable))
    (generated / "status.md").write_text(status_markdown(chapters, stage, scale, ref))
    (generated / "performance.md").write_text(performance_markdown(root / "results" / "bench"))
    if (stage / "_config.yml").exists():
        stage_config(root, stage, ref)
    for ch in chapters:
        annotate_chapter(root, stage, ch, scale, results_root, url, ref)
