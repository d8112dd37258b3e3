"""Recommended configurations: an encoder and a retrieval recipe under one name.

Each ``radsearch/recipes/<name>.json`` shipped in the package names an encoder and
the recipe steps chosen for it by the leave-one-dataset-out run
(``benchmarks/lodo.py``, docs/recipes.md). The name resolves to that encoder's own
config (same vectors, same hash, so an index built under either name opens under
both); ``radsearch index --model <name>`` also attaches the recipe, fitted on the new
index's own vectors, and ``radsearch models`` marks the name ``recommended``.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from radsearch.encoders.registry import get_config, register_derived

RECOMMENDED = "radsearch-default"


@cache
def shipped() -> dict[str, dict]:
    """``{name: spec}`` of every recipe file shipped in the package."""
    folder = resources.files("radsearch") / "recipes"
    out = {}
    for f in sorted(folder.iterdir(), key=lambda p: p.name):
        if f.name.endswith(".json"):
            spec = json.loads(f.read_text())
            out[spec["name"]] = spec
    return out


def shipped_recipe(model: str | None):
    """The recipe that comes with ``model`` (``None``: not a recommended name, or its
    recipe has no steps)."""
    from radsearch.recipe import Recipe

    spec = shipped().get(model or "")
    if not spec or not spec.get("steps"):
        return None
    return Recipe(spec["steps"])


def _builder(spec: dict):
    def build():
        from radsearch.recipe import Recipe

        cfg = get_config(spec["encoder"])
        steps = Recipe(spec.get("steps") or {}).describe()
        return cfg.replace(
            description=f"recommended: {spec['encoder']} + recipe {steps} "
            f"(chosen leaving each RadBench dataset out; docs/recipes.md)"
        )

    return build


for _name, _spec in shipped().items():
    register_derived(_name, _builder(_spec))
