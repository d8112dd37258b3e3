"""The CLI end to end on small synthetic folders with the real default encoder:
index -> search (text and --json) -> info / models / remove, incremental re-runs,
and the one-line errors of bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from radsearch.cli import main
from radsearch.index import Index


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def built(pattern_folder, tmp_path, capsys):
    out = tmp_path / "idx"
    code, stdout, _ = run(
        capsys,
        "index",
        pattern_folder,
        "--out",
        out,
        "--label-from-folder",
        "--no-progress",
        "--workers",
        "0",
    )
    assert code == 0, stdout
    return pattern_folder, out


def test_index_then_search_json(built, capsys):
    folder, out = built
    code, stdout, _ = run(capsys, "search", out, folder / "rings" / "2.png", "-k", "3", "--json")
    assert code == 0
    doc = json.loads(stdout)
    q = doc["queries"][0]
    assert q["query"].endswith("2.png") and len(q["hits"]) == 3
    top = q["hits"][0]
    assert set(top) >= {"rank", "score", "id", "source", "label"}
    assert (
        top["id"] == "rings/2.png"
        and top["rank"] == 1
        and top["score"] == pytest.approx(1, abs=1e-4)
    )
    assert [h["rank"] for h in q["hits"]] == [1, 2, 3]
    assert q["suggestion"]["column"] == "label" and q["suggestion"]["value"] == "rings"


def test_search_filters_and_text_output(built, capsys):
    folder, out = built
    code, stdout, _ = run(
        capsys,
        "search",
        out,
        folder / "rings" / "0.png",
        "-k",
        "4",
        "--where",
        "label=blob",
        "--json",
    )
    hits = json.loads(stdout)["queries"][0]["hits"]
    assert code == 0 and len(hits) == 4 and {h["label"] for h in hits} == {"blob"}
    code, stdout, _ = run(capsys, "search", out, folder / "stripes" / "1.png", "-k", "2")
    assert code == 0 and "stripes/1.png" in stdout and "suggestion: label=" in stdout


def test_reindex_adds_only_new_items(built, capsys):
    folder, out = built
    Image.fromarray(np.full((64, 64), 200, np.uint8)).save(folder / "blob" / "new.png")
    code, stdout, _ = run(
        capsys,
        "index",
        folder,
        "--out",
        out,
        "--label-from-folder",
        "--no-progress",
        "--workers",
        "0",
    )
    assert code == 0 and "indexed 1 new item(s)" in stdout and "12 already present" in stdout
    assert Index.open(out).count == 13


def test_info_models_and_remove(built, capsys):
    folder, out = built
    code, stdout, _ = run(capsys, "info", out, "--json")
    info = json.loads(stdout)
    assert code == 0 and info["count"] == 12 and info["encoder"] == "efficientnet-lite0"
    assert "label" in info["metadata_columns"]
    code, stdout, _ = run(capsys, "models", "--json")
    names = {r["name"]: r for r in json.loads(stdout)}
    assert (
        names["efficientnet-lite0"]["weights_here"] is True
        and names["efficientnet-lite0"]["dim"] == 1280
    )
    code, stdout, _ = run(capsys, "remove", out, "rings/0.png", "rings/1.png")
    assert code == 0 and Index.open(out).count == 10 and Index.open(out).item("rings/0.png") is None
    code, _, _ = run(capsys, "remove", out, "not-there.png")
    assert code == 1


def test_unreadable_files_are_reported_and_skipped(built, capsys):
    folder, out = built
    (folder / "blob" / "empty.png").write_bytes(b"")
    (folder / "blob" / "text.png").write_text("this is not an image")
    good = folder / "blob" / "ok.png"
    Image.fromarray(np.full((64, 64), 90, np.uint8)).save(good)
    code, stdout, stderr = run(
        capsys,
        "index",
        folder,
        "--out",
        out,
        "--label-from-folder",
        "--no-progress",
        "--workers",
        "0",
    )
    assert code == 0 and "indexed 1 new item(s)" in stdout and "2 failed" in stdout
    assert "empty.png" in stderr and "text.png" in stderr
    recs = [json.loads(x) for x in (out / "failures.jsonl").read_text().splitlines()]
    assert {r["id"] for r in recs} == {"blob/empty.png", "blob/text.png"}
    assert all(r["reason"] for r in recs)
    assert Index.open(out).count == 13


@pytest.mark.parametrize(
    "argv, message",
    [
        (["search", "{out}", "{missing}"], "no such file"),
        (["search", "{tmp}/nope", "{query}"], "no such index"),
        (["search", "{out}", "{query}", "--model", "efficientnet-lite2"], "refusing to use it"),
        (["index", "{folder}", "--out", "{tmp}/x", "--model", "no-such-model"], "unknown model"),
        (["index", "{folder}", "--out", "{out}", "--model", "efficientnet-lite2"], "refusing"),
        (["index", "{tmp}/nowhere", "--out", "{tmp}/y"], "no such file or folder"),
        (["search", "{out}", "{bad}"], "bad.png"),
    ],
)
def test_bad_input_gives_one_line_error_and_keeps_index(built, capsys, tmp_path, argv, message):
    folder, out = built
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    before = (out / "manifest.json").read_text()
    fmt = {
        "out": out,
        "missing": tmp_path / "missing.png",
        "tmp": tmp_path,
        "folder": folder,
        "query": folder / "rings" / "0.png",
        "bad": tmp_path / "bad.png",
    }
    code, _, stderr = run(capsys, *[a.format(**fmt) for a in argv])
    assert code == 1
    lines = [x for x in stderr.splitlines() if x.startswith("radsearch: error:")]
    assert len(lines) == 1 and message in lines[0], stderr
    assert "Traceback" not in stderr
    assert (out / "manifest.json").read_text() == before
    assert Index.open(out).count == 12


def test_all_items_unreadable_is_an_error(tmp_path, capsys):
    src = tmp_path / "junk"
    src.mkdir()
    (src / "a.png").write_bytes(b"")
    (src / "b.jpg").write_text("nope")
    code, _, stderr = run(
        capsys, "index", src, "--out", tmp_path / "idx", "--no-progress", "--workers", "0"
    )
    assert code == 1 and "none of 2 item(s) could be read" in stderr
    assert not (tmp_path / "idx" / "manifest.json").exists()


def test_console_script_entry_point(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "radsearch.cli", "search", str(tmp_path), "x.png"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1 and proc.stderr.startswith("radsearch: error:")


def test_core_cli_needs_no_optional_extras(monkeypatch):
    """The core install has no FastAPI/scikit-learn: every verb must still register."""
    import importlib

    for name in ("fastapi", "uvicorn", "sklearn", "matplotlib", "open_clip", "ray", "pymilvus"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    stages = ("radsearch.serve", "radsearch.evaluate", "radsearch.tune", "radsearch.recipe")
    before = {m: sys.modules[m] for m in list(sys.modules) if m.startswith(stages)}
    for mod in before:
        del sys.modules[mod]
    try:
        cli = importlib.import_module("radsearch.cli")
        verbs = cli.build_parser()._subparsers._group_actions[0].choices
        assert {"index", "search", "evaluate", "compare", "tune", "serve"} <= set(verbs)
    finally:  # modules imported without the extras must not leak into later tests
        for mod in [m for m in list(sys.modules) if m.startswith(stages)]:
            del sys.modules[mod]
        sys.modules.update(before)


def _verb_argv(verb: str, p) -> tuple[list[str], list[list[str]]]:
    """Positionals and (option, value...) groups that ``verb``'s parser accepts."""
    import argparse

    positionals, options = [], []
    for action in p._actions:
        if isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            continue
        if not action.option_strings:
            many = action.nargs in ("*", "+")
            positionals += [f"{action.dest}{i}" for i in range(2 if many else 1)]
            continue
        flag = action.option_strings[-1]
        if action.nargs == 0:
            options.append([flag])
        elif action.choices:
            options.append([flag, str(list(action.choices)[-1])])
        elif action.type in (int, float):
            options.append([flag, "3"])
        elif action.type is None:
            options.append([flag, "value"])
    exclusive = {a.dest for g in p._mutually_exclusive_groups for a in g._group_actions[1:]}
    options = [o for o in options if p._option_string_actions[o[0]].dest not in exclusive]
    return positionals, options


def test_options_work_in_any_position_in_every_verb():
    """``radsearch search DIR -k 5 q.jpg``: for every verb, options placed before,
    between and after the positionals parse to the same namespace as options last."""
    from radsearch.cli import build_parser

    parser = build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert {"index", "search", "info", "models", "remove", "serve"} <= set(verbs)
    for verb, sub in verbs.items():
        positionals, options = _verb_argv(verb, sub)
        flat = [x for o in options for x in o]
        last = vars(parser.parse_args([verb, *positionals, *flat]))
        first = vars(parser.parse_args([verb, *flat, *positionals]))
        woven = [verb]
        for i in range(max(len(positionals), len(options))):
            woven += options[i] if i < len(options) else []
            woven += positionals[i : i + 1]
        assert first == last, verb
        assert vars(parser.parse_args(woven)) == last, (verb, woven)
    args = parser.parse_args(["search", "DIR", "-k", "5", "q.jpg", "--json", "r.jpg"])
    assert args.index == "DIR" and args.queries == ["q.jpg", "r.jpg"] and args.k == 5 and args.json


def test_index_runtime_option_holds_for_that_build_only(pattern_folder, tmp_path, monkeypatch):
    """``--runtime`` reaches the build; it does not leak into the process's environment
    (where it once made every later build in the process run eager torch)."""
    import os

    from radsearch.encoders import accel

    monkeypatch.delenv("RADSEARCH_RUNTIME", raising=False)
    asked, real = [], accel.accelerate

    def spy(encoder, runtime=None, **kwargs):
        asked.append(runtime)
        return real(encoder, runtime, **kwargs)

    monkeypatch.setattr(accel, "accelerate", spy)
    args = ["index", str(pattern_folder), "--out", str(tmp_path / "idx"), "--no-progress"]
    assert main([*args, "--no-regions", "--batch-size", "2", "--runtime", "torch"]) == 0
    assert asked == ["torch"]
    assert "RADSEARCH_RUNTIME" not in os.environ
