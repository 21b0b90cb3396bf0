"""The built book, in a real browser, at a desktop and a phone viewport (conftest.VIEWPORTS):
every chapter opens with its paper, an "Open in Colab" badge at the build's commit and a "Results
at a glance" box, has a loaded (retina) figure, its run's badges and a verdict table; every figure
is numbered, captioned, described in its alt text and fits the text column; the downloadable
notebook installs replib at the build's commit; "What we learned" opens with the finding; the
landing page rolls every chapter up; each scoreboard claim links to its section; nothing widens a
phone's page; badges read at WCAG AA contrast; no console errors, widget manager or require.js,
paths of the build machine or object reprs; one citation style; one search box; no broken
internal link; search. Screenshots land in _build/screenshots/."""
import json
import re
import subprocess
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest
import yaml

from replib.book.chapters import toc_chapters
from replib.book.pages import best_result, chapter_title, claim_anchor, recorded, repository
from replib.show import contrast

ROOT = Path(__file__).resolve().parents[2]
SITE = ROOT / "_build" / "html"
SHOTS = ROOT / "_build" / "screenshots"

CHAPTERS = toc_chapters(ROOT)
IDS = [c.id for c in CHAPTERS]
PAPERS = {p["id"]: p for p in yaml.safe_load((ROOT / "book" / "papers.yml").read_text())}
PAGES = [*sorted(p.relative_to(SITE).as_posix() for p in SITE.glob("book/*.html")),
         *[f"notebooks/{cid}.html" for cid in IDS]] if SITE.exists() else []


def _built_scale() -> str:
    status = (SITE / "book" / "status.html").read_text()
    return re.search(r"Scale of this build: <code[^>]*><span[^>]*>(\w+)<", status).group(1)


def _built_commit() -> str:
    status = (SITE / "book" / "status.html").read_text()
    return re.search(r'class="replib-commit">([0-9a-f]+)<', status).group(1)


def _watch_console(pg, site: str) -> list[str]:
    """Console errors and uncaught exceptions of the page; a resource of another host that this
    closed-off machine cannot fetch (MathJax's CDN) is not the site's error."""
    errors = []

    def on_console(msg):
        if msg.type != "error":
            return
        where = (msg.location or {}).get("url", "")
        if "Failed to load resource" in msg.text and not where.startswith(site):
            return
        errors.append(f"console: {msg.text} ({where})")

    pg.on("console", on_console)
    pg.on("pageerror", lambda e: errors.append(f"page error: {e}"))
    return errors


# ---------------------------------------------------------------- chapters

@pytest.mark.parametrize("cid", IDS)
def test_chapter_page_has_a_loaded_retina_figure_header_and_verdict_table(site, page, cid):
    response = page.goto(f"{site}/notebooks/{cid}.html")
    assert response.ok
    page.wait_for_load_state("load")
    sizes = page.eval_on_selector_all(
        ".cell_output img", "imgs => imgs.filter(i => i.complete && i.naturalWidth > 0)"
        ".map(i => [i.naturalWidth, i.getBoundingClientRect().width])")
    assert sizes, f"{cid}: no figure loaded"
    shown = [(n, w) for n, w in sizes if w > 100]
    assert all(n >= 1.5 * w for n, w in shown), f"{cid}: figures not retina (natural, shown) {shown}"
    assert page.locator(".replib-header .replib-badge").count() >= 3
    result = ROOT / "results" / _built_scale() / f"{cid}.json"
    claims = json.loads(result.read_text())["claims"] if result.exists() else [None]
    if claims:  # the verdict table of exp.verdict_table(), rendered like the scoreboard
        table = page.locator("table.replib-verdicts")
        assert table.count() >= 1, f"{cid}: no verdict table"
        assert table.first.locator(".replib-badge").count() >= 1
        assert table.first.locator("details.replib-rule").count() >= 1
        assert page.locator("table.dataframe thead").filter(has_text="verdict").count() == 0
    else:  # a benchmark records measurements: still a table of numbers
        assert page.locator("table").count() >= 1


@pytest.mark.parametrize("cid", IDS)
def test_chapter_opens_with_the_paper_colab_and_results_at_a_glance(site, any_page, viewport, cid):
    pg = any_page
    pg.goto(f"{site}/notebooks/{cid}.html")
    head = pg.locator(".replib-paper")
    assert head.count() == 1
    paper = PAPERS.get(cid)
    links = head.locator("a").evaluate_all("as => as.map(a => a.href)")
    if paper:
        assert f"https://arxiv.org/abs/{paper['arxiv']}" in links
        if paper["code"]:
            assert paper["code"] in links, f"{cid}: no code link in {links}"
        text = head.inner_text()
        assert paper["authors"][0] in text and str(paper["year"]) in text
    colab = head.locator("a.replib-colab")
    assert colab.count() == 1 and colab.is_visible()
    glance = pg.locator(".replib-glance")
    assert glance.count() == 1 and "Results at a glance" in glance.inner_text()
    found = best_result(recorded(cid, ROOT / "results"))
    claims = found[1]["claims"] if found else []
    items = glance.locator("li")
    assert items.count() == len(claims)
    for c in claims:  # each claim's link lands on its section of this page
        anchor = claim_anchor(cid, c["id"])
        assert glance.locator(f"a[href='#{anchor}']").count() == 1
        assert pg.locator(f"[id='{anchor}']").count() == 1, f"{cid}: no section #{anchor}"


def test_colab_links_open_the_notebook_at_the_build_commit(site, page):
    url, _ = repository(ROOT)
    owner_repo = urlparse(url).path.strip("/")
    commit = _built_commit()
    assert re.fullmatch(r"[0-9a-f]{40}", commit), f"built from {commit!r}, not a commit"
    clean = not subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain",
                                "--untracked-files=no"], capture_output=True, text=True).stdout
    if clean:  # a fresh clone (CI): the site is built from HEAD
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                              text=True).stdout.strip()
        assert commit == head
    for cid in IDS:
        page.goto(f"{site}/notebooks/{cid}.html")
        links = page.locator("a[href*='colab.research.google.com']").evaluate_all(
            "as => as.map(a => a.href)")
        expected = (f"https://colab.research.google.com/github/{owner_repo}/blob/{commit}/"
                    f"notebooks/{cid}.ipynb")
        assert len(links) >= 2 and set(links) == {expected}, f"{cid}: colab links {links}"


@pytest.mark.parametrize("cid", IDS)
def test_code_serves_the_story(site, page, cid):
    """Install, parameters and save cells are not on the page; plotting cells are folded; no
    "seeds 0" but "1 seed"; one wall time, the status page's."""
    page.goto(f"{site}/notebooks/{cid}.html")
    text = page.locator("article").inner_text()
    for gone in ("Install replib when it is missing", "# Parameters", "exp.save()"):
        assert gone not in text, f"{cid}: {gone!r} is on the page"
    assert page.locator(".cell.tag_hide-input").count() >= 1, f"{cid}: no folded cell"
    assert not re.search(r"\bseeds 0\b|(?<![\d/.,])\b1 seeds\b", text), cid
    seeds = [b for b in page.locator(".replib-header .replib-badge").all_text_contents()
             if "seed" in b]
    assert all(re.fullmatch(r"1 seed \(\d+\)|([2-9]|\d\d+) seeds \([\d, ]+\)|default seeds", b)
               for b in seeds), f"{cid}: seed badges {seeds}"
    header = page.locator(".replib-header").inner_text()
    wall = re.search(r"wall time (\d+) s", header)
    if wall:
        status = (SITE / "book" / "status.html").read_text()
        row = re.search(rf"<td>{cid}</td>.*?</tr>", status, flags=re.S).group(0)
        assert re.findall(r"<td>(\d+)</td>", row)[0] == wall.group(1), f"{cid}: two wall times"


@pytest.mark.parametrize("cid", IDS)
def test_figures_are_numbered_captioned_described_and_fit_the_column(site, page, cid):
    """Every output image is a figure "Figure n." (1, 2, ... down the page) with a caption, alt
    text that says what it shows (replib.plotting.describe: axes, legend; not a bare repr nor
    the fallback for a figure that could not describe itself), no wider than the text column."""
    page.goto(f"{site}/notebooks/{cid}.html")
    page.wait_for_load_state("load")
    images = page.eval_on_selector_all(".cell_output img", """imgs => imgs.map(i => {
        const f = i.closest('figure.replib-figure'), col = i.closest('article');
        return {alt: i.getAttribute('alt') || '', width: i.getBoundingClientRect().width,
                column: col ? col.getBoundingClientRect().width : 0,
                caption: f && f.querySelector('figcaption') ?
                         f.querySelector('figcaption').innerText.trim() : null}; })""")
    assert images, f"{cid}: no figure"
    for n, img in enumerate(images, 1):
        assert img["caption"] and img["caption"].startswith(f"Figure {n}. "), (cid, n, img)
        assert len(img["caption"]) > len(f"Figure {n}. ") + 3, (cid, img["caption"])
        alt = img["alt"]
        assert alt.strip() and "<Figure" not in alt and "Axes>" not in alt, (cid, n, alt)
        assert not re.fullmatch(r"A figure( with \d+ panels)?\.", alt), \
            f"{cid} figure {n}: no description, only {alt!r} (executed before replib described figures?)"
        assert img["width"] <= img["column"] + 1, f"{cid} figure {n} wider than the column: {img}"


def test_downloaded_notebook_installs_replib_at_the_build_commit(site, page):
    """The page's .ipynb download (the staged notebook) installs replib from the commit the
    page was built from, the one its Colab links open, not from a moving branch."""
    url, _ = repository(ROOT)
    commit = _built_commit()
    for cid in IDS:
        page.goto(f"{site}/notebooks/{cid}.html")
        link = page.locator(f"a[href$='_sources/notebooks/{cid}.ipynb']")
        assert link.count() >= 1, f"{cid}: no notebook download"
        nb = json.loads(page.request.get(link.first.evaluate("a => a.href")).text())
        installs = [line for cell in nb["cells"] if cell["cell_type"] == "code"
                    for line in "".join(cell["source"]).splitlines() if "replib @ git+" in line]
        assert installs, f"{cid}: no install cell"
        assert all(f'"replib @ git+{url}@{commit}"' in line for line in installs), \
            f"{cid}: {installs}"


@pytest.mark.parametrize("cid", IDS)
def test_what_we_learned_opens_with_the_finding(site, page, cid):
    found = best_result(recorded(cid, ROOT / "results"))
    if not found or not found[1].get("claims"):
        pytest.skip(f"{cid}: no claims on record (a benchmark), no finding to state")
    page.goto(f"{site}/notebooks/{cid}.html")
    first = page.evaluate("""() => {
        const h = [...document.querySelectorAll('article h2, article h3')]
            .find(e => /what we learned/i.test(e.textContent));
        if (!h) return null;
        const next = h.nextElementSibling;
        return next ? [next.className, next.innerText] : ['', ''];
    }""")
    assert first is not None, f"{cid}: no 'What we learned' section"
    assert "replib-learned" in first[0], f"{cid}: the section opens with {first}"
    assert first[1].startswith("In one sentence.") and "claim" in first[1], first[1]


def test_one_citation_style(site, page):
    """The chapters cite author-year ("[Ba et al., 2016]") and the references page labels each
    entry the same way, so a reader finds the citation by its label."""
    page.goto(f"{site}/book/references.html")
    labels = {e: t.strip("[] \n\xa0") for e, t in page.eval_on_selector_all(
        "div.citation", "ds => ds.map(d => [d.id, d.querySelector('.label').innerText])")}
    assert labels, "no bibliography"
    bad = [t for t in labels.values() if not re.fullmatch(r"[^\[\]]+, \d{4}[a-z]?", t)]
    assert not bad, f"labels not author-year: {bad[:5]}"
    cited = 0
    for cid in IDS:
        page.goto(f"{site}/notebooks/{cid}.html")
        for href, text in page.eval_on_selector_all(
                "a[href*='references.html#']", "as => as.map(a => [a.href, a.innerText])"):
            anchor = urldefrag(href)[1]
            if anchor in labels:
                cited += 1
                said, label = (" ".join(t.split()) for t in (text, labels[anchor]))
                assert said == label.rstrip("abcdefgh"), (cid, said, label)
    assert cited >= len(IDS) // 2, f"only {cited} citations found in the chapters"


# ---------------------------------------------------------------- landing page and scoreboard

def test_landing_page_rolls_every_chapter_up(site, any_page, viewport):
    pg = any_page
    pg.goto(f"{site}/book/intro.html")  # index.html only redirects here
    text = pg.locator("article").inner_text()
    written = [p for p in PAPERS if p in IDS]
    assert f"{len(written)} of the {len(PAPERS)} papers have a chapter" in text
    assert "forty papers" not in text.lower()
    rollup = pg.locator("table.replib-rollup tbody tr")
    assert rollup.count() == len(IDS)
    grid = pg.locator(".replib-grid a.replib-cell")
    n_claims = sum(len((best_result(recorded(cid, ROOT / "results")) or (0, {"claims": []}))[1]
                       ["claims"]) for cid in IDS)
    assert grid.count() == n_claims
    planned = pg.locator(".replib-planned li")
    assert planned.count() == len(PAPERS) - len(written)
    assert all("planned" in t for t in planned.all_text_contents())
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"landing-{viewport}.png"), full_page=True)


def test_scoreboard_groups_chapters_and_links_each_claim_to_its_section(site, any_page, viewport):
    pg = any_page
    pg.goto(f"{site}/book/scoreboard.html")
    table = pg.locator("table.replib-scoreboard")
    assert table.count() == 1
    hrefs = table.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    for cid in IDS:
        assert f"../notebooks/{cid}.html" in hrefs, f"{cid} missing from the scoreboard"
    assert pg.locator("tr.replib-chapter").count() == len(IDS)
    claim_links = [h for h in hrefs if "#claim-" in h]
    assert claim_links, "no claim links to sections"
    SHOTS.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(SHOTS / f"scoreboard-{viewport}.png"), full_page=True)


def test_every_claim_link_lands_on_an_existing_anchor(site, page):
    """From the scoreboard and the landing grid: the target page has an element with that id."""
    targets = set()
    for start in ("book/scoreboard.html", "book/intro.html"):
        page.goto(f"{site}/{start}")
        for href in page.locator("a[href*='#claim-']").evaluate_all("as => as.map(a => a.href)"):
            targets.add(href)
    assert targets
    missing, ids_of = [], {}
    for href in sorted(targets):
        url, anchor = urldefrag(href)
        if url not in ids_of:
            page.goto(url)
            ids_of[url] = set(page.locator("[id]").evaluate_all("es => es.map(e => e.id)"))
        if anchor not in ids_of[url]:
            missing.append(href)
    assert not missing, f"claim links without a target: {missing}"


def test_numbers_are_formatted_by_their_uncertainty(site, page):
    """Two significant digits of the spread at most, the mean to match, "×" on the mean."""
    page.goto(f"{site}/book/scoreboard.html")
    text = page.locator("table.replib-scoreboard").inner_text()
    for m in re.finditer(r"(?<![\w.])(-?\d+(?:\.(\d+))?)×? ± (\d+(?:\.(\d+))?)(?!\d)", text):
        mean_dec, sd = len(m.group(2) or ""), m.group(3)
        digits = sd.replace(".", "").lstrip("0")
        assert len(digits) <= 2 or sd.endswith("0" * (len(digits) - 2)), m.group(0)
        assert mean_dec == len(m.group(4) or ""), m.group(0)
    assert not re.search(r"± [\d.]+x\b", text), "a ratio's × belongs on the mean"


# ---------------------------------------------------------------- every page, both viewports

@pytest.mark.parametrize("path", PAGES)
def test_no_console_errors_and_no_widget_or_require_scripts(site, any_page, viewport, path):
    pg = any_page
    errors = _watch_console(pg, site)
    pg.goto(f"{site}/{path}")
    pg.wait_for_load_state("load")
    pg.wait_for_timeout(300)
    assert not errors, f"{path} ({viewport}): {errors}"
    scripts = pg.locator("script[src]").evaluate_all("ss => ss.map(s => s.src)")
    assert not [s for s in scripts if "require" in s or "html-manager" in s], scripts


@pytest.mark.parametrize("path", PAGES)
def test_nothing_widens_a_phone_page(site, phone, path):
    phone.goto(f"{site}/{path}")
    phone.wait_for_load_state("load")
    wide = phone.evaluate("""() => {
        const W = document.documentElement.clientWidth;
        if (document.documentElement.scrollWidth <= W + 1) return [];
        return [...document.querySelectorAll('body *')].filter(e => {
            const r = e.getBoundingClientRect();
            return r.right > W + 1 && r.width > 0 && !e.closest('.replib-scroll, .cell_output, pre,'
                + ' .highlight, mjx-container, .math, table');
        }).slice(0, 8).map(e => e.tagName + '.' + e.className + ' ' + Math.round(
            e.getBoundingClientRect().right));
    }""")
    width = phone.evaluate("document.documentElement.scrollWidth")
    assert width <= 391, f"{path}: page is {width} px wide at 390 px; widest: {wide}"


@pytest.mark.parametrize("path", PAGES)
def test_badges_read_at_wcag_aa_contrast(site, page, path):
    page.goto(f"{site}/{path}")
    pairs = page.eval_on_selector_all(".replib-badge, a.replib-cell", """es => es.map(e => {
        const s = getComputedStyle(e); return [s.color, s.backgroundColor, e.textContent]; })""")

    def hex_of(css):
        r, g, b = (int(x) for x in re.findall(r"\d+", css)[:3])
        return f"#{r:02x}{g:02x}{b:02x}"
    bad = [(t, fg, bg, round(contrast(hex_of(fg), hex_of(bg)), 2)) for fg, bg, t in pairs
           if contrast(hex_of(fg), hex_of(bg)) < 4.5]
    assert not bad, f"{path}: badges under 4.5:1 {bad[:5]}"


@pytest.mark.parametrize("path", PAGES)
def test_no_paths_of_the_build_machine_or_object_reprs(site, path):
    html = (SITE / path).read_text()
    assert "PosixPath(" not in html and "WindowsPath(" not in html
    assert str(ROOT) not in html, f"{path} names the build's checkout {ROOT}"
    assert "site-packages/" not in html.replace("…/site-packages/", "")


# ---------------------------------------------------------------- links, search, screenshots

class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.urls = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "a" and a.get("href"):
            self.urls.append(a["href"])
        elif tag in ("img", "script") and a.get("src"):
            self.urls.append(a["src"])
        elif tag == "link" and a.get("rel") == "stylesheet" and a.get("href"):
            self.urls.append(a["href"])
        elif tag == "meta" and a.get("http-equiv", "").lower() == "refresh":
            self.urls.append(a.get("content", "").partition("url=")[2])


def test_no_internal_link_is_broken(site, page):
    """Crawl every page reachable from the index through the browser's network stack."""
    seen, broken, queue = set(), [], deque([(f"{site}/index.html", "start")])
    while queue:
        url, source = queue.popleft()
        if url in seen:
            continue
        seen.add(url)
        response = page.request.get(url)
        if not response.ok:
            broken.append((url, response.status, source))
            continue
        if not url.endswith(".html"):
            continue
        parser = _Links()
        parser.feed(response.text())
        for href in parser.urls:
            target = urldefrag(urljoin(url, href))[0]
            if target.startswith(site) and target not in seen:
                queue.append((target, url))
    assert len(seen) > len(IDS), f"crawl reached only {len(seen)} URLs"
    assert not broken, f"broken internal links (url, status, linked from): {broken}"


@pytest.mark.parametrize("cid", IDS)
def test_search_finds_the_chapter_by_a_title_word(site, page, cid):
    title = chapter_title(ROOT, next(c for c in CHAPTERS if c.id == cid))
    word = max(re.findall(r"[A-Za-z]{4,}", title), key=len)
    page.goto(f"{site}/search.html?q={word}")
    # Sphinx lists results one by one; read them only once its summary says the search finished
    # (a word shared by many pages listed the chapter after the test had read the list)
    page.locator("#search-results p.search-summary", has_text="Search finished").wait_for(timeout=30000)
    hrefs = page.locator("#search-results a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert any(f"notebooks/{cid}.html" in h for h in hrefs), f"search {word!r}: {hrefs[:10]}"


def test_one_search_box(site, any_page, viewport):
    """One way to search in view: the sidebar's field on a desktop, the header's button on a
    phone (pydata-sphinx-theme's header field beside the sidebar's was a second one)."""
    any_page.goto(f"{site}/book/intro.html")
    boxes = any_page.locator("input[type=search], .search-button-field, .search-button__button"
                             ).evaluate_all("es => es.filter(e => e.offsetParent !== null).length")
    assert boxes == 1, f"{viewport}: {boxes} visible search boxes or buttons"


def test_screenshot_of_one_chapter(site, any_page, viewport):
    cid = "03-layernorm" if "03-layernorm" in IDS else IDS[0]
    any_page.goto(f"{site}/notebooks/{cid}.html")
    SHOTS.mkdir(parents=True, exist_ok=True)
    shot = SHOTS / f"chapter-{cid}-{viewport}.png"
    any_page.screenshot(path=str(shot), full_page=False)
    assert shot.stat().st_size > 10_000
