"""Decoding items for an encoder: the step every extraction engine shares.

``decode_item`` loads one item's pixels and runs the encoder's preprocessing; it never
raises, so an unreadable file becomes a recorded failure and a long run goes on.
``collate_decoded`` turns a batch of decoded items into what ``Encoder.encode`` takes,
through ``Encoder.collate`` (a fusion encoder's items are tuples, one array per
member), plus the failures. The local engine (:mod:`radsearch.embed`) calls both in
its DataLoader workers, the Ray engine (:mod:`radsearch.distributed`) in its decode
tasks and encode actors, so the two engines read, fail and batch alike.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from radsearch.errors import RadsearchError
from radsearch.io.items import ItemRef, load_pixels


def decode_item(ref: ItemRef, preprocess: Callable) -> tuple[object | None, str | None]:
    """``(preprocessed input, None)``, or ``(None, reason)`` where ``ref`` cannot be read."""
    try:
        return preprocess(load_pixels(ref)), None
    except RadsearchError as exc:
        return None, str(getattr(exc, "reason", exc)) or "unreadable"
    except Exception as exc:  # a decoder bug must not kill a long run
        return None, f"{type(exc).__name__}: {exc}"


def collate_decoded(collate: Callable, batch: Sequence[tuple[int, object, str | None]]):
    """``(i, input, reason)`` triples -> ``(positions read, encoder batch or None, [(i, reason)])``."""
    ok = [(i, x) for i, x, err in batch if err is None]
    errors = [(i, err) for i, _, err in batch if err is not None]
    if not ok:
        return [], None, errors
    return [i for i, _ in ok], collate([x for _, x in ok]), errors
