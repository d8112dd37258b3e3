"""``radsearch evaluate --roi-csv``: region, localisation, explain and feedback metrics."""

from __future__ import annotations

import csv
import json
import re

from radsearch.cli import main
from test_regions import PATCH, QUERY_PATCH, inside, plant, save, texture


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


FAST = ["--no-probe", "--map", "none", "--quality-sample", "0", "--index-fractions", "1"]
FAST += ["--seeds", "1", "--no-progress", "--workers", "0"]
OTHER_PATCH = (120, 16, 192, 88)  # where the second lesion query carries the patch
PLAIN_BOX = (100, 100, 160, 160)


def _region_dataset(root):
    """Three lesion items with boxes, three plain ones without; three region queries
    (two lesions, one box on a plain image)."""
    rows, boxes = [], []
    for n in range(3):
        save(plant(texture("stripes", n), PATCH), root / f"lesion{n}.png")
        rows.append([f"lesion{n}.png", "lesion", "train"])
        boxes.append([f"lesion{n}.png", *PATCH, "lesion", "train"])
        save(texture("stripes", 10 + n), root / f"plain{n}.png")
        rows.append([f"plain{n}.png", "plain", "train"])
    queries = [
        ("qa.png", plant(texture("rings", 7), QUERY_PATCH), QUERY_PATCH, "lesion"),
        ("qb.png", plant(texture("rings", 9), OTHER_PATCH), OTHER_PATCH, "lesion"),
        ("qc.png", texture("rings", 8), PLAIN_BOX, "plain"),
    ]
    for name, img, box, label in queries:
        save(img, root / name)
        rows.append([name, label, "test"])
        boxes.append([name, *box, label, "test"])
    with open(root / "data.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["filepath", "label", "split"], *rows])
    with open(root / "roi.csv", "w", newline="") as fh:
        csv.writer(fh).writerows([["filepath", "x0", "y0", "x1", "y1", "label", "split"], *boxes])


def _rects(fragment: str, kind: str) -> list[tuple[int, int, int, int]]:
    found = re.findall(
        rf'<rect class="{kind}" x="(\d+)" y="(\d+)" width="(\d+)" height="(\d+)"', fragment
    )
    return [(int(x), int(y), int(x) + int(w), int(y) + int(h)) for x, y, w, h in found]


def _td(v) -> str:
    return "<td></td>" if v is None else f"<td>{v:.4f}</td>"


def test_report_has_a_regions_section_and_gallery(tmp_path, capsys, one_torch_thread):
    _region_dataset(tmp_path)
    base = ["evaluate", str(tmp_path / "data.csv"), "--model", "efficientnet-lite0", *FAST]
    base += ["--cache-dir", str(tmp_path / "cache")]
    roi = ["--roi-csv", str(tmp_path / "roi.csv")]
    assert main([*base, "--out", str(tmp_path / "r"), *roi]) == 0, capsys.readouterr().err
    assert main([*base, "--out", str(tmp_path / "p")]) == 0, capsys.readouterr().err
    m = json.loads((tmp_path / "r" / "metrics.json").read_text())
    page = (tmp_path / "r" / "report.html").read_text()
    plain = (tmp_path / "p" / "report.html").read_text()
    assert "Regions" not in plain and "<svg" not in plain
    section = re.search(r'<section class="regions">.*?</section>', page, re.S).group(0)
    from radsearch.evaluate.report_regions import CSS

    # without the section (and its style) the report is the plain one, byte for byte
    assert page.replace(section, "").replace(CSS, "") == plain
    assert 'src="http' not in section and 'href="http' not in section
    # the figures of metrics.json, as the table prints them
    roi = m["roi"]
    for key in ("precision_at_k", "whole_image_precision_at_k"):
        for avg in ("micro", "macro"):
            cells = "".join(_td(roi[key][avg].get(k)) for k in ("1", "3", "5", "10"))
            assert f"<td>{avg}</td>{cells}" in section
    loc = [roi["localisation_at_k"][k] for k in ("1", "5", "10")]
    loc.append(m["explain"]["pointing_game"])
    assert loc[0] is not None and "".join(_td(v) for v in loc) in section
    fb = m["feedback"]["precision_at_10"]["micro"]
    assert "<td>micro</td>" + "".join(_td(fb[r]) for r in "012") in section
    # gallery: first box of each label, then the second: qa, qc, qb; each with its box
    rows = section.split('<div class="row">')[1:]
    assert len(rows) == 3
    assert [r.split("<small>")[1].split("</small>")[0].rsplit("/", 1)[-1] for r in rows] == [
        "qa.png",
        "qc.png",
        "qb.png",
    ]
    assert [_rects(r, "roi") for r in rows] == [[QUERY_PATCH], [PLAIN_BOX], [OTHER_PATCH]]
    for r in rows:
        hits = re.findall(r'<figure class="(ok|bad)">(.*?)</figure>', r, re.S)
        assert len(hits) == 5  # top 5 of the six index rows
        for _, fig in hits:
            assert len(_rects(fig, "match")) == 1
            lesion = "lesion (" in fig
            assert _rects(fig, "truth") == ([PATCH] if lesion else [])
        assert len(re.findall(r"data:image/jpeg;base64,", r)) == 6
    first_hit = re.findall(r'<figure class="(ok|bad)">(.*?)</figure>', rows[0], re.S)[0]
    assert first_hit[0] == "ok" and "same label" in first_hit[1]
    assert inside(_rects(first_hit[1], "match")[0], PATCH)  # the match box lies on the patch
