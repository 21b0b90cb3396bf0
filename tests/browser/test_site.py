"""The built book, in a real browser: every chapter has a page with a loaded figure, its header and
verdict table; the scoreboard lists every chapter; Colab links; no broken internal link; search."""
import json
import re
from collections import deque
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urldefrag, urljoin, urlparse

import pytest

from replib.book.chapters import toc_chapters
from replib.book.pages import chapter_title, repository

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "_build" / "screenshots"

CHAPTERS = toc_chapters(ROOT)
IDS = [c.id for c in CHAPTERS]


def _built_scale() -> str:
    status = (ROOT / "_build" / "html" / "book" / "status.html").read_text()
    return re.search(r"Scale of this build: <code[^>]*><span[^>]*>(\w+)<", status).group(1)


@pytest.mark.parametrize("cid", IDS)
def test_chapter_page_has_a_loaded_figure_header_and_verdict_table(site, page, cid):
    response = page.goto(f"{site}/notebooks/{cid}.html")
    assert response.ok
    page.wait_for_load_state("load")
    widths = page.eval_on_selector_all(
        "article img", "imgs => imgs.filter(i => i.complete).map(i => i.naturalWidth)")
    assert any(w > 0 for w in widths), f"{cid}: no figure loaded (natural widths {widths})"
    assert page.locator(".replib-header .replib-badge").count() >= 3
    result = ROOT / "results" / _built_scale() / f"{cid}.json"
    claims = json.loads(result.read_text())["claims"] if result.exists() else [None]
    if claims:  # the verdict table of exp.verdict_table()
        header = page.locator("table.dataframe thead").filter(has_text="verdict")
        assert header.count() >= 1, f"{cid}: no verdict table"
    else:  # a benchmark records measurements: still a table of numbers
        assert page.locator("table.dataframe").count() >= 1


def test_scoreboard_lists_every_chapter(site, page):
    page.goto(f"{site}/book/scoreboard.html")
    table = page.locator("table.replib-scoreboard")
    assert table.count() == 1
    hrefs = table.locator("a").evaluate_all("as => as.map(a => a.getAttribute('href'))")
    for cid in IDS:
        assert f"../notebooks/{cid}.html" in hrefs, f"{cid} missing from the scoreboard"
    assert "replicated" in page.locator("article").inner_text()
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / "scoreboard.png"), full_page=True)


def test_colab_link_of_each_chapter(site, page):
    url, branch = repository(ROOT)
    owner_repo = urlparse(url).path.strip("/")
    for cid in IDS:
        page.goto(f"{site}/notebooks/{cid}.html")
        links = page.locator("a[href*='colab.research.google.com']").evaluate_all(
            "as => as.map(a => a.href)")
        expected = (f"https://colab.research.google.com/github/{owner_repo}/blob/{branch}/"
                    f"notebooks/{cid}.ipynb")
        assert expected in links, f"{cid}: colab links {links}"


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
    results = page.locator("#search-results a")
    results.first.wait_for(timeout=15000)
    hrefs = results.evaluate_all("as => as.map(a => a.getAttribute('href'))")
    assert any(f"notebooks/{cid}.html" in h for h in hrefs), f"search {word!r}: {hrefs[:10]}"


def test_screenshot_of_one_chapter(site, page):
    cid = IDS[0]
    page.goto(f"{site}/notebooks/{cid}.html")
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"chapter-{cid}.png"), full_page=False)
    assert Path(SHOTS / f"chapter-{cid}.png").stat().st_size > 10_000
