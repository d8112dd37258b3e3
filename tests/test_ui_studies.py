"""The web UI's study mode in a real Chromium: several files as one study, study cards
with the best-matching slice and the item count, a card opening its study's items in
order with a slice scroller; a screenshot under ``artifacts/``."""

from __future__ import annotations

import pytest

from conftest import REPO, make_pattern
from serve_helpers import CHROMIUM, LiveServer, launch_chromium, pattern_index

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("playwright")

ARTIFACTS = REPO / "artifacts"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="/usr/bin/chromium not installed"),
]


@pytest.fixture(scope="module")
def study_index(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("ui_studies")
    out = pattern_index(
        root, lambda kind, n: {"label": kind, "study_id": f"{kind}-{n // 2}"}, size=128
    )
    for n in range(2):
        Image.fromarray(make_pattern("rings", size=128, seed=20 + n)).save(root / f"q{n}.png")
    return out


def test_study_mode_cards_and_slice_scroller(study_index):
    from radsearch.serve import create_app

    queries = [str(study_index.parent / f"q{n}.png") for n in range(2)]
    ARTIFACTS.mkdir(exist_ok=True)
    with launch_chromium() as browser, LiveServer(create_app(study_index)) as url:
        page = browser.new_page(viewport={"width": 1280, "height": 900}, bypass_csp=True)
        errors = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url + "/")
        page.wait_for_function("document.getElementById('index-info').innerText.includes('12')")
        page.check("#study-mode")
        page.fill("#k", "3")
        page.set_input_files("#file", queries)
        page.wait_for_function(
            "document.querySelectorAll('#grid li.study').length === 3", timeout=60_000
        )
        cards = page.locator("#grid li.study")
        assert cards.first.locator(".label").inner_text() == "rings"
        assert "2 items" in cards.first.inner_text()
        assert "best pair: q" in cards.first.inner_text()
        page.wait_for_function(
            "[...document.querySelectorAll('#grid img.thumb')]"
            ".every(i => i.complete && i.naturalWidth > 0)",
            timeout=30_000,
        )
        page.screenshot(path=str(ARTIFACTS / "ui-study.png"), full_page=True)

        cards.first.click()
        page.wait_for_function("document.getElementById('viewer').open")
        assert page.get_attribute("#viewer-slice", "max") == "1"
        first = page.inner_text("#viewer-slice-label")
        page.focus("#viewer-slice")
        page.keyboard.press("End")
        page.wait_for_function(
            "document.getElementById('viewer-slice-label').innerText === 'slice 2 of 2'"
        )
        assert first != page.inner_text("#viewer-slice-label")
        page.wait_for_function("document.getElementById('viewer-img').naturalWidth > 0")
        page.screenshot(path=str(ARTIFACTS / "ui-study-scroller.png"))
        page.keyboard.press("Escape")
        page.wait_for_function("!document.getElementById('viewer').open")
        assert page.is_hidden("#viewer-scroll")
        assert not errors, errors
