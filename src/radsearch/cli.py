"""``radsearch`` command line: one verb per stage (clip-retrieval style).

index -> search -> info / models / remove here; evaluate, compare, tune and serve
register themselves from their own modules (``_STAGE_MODULES``); a new verb is one
``register(subparsers)`` there (or one ``_register_*`` here). Options may stand anywhere
among a verb's arguments (``AnyOrderParser``). User errors
(``RadsearchError``) print one line ``radsearch: error: ...`` and exit 1.
"""

from __future__ import annotations

import argparse
import json
import sys
from importlib import import_module
from importlib.util import find_spec

from radsearch.cli_output import print_results
from radsearch.errors import RadsearchError
from radsearch.regions.cli import add_region_args, region_options
from radsearch.source_args import add_source_args, refs_from_args, source_cache

# Modules that add their own sub-commands: each has ``register(subparsers)``.
_STAGE_MODULES = [
    "radsearch.evaluate.cli",  # evaluate, compare
    "radsearch.tune_cli",  # tune
    "radsearch.serve.cli",  # serve
    "radsearch.regions.cli",  # explain
    "radsearch.encoders.pull",  # pull
]


class AnyOrderParser(argparse.ArgumentParser):
    """A verb's parser: options may come before, between or after its positionals.

    Plain ``parse_args`` gives a ``nargs="*"`` positional everything up to the first
    option and then rejects the rest (``search DIR -k 5 q.jpg``); intermixed parsing
    reads the options first and the positionals from what is left, wherever they stand.
    """

    _intermixing = False

    def parse_known_args(self, args=None, namespace=None):
        if self._intermixing:  # the intermixed parser's own passes
            return super().parse_known_args(args, namespace)
        self._intermixing = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._intermixing = False


def cmd_index(args) -> int:
    from radsearch.pipeline import build_index

    if str(args.source).startswith("dicomweb:"):
        from radsearch.io.dicomweb import refs_for_index
        from radsearch.io.sources import parse_where

        refs = refs_for_index(
            args.source,
            args.out,
            model=args.model,
            user=args.dicomweb_user,
            password=args.dicomweb_password,
            token=args.dicomweb_token,
            where=parse_where(args.source_where) or None,
        )
    else:
        refs = refs_from_args(args)
    from radsearch.studies.identity import with_study_column

    refs = with_study_column(refs, args.study_column)
    if not refs:
        raise RadsearchError(f"{args.source}: no images found")
    report = build_index(
        refs,
        args.out,
        model=args.model,
        weights=args.weights,
        device=args.device,
        batch_size=args.batch_size,
        workers=args.workers,
        progress=not args.no_progress,
        store=store_spec(args),
        engine=args.engine,
        engine_options={"address": args.ray_address} if args.engine == "ray" else None,
        regions=False if args.no_regions else None,
        reuse_cache=None if args.no_cache else source_cache(args),
        runtime=args.runtime,
    )
    idx = report.index
    print(
        f"indexed {report.added} new item(s) into {idx.path} "
        f"({idx.count} total, encoder {idx.encoder_name}, dim {idx.dim}); "
        f"{report.skipped_existing} already present; {len(report.failures)} failed"
    )
    if report.reused:
        print(f"  {report.reused} vector(s) reused from the embedding cache")
    if report.recall_at_10 is not None and hasattr(idx.store, "describe"):
        print(f"  {idx.store.describe()}")
    for rec in report.failures[:20]:
        print(f"  failed: {rec['source']}: {rec['reason']}", file=sys.stderr)
    if len(report.failures) > 20:
        print(
            f"  ... {len(report.failures) - 20} more in {idx.path}/failures.jsonl", file=sys.stderr
        )
    if report.failures and report.added == 0 and idx.count == 0:
        raise RadsearchError(f"{args.source}: none of {len(refs)} item(s) could be read")
    return 0


_MILVUS_TYPES = {"flat": "FLAT", "hnsw": "HNSW", "ivf-flat": "IVF_FLAT", "ivf-sq8": "IVF_SQ8"}


def store_spec(args) -> dict:
    """``--store``/``--index-type``/``--memory-budget`` -> the manifest's store spec."""
    itype = args.index_type or "flat"
    if args.store and args.store.startswith("milvus:"):
        uri = args.store.split(":", 1)[1]
        if itype not in _MILVUS_TYPES:
            raise RadsearchError(
                f"--index-type {itype} is not offered with Milvus (choose {', '.join(_MILVUS_TYPES)})"
            )
        return {"kind": "milvus", "uri": uri, "index_type": _MILVUS_TYPES[itype]}
    if args.store not in (None, "faiss"):
        raise RadsearchError(
            f"--store {args.store!r}: use faiss or milvus:<path or http://host:port>"
        )
    spec = {"kind": "faiss", "type": itype}
    if args.memory_budget:
        from radsearch.index.ann import parse_bytes

        spec["memory_budget"] = parse_bytes(args.memory_budget)
    return spec


def cmd_search(args) -> int:
    from radsearch.index import Index
    from radsearch.io.sources import parse_where

    index = Index.open(args.index)
    index.check_model(args.model)
    if args.nprobe or args.ef_search:
        index.store.set_search_params(nprobe=args.nprobe, ef_search=args.ef_search)
    if args.study or args.study_id or args.group_by == "study":
        from radsearch.studies.cli import study_search

        return study_search(args, index)
    if bool(args.queries) == bool(args.text):
        raise RadsearchError("give query images or --text, not both (and not neither)")
    results = index.search(
        args.queries or None,
        k=args.k,
        where=parse_where(args.where) or None,
        one_per_patient=args.one_per_patient,
        suggest=args.suggest,
        text=args.text or None,
        **region_options(args),
    )
    return print_results(results, args.json)


def cmd_info(args) -> int:
    from radsearch.index import Index

    d = Index.open(args.index).describe()
    if args.json:
        print(json.dumps(d, indent=2))
        return 0
    for k, v in d.items():
        print(f"{k:>17}: {json.dumps(v) if isinstance(v, (dict, list)) else v}")
    return 0


def cmd_models(args) -> int:
    from radsearch.encoders import list_encoders

    rows = list_encoders()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20} {'dim':>5} {'size':>5} {'pooling':<12} {'weights':<8} source")
    for r in rows:
        here = "here" if r["weights_here"] else "missing"
        print(
            f"{r['name']:<20} {r['dim']:>5} {r['input_size']:>5} {r['pooling']:<12} {here:<8} {r['source']}"
        )
    print("\nalso: hf:<repo id>, open_clip:<arch>/<tag>, timm:<name>, or a local checkpoint dir")
    return 0


def cmd_remove(args) -> int:
    from radsearch.index import Index

    index = Index.open(args.index)
    ids = list(args.ids)
    if args.ids_file:
        with open(args.ids_file) as fh:
            ids += [line.strip() for line in fh if line.strip()]
    n = index.remove(ids)
    if n:
        index.save()
    print(f"removed {n} of {len(ids)} id(s); {index.count} remain")
    return 0 if n == len(set(ids)) else 1


def build_parser() -> argparse.ArgumentParser:
    from radsearch import __version__

    parser = argparse.ArgumentParser(
        prog="radsearch", description="Content-based image retrieval for radiology."
    )
    parser.add_argument("--version", action="version", version=f"radsearch {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=AnyOrderParser)
    for register in (_register_index, _register_search, _register_index_tools):
        register(sub)
    for mod in _STAGE_MODULES:
        if find_spec(mod.rpartition(".")[0]) and find_spec(mod):
            import_module(mod).register(sub)
    return parser


def _register_index(sub) -> None:
    p = sub.add_parser("index", help="build or extend an index from a folder, CSV, file or PACS")
    p.add_argument("source", help="folder, CSV manifest, image/DICOM/NIfTI file, or dicomweb:URL")
    p.add_argument("--out", required=True, help="index directory (created or extended)")
    p.add_argument(
        "--model", help="encoder name (default efficientnet-lite0; see 'radsearch models')"
    )
    p.add_argument("--weights", help="weights file or directory for the encoder")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--workers", type=int, default=None, help="decode worker processes")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument(
        "--cache-dir",
        help="embedding cache shared with evaluate and tune: vectors of the same files under "
        "the same encoder are reused (default ~/.cache/radsearch/evaluate)",
    )
    p.add_argument("--no-cache", action="store_true", help="encode everything, read no cache")
    from radsearch.index.ann import TYPES

    g = p.add_argument_group("scale (new indexes: store and index type)")
    g.add_argument(
        "--index-type",
        choices=TYPES,
        default=None,
        help="FAISS index type (default flat = exact); auto picks by size, dim, budget",
    )
    g.add_argument(
        "--memory-budget", metavar="SIZE", help="RAM for the index with --index-type auto (e.g. 1G)"
    )
    g.add_argument(
        "--store",
        metavar="faiss|milvus:URI",
        help="vector store: faiss (default) or milvus:<Milvus Lite path or http://host:port>",
    )
    g.add_argument("--engine", choices=["local", "ray"], default="local", help="extraction engine")
    g.add_argument(
        "--ray-address", help="Ray cluster address for --engine ray (default: local Ray)"
    )
    g.add_argument(
        "--no-regions",
        action="store_true",
        help="do not keep region features (no --roi queries or explain maps on this index)",
    )
    g.add_argument(
        "--runtime",
        choices=["auto", "torch", "onnx"],
        help="inference runtime for CNN encoders (default auto: ONNX Runtime if faithful and faster)",
    )
    add_source_args(p)
    p.add_argument(
        "--study-column",
        metavar="COL",
        help="CSV column naming each row's study (e.g. patient_id; default: DICOM "
        "study uid, NIfTI file, else each item its own study)",
    )
    g = p.add_argument_group("PACS (dicomweb:URL sources)")
    g.add_argument(
        "--dicomweb-user", help="HTTP basic auth user (default: $RADSEARCH_DICOMWEB_USER)"
    )
    g.add_argument(
        "--dicomweb-password",
        help="HTTP basic auth password (default: $RADSEARCH_DICOMWEB_PASSWORD)",
    )
    g.add_argument("--dicomweb-token", help="bearer token (default: $RADSEARCH_DICOMWEB_TOKEN)")
    p.set_defaults(func=cmd_index)


def _register_search(sub) -> None:
    p = sub.add_parser("search", help="find the indexed images most similar to query images")
    p.add_argument("index", help="index directory")
    p.add_argument("queries", nargs="*", help="query image files (PNG, JPEG, DICOM, NIfTI)")
    p.add_argument(
        "--text",
        action="append",
        default=[],
        metavar="TEXT",
        help="text query for CLIP-family encoders, e.g. 'pleural effusion' (repeatable)",
    )
    p.add_argument("-k", type=int, default=10, help="hits per query")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COL=VALUE",
        help="only hits whose metadata matches (repeatable; VALUE may be A,B)",
    )
    p.add_argument("--one-per-patient", action="store_true", help="at most one hit per patient_id")
    p.add_argument("--suggest", default="label", help="metadata column for the majority vote")
    p.add_argument("--model", help="refuse unless the index was built with this encoder")
    p.add_argument("--nprobe", type=int, help="IVF indexes: lists probed (recall vs speed)")
    p.add_argument("--ef-search", type=int, help="HNSW indexes: search breadth (recall vs speed)")
    add_region_args(p)
    g = p.add_argument_group("studies (see docs/studies.md)")
    g.add_argument(
        "--study",
        nargs="+",
        metavar="QUERY",
        help="one query study (DICOM folder or series, NIfTI volume, image files): return studies",
    )
    g.add_argument("--study-id", metavar="ID", help="query with an indexed study; return studies")
    g.add_argument(
        "--group-by",
        choices=["item", "study"],
        default="item",
        help="single-image search: each study once, with its best item",
    )
    p.set_defaults(func=cmd_search)


def _register_index_tools(sub) -> None:
    p = sub.add_parser("info", help="describe an index")
    p.add_argument("index")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("models", help="list encoders, their dims and whether weights are here")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_models)

    p = sub.add_parser("remove", help="remove items from an index by id")
    p.add_argument("index")
    p.add_argument("ids", nargs="*")
    p.add_argument("--ids-file", help="file with one id per line")
    p.set_defaults(func=cmd_remove)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except RadsearchError as exc:
        print(f"radsearch: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("radsearch: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
