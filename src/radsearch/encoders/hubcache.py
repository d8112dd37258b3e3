"""Where hub-backed weights are found on disk, never downloaded at run time.

Every hub family (``hf``, ``open_clip``, ``timm``, ``medclip``) looks, in this order:
1. ``weights=`` / ``--weights PATH`` (a file or a directory);
2. the config's location (``hf:/dir``, ``open_clip:/dir``, or a checkpoint directory
   with ``radsearch_encoder.json``);
3. the local Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else
   ``~/.cache/huggingface/hub``), filled once on a connected machine with
   ``radsearch pull MODEL`` (or ``hf download <repo>``).
None found -> ``EncoderError`` naming the model, where it looked and how to fix it.
Models are built in Hub offline mode (:func:`hub_offline`), so nothing a library calls
can reach the network.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from radsearch.encoders.base import EncoderConfig
from radsearch.errors import EncoderError

HUB_EXTRA = "pip install 'radsearch[hub]'"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def import_optional(module: str, cfg_name: str):
    """``module`` imported, or ``EncoderError`` saying which extra provides it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError:
        raise EncoderError(f"model {cfg_name!r}: needs the {module} package; {HUB_EXTRA}") from None


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache, read from the environment at call time."""
    env = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env:
        return Path(env).expanduser()
    home = os.environ.get("HF_HOME")
    return (Path(home).expanduser() if home else Path.home() / ".cache" / "huggingface") / "hub"


def cached_file(repo_id: str, filename: str) -> Path | None:
    """A file of ``repo_id`` in the local HF cache, or None. Never touches the network."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, filename, cache_dir=str(hf_cache_dir()))
    except Exception:  # malformed repo id and the like
        return None
    return Path(found) if isinstance(found, str) and Path(found).exists() else None


def cached_snapshot(repo_id: str, markers: tuple[str, ...]) -> Path | None:
    """The cached snapshot directory of ``repo_id`` holding one of ``markers``, or None."""
    for marker in markers:
        found = cached_file(repo_id, marker)
        if found:
            return found.parent
    return None


def not_found(cfg: EncoderConfig, repo: str | None, what: str = "weights") -> EncoderError:
    where = ["--weights"]
    if cfg.location.get("local_dir"):
        where.append(cfg.location["local_dir"])
    if repo:
        where.append(f"HF cache {hf_cache_dir()} for {repo}")
    fix = (
        f"fetch them once with `radsearch pull {cfg.name}` (or `hf download {repo}`) on a "
        "connected machine and copy the cache here, or pass --weights DIR"
        if repo
        else "pass --weights PATH"
    )
    return EncoderError(
        f"model {cfg.name!r}: {what} not found (looked in: {', '.join(where)}); {fix}"
    )


@contextlib.contextmanager
def hub_offline():
    """Hub offline mode while building, so nothing a library calls can reach the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc
    except ImportError:
        hc = None
    old_const = getattr(hc, "HF_HUB_OFFLINE", None)
    if hc is not None:
        hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        if hc is not None:
            hc.HF_HUB_OFFLINE = old_const
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def find_weights_in(directory: Path, names: tuple[str, ...]) -> Path | None:
    """The first of ``names`` in ``directory``, else any weights-looking file, else None."""
    for name in names:
        if (directory / name).is_file():
            return directory / name
    for pattern in ("*.safetensors", "*.bin", "*.pth", "*.pt"):
        found = sorted(directory.glob(pattern))
        if found:
            return found[0]
    return None


def local_dir(cfg: EncoderConfig, weights: str | None) -> Path | None:
    """``--weights`` if given, else the config's located directory, else None."""
    if weights:
        return Path(weights)
    return Path(cfg.location["local_dir"]) if cfg.location.get("local_dir") else None


def resolves(find, cfg: EncoderConfig) -> bool:
    """Whether ``find(cfg, None)`` locates the weights here (for ``weights_available``)."""
    try:
        find(cfg, None)
        return True
    except EncoderError:
        return False
