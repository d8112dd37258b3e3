"""The recommended configuration: one name, an encoder plus its shipped recipe."""

import json

import pytest

from radsearch.cli import main
from radsearch.encoders import get_config
from radsearch.encoders import recommended as rec
from radsearch.index import Index


def test_models_json_marks_exactly_the_recommended_name(capsys):
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    marked = [r["name"] for r in rows if r["recommended"]]
    assert marked == [rec.RECOMMENDED]
    spec = rec.shipped()[rec.RECOMMENDED]
    row = next(r for r in rows if r["name"] == rec.RECOMMENDED)
    assert row["description"].startswith(f"recommended: {spec['encoder']} + recipe")
    # same vectors as its encoder: an index built under either name opens under both
    assert get_config(rec.RECOMMENDED).hash == get_config(spec["encoder"]).hash


def test_the_recipe_ships_in_the_package():
    from importlib import resources

    files = [f.name for f in (resources.files("radsearch") / "recipes").iterdir()]
    assert f"{rec.RECOMMENDED}.json" in files
    spec = rec.shipped()[rec.RECOMMENDED]
    assert "lodo" in spec["chosen_by"]


@pytest.mark.slow
def test_index_with_the_recommended_name_attaches_its_recipe(
    pattern_folder, tmp_path, monkeypatch, capsys
):
    from radsearch.encoders import weights_available

    spec = rec.shipped()[rec.RECOMMENDED]
    if not weights_available(get_config(spec["encoder"])):
        pytest.skip(f"{spec['encoder']}: weights not installed (the offline extra)")
    out = tmp_path / "ix"
    argv = [
        "index",
        str(pattern_folder),
        "--model",
        rec.RECOMMENDED,
        "--out",
        str(out),
        "--no-progress",
        "--workers",
        "0",
    ]
    assert main(argv) == 0
    ix = Index.open(out)
    assert ix.encoder_name == spec["encoder"]
    got = (ix.manifest.get("recipe") or {}).get("steps") or {}
    want = rec.shipped_recipe(rec.RECOMMENDED)
    assert got == ({} if want is None else want.steps)
    # a recommended name whose recipe has steps: attached at index time, fitted on the
    # index's own vectors, so search applies it with no extra file
    planted = {**spec, "name": "planted-default", "steps": {"whiten": {"dim": 4}}}
    monkeypatch.setattr(rec, "shipped", lambda: {"planted-default": planted})
    from radsearch.pipeline import _attach_shipped_recipe

    ix2 = Index.open(out)
    ix2.set_recipe(None)
    _attach_shipped_recipe(ix2, "planted-default")
    assert ix2.manifest["recipe"]["steps"]["whiten"]["dim"] == 4
    assert ix2.recipe is not None and ix2.recipe.fitted
    # an index that already has a recipe keeps it
    _attach_shipped_recipe(ix2, "planted-default")
    before = json.dumps(ix2.manifest["recipe"], sort_keys=True)
    monkeypatch.setattr(
        rec, "shipped", lambda: {"planted-default": {**planted, "steps": {"qe": {}}}}
    )
    _attach_shipped_recipe(ix2, "planted-default")
    assert json.dumps(ix2.manifest["recipe"], sort_keys=True) == before
