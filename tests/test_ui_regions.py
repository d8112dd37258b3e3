"""The web UI's region features in a real Chromium (Playwright, Debian's Chromium) on a
small real index with region features: a box dragged on the query image becomes the
search's ``roi``, each hit's ``match_box`` is drawn where it lies on the thumbnail,
"Why similar?" shows the explain overlay, relevant / not relevant marks and Refine
re-rank exactly as the API does; a keyboard-only pass does the same. Screenshots go
under pytest's ``tmp_path`` and, when ``$RADSEARCH_SCREENSHOTS`` names a folder, there
too (``docs/img/regions-*.png`` were taken that way)."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import httpx
import pytest

from serve_helpers import CHROMIUM, LiveServer, launch_chromium
from test_regions import PATCH, inside
from test_regions_serve import planted_index

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("playwright")

TARGET = (16, 24, 88, 96)  # where the query carries the planted patch (QUERY_PATCH)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed"),
]


class Recorder:
    """ASGI wrapper keeping the body of every POST the page sends (the bytes on the wire:
    Chromium does not report multipart bodies that carry a file)."""

    def __init__(self, app):
        self.app, self.posts = app, []

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] != "POST":
            return await self.app(scope, receive, send)
        chunks = []

        async def receive_and_keep():
            message = await receive()
            if message["type"] == "http.request":
                chunks.append(message.get("body", b""))
                if not message.get("more_body"):
                    self.posts.append((scope["path"], b"".join(chunks)))
            return message

        await self.app(scope, receive_and_keep, send)

    def fields(self, path: str) -> dict[str, list[str]]:
        """The text fields of the last POST to ``path`` (the file part left out)."""
        body = [b for p, b in self.posts if p == path][-1]
        fields: dict[str, list[str]] = {}
        for m in re.finditer(rb'name="([^"]+)"\r\n\r\n(.*?)\r\n--', body, re.S):
            fields.setdefault(m.group(1).decode(), []).append(m.group(2).decode())
        return fields


@pytest.fixture(scope="module")
def site(tmp_path_factory, one_torch_thread):
    from radsearch.serve import create_app

    index, query = planted_index(tmp_path_factory.mktemp("ui_regions"))
    recorder = Recorder(create_app(index))
    with LiveServer(recorder) as url:
        yield url, query, recorder


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as b:
        yield b


def shot(page, tmp_path: Path, name: str) -> None:
    """``name`` under tmp_path; under $RADSEARCH_SCREENSHOTS too when set, there as a
    256-colour PNG (small enough for the docs)."""
    import io

    from PIL import Image

    png = page.screenshot()
    (tmp_path / name).write_bytes(png)
    assert Image.open(tmp_path / name).size == (1180, 760)
    if os.environ.get("RADSEARCH_SCREENSHOTS"):
        folder = Path(os.environ["RADSEARCH_SCREENSHOTS"])
        folder.mkdir(parents=True, exist_ok=True)
        Image.open(io.BytesIO(png)).convert("RGB").quantize(256).save(folder / name, optimize=True)


def open_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1180, "height": 760}, bypass_csp=True)
    errors, external = [], []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on(
        "request",
        lambda r: None if r.url.startswith((url, "blob:", "data:")) else external.append(r.url),
    )
    page.goto(url + "/")
    page.wait_for_selector("#roi-fields:not([hidden])")
    return page, errors, external


def hit_ids(page) -> list[str]:
    return page.eval_on_selector_all("#grid li.hit", "els => els.map(e => e.dataset.id)")


def wait_hits(page, answer=None, n: int = 6) -> list[str]:
    """Wait for the grid (of ``answer``'s hits, in its order: a response) to be drawn."""
    ids = [h["id"] for h in answer.json()["hits"]] if answer is not None else None
    page.wait_for_function(
        "([n, ids]) => { const cards = [...document.querySelectorAll('#grid li.hit')];"
        " return cards.length === n && (!ids || cards.every((c, i) => c.dataset.id === ids[i]))"
        " && [...document.querySelectorAll('#grid img.thumb')]"
        ".every(i => i.complete && i.naturalWidth > 0); }",
        arg=[len(ids) if ids else n, ids],
        timeout=60_000,
    )
    return hit_ids(page)


def api_order(url: str, query: Path, fields: dict[str, list[str]]) -> list[str]:
    """The API's own answer for the same form fields the page sent."""
    data = {k: v for k, v in fields.items() if k != "preview"}
    r = httpx.post(
        url + "/api/search", files={"file": ("q.png", query.read_bytes())}, data=data, timeout=60
    )
    assert r.status_code == 200, r.text
    return [h["id"] for h in r.json()["hits"]]


def assert_box_drawn(page, box_el, img_el, box, frame, offset=(0.0, 0.0)) -> None:
    """``box_el`` covers ``box`` (pixels of an image drawn at ``offset`` in a ``frame``
    of pixels that fills ``img_el``) to within a pixel."""
    got = box_el.bounding_box()
    ref = img_el.bounding_box()
    sx, sy = ref["width"] / frame[0], ref["height"] / frame[1]
    want = {
        "x": ref["x"] + (offset[0] + box[0]) * sx,
        "y": ref["y"] + (offset[1] + box[1]) * sy,
        "width": (box[2] - box[0]) * sx,
        "height": (box[3] - box[1]) * sy,
    }
    assert all(abs(got[k] - want[k]) < 1.0 for k in want), (got, want)


def assert_match_boxes(page, hits: list[dict]) -> None:
    """Every card draws its hit's match_box at its place on the (square, letterboxed)
    thumbnail."""
    cards = page.locator("#grid li.hit")
    assert cards.count() == len(hits)
    for i, hit in enumerate(hits):
        card = cards.nth(i)
        assert card.get_attribute("data-id") == hit["id"]
        iw, ih = hit["image_size"]
        m = max(iw, ih)
        assert_box_drawn(
            page,
            card.locator(".match-box"),
            card.locator("img.thumb"),
            hit["match_box"],
            (m, m),
            ((m - iw) / 2, (m - ih) / 2),
        )


def test_mouse_box_match_boxes_explain_and_refine(site, browser, tmp_path):
    url, query, sent_by = site
    page, errors, external = open_page(browser, url)
    page.set_input_files("#file", str(query))
    wait_hits(page)
    before_box = hit_ids(page)
    assert before_box[0].startswith("decoy")  # the whole image follows the stripes
    assert page.locator("#grid .match-box").count() == 0

    # drag a box over the planted patch; the search that follows carries it as roi
    img = page.locator("#query-img")
    ref = img.bounding_box()
    natural = page.evaluate(
        "[document.getElementById('query-img').naturalWidth,"
        " document.getElementById('query-img').naturalHeight]"
    )
    sx, sy = ref["width"] / natural[0], ref["height"] / natural[1]
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.mouse.move(ref["x"] + TARGET[0] * sx + 0.5, ref["y"] + TARGET[1] * sy + 0.5)
        page.mouse.down()
        page.mouse.move(ref["x"] + 50 * sx, ref["y"] + 60 * sy, steps=4)
        page.mouse.move(ref["x"] + TARGET[2] * sx - 0.5, ref["y"] + TARGET[3] * sy - 0.5, steps=4)
        page.mouse.up()
    fields = sent_by.fields("/api/search")
    roi = [int(v) for v in fields["roi"][0].split(",")]
    assert all(abs(a - b) <= 1 for a, b in zip(roi, TARGET, strict=True)), roi
    assert [page.input_value(f"#roi-{c}") for c in ("x0", "y0", "x1", "y1")] == list(map(str, roi))
    body = answer.value.json()
    wait_hits(page, answer.value)
    assert body["hits"][0]["id"] == "right.png" and inside(body["hits"][0]["match_box"], PATCH)
    assert_match_boxes(page, body["hits"])
    assert_box_drawn(page, page.locator("#roi-box"), img, roi, body["query_size"])
    assert "for the region" in page.inner_text("#status")
    shot(page, tmp_path, "regions-search.png")

    # why similar: the top hit's overlay, loaded, beside the query
    why = page.locator("#grid li.hit").first.locator("button.why")
    with page.expect_response(lambda r: r.url.endswith("/api/explain")):
        why.click()
    assert sent_by.fields("/api/explain") == {
        "hit_id": ["right.png"],
        "format": ["png"],
        "roi": [fields["roi"][0]],
    }
    page.wait_for_function(
        "!document.getElementById('explain').hidden && "
        "document.getElementById('explain-img').naturalWidth > 0"
    )
    assert why.get_attribute("aria-expanded") == "true"
    assert "right.png" in page.inner_text("#explain-title")
    assert not page.is_visible("#viewer")  # the button did not open the card's viewer
    shot(page, tmp_path, "regions-explain.png")

    # mark #3 relevant and #2 not relevant, Refine: the API's refined order, box kept
    before = hit_ids(page)
    cards = page.locator("#grid li.hit")
    cards.nth(2).locator("button.relevant").click()
    cards.nth(1).locator("button.irrelevant").click()
    assert cards.nth(2).locator("button.relevant").get_attribute("aria-pressed") == "true"
    assert cards.nth(1).locator("button.irrelevant").get_attribute("aria-pressed") == "true"
    assert cards.nth(1).locator("button.relevant").get_attribute("aria-pressed") == "false"
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.click("#refine-btn")
    sent = sent_by.fields("/api/search")
    assert sent["relevant"] == [before[2]] and sent["irrelevant"] == [before[1]]
    assert sent["roi"] == fields["roi"]
    after = wait_hits(page, answer.value)
    assert after == api_order(url, query, sent) and after != before, (before, after)
    assert_match_boxes(page, answer.value.json()["hits"])
    marked = page.locator(f"#grid li.hit[data-id='{before[2]}'] button.relevant")
    assert marked.get_attribute("aria-pressed") == "true"  # marks survive the re-render

    # clear box: the next search is a whole-image one again
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.click("#roi-clear")
    assert "roi" not in sent_by.fields("/api/search")
    assert wait_hits(page, answer.value) == before_box and page.is_hidden("#roi-box")
    assert not errors and not external, (errors, external)
    page.close()


def tab_to(page, predicate: str, back: bool = False, limit: int = 60) -> None:
    """Press Tab (Shift+Tab) until ``predicate`` (JS, on ``el``) holds for the focus."""
    for _ in range(limit):
        page.keyboard.press("Shift+Tab" if back else "Tab")
        if page.evaluate(f"(el => {predicate})(document.activeElement)"):
            return
    raise AssertionError(f"Tab never reached {predicate}")


def test_keyboard_only(site, browser):
    url, query, sent_by = site
    page, errors, _ = open_page(browser, url)
    choosers = []
    page.on("filechooser", lambda chooser: choosers.append(chooser))
    tab_to(page, "el.id === 'drop'")
    page.keyboard.press("Enter")
    deadline = time.monotonic() + 20
    while not choosers and time.monotonic() < deadline:
        page.wait_for_timeout(50)
    choosers[0].set_files(str(query))
    wait_hits(page)

    # the box from its number inputs; Enter runs the region search
    tab_to(page, "el.id === 'roi-x0'")
    for i, value in enumerate(TARGET):
        if i:
            page.keyboard.press("Tab")
        page.keyboard.type(str(value))
    assert page.evaluate("document.activeElement.id") == "roi-y1"
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.keyboard.press("Enter")
    assert sent_by.fields("/api/search")["roi"] == [",".join(map(str, TARGET))]
    before = wait_hits(page, answer.value)
    assert page.locator("#grid .match-box").count() == 6

    # Space on a toggle marks the hit (and does not open the card's viewer)
    tab_to(page, "el.getAttribute('aria-label') === 'Not relevant: hit #2'")
    assert page.evaluate("getComputedStyle(document.activeElement).outlineStyle") != "none"
    page.keyboard.press("Space")
    tab_to(page, "el.getAttribute('aria-label') === 'Relevant: hit #3'")
    page.keyboard.press("Space")
    assert page.evaluate("document.activeElement.getAttribute('aria-pressed')") == "true"
    assert not page.is_visible("#viewer")
    assert "1 relevant, 1 not relevant" in page.inner_text("#feedback-count")
    tab_to(page, "el.id === 'refine-btn'", back=True)
    with page.expect_response(lambda r: r.url.endswith("/api/search")) as answer:
        page.keyboard.press("Enter")
    sent = sent_by.fields("/api/search")
    assert sent["relevant"] == [before[2]] and sent["irrelevant"] == [before[1]]
    assert sent["roi"] == [",".join(map(str, TARGET))]
    assert wait_hits(page, answer.value) == api_order(url, query, sent) != before

    # Enter on "Why similar?" opens the maps
    tab_to(page, "el.classList.contains('why')")
    page.keyboard.press("Enter")
    page.wait_for_function("document.getElementById('explain-img').naturalWidth > 0")
    assert page.inner_text("#explain-title").endswith(hit_ids(page)[0])
    assert not errors, errors
    page.close()


def test_boxes_and_maps_under_the_real_csp(site, browser):
    """The page's own Content-Security-Policy applies here (no bypass): boxes are placed
    through the CSSOM, which it allows, and the maps come as a blob: image."""
    url, query, _ = site
    page = browser.new_page(viewport={"width": 1180, "height": 760})
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(url + "/")
    page.wait_for_selector("#roi-fields:not([hidden])")
    page.set_input_files("#file", str(query))
    page.wait_for_selector("#grid li.hit >> nth=5", timeout=60_000)
    for corner, value in zip(("x0", "y0", "x1", "y1"), TARGET, strict=True):
        page.fill(f"#roi-{corner}", str(value))
    page.press("#roi-y1", "Enter")
    page.wait_for_selector("#grid .match-box >> nth=5", timeout=60_000)
    img = page.locator("#query-img").bounding_box()
    drawn = page.locator("#roi-box").bounding_box()
    assert abs(drawn["width"] - (TARGET[2] - TARGET[0]) * img["width"] / 224) < 1.0
    for box in page.locator("#grid .match-box").all():
        assert min(box.bounding_box()["width"], box.bounding_box()["height"]) > 2
    page.locator("#grid button.why").first.click()
    page.wait_for_selector("#explain:not([hidden]) img[src^='blob:']")
    deadline = time.monotonic() + 20  # wait_for_function's predicates need eval: polled here
    while page.locator("#explain-img").evaluate("i => i.naturalWidth") == 0:
        assert time.monotonic() < deadline, "the maps never loaded"
        page.wait_for_timeout(50)
    assert not errors, errors
    page.close()
