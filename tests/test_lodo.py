"""Leave-one-dataset-out selection on a small synthetic table."""

import numpy as np
import pytest

from radsearch.errors import RadsearchError
from radsearch.lodo import choose_configuration, format_table, fuse, leave_one_out, recommend

GRID = {"whiten": [None, {"dim": 8}], "qe": [None, {"k": 2}]}


def _table(seed=0):
    """Three datasets x two labels; per split 40 train / 20 val / 20 test rows per
    dataset. ``efficientnet-lite0`` sees the labels through heavy noise, ``sharp``
    through little noise, so ``sharp`` is the right choice everywhere."""
    rng = np.random.default_rng(seed)
    rows, centres = [], {}
    for ds in ("a", "b", "c"):
        for lab in (0, 1):
            centres[f"{ds}/{lab}"] = rng.normal(size=16)
            for split, n in (("train", 40), ("val", 20), ("test", 20)):
                rows += [(ds, f"{ds}/{lab}", split)] * n
    ds, label, split = (np.asarray(c, dtype=object) for c in zip(*rows, strict=True))
    mean = np.stack([centres[lbl] for lbl in label])
    vec = {
        "efficientnet-lite0": mean + rng.normal(scale=2.5, size=mean.shape),
        "sharp": mean + rng.normal(scale=0.9, size=mean.shape),
    }
    vec = {
        k: (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32) for k, v in vec.items()
    }
    groups = np.asarray([f"g{i // 2}" for i in range(len(ds))], dtype=object)
    return {"dataset": ds, "label": label, "split": split, "group_id": groups}, vec


def _without(table, vec, held):
    keep = table["dataset"] != held
    return {k: v[keep] for k, v in table.items()}, {k: v[keep] for k, v in vec.items()}


def test_lodo_never_reads_the_held_out_labels():
    table, vec = _table()
    folds = leave_one_out(table, vec, "dataset", grid=GRID, screen=2)
    scrambled = dict(table)
    rng = np.random.default_rng(5)
    held = table["dataset"] == "c"
    lab = table["label"].copy()
    lab[held] = rng.permutation(np.asarray(["c/0", "c/1", "zz", "c/1"] * 40, dtype=object))
    scrambled["label"] = lab
    again = leave_one_out(scrambled, vec, "dataset", grid=GRID, screen=2)
    fold_c, fold_c2 = folds[2], again[2]
    assert fold_c.held_out == fold_c2.held_out == "c"
    assert fold_c.choice.key() == fold_c2.choice.key()
    assert fold_c.choice.selection == fold_c2.choice.selection
    # the test figures do read c's labels: scrambling them changes what is scored
    assert fold_c.chosen != fold_c2.chosen
    # and the choice does read the other datasets' labels
    a_scrambled = dict(table)
    lab = table["label"].copy()
    lab[table["dataset"] == "a"] = rng.permutation(lab[table["dataset"] == "a"])
    a_scrambled["label"] = lab
    c_sel = choose_configuration(*_without(a_scrambled, vec, "c"), grid=GRID)
    assert c_sel.selection != fold_c.choice.selection


def test_lodo_picks_the_better_encoder_and_scores_it_against_the_plain_baseline():
    table, vec = _table()
    folds = leave_one_out(table, vec, "dataset", grid=GRID)
    assert [f.held_out for f in folds] == ["a", "b", "c"]
    for f in folds:
        assert f.choice.encoder == "sharp"
        assert f.plain["queries"] == f.chosen["queries"] == 40
        assert f.chosen["p@1_macro"] > f.plain["p@1_macro"]
    rec = recommend(folds)
    assert rec.encoder == "sharp"
    text = format_table(folds)
    assert "held out" in text and "mean lift" in text and text.count("sharp") == 3


def test_lodo_keeps_the_baseline_when_nothing_beats_it():
    table, vec = _table()
    vec["noisy"] = fuse(
        [
            vec["efficientnet-lite0"],
            np.random.default_rng(2).normal(size=vec["efficientnet-lite0"].shape).astype(np.float32)
            * 3,
        ]
    )
    del vec["sharp"]
    choice = choose_configuration(*_without(table, vec, "a"), grid=GRID)
    assert choice.encoder == "efficientnet-lite0"


def test_lodo_needs_the_column_and_the_baseline():
    table, vec = _table()
    with pytest.raises(RadsearchError, match="no 'site' column"):
        leave_one_out(table, vec, "site", grid=GRID)
    with pytest.raises(RadsearchError, match="baseline"):
        choose_configuration(table, {"sharp": vec["sharp"]}, grid=GRID)


def test_fuse_is_the_fusion_encoder_arithmetic():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(5, 3)), rng.normal(size=(5, 4))
    f = fuse([a, b])
    assert f.shape == (5, 7)
    assert np.allclose(np.linalg.norm(f, axis=1), 1.0, atol=1e-6)
    an, bn = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (a, b))
    assert np.allclose(f @ f[0], (an @ an[0] + bn @ bn[0]) / 2, atol=1e-6)


def _cli_table(tmp_path):
    """Three datasets, three labels each, anisotropic noise (whitening helps)."""
    import csv

    from radsearch.io.sources import iter_source

    rng = np.random.default_rng(0)
    d = 24
    centres = rng.standard_normal((9, d)) * 2
    noise = np.linspace(4, 0.2, d)
    rows, vecs = [], []
    for i in range(900):
        lab = i % 9
        split = ("train", "train", "val", "test")[(i // 9) % 4]
        rows.append(
            {
                "filepath": f"img{i}.png",
                "dataset": f"ds{lab // 3}",
                "label": f"c{lab}",
                "split": split,
                "group_id": f"p{i // 2}",
            }
        )
        vecs.append(centres[lab] + rng.standard_normal(d) * noise)
    with open(tmp_path / "m.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    refs = list(iter_source(tmp_path / "m.csv"))
    vecs = np.asarray(vecs, np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    np.savez(tmp_path / "e.npz", emb=vecs, filepath=np.asarray([r.id for r in refs]))
    return [
        "tune",
        str(tmp_path / "m.csv"),
        "--embeddings",
        str(tmp_path / "e.npz"),
        "--grid",
        "quick",
    ]


def test_tune_cli_robust_default_reports_queries_and_confidence(tmp_path, capsys):
    import json

    from radsearch.cli import main

    argv = _cli_table(tmp_path)
    assert main([*argv, "--out", str(tmp_path / "r.json"), "--quiet"]) == 0
    err = capsys.readouterr().err
    # val rows come in runs of 9 consecutive rows; two rows per group_id
    groups = len({(i // 2) for i in range(900) if (i // 9) % 4 == 2})
    assert f"objective robust: 225 tuning queries (bootstrap resamples {groups} groups)" in err
    spec = json.loads((tmp_path / "r.json").read_text())
    assert spec["chosen_on"]["objective"] == "robust" and spec["steps"]
    kept = [t for t in spec["trials"][1:] if t["kept"]]
    assert len(kept) == len(spec["steps"]) and all(t["confidence"] >= 0.9 for t in kept)
    last = kept[-1]
    assert f"(confidence {last['confidence']:.2f})" in err
    assert spec["val_metrics"]["p@1_micro"] > spec["val_metrics_plain"]["p@1_micro"]


def test_tune_cli_lodo_column_leaves_each_value_out(tmp_path, capsys):
    import json

    from radsearch.cli import main

    argv = _cli_table(tmp_path)
    out = tmp_path / "lodo.json"
    assert main([*argv, "--lodo-column", "dataset", "--out", str(out), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "leaving each dataset out (val figures)" in err
    assert all(f"\nds{i} " in err for i in range(3)) and "mean lift" in err
    spec = json.loads(out.read_text())
    assert spec["chosen_on"]["lodo_column"] == "dataset"
    assert [t["held_out"] for t in spec["trials"]] == ["ds0", "ds1", "ds2"]
    assert all(t["plain"]["queries"] == 75 for t in spec["trials"])
    chosen = [t["steps"] for t in spec["trials"]]
    assert spec["steps"] == max(chosen, key=chosen.count)
    assert main([*argv, "--lodo-column", "site", "--out", str(out)]) == 1
    assert "site" in capsys.readouterr().err
