"""Indexing under hostile input and concurrency: never dies on one file, never drops one
silently, never loses one; damaged indexes and bad queries give one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import radsearch
from io_fixtures import bad_corpus, write_dicom, write_nifti
from radsearch.cli import main
from radsearch.index import Index

# Child processes import the same radsearch as this one.
ENV = {**os.environ, "PYTHONPATH": str(Path(radsearch.__file__).resolve().parents[1])}


def cli(*args, timeout=300) -> subprocess.CompletedProcess:
    """``radsearch ARGS`` in a fresh process (a hang or a crash cannot take the test down)."""
    cmd = [sys.executable, "-m", "radsearch.cli", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)


def failures(index_dir: Path) -> list[dict]:
    path = index_dir / "failures.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus") / "in"
    return root, bad_corpus(root)


@pytest.fixture(scope="module")
def corpus_run(corpus, tmp_path_factory):
    root, expected = corpus
    out = tmp_path_factory.mktemp("corpus-index") / "idx"
    first = cli("index", root, "--out", out, "--no-progress", "--workers", "1", timeout=240)
    report1 = failures(out)
    second = cli("index", root, "--out", out, "--no-progress", "--workers", "1", timeout=240)
    return out, first, report1, second


def test_corpus_every_file_is_indexed_or_reported(corpus, corpus_run):
    """Cases 1, 3, 4, 5, 6: NaN affine, 2^31 frames/slices, FIFOs, DICOM preamble + garbage,
    empty slice axis, 0x0 plane: none crashes or hangs the run, none is silently dropped,
    none is indexed; indexed + reported == enumerated."""
    root, expected = corpus
    out, first, report, _ = corpus_run
    assert first.returncode == 0, first.stderr[-2000:]
    assert "Traceback" not in first.stderr
    index = Index.open(out)
    assert index.count == sum(expected.values())
    indexed = {Path(r.source).name for r in index.refs(range(index.count))}
    reported = {Path(rec["source"]).name for rec in report}
    assert indexed == {name for name, n in expected.items() if n}
    assert reported == {name for name, n in expected.items() if not n}
    assert len(indexed) + len(reported) == len(expected) == len(os.listdir(root))
    reason = {Path(rec["source"]).name: rec["reason"] for rec in report}
    assert "affine" in reason["nan_affine.nii"]
    assert "empty" in reason["no_slices.nii"] and "empty" in reason["zero_plane.nii"]
    assert "2147483647 frames" in reason["frames_2e31.dcm"]
    assert "2147483648" in reason["slices_2e31.nii"]
    assert "not a regular file (FIFO)" in reason["pipe"] == reason["pipe.dcm"]
    assert "no pixel data" in reason["garbage.dcm"]


def test_corpus_rerun_adds_nothing_and_does_not_double_the_report(corpus_run):
    """Case 8 (re-run part): the report holds the last run, not every run appended."""
    out, _, report1, second = corpus_run
    assert second.returncode == 0, second.stderr[-2000:]
    assert "indexed 0 new item(s)" in second.stdout
    assert failures(out) == report1
    ids = Index.open(out).items.column("id").to_pylist()
    assert len(ids) == len(set(ids))


def test_non_utf8_file_name_is_indexed_losslessly(corpus, corpus_run):
    """Case 2: a file name that is not UTF-8 neither crashes the commit nor is lost."""
    root, _ = corpus
    out = corpus_run[0]
    index = Index.open(out)
    row = index.row_of("caf%E9-%FF.png")
    assert row is not None
    ref = index.ref(row)
    assert os.fsencode(ref.source) == os.fsencode(root) + b"/caf\xe9-\xff.png"
    from radsearch.io.items import load_pixels

    assert np.array_equal(load_pixels(ref), load_pixels(index.ref(index.row_of("good.png"))))


def test_two_folders_with_the_same_names_keep_both(tmp_path):
    """Case 7: siteA then siteB into one index keeps both; re-runs skip what is there."""
    rng = np.random.default_rng(1)
    for site in ("siteA", "siteB"):
        (tmp_path / site).mkdir()
        Image.fromarray(rng.integers(0, 255, (24, 24, 3), dtype=np.uint8)).save(
            tmp_path / site / "001.jpg"
        )
    out = tmp_path / "idx"
    for site in ("siteA", "siteB"):
        assert main(["index", str(tmp_path / site), "--out", str(out), "--no-progress",
                     "--workers", "0"]) == 0  # fmt: skip
    index = Index.open(out)
    assert index.items.column("id").to_pylist() == ["001.jpg", "siteB/001.jpg"]
    assert [Path(r.source).parent.name for r in index.refs([0, 1])] == ["siteA", "siteB"]
    for site in ("siteB", "siteA"):
        main(["index", str(tmp_path / site), "--out", str(out), "--no-progress", "--workers", "0"])
    assert Index.open(out).count == 2


def test_a_file_named_like_a_frame_does_not_collide(tmp_path, capsys):
    """Case 7: ``mf2.dcm#frame=1`` beside a two-frame ``mf2.dcm`` is a third item."""
    src = tmp_path / "src"
    write_dicom(src / "mf2.dcm", np.arange(2 * 8 * 8, dtype=np.uint16).reshape(2, 8, 8))
    write_dicom(src / "mf2.dcm#frame=1", np.full((8, 8), 7, np.uint16))
    out = tmp_path / "idx"
    assert main(["index", str(src), "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    index = Index.open(out)
    assert sorted(index.items.column("id").to_pylist()) == [
        "mf2.dcm#frame=0", "mf2.dcm#frame=1", "mf2.dcm%23frame=1",
    ]  # fmt: skip
    single = index.ref(index.row_of("mf2.dcm%23frame=1"))
    assert single.frame is None and single.source.endswith("mf2.dcm#frame=1")
    main(["index", str(src), "--out", str(out), "--no-progress", "--workers", "0"])
    assert "indexed 0 new item(s)" in capsys.readouterr().out


def test_a_file_failing_for_many_items_is_one_summary_line(tmp_path):
    """Case 8: a NIfTI whose every slice fails gives one line, and a re-run replaces it."""
    src = tmp_path / "src"
    vol = write_nifti(src / "v.nii.gz", np.arange(8 * 8 * 30, dtype=np.int16).reshape(8, 8, 30))
    vol.write_bytes(vol.read_bytes()[:-200])  # the header reads, the data does not
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src / "ok.png")
    out = tmp_path / "idx"
    for _ in range(2):
        main(["index", str(src), "--out", str(out), "--no-progress", "--workers", "0"])
        (rec,) = failures(out)
        assert rec["items"] == 30 and rec["source"] == str(vol)
        assert rec["id"] == "v.nii.gz#slice=0" and rec["last_id"] == "v.nii.gz#slice=29"
    assert Index.open(out).count == 1


def _one_image_index(tmp_path: Path) -> tuple[Path, Path]:
    src = tmp_path / "src"
    src.mkdir()
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(src / "q.png")
    out = tmp_path / "idx"
    assert main(["index", str(src), "--out", str(out), "--no-progress", "--workers", "0"]) == 0
    return src, out


def _damage(index_dir: Path, how: str) -> None:
    if how == "no-vectors":
        (index_dir / "vectors.faiss").unlink()
    else:
        m = json.loads((index_dir / "manifest.json").read_text())
        del m["count"]
        (index_dir / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("how", ["no-vectors", "no-count"])
def test_every_verb_on_a_damaged_index_is_one_line_and_exit_1(tmp_path, corpus, how, capsys):
    """Case 9: a damaged index never gives a traceback, whatever the verb."""
    root, _ = corpus
    src, out = _one_image_index(tmp_path)
    _damage(out, how)
    capsys.readouterr()
    verbs = [
        ["index", str(src), "--out", str(out), "--no-progress"],
        ["search", str(out), str(src / "q.png")],
        ["info", str(out)],
        ["remove", str(out), "q.png"],
    ]
    for argv in verbs:
        assert main(argv) == 1, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"radsearch: error: {out}") and "\n" not in err, (argv, err)
    served = cli("serve", out, "--port", "0", timeout=120)
    assert served.returncode == 1 and "Traceback" not in served.stderr
    assert served.stderr.strip().splitlines()[-1].startswith(f"radsearch: error: {out}")


def test_search_with_unreadable_queries_is_one_line_and_exit_1(tmp_path, corpus, capsys):
    """Case 9 (query part) and case 1's search: each bad corpus file as a query."""
    root, expected = corpus
    src, out = _one_image_index(tmp_path)
    capsys.readouterr()
    for name in ("nan_affine.nii", "truncated.png", "pipe", "zero_plane.nii", "slices_2e31.nii"):
        assert main(["search", str(out), str(root / name)]) == 1, name
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"radsearch: error: {root / name}: ") and "\n" not in err, err


def test_npz_with_an_object_filepath_array_is_refused_with_how_to_save(tmp_path):
    """Case 10: what ``np.savez(..., filepath=df.filepath.values)`` writes is not unpickled."""
    from radsearch.errors import RadsearchError
    from radsearch.evaluate.embeddings import load_embeddings

    path = tmp_path / "e.npz"
    np.savez(path, emb=np.eye(2, dtype=np.float32), filepath=np.array(["a", "b"], dtype=object))
    with pytest.raises(RadsearchError, match=r"dtype=str"):
        load_embeddings(path, ["a", "b"])
    np.savez(path, emb=np.eye(2, dtype=np.float32), filepath=np.array(["a", "b"], dtype=str))
    assert load_embeddings(path, ["b", "a"]).shape == (2, 2)
