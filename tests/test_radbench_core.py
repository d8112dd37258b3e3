"""Issue-2 acceptance on RadBench: index the train rows with efficientnet-lite0, search
the test rows, pathology P@1 >= 0.68 (a plain reference implementation reaches 0.71)."""

from __future__ import annotations

import numpy as np
import pytest

from radsearch.search import search_vectors

pytestmark = pytest.mark.radbench


def test_pathology_p_at_1_on_radbench(radbench_lite0, radbench_index):
    refs, emb = radbench_lite0
    test_rows = [i for i, r in enumerate(refs) if r.metadata["split"] == "test"]
    assert radbench_index.count == sum(r.metadata["split"] == "train" for r in refs)
    results = search_vectors(radbench_index, emb[test_rows], k=1, suggest=None)
    labels = np.array([refs[i].metadata["label"] for i in test_rows])
    top = np.array([r.hits[0].metadata["label"] for r in results])
    p1 = float((top == labels).mean())
    print(
        f"\nRadBench efficientnet-lite0 pathology P@1 (micro) over {len(labels)} test rows: {p1:.4f}"
    )
    assert p1 >= 0.68


def test_image_queries_match_the_vector_path(radbench_lite0, radbench_index):
    """Searching with image files (decode + encode at query time) gives the hits the
    batch-embedded vectors give: query-time preprocessing equals indexing's."""
    refs, emb = radbench_lite0
    test_rows = [i for i, r in enumerate(refs) if r.metadata["split"] == "test"][::97][:12]
    by_image = radbench_index.search([refs[i].source for i in test_rows], k=5)
    by_vector = search_vectors(radbench_index, emb[test_rows], k=5)
    for a, b in zip(by_image, by_vector, strict=True):
        assert [h.id for h in a.hits] == [h.id for h in b.hits]
        np.testing.assert_allclose([h.score for h in a.hits], [h.score for h in b.hits], atol=1e-4)
        assert a.suggestion == b.suggestion


def test_one_per_patient_on_radbench(radbench_lite0, radbench_index):
    refs, emb = radbench_lite0
    knee = [
        i
        for i, r in enumerate(refs)
        if r.metadata["split"] == "test" and r.metadata["dataset"] == "knee_oa_xray"
    ][:5]
    for res in search_vectors(radbench_index, emb[knee], k=10, one_per_patient=True):
        pids = [h.metadata["patient_id"] for h in res.hits]
        assert len(res.hits) == 10 and len(set(pids)) == 10
