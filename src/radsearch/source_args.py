"""The source options every verb that reads a source shares (``index``, ``tune``):
``--root``, ``--split``, ``--filter``, ``--label-from-folder`` and the NIfTI slicing
options, and the ItemRefs they select (:func:`refs_from_args`). Defined once so that
the same options select the same items in every verb."""

from __future__ import annotations

import argparse


def add_source_args(p: argparse.ArgumentParser) -> None:
    """Add the source options to ``p`` (read back by :func:`refs_from_args`)."""
    g = p.add_argument_group("source")
    g.add_argument("--root", help="folder that CSV file paths are relative to (default: the CSV's)")
    g.add_argument("--split", help="keep CSV rows whose 'split' column equals this (e.g. train)")
    g.add_argument(
        "--filter",
        dest="source_where",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="keep source rows whose metadata matches (repeatable; VALUE may be A,B)",
    )
    g.add_argument(
        "--label-from-folder",
        action="store_true",
        help="folder source: the parent folder name becomes the 'label' column",
    )
    g.add_argument("--nifti-step", type=int, default=1, help="NIfTI: keep every n-th axial slice")
    g.add_argument("--nifti-range", metavar="START:STOP", help="NIfTI: slice range to keep")
    g.add_argument(
        "--nifti-window",
        metavar="W",
        help="NIfTI intensity window: brain, lung, bone, abdomen or LOW,HIGH",
    )


def refs_from_args(args) -> list:
    """The source's ItemRefs as the shared source options say."""
    from radsearch.io.sources import iter_source, parse_where

    nifti_range = None
    if args.nifti_range:
        a, _, b = args.nifti_range.partition(":")
        nifti_range = (int(a or 0), int(b) if b else None)
    window = None
    if args.nifti_window:
        from radsearch.io.nifti import parse_window

        window = parse_window(args.nifti_window)
    return list(
        iter_source(
            args.source,
            root=args.root,
            split=args.split,
            where=parse_where(args.source_where) or None,
            label_from_folder=args.label_from_folder,
            nifti_step=args.nifti_step,
            nifti_range=nifti_range,
            nifti_window=window,
        )
    )


def source_cache(args) -> tuple | None:
    """``(cache folder, root)`` under which ``evaluate`` and ``tune`` cache the vectors of
    this source's items (their ids are paths relative to the root: ``--root`` or the
    CSV's folder, the folder itself, a file's folder); None for a PACS."""
    from pathlib import Path

    if str(args.source).startswith("dicomweb:"):
        return None
    src = Path(args.source)
    if src.suffix.lower() == ".csv" and not src.is_dir():
        root = Path(args.root) if args.root else src.parent
    else:
        root = src if src.is_dir() else src.parent
    return getattr(args, "cache_dir", None), root
