"""``radsearch evaluate --roi-csv``: region, localisation, explain and feedback metrics."""

from __future__ import annotations

import csv
import json

from radsearch.cli import main
from test_regions import PATCH, QUERY_PATCH, plant, save, texture


def test_evaluate_with_a_box_table(tmp_path, capsys, one_torch_thread):
    rows, boxes = [], []
    for n in range(3):  # 'lesion' items carry the planted patch; 'plain' items do not
        name = f"lesion{n}.png"
        save(plant(texture("stripes", n), PATCH), tmp_path / name)
        rows.append([name, "lesion", "train"])
        boxes.append([name, *PATCH, "lesion", "train"])
        save(texture("stripes", 10 + n), tmp_path / f"plain{n}.png")
        rows.append([f"plain{n}.png", "plain", "train"])
    save(plant(texture("rings", 7), QUERY_PATCH), tmp_path / "q.png")
    rows.append(["q.png", "lesion", "test"])
    boxes.append(["q.png", *QUERY_PATCH, "lesion", "test"])
    save(texture("rings", 8), tmp_path / "q2.png")
    rows.append(["q2.png", "plain", "test"])
    with open(tmp_path / "data.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["filepath", "label", "split"], *rows])
    with open(tmp_path / "roi.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["filepath", "x0", "y0", "x1", "y1", "label", "split"], *boxes])
    out = tmp_path / "eval"
    rc = main(
        [
            "evaluate",
            str(tmp_path / "data.csv"),
            "--model",
            "efficientnet-lite0",
            "--out",
            str(out),
            "--roi-csv",
            str(tmp_path / "roi.csv"),
            "--no-report",
            "--no-probe",
            "--map",
            "none",
            "--quality-sample",
            "0",
            "--index-fractions",
            "1",
            "--seeds",
            "1",
            "--no-progress",
            "--workers",
            "0",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "metrics.json").read_text())
    assert m["roi"]["queries"] == 1
    assert m["roi"]["precision_at_k"]["micro"]["1"] == 1.0  # the region finds a lesion
    assert m["roi"]["localisation_at_k"]["1"] == 1.0  # and its match box lies on the patch
    assert "1" in m["roi"]["whole_image_precision_at_k"]["macro"]
    assert m["explain"]["pointing_game"] is not None
    assert set(m["feedback"]["precision_at_10"]["micro"]) == {"0", "1", "2"}


def test_evaluate_refuses_a_bad_box_table(tmp_path, capsys):
    (tmp_path / "roi.csv").write_text("filepath,x0,y0\na.png,1,2\n")
    (tmp_path / "data.csv").write_text("filepath,label,split\na.png,x,train\n")
    rc = main(
        [
            "evaluate",
            str(tmp_path / "data.csv"),
            "--model",
            "efficientnet-lite0",
            "--out",
            str(tmp_path / "o"),
            "--roi-csv",
            str(tmp_path / "roi.csv"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 1 and err.startswith("radsearch: error: ")
