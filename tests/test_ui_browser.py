"""The web UI in a real browser: Playwright for Python driving Debian's Chromium.

Uploads an image, waits for the grid, checks k hits render with their labels and the
suggestion, opens a hit and closes it with the keyboard only, and saves screenshots
under ``artifacts/``. Skipped when /usr/bin/chromium is absent (``.ci/run`` installs it).
"""

from __future__ import annotations

import re
import time

import pytest

from conftest import REPO, make_pattern
from serve_helpers import CHROMIUM, launch_chromium, pattern_index
from serve_helpers import LiveServer as _Server

pytest.importorskip("fastapi")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("playwright")

ARTIFACTS = REPO / "artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists(), reason="/usr/bin/chromium not installed (apt-get install chromium)"
    ),
]


@pytest.fixture(scope="module")
def ui_index(tmp_path_factory):
    from PIL import Image

    organ = {"stripes": ("CT", "chest"), "rings": ("MR", "brain"), "blob": ("XR", "knee")}

    def meta(kind, n):
        modality, anatomy = organ[kind]
        return {
            "label": f"{modality.lower()}_{anatomy}/{kind}",
            "modality": modality,
            "anatomy": anatomy,
            "patient_id": f"P{n}",
            "group_id": f"{kind}-{n // 2}",
            "viewer_url": f"http://pacs.example/app/explorer.html#instance?uuid={kind}-{n}",
        }

    root = tmp_path_factory.mktemp("ui")
    out = pattern_index(root, meta, size=128)
    for n, kind in enumerate(("rings", "stripes")):
        Image.fromarray(make_pattern(kind, size=128, seed=11 + n)).save(root / f"query-{kind}.png")
    return out


@pytest.fixture(scope="module")
def browser():
    with launch_chromium() as b:
        yield b


def _wait_thumbs(page):
    page.wait_for_function(
        "[...document.querySelectorAll('#grid img.thumb')]"
        ".every(i => i.complete && i.naturalWidth > 0)",
        timeout=30_000,
    )


def test_upload_shows_k_hits_with_labels(ui_index, browser):
    from radsearch.serve import create_app

    query = ui_index.parent / "query-rings.png"
    ARTIFACTS.mkdir(exist_ok=True)
    with _Server(create_app(ui_index)) as url:
        # bypass_csp only lets the test's own wait_for_function predicates run; the
        # strict-CSP page is exercised in test_token_prompt
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        external = []
        page.on(
            "request",
            lambda r: (
                None
                if r.url.startswith(url) or r.url.startswith(("blob:", "data:"))
                else external.append(r.url)
            ),
        )
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#filter-controls select').length >= 2")
        assert "12 indexed images" in page.inner_text("#index-info")
        page.fill("#k", "6")
        page.set_input_files("#file", str(query))
        page.wait_for_function(
            "document.querySelectorAll('#grid li.hit').length === 6", timeout=60_000
        )
        hits = page.locator("#grid li.hit")
        labels = hits.locator(".label").all_inner_texts()
        assert len(labels) == 6 and all(labels)
        assert labels[0] == "mr_brain/rings"
        assert labels.count("mr_brain/rings") >= 3
        scores = [float(s) for s in hits.locator(".score").all_inner_texts()]
        assert scores == sorted(scores, reverse=True) and 0 < scores[-1] <= scores[0] <= 1
        assert page.inner_text("#suggestion-value") == "mr_brain/rings"
        assert "MR · brain" in hits.first.inner_text()
        assert "patient" not in hits.first.inner_text()  # PHI is not served by default
        ids = hits.locator(".id").all_inner_texts()  # each card names its item by id ...
        assert len(ids) == 6 and all(
            re.fullmatch(r"img/(stripes|rings|blob)-\d\.png", i) for i in ids
        )
        assert str(ui_index.parent) not in page.inner_text("body")  # ... never by server path
        link = hits.first.locator("a.pacs")
        assert link.inner_text() == "open in PACS viewer"
        assert link.get_attribute("href").startswith(
            "http://pacs.example/app/explorer.html#instance"
        )
        assert page.get_attribute("#query-img", "src").startswith(("blob:", "data:"))
        _wait_thumbs(page)
        page.screenshot(path=str(ARTIFACTS / "ui-search.png"), full_page=True)

        # filters: only CT hits
        page.select_option("#filter-modality", "CT")
        page.click("#search-btn")
        page.wait_for_function(
            "[...document.querySelectorAll('#grid li.hit .meta')].length > 0 && "
            "[...document.querySelectorAll('#grid li.hit')].every(li => li.innerText.includes('CT · chest'))",
            timeout=60_000,
        )
        assert page.locator("#grid li.hit").count() == 4  # only 4 CT images exist

        # a DICOM query: the browser cannot draw it, the server sends a preview
        from pydicom.data import get_testdata_file

        dcm = get_testdata_file("CT_small.dcm")
        page.set_input_files("#file", dcm)
        page.wait_for_function(
            "document.getElementById('query-img').src.startsWith('data:image/png') && "
            "document.getElementById('status').innerText.includes('similar case')",
            timeout=60_000,
        )
        assert page.locator("#grid li.hit").count() == 4
        assert not errors and not external, (errors, external)
        page.close()


def test_keyboard_only(ui_index, browser):
    from radsearch.serve import create_app

    query = ui_index.parent / "query-stripes.png"
    with _Server(create_app(ui_index)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        # listen before loading: file-chooser interception set up later races the key press
        choosers = []
        page.on("filechooser", lambda chooser: choosers.append(chooser))
        page.goto(url + "/")
        page.wait_for_function("document.querySelectorAll('#filter-controls select').length >= 2")
        # Tab from the top of the page to the drop zone, open the file picker with Enter
        for _ in range(10):
            page.keyboard.press("Tab")
            if page.evaluate("document.activeElement.id") == "drop":
                break
        assert page.evaluate("document.activeElement.id") == "drop"
        page.keyboard.press("Enter")
        deadline = time.monotonic() + 20
        while not choosers and time.monotonic() < deadline:
            page.wait_for_timeout(50)
        assert choosers, "Enter on the drop zone did not open the file picker"
        choosers[0].set_files(str(query))
        page.wait_for_function(
            "document.querySelectorAll('#grid li.hit').length === 10", timeout=60_000
        )
        _wait_thumbs(page)
        # Tab reaches the hits; Enter enlarges, Escape closes and gives focus back
        page.focus("#grid li.hit")
        page.keyboard.press("Tab")  # the hit's own PACS link, its buttons, then the next hit
        assert page.evaluate("document.activeElement.className") == "pacs"
        for label in (
            "Why similar: similarity maps of hit #1",
            "Relevant: hit #1",
            "Not relevant: hit #1",
        ):  # regions.js
            page.keyboard.press("Tab")
            assert page.evaluate("document.activeElement.getAttribute('aria-label')") == label
        page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.dataset.id") is not None
        focused = page.evaluate("document.activeElement.dataset.id")
        page.keyboard.press("Enter")
        page.wait_for_selector("#viewer[open]")
        page.wait_for_function("document.getElementById('viewer-img').naturalWidth > 0")
        assert page.evaluate("document.activeElement.id") == "viewer-close"
        assert "stripes" in page.inner_text("#viewer-meta")
        assert "source" not in page.inner_text("#viewer-meta")  # no server path by default
        assert str(ui_index.parent) not in page.inner_text("#viewer-meta")
        page.screenshot(path=str(ARTIFACTS / "ui-viewer.png"))
        page.keyboard.press("Escape")
        page.wait_for_selector("#viewer:not([open])", state="attached")
        assert page.evaluate("document.activeElement.dataset.id") == focused
        page.close()


def test_token_prompt(ui_index, browser):
    from radsearch.serve import create_app

    with _Server(create_app(ui_index, token="t0ken")) as url:
        page = browser.new_page()  # the real Content-Security-Policy applies here
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.on(
            "console",
            lambda m: errors.append(m.text) if m.type == "error" and "401" not in m.text else None,
        )
        page.goto(url + "/")
        page.wait_for_selector("#token-row:not([hidden])")
        assert "token" in page.inner_text("#status")
        page.fill("#token", "t0ken")
        page.keyboard.press("Tab")  # 'change' fires
        page.wait_for_selector("#index-info:has-text('12 indexed')")
        page.set_input_files("#file", str(ui_index.parent / "query-rings.png"))
        page.wait_for_selector("#grid li.hit >> nth=9", timeout=60_000)
        assert page.locator("#grid li.hit").count() == 10
        page.wait_for_selector("#grid li.hit img.thumb[src^='blob:'] >> nth=9")
        assert not errors, errors
        page.close()


def test_docs_page_works_offline(ui_index, browser):
    """/docs renders Swagger UI from the installed package: every operation listed,
    and not one request leaves the server (a CDN would be blank in a hospital)."""
    pytest.importorskip("fastapi_offline")
    from radsearch.serve import create_app

    with _Server(create_app(ui_index)) as url:
        page = browser.new_page()
        external = []

        def only_local(route):
            if route.request.url.startswith(url) or route.request.url.startswith("data:"):
                return route.continue_()
            external.append(route.request.url)
            return route.abort()

        page.route("**/*", only_local)
        page.goto(url + "/docs")
        page.wait_for_selector(".opblock-summary-path", timeout=30_000)
        paths = {
            p.strip().replace("\u200b", "")
            for p in page.locator(".opblock-summary-path").all_inner_texts()
        }
        assert {"/api/search", "/api/health", "/api/info", "/api/items/{item_id}"} <= paths, paths
        assert page.locator(".opblock-post").count() >= 1
        assert not external, external
        page.screenshot(path=str(ARTIFACTS / "ui-docs.png"))
        page.close()
