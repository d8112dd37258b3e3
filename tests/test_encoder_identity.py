"""Encoder identity: the config hash is what the encoder computes, stamped in every index.

The pinned hashes are those of indexes already on disk: a change here makes every
existing index built with that encoder "foreign", so they must never move.
"""

from __future__ import annotations

from radsearch.encoders import get_config, list_encoders

# every built-in name -> its config hash (offline encoders and the hub-backed names)
PINNED = {
    "biomedclip": "62404941d74191ae",
    "clip-vit-l14": "df513fcbbfdfe6a9",
    "dinov2-b14": "34c35d64d8583191",
    "efficientnet-lite0": "bdcf82b5b4477e4a",
    "efficientnet-lite0-deep-eq": "efda69afdd6c7ae2",
    "efficientnet-lite0-gem": "807402e51c7a34e6",
    # statically quantised Lite0: its own hash, so int8 and fp32 vectors never mix
    "efficientnet-lite0-int8": "e58f84cdd98bb00d",
    "efficientnet-lite0-mid": "7f769727b7ef5e45",
    "efficientnet-lite0-midgrid": "e04a1ceded9cc3cd",
    "efficientnet-lite2": "405b70b0a42a961b",
    "efficientnet-lite2-deep-eq": "b1087e922c9ffc7d",
    "lite0+lite2": "639f9513643f7e73",
    "lite2+litemedsam": "0b6d014dc944b934",
    "litemedsam": "048a081d6cee182d",
    "medclip": "3d22641b816092f8",
    "medsam-vit-b": "f46f82366b2bf64a",
    "rad-dino": "87c5328c580827ed",
    # the recommended name resolves to the deep-eq fusion: the same vectors, the same hash
    "radsearch-default": "9df715476be243e2",
    "resnet50": "bad4bdd57dec02a9",
    "sam-vit-b": "40aa925d20137b96",
    "vit-b16": "8471609e49354672",
    "vit-mae-b": "6cb6eac2828be7f0",
}


def test_builtin_encoder_hashes_never_change():
    got = {name: get_config(name).hash for name in PINNED}
    assert got == PINNED


def test_every_builtin_name_is_pinned():
    names = {row["name"] for row in list_encoders()}
    assert set(PINNED) <= names  # other test modules may register their own


# --- registration does not depend on import order ----------------------------------------

_RESOLVE_ALL = """
import json, sys
{first}
from radsearch.encoders import get_config
from radsearch.encoders.registry import registered_names
out = {{n: get_config(n).hash for n in registered_names()}}
out["fusion:efficientnet-lite0-mid+lite0+lite2"] = "error-expected"
try:
    get_config("fusion:efficientnet-lite0-mid+lite0+lite2")
except Exception as e:
    out["fusion:efficientnet-lite0-mid+lite0+lite2"] = type(e).__name__
out["fusion:efficientnet-lite0-mid+litemedsam"] = get_config(
    "fusion:efficientnet-lite0-mid+litemedsam").hash
print(json.dumps(out))
"""

FIRST_IMPORTS = [
    "",
    "import radsearch.encoders.fusion",
    "import radsearch.encoders.efficientnet",
    "import radsearch.encoders.medsam",
    "import radsearch.encoders.openclip",
    "from radsearch.encoders.fusion import register_fusion\n"
    "register_fusion('late', [('efficientnet-lite0-gem', 1.0), ('efficientnet-lite2-deep-eq', 2.0)])",
]


def _resolve_in_fresh_interpreter(first: str) -> dict:
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": src + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run(
        [sys.executable, "-c", _RESOLVE_ALL.format(first=first)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_every_name_resolves_in_any_import_order():
    runs = [_resolve_in_fresh_interpreter(first) for first in FIRST_IMPORTS]
    plain = runs[0]
    assert {k: v for k, v in plain.items() if not k.startswith("fusion:")} == PINNED
    assert (
        plain["fusion:efficientnet-lite0-mid+lite0+lite2"] == "EncoderError"
    )  # fusion of a fusion
    for first, got in zip(FIRST_IMPORTS[1:], runs[1:], strict=True):
        late = got.pop("late", None)
        assert got == plain, first
        if late is not None:  # a fusion registered before its members' module was imported
            assert len(late) == 16


# --- identity is what it computes, not where its files lie --------------------------------


def _checkpoint_dir(path, cfg):
    import json

    path.mkdir(parents=True)
    (path / "radsearch_encoder.json").write_text(json.dumps(cfg.to_dict()))
    (path / "model.safetensors").write_bytes(b"weights")
    return path


def test_moving_a_checkpoint_directory_keeps_the_hash(tmp_path):
    import shutil

    base = get_config("efficientnet-lite0").replace(name="my-finetune")
    a = get_config(str(_checkpoint_dir(tmp_path / "a" / "ckpt", base)))
    shutil.move(tmp_path / "a" / "ckpt", tmp_path / "moved")
    b = get_config(str(tmp_path / "moved"))
    assert a.location != b.location and a.name != b.name
    assert a.hash == b.hash
    # the location is kept (the loader reads it), only the hash ignores it
    assert b.location["local_dir"] == str((tmp_path / "moved").resolve())


def test_changing_preprocessing_changes_the_hash(tmp_path):
    base = get_config("efficientnet-lite0").replace(name="my-finetune")
    ref = get_config(str(_checkpoint_dir(tmp_path / "ref", base))).hash
    for change in (
        {"mean": (0.4, 0.5, 0.5)},
        {"input_size": 256},
        {"resize": "pad"},
        {"interpolation": "bilinear"},
        {"contrast": "equalize"},
        {"pooling": "max"},
    ):
        d = _checkpoint_dir(tmp_path / str(len(str(change))) / "c", base.replace(**change))
        assert get_config(str(d)).hash != ref, change
    assert base.replace(std=(0.4, 0.5, 0.5)).hash != base.hash


def test_location_fields_are_not_hashed_but_travel_in_manifests():
    from radsearch.encoders import EncoderConfig

    cfg = get_config("medsam-vit-b")
    located = cfg.replace(location={"weights_file": "/data/medsam_vit_b.pth"})
    moved = located.replace(location={"weights_file": "/elsewhere/medsam_vit_b.pth"})
    assert moved.hash == located.hash
    assert EncoderConfig.from_dict(located.to_dict()) == located
    # manifests written before ``location`` existed kept it in ``extra``
    legacy = {**cfg.to_dict(), "extra": {"weights_file": "/x.pth", "seed": 1}}
    legacy.pop("location")
    old = EncoderConfig.from_dict(legacy)
    assert old.location == {"weights_file": "/x.pth"} and old.extra == {"seed": 1}


def test_fusion_of_located_members_keeps_its_hash_when_they_move(tmp_path):
    import shutil

    from radsearch.encoders.fusion import fusion_config

    member = get_config("efficientnet-lite2").replace(name="ft")
    a = get_config(str(_checkpoint_dir(tmp_path / "a", member)))
    before = fusion_config([("efficientnet-lite0", 1.0), (a, 1.0)]).hash
    shutil.move(tmp_path / "a", tmp_path / "b")
    b = get_config(str(tmp_path / "b"))
    fused = fusion_config([("efficientnet-lite0", 1.0), (b, 1.0)], name=f"fusion:x+{tmp_path}")
    assert fused.hash == before
