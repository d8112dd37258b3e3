"""``radsearch serve`` on a RadBench index: /api/search answers RadBench test images
with the same hits, hence the same top-label agreement, as ``Index.search`` (the path
``radsearch search`` takes)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

pytestmark = [pytest.mark.radbench, pytest.mark.slow]

SAMPLE = 40


def test_api_top_label_agreement_equals_index_search(radbench_index, radbench_refs):
    from fastapi.testclient import TestClient

    from radsearch.serve import create_app

    test = [r for r in radbench_refs if r.metadata.get("split") == "test"]
    sample = test[:: max(1, len(test) // SAMPLE)][:SAMPLE]
    client = TestClient(create_app(radbench_index.path), base_url="http://127.0.0.1")
    info = client.get("/api/info").json()
    assert info["count"] == radbench_index.count and info["encoder"] == "efficientnet-lite0"

    api_agree = direct_agree = 0
    for ref in sample:
        res = client.post(
            "/api/search",
            files={"file": (Path(ref.source).name, Path(ref.source).read_bytes(), "image/jpeg")},
            data={"k": "10"},
        )
        assert res.status_code == 200, res.text
        body = res.json()
        direct = radbench_index.search(ref.source, k=10)[0]
        assert len(body["hits"]) == 10
        assert [(h["id"], h["score"]) for h in body["hits"]] == [
            (h.id, round(h.score, 6)) for h in direct.hits
        ]
        assert body["suggestion"] == direct.suggestion
        api_agree += body["hits"][0]["label"] == ref.metadata["label"]
        direct_agree += direct.hits[0].metadata["label"] == ref.metadata["label"]
    assert api_agree == direct_agree
    assert api_agree / len(sample) > 0.5, f"top-1 label agreement {api_agree}/{len(sample)}"
