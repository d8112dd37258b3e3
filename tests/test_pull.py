"""``radsearch pull``: downloads through huggingface_hub from a real HTTP server that
answers as the Hugging Face hub does, and fails fast where no hub answers."""

from __future__ import annotations

import hashlib
import json
import socket
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

pytest.importorskip("huggingface_hub")
pytest.importorskip("transformers")

sys.path.insert(0, str(Path(__file__).parent))
import tiny_models as tm  # noqa: E402
from radsearch.cli import main  # noqa: E402

COMMIT = tm.FAKE_COMMIT


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Hub(BaseHTTPRequestHandler):
    """The three calls huggingface_hub makes: repo info, tree listing, file resolve."""

    repos: dict[str, Path] = {}

    def log_message(self, *args):
        pass

    def _json(self, obj):
        body = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _file(self, repo: str, name: str, head: bool):
        f = self.repos[repo] / name
        if not f.is_file():
            self.send_error(404)
            return
        data = f.read_bytes()
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("ETag", '"' + hashlib.sha1(data).hexdigest() + '"')
        self.send_header("X-Repo-Commit", COMMIT)
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def _route(self, head: bool = False):
        path = unquote(urlparse(self.path).path)
        for repo, folder in self.repos.items():
            files = sorted(p.name for p in folder.iterdir() if p.is_file())
            if path == f"/api/models/{repo}" or path.startswith(f"/api/models/{repo}/revision/"):
                return self._json(
                    {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
                )
            if path.startswith(f"/api/models/{repo}/tree/"):
                return self._json(
                    [
                        {
                            "type": "file",
                            "path": f,
                            "size": (folder / f).stat().st_size,
                            "oid": hashlib.sha1((folder / f).read_bytes()).hexdigest(),
                        }
                        for f in files
                    ]
                )
            prefix = f"/{repo}/resolve/"
            if path.startswith(prefix):
                return self._file(repo, path[len(prefix) :].split("/", 1)[1], head)
        self.send_error(404)

    def do_GET(self):
        self._route()

    def do_HEAD(self):
        self._route(head=True)


@pytest.fixture
def fake_hub(tmp_path, monkeypatch):
    repo = tm.save_hf(tm.tiny_hf("dinov2"), tmp_path / "served" / "dinov2")
    (repo / "pytorch_model.bin").write_bytes(b"not wanted: the safetensors file is enough")
    _Hub.repos = {"facebook/dinov2-base": repo}
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    yield tmp_path / "cache"
    server.shutdown()


def _models(capsys) -> dict:
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    return {r["name"]: r["weights_here"] for r in json.loads(capsys.readouterr().out)}


def test_pull_fills_the_cache_and_models_marks_it_here(fake_hub, capsys):
    assert _models(capsys)["dinov2-b14"] is False
    assert main(["pull", "dinov2-b14"]) == 0
    out = capsys.readouterr().out
    assert "facebook/dinov2-base" in out and "dinov2-b14: ready" in out
    snap = fake_hub / "models--facebook--dinov2-base" / "snapshots" / COMMIT
    assert (snap / "model.safetensors").is_file() and (snap / "config.json").is_file()
    assert not (snap / "pytorch_model.bin").exists()  # one weights format only
    assert _models(capsys)["dinov2-b14"] is True
    from radsearch.encoders import create_encoder, get_config

    enc = create_encoder(get_config("dinov2-b14").replace(dim=32))  # loads from the cache
    assert enc.encode_images(tm.synthetic_images()).shape[1] == 32


@pytest.mark.parametrize("name", ["dinov2-b14", "hf:org/absent", "biomedclip"])
def test_pull_without_a_hub_fails_fast_naming_model_and_address(
    name, tmp_path, monkeypatch, capsys
):
    port = _closed_port()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    t0 = time.perf_counter()
    assert main(["pull", name]) == 1
    assert time.perf_counter() - t0 < 5
    err = capsys.readouterr().err.strip()
    assert err.startswith("radsearch: error:") and len(err.splitlines()) == 1
    assert repr(name) in err and f"127.0.0.1:{port}" in err


def test_pull_of_an_offline_encoder_needs_nothing(capsys):
    assert main(["pull", "efficientnet-lite0"]) == 0
    assert "already here" in capsys.readouterr().out


def test_pull_of_a_checkpoint_encoder_says_how_to_get_it(capsys):
    assert main(["pull", "medsam-vit-b"]) == 1
    err = capsys.readouterr().err
    assert "'medsam-vit-b'" in err and "--weights" in err
