"""Studies as the unit of search: identity, aggregation, study search (Python and CLI),
grouping single-image hits, the study metric, and the clear errors of bad study input."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from radsearch.cli import main
from radsearch.errors import RadsearchError
from radsearch.index import Index
from radsearch.io.items import ItemRef
from radsearch.studies import (
    STUDY_COLUMN,
    group_by_study,
    search_study,
    search_study_id,
    study_ids,
)
from radsearch.studies.aggregate import score_studies

DIM = 1280


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def unit(*parts):
    v = np.zeros(DIM, np.float32)
    for axis, weight in parts:
        v[axis] += weight
    return v / np.linalg.norm(v)


def vector_index(tmp_path, studies: dict[str, list[np.ndarray]], **meta) -> Index:
    """An index of given vectors, one study per key (no encoder is run)."""
    refs, vecs = [], []
    for sid, items in studies.items():
        for n, v in enumerate(items):
            extra = {k: f(sid) for k, f in meta.items()}
            refs.append(
                ItemRef(
                    f"{sid}/{n}",
                    f"{sid}/{n}.png",
                    None,
                    {STUDY_COLUMN: sid, "label": sid[0], **extra},
                )
            )
            vecs.append(v)
    index = Index.create(tmp_path / "vidx", "efficientnet-lite0")
    index.add(refs, np.stack(vecs))
    index.save()
    return Index.open(tmp_path / "vidx")


def planted(tmp_path):
    """Query items q0..q2; study A resembles all of them moderately, while B, C and D
    each hold one near-copy of one query item and nothing else alike."""
    query = np.stack([unit((i, 1)) for i in range(3)])
    studies = {
        "A": [unit((0, 1), (1, 1), (2, 1), (30 + j, 0.3)) for j in range(3)],
        "B": [unit((0, 1), (10, 0.1)), unit((20, 1)), unit((21, 1))],
        "C": [unit((1, 1), (11, 0.1)), unit((22, 1)), unit((23, 1))],
        "D": [unit((2, 1), (12, 0.1)), unit((24, 1)), unit((25, 1))],
    }
    return query, vector_index(tmp_path, studies)


def test_planted_right_study_wins_without_best_single_hit(tmp_path):
    query, index = planted(tmp_path)
    single = index.search(query, k=1)
    assert [r.hits[0].metadata[STUDY_COLUMN] for r in single] == ["B", "C", "D"]
    result = search_study(index, query, k=4)
    assert [s.study_id for s in result.studies][0] == "A"
    assert result.studies[0].items == 3 and result.studies[0].score > result.studies[1].score
    # The best single pair alone would pick a near-copy study, not A.
    slice_level = search_study(index, query, k=1, method="max-pair")
    assert slice_level.studies[0].study_id in {"B", "C", "D"}
    pairs = result.studies[0].pairs
    assert len(pairs) == 3 and {p["query_item"] for p in pairs} == {
        "vector[0]",
        "vector[1]",
        "vector[2]",
    }
    assert all(p["hit_id"].startswith("A/") for p in pairs)
    assert pairs[0]["score"] >= pairs[-1]["score"]


def test_study_hit_json_schema_and_metadata(tmp_path):
    query, index = planted(tmp_path)
    doc = search_study(index, query, k=2).to_dict()
    assert set(doc) == {"query", "studies"}
    top = doc["studies"][0]
    assert set(top) >= {"rank", "score", "study_id", "items", "pairs"}
    assert top["label"] == "A" and top["rank"] == 1
    assert set(top["pairs"][0]) == {"query_item", "hit_id", "score"}
    assert "id" not in top and "source" not in top


def test_exact_and_candidate_paths_agree(tmp_path, monkeypatch):
    query, index = planted(tmp_path)
    exact = [s.study_id for s in search_study(index, query, k=4).studies]
    import radsearch.studies.search as ss

    monkeypatch.setattr(ss, "EXACT_LIMIT", 0)
    assert [s.study_id for s in search_study(index, query, k=4).studies] == exact


def test_study_id_query_leaves_itself_out(tmp_path):
    _, index = planted(tmp_path)
    result = search_study_id(index, "B", k=3)
    assert "B" not in [s.study_id for s in result.studies] and len(result.studies) == 3
    assert result.query == "study:B"
    assert result.studies[0].pairs[0]["query_item"].startswith("B/")
    with pytest.raises(RadsearchError, match="--study-id nope: no such study"):
        search_study_id(index, "nope")


def test_filters_and_one_per_patient_apply(tmp_path):
    query = np.stack([unit((i, 1)) for i in range(3)])
    studies = {
        s: [unit((0, 1), (1, 1), (2, 1), (40 + i, w))]
        for i, (s, w) in enumerate([("A1", 0.1), ("A2", 0.2), ("B1", 0.3), ("B2", 0.4)])
    }
    index = vector_index(
        tmp_path,
        studies,
        patient_id=lambda s: "p" + s[1],
        modality=lambda s: "CT" if s[0] == "A" else "MR",
    )
    assert [s.study_id for s in search_study(index, query, k=4).studies] == ["A1", "A2", "B1", "B2"]
    only_mr = search_study(index, query, k=4, where={"modality": "MR"}).studies
    assert [s.study_id for s in only_mr] == ["B1", "B2"]
    per_patient = search_study(index, query, k=4, one_per_patient=True).studies
    assert [s.study_id for s in per_patient] == ["A1", "A2"]
    with pytest.raises(RadsearchError, match="no indexed study matches modality=US"):
        search_study(index, query, where={"modality": "US"})


def test_group_by_study_each_study_once(tmp_path):
    query, index = planted(tmp_path)
    plain = index.search(query[:1], k=6)[0].hits
    grouped = group_by_study(index, query[:1], k=3)[0].hits
    assert len({h.metadata[STUDY_COLUMN] for h in plain}) < len(plain)
    studies = [h.metadata[STUDY_COLUMN] for h in grouped]
    assert studies[:2] == ["B", "A"] and studies[2] in {"C", "D"}
    assert grouped[0].id == "B/0" and [h.rank for h in grouped] == [1, 2, 3]
    assert grouped[0].metadata["study_items"] == 3


def test_older_index_without_study_column_each_item_its_own_study(tmp_path):
    query, index = planted(tmp_path)
    index.items = index.items.drop_columns([STUDY_COLUMN])
    assert list(study_ids(index))[:2] == ["A/0", "A/1"]
    result = search_study(index, query, k=3)
    assert all(s.items == 1 for s in result.studies)
    assert result.studies[0].study_id.startswith(("B/", "C/", "D/", "A/"))


def test_aggregation_rejects_empty_query():
    with pytest.raises(RadsearchError, match="no items"):
        score_studies(np.zeros((0, 4)), np.ones((2, 4)), np.array([0]))


# -- metric -----------------------------------------------------------------------------
def test_study_metric_excludes_mixed_label_studies_and_counts_them():
    from radsearch.evaluate.studies import study_metrics

    rng = np.random.default_rng(0)
    centre = {"x": unit((0, 1)), "y": unit((1, 1))}

    def items(label, n):
        return [
            centre[label] + 0.05 * rng.standard_normal(DIM).astype(np.float32) for _ in range(n)
        ]

    def split(studies):
        ids = [sid for sid, labels in studies.items() for _ in labels]
        labels = [lab for labels in studies.values() for lab in labels]
        vecs = np.stack([v for lab in labels for v in items(lab, 1)])
        return ids, labels, vecs / np.linalg.norm(vecs, axis=1, keepdims=True)

    i_ids, i_lab, i_vec = split({"i1": "xx", "i2": "yy", "i3": "xy", "i4": "x"})
    q_ids, q_lab, q_vec = split({"q1": "xxx", "q2": "yy", "q3": "yx"})
    m = study_metrics(q_ids, q_lab, q_vec, i_ids, i_lab, i_vec, max_k=2)
    assert set(m) == {"study", "study_baseline_mean_vector", "study_baseline_single_item"}
    c = m["study"]["counts"]
    assert c["mixed_label_query_studies"] == 1 and c["mixed_label_index_studies"] == 1
    assert m["study"]["queries_scored"] == 2
    # The mixed index study i3 (half x, half y) would take a rank among q1's two x hits.
    assert m["study"]["precision_at_k"]["micro"] == {"1": 1.0, "2": 1.0}
    assert m["study"]["precision_at_k"]["macro"]["2"] == 1.0


# -- CLI and real files ------------------------------------------------------------------
@pytest.fixture
def pattern_index(pattern_folder, tmp_path, capsys):
    out = tmp_path / "idx"
    code, stdout, err = run(
        capsys,
        "index",
        pattern_folder,
        "--out",
        out,
        "--label-from-folder",
        "--no-progress",
        "--workers",
        "0",
    )
    assert code == 0, err
    return pattern_folder, out


def test_cli_study_folder_with_unreadable_file(pattern_index, tmp_path, capsys):
    folder, out = pattern_index
    query = tmp_path / "query"
    query.mkdir()
    for n in (0, 1):
        Image.open(folder / "rings" / f"{n}.png").save(query / f"{n}.png")
    (query / "broken.png").write_bytes(b"not an image at all")
    code, stdout, err = run(capsys, "search", out, "--study", query, "-k", "3", "--json")
    assert code == 0, err
    assert "broken.png" in err and "left out of the query study" in err
    doc = json.loads(stdout)
    top = doc["queries"][0]["studies"][0]
    assert top["label"] == "rings" and top["study_id"].startswith("rings/")
    assert {p["query_item"] for p in top["pairs"]} <= {"query/0.png", "query/1.png"}


def test_cli_study_errors(pattern_index, tmp_path, capsys):
    _, out = pattern_index
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = run(capsys, "search", out, "--study", empty)
    assert code == 1 and err.strip() == f"radsearch: error: {empty}: the query study has no images"
    code, _, err = run(capsys, "search", out, "--study-id", "no/such.png")
    assert code == 1 and "radsearch: error: --study-id no/such.png: no such study" in err
    code, _, err = run(
        capsys, "search", out, "--study-id", "rings/0.png", "--where", "label=nothing"
    )
    assert code == 1 and "radsearch: error: no indexed study matches label=nothing" in err
    code, stdout, err = run(capsys, "search", out, "--study-id", "rings/0.png", "-k", "2")
    assert code == 0 and "rings/" in stdout.splitlines()[1]


def test_cli_index_study_column_and_group_by(pattern_folder, tmp_path, capsys):
    csv = tmp_path / "m.csv"
    lines = ["filepath,label,patient_id"]
    for kind in ("stripes", "rings", "blob"):
        lines += [f"{pattern_folder}/{kind}/{n}.png,{kind},{kind}-p{n // 2}" for n in range(4)]
    csv.write_text("\n".join(lines) + "\n")
    out = tmp_path / "cidx"
    code, _, err = run(
        capsys,
        "index",
        csv,
        "--out",
        out,
        "--study-column",
        "patient_id",
        "--no-progress",
        "--workers",
        "0",
    )
    assert code == 0, err
    index = Index.open(out)
    assert len(set(index.items.column(STUDY_COLUMN).to_pylist())) == 6
    code, stdout, _ = run(
        capsys,
        "search",
        out,
        pattern_folder / "rings" / "0.png",
        "-k",
        "3",
        "--group-by",
        "study",
        "--json",
    )
    hits = json.loads(stdout)["queries"][0]["hits"]
    assert code == 0 and [h["study_id"] for h in hits][:2] == ["rings-p0", "rings-p1"]
    assert len({h["study_id"] for h in hits}) == 3
    code, _, err = run(capsys, "index", csv, "--out", tmp_path / "x", "--study-column", "nope")
    assert code == 1 and "--study-column nope: no such column" in err


def test_evaluate_study_column_metrics_and_report(tmp_path, capsys):
    """``radsearch evaluate --study-column``: study section, both baselines, mixed counted."""
    rng = np.random.default_rng(1)
    centres = {lab: unit((i, 1)) for i, lab in enumerate("abc")}
    lines, vecs = ["filepath,label,split,group_id,dataset"], []
    plan = [("train", f"t{n}", lab, 3) for n, lab in enumerate("abcabc")]
    plan += [("test", f"q{n}", lab, 4) for n, lab in enumerate("abc")]
    for split, group, lab, n_items in plan:
        for j in range(n_items):
            dataset = "d1" if lab == "c" else "d0"
            lines.append(f"img/{group}_{j}.png,{lab},{split},{group},{dataset}")
            vecs.append(centres[lab] + 0.01 * rng.standard_normal(DIM))
    lines.append("img/mixed_0.png,a,test,mixed,d0")
    lines.append("img/mixed_1.png,b,test,mixed,d0")
    vecs += [centres["a"], centres["b"]]
    csv = tmp_path / "rows.csv"
    csv.write_text("\n".join(lines) + "\n")
    npy = tmp_path / "emb.npy"
    v = np.stack(vecs).astype(np.float32)
    np.save(npy, v / np.linalg.norm(v, axis=1, keepdims=True))
    out = tmp_path / "ev"
    code, stdout, err = run(
        capsys,
        "evaluate",
        csv,
        "--embeddings",
        npy,
        "--out",
        out,
        "--study-column",
        "group_id",
        "--index-fractions",
        "none",
        "--map",
        "none",
        "--no-probe",
        "--quality-sample",
        "0",
        "--gallery",
        "0",
        "--no-progress",
    )
    assert code == 0, err
    m = json.loads((out / "metrics.json").read_text())
    for name in ("study", "study_baseline_mean_vector", "study_baseline_single_item"):
        assert set(m[name]["precision_at_k"]) == {"micro", "macro"}
        assert m[name]["precision_at_k"]["micro"]["1"] == 1.0
    assert m["study"]["counts"]["mixed_label_query_studies"] == 1
    assert m["study"]["queries_scored"] == 3 and set(m["study"]["per_group"]) == {"d0", "d1"}
    assert "mix 'label' values" in err
    assert "Studies as the unit of search" in (out / "report.html").read_text()
    assert "study " in stdout


def test_pacs_study_hits_link_to_the_study(tmp_path):
    from radsearch.io.dicomweb import orthanc_id

    base = "http://pacs:8042"
    query = np.stack([unit((0, 1))])
    studies = {"S1": [unit((0, 1)), unit((0, 1), (5, 0.2))]}
    index = vector_index(
        tmp_path,
        studies,
        study_uid=lambda s: "1.2.3",
        patient_id=lambda s: "P9",
        pacs_url=lambda s: f"{base}/dicom-web/studies/1.2.3/series/4.5/instances/6.7/rendered",
        viewer_url=lambda s: f"{base}/app/explorer.html#instance?uuid=abc",
    )
    top = search_study(index, query, k=1).studies[0].metadata
    assert top["pacs_url"] == f"{base}/dicom-web/studies/1.2.3"
    assert top["viewer_url"] == (f"{base}/app/explorer.html#study?uuid={orthanc_id('P9', '1.2.3')}")
