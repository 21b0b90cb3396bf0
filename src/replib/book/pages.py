"""What the site says at a glance, generated at build time from ``results/`` and the executions.

- the **scoreboard** (``book/scoreboard.md`` includes ``_generated/scoreboard.md``): one row per
  chapter and claim, from the best scale on record (gpu over cpu over smoke; smoke is marked
  *pipeline check only* and never counted as a result);
- the **status page** (``book/status.md`` includes ``_generated/status.md``): each chapter's last
  execution against its scale's budget, cache state, failures, and the environment;
- each chapter's **header**: a badge line (scale, device and hardware, seeds, wall time, replib
  version and commit, date) and, when ``results/`` holds the chapter at another scale, those
  verdicts beside this page's;
- the staged notebooks' **install cell**, pinned to the commit the site is built from.

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
from ..claims import Verdict
from ..errors import ReplibError
from ..results import read
from ..scales import SCALES
from .chapters import Chapter
from .execute import last_outcome, result_snapshot, split_title, unreadable_results

SCALE_ORDER = ("gpu", "cpu", "smoke")  # strongest evidence first
VERDICT_COLORS = {  # the figures' colours (replib.plotting), without importing matplotlib here
    Verdict.REPLICATED.value: "#2e7d32",
    Verdict.PARTIAL.value: "#f9a825",
    Verdict.NOT_REPLICATED.value: "#c62828",
    Verdict.INCONCLUSIVE.value: "#757575",
    Verdict.NOT_TESTABLE.value: "#6d6d6d",
    Verdict.NOT_RUN.value: "#5c6bc0",
    Verdict.REFERENCE.value: "#00796b",
}
SUMMARY_ORDER = [(Verdict.REPLICATED, "replicated"), (Verdict.PARTIAL, "partially replicated"),
                 (Verdict.NOT_REPLICATED, "not replicated"), (Verdict.INCONCLUSIVE, "inconclusive"),
                 (Verdict.NOT_TESTABLE, "not testable"), (Verdict.NOT_RUN, "not run"),
                 (Verdict.REFERENCE, "reference checks (hold by construction; not replications)")]
HEADER_TAG = "replib-header"
INSTALL_RE = re.compile(r'(replib @ git\+)(https://[^"@\s]+)@([^"\s]+)"')


def _e(text) -> str:
    return html.escape(str(text), quote=True)


def badge(label: str, color: str, *, title: str = "") -> str:
    tip = f' title="{_e(title)}"' if title else ""
    return (f'<span class="replib-badge" style="background:{color}"{tip}>{_e(label)}</span>')


def verdict_badge(verdict: str, scale: str) -> str:
    if scale == "smoke":
        return badge(f"{verdict} · pipeline check only", "#bdbdbd",
                     title="smoke scale checks that the chapter runs; it is not a result")
    return badge(verdict, VERDICT_COLORS.get(verdict, "#757575"))


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


def recorded(chapter: str, results_root: Path) -> dict[str, dict]:
    """The chapter's results file at each scale that has one (a corrupt file is an error)."""
    return {scale: read(results_root / scale / f"{chapter}.json")
            for scale in SCALES if (results_root / scale / f"{chapter}.json").exists()}


def best_result(results: dict[str, dict]) -> tuple[str, dict] | None:
    for scale in SCALE_ORDER:
        if scale in results:
            return scale, results[scale]
    return None


# ---------------------------------------------------------------- scoreboard

def scoreboard_markdown(root: Path, chapters: list[Chapter], results_root: Path,
                        unreadable: dict[str, dict[str, str]] | None = None) -> str:
    """``unreadable``: chapter -> {scale: why} for results files the build set aside."""
    counts = {v.value: 0 for v, _ in SUMMARY_ORDER}
    smoke_only, not_run, rows = 0, 0, []
    for ch in chapters:
        title = chapter_title(root, ch)
        link = f'<a href="{chapter_href(ch)}">{_e(ch.id[:2])}. {_e(title)}</a>'
        found = best_result(recorded(ch.id, results_root))
        bad = (unreadable or {}).get(ch.id, {})
        if found is None and bad:
            not_run += 1
            rows.append(f'<tr class="replib-unreadable"><td>{link}</td><td colspan="4">' + " ".join(
                badge(f"results/{s}/{ch.id}.json unreadable", "#c62828", title=why)
                for s, why in bad.items()) + "</td><td>—</td></tr>")
            continue
        if found is None:
            not_run += 1
            rows.append(f'<tr class="replib-not-run"><td>{link}</td><td colspan="4">'
                        f'{badge("not yet run", "#757575")}</td><td>—</td></tr>')
            continue
        scale, record = found
        items = record["claims"] or []
        if not items:  # a benchmark: measurements, no verdicts
            rows.append(f'<tr><td>{link}</td><td colspan="4">benchmark: '
                        f'{len(record.get("measurements", []))} measurements, no paper claims'
                        f'</td><td>{_e(scale)}</td></tr>')
            continue
        for i, c in enumerate(items):
            if scale == "smoke":
                smoke_only += 1
            else:
                counts[Verdict(c["verdict"]).value] += 1
            first = link if i == 0 else ""
            claim = (f"<b>{_e(c['id'])}</b>" + (" <em>(analog)</em>" if c["analog"] else "")
                     + f"<br><small>{_e(c['statement'])}</small>")
            rule = f"<details><summary>rule</summary><small>{_e(c['rule'])}</small></details>"
            quals = "".join(f"<br><small>{_e(q)}</small>" for q in c.get("qualifiers", []))
            rows.append(
                f"<tr><td>{first}</td><td>{claim}</td><td><small>{_e(c['paper'])}</small></td>"
                f"<td><small>{_e(c['ours'])}</small>{quals}</td>"
                f"<td>{verdict_badge(Verdict(c['verdict']).value, scale)}{rule}</td>"
                f"<td>{_e(scale)}</td></tr>")
    summary = " · ".join(f"**{counts[v.value]}** {label}" for v, label in SUMMARY_ORDER)
    summary += f" · {smoke_only} claims with smoke results only (pipeline check only)" \
        if smoke_only else ""
    summary += f" · {not_run} chapters not yet run" if not_run else ""
    head = ("<thead><tr><th>chapter</th><th>claim</th><th>the paper</th><th>ours (mean ± sd)</th>"
            "<th>verdict (rule fixed before the run)</th><th>scale</th></tr></thead>")
    table = ('<table class="replib-scoreboard">\n' + head + "\n<tbody>\n" + "\n".join(rows)
             + "\n</tbody>\n</table>")
    return (f"Claims judged at cpu or gpu scale: {summary}.\n\n"
            f"{len(chapters)} chapters in the book.\n\n{table}\n")


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


def status_markdown(chapters: list[Chapter], stage: Path, scale: str) -> str:
    budget, n_seeds = SCALES[scale].budget_s, SCALES[scale].n_seeds
    rows = []
    for ch in chapters:
        o = last_outcome(stage, ch)
        if o is None:
            rows.append(f"<tr><td>{_e(ch.id)}</td><td>{badge('not run', '#757575')}</td>"
                        "<td>—</td><td>—</td><td>—</td><td></td></tr>")
            continue
        share = o.seconds / budget
        color = "#c62828" if o.status == "failed" else ("#f9a825" if share > 1 else "#2e7d32")
        state = {"executed": "executed", "cached": "cached (unchanged)",
                 "failed": "failed"}.get(o.status, o.status)
        error = f"<code>{_e(o.error)}</code>" if o.error else ""
        rows.append(f"<tr><td>{_e(ch.id)}</td><td>{badge(state, color)}</td>"
                    f"<td>{o.seconds:.1f}</td><td>{share:.0%}</td><td>{_e(o.finished_at)}</td>"
                    f"<td>{error}</td></tr>")
    env = "".join(f"<tr><th>{_e(k)}</th><td>{_e(v)}</td></tr>" for k, v in environment().items())
    bad = [f"- `results/{s}/{ch}.json`: {why}"
           for ch, scales in unreadable_results(stage).items() for s, why in scales.items()]
    bad_text = ("\n\n:::{warning}\nThese results files could not be read; the site is built "
                "without them and marks their chapters unreadable:\n\n" + "\n".join(bad)
                + "\n:::\n") if bad else ""
    return (f"Scale of this build: `{scale}` (budget {budget:.0f} s per chapter, "
            f"{n_seeds} seed{'' if n_seeds == 1 else 's'}, on {SCALES[scale].hardware})."
            f"{bad_text}\n\n"
            '<table class="replib-status">\n<thead><tr><th>chapter</th><th>last execution</th>'
            "<th>wall time (s)</th><th>of budget</th><th>finished (UTC)</th><th>error</th></tr>"
            "</thead>\n<tbody>\n" + "\n".join(rows) + "\n</tbody>\n</table>\n\n"
            "## Environment of this build\n\n"
            f'<table class="replib-env"><tbody>{env}</tbody></table>\n')


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
    grey, blue = "#546e7a", "#1565c0"
    parts = [badge(f"scale {scale}" + (" · pipeline check only" if scale == "smoke" else ""),
                   "#bdbdbd" if scale == "smoke" else blue)]
    parts += [badge(f"results/{s}/{chapter.id}.json unreadable", "#c62828", title=why)
              for s, why in (unreadable or {}).items()]
    if record:
        hw = record["hardware"]
        where = hw.get("gpu") or hw.get("cpu", "?")
        commit = (record["git"].get("commit") or "unknown")[:10]
        commit += " (modified)" if record["git"].get("dirty") else ""
        parts += [badge(f"device {record['device']} · {where}", grey),
                  badge(f"seeds {','.join(map(str, record['seeds']))}", grey),
                  badge(f"wall time {record['wall_time_s']:.0f} s", grey),
                  badge(f"replib {record['versions'].get('replib', '?')} @ {commit}", grey),
                  badge(f"torch {record['versions']['torch']}", grey),
                  badge(record["started_at"][:10], grey)]
    else:
        parts += [badge(f"device {params.get('device', '?')}", grey),
                  badge(f"seeds {params.get('seeds') or 'default'}", grey)]
        if outcome is not None:
            parts.append(badge(f"{outcome.status} after {outcome.seconds:.0f} s",
                               "#c62828" if outcome.status == "failed" else grey))
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
                cells.append(f"<td>{verdict_badge(c['verdict'], s)}<br><small>{_e(c['ours'])}"
                             f"</small></td>" if c else "<td>—</td>")
            rows.append(f"<tr><td>{_e(cid)}</td>{''.join(cells)}</tr>")
        if rows:
            text += ("\n<details class=\"replib-other-scales\" open><summary>Verdicts at every scale "
                     "on record</summary>\n<table><thead><tr><th>claim</th>" + head
                     + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>\n</details>\n")
    return text


def pin_install_cell(nb, url: str, ref: str) -> bool:
    """Point the install cell at ``url@ref`` (the commit the site is built from)."""
    for cell in nb.cells:
        if cell.cell_type == "code" and INSTALL_RE.search(cell.source):
            cell.source = INSTALL_RE.sub(lambda m: f'{m.group(1)}{url}@{ref}"', cell.source)
            return True
    return False


def annotate_chapter(root: Path, stage: Path, chapter: Chapter, scale: str,
                     results_root: Path, url: str, ref: str) -> None:
    """Rewrite the staged notebook's generated parts (header, install cell); idempotent."""
    path = stage / chapter.path
    if not path.exists():
        return
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if HEADER_TAG not in c.get("metadata", {}).get("tags", [])]
    try:  # a snapshot from an older replib (another schema version) is not this page's record
        record = read(result_snapshot(stage, chapter))
    except ReplibError:
        record = None
    others = {s: r for s, r in recorded(chapter.id, results_root).items() if s != scale}
    cell = nbformat.v4.new_markdown_cell(
        header_markdown(chapter, scale, injected_parameters(nb), record,
                        last_outcome(stage, chapter), others,
                        unreadable_results(stage).get(chapter.id)))
    cell.metadata["tags"] = [HEADER_TAG]
    nb.cells.insert(split_title(nb), cell)  # right under the title, above the summary
    pin_install_cell(nb, url, ref)
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
    """The commit the site is built from, when the code is exactly a commit; else ``default``."""
    git = provenance.git_commit()
    return git["commit"] if git["commit"] and git["dirty"] is False else default


def write_generated(root: Path, stage: Path, chapters: list[Chapter], scale: str,
                    results_root: Path) -> None:
    generated = stage / "book" / "_generated"
    generated.mkdir(parents=True, exist_ok=True)
    (generated / "scoreboard.md").write_text(scoreboard_markdown(root, chapters, results_root,
                                                                 unreadable_results(stage)))
    (generated / "status.md").write_text(status_markdown(chapters, stage, scale))
    url, branch = repository(root)
    ref = build_ref(branch)
    for ch in chapters:
        annotate_chapter(root, stage, ch, scale, results_root, url, ref)
