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
    "efficientnet-lite0-mid": "7f769727b7ef5e45",
    "efficientnet-lite0-midgrid": "e04a1ceded9cc3cd",
    "efficientnet-lite2": "405b70b0a42a961b",
    "efficientnet-lite2-deep-eq": "b1087e922c9ffc7d",
    "lite0+lite2": "639f9513643f7e73",
    "lite2+litemedsam": "0b6d014dc944b934",
    "litemedsam": "048a081d6cee182d",
    "medsam-vit-b": "f46f82366b2bf64a",
    "rad-dino": "87c5328c580827ed",
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
    assert set(PINNED) <= names
