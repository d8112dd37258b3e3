"""Faster runtimes for the offline CNN encoders, used only when they are faithful.

``accelerate(encoder, runtime)`` swaps ``encoder.module`` for an equivalent module:

- ``torch``: the eager module in channels-last memory format (oneDNN's fast path).
- ``onnx``: the module exported to ONNX and run by ONNX Runtime (CPU), with threads
  set to the cores this process may use. Picklable (the model travels as bytes), so
  Ray actors can receive it.
- ``auto`` (default for the pipeline): ``onnx`` when onnxruntime and onnx import (core
  dependencies, so the plain install has them), the encoder is a CNN family, the
  device is the CPU, its embeddings match the eager module's within ``1e-3`` cosine on
  a probe batch *and* it is faster on that batch; otherwise ``torch``.

The encoder's config (and its hash in index manifests) is unchanged: the vectors are
the same within the tolerance. ``encoder.runtime_info`` records what was chosen.
"""

from __future__ import annotations

import io
import os
import time
import warnings
from dataclasses import dataclass

import numpy as np

from radsearch.encoders.onnx_module import (  # noqa: F401  (re-exported: the runtime's parts)
    MICRO_BATCH,
    ConcurrentOnnxModule,
    OnnxModule,
    cpu_threads,
    inference_threads,
    lane_threads,
)
from radsearch.errors import EncoderError

RUNTIMES = ("auto", "torch", "onnx")
# Families whose module is a plain CNN that exports cleanly to ONNX.
CNN_FAMILIES = {"efficientnet-lite"}
COSINE_TOL = 1e-3
ENV = "RADSEARCH_RUNTIME"


def default_runtime() -> str:
    rt = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if rt not in RUNTIMES:
        raise EncoderError(f"{ENV}={rt!r}: choose one of {', '.join(RUNTIMES)}")
    return rt


def _torch_module():
    import torch

    class ChannelsLast(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner.to(memory_format=torch.channels_last)

        def forward(self, x):
            return self.inner(x.contiguous(memory_format=torch.channels_last))

    return ChannelsLast


def export_onnx(module, size: int, outputs: tuple[str, ...] = ("y",)) -> bytes:
    import torch

    buf = io.BytesIO()
    dummy = torch.zeros(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            dummy,
            buf,
            input_names=["x"],
            output_names=list(outputs),
            dynamic_axes={name: {0: "batch"} for name in ("x", *outputs)},
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()


def _probe(size: int, n: int = 4) -> np.ndarray:
    """Deterministic, image-like inputs (smooth patterns + noise) in [-1, 1]."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size
    out = []
    for i in range(n):
        f = 2 + i
        base = np.sin(2 * np.pi * f * xx) * np.cos(2 * np.pi * (i % 3 + 1) * yy)
        img = np.stack([base + 0.2 * rng.standard_normal(base.shape) for _ in range(3)])
        out.append(np.clip(img, -1, 1))
    return np.asarray(out, np.float32)


def _timed(module, x):
    """``module(x)`` as float32 numpy (a tuple for several outputs), and the seconds it took."""
    import torch

    with torch.inference_mode():
        t0 = time.perf_counter()
        y = module(x)
        dt = time.perf_counter() - t0
    if isinstance(y, tuple):
        return tuple(t.float().numpy() for t in y), dt
    return y.float().numpy(), dt


def _normalised(y: np.ndarray) -> np.ndarray:
    return y / np.maximum(np.linalg.norm(y, axis=-1, keepdims=True), 1e-12)


def _run(module, batch: np.ndarray) -> tuple[np.ndarray, float]:
    """L2-normalised vectors of ``module`` for ``batch``, and the seconds it took."""
    import torch

    y, dt = _timed(module, torch.from_numpy(batch))
    return _normalised(y), dt


@dataclass
class OnnxTrial:
    """An ONNX export of a module and both runs of it on the probe batch."""

    module: OnnxModule
    eager_out: np.ndarray
    onnx_out: np.ndarray
    eager_seconds: float
    onnx_seconds: float
    export_seconds: float


def try_onnx(
    module, size: int, threads: int | None = None, outputs: tuple[str, ...] = ("y",)
) -> OnnxTrial:
    """Export ``module`` to ONNX and time it against the eager module on the probe
    (each warmed up on one image first). Raises what the export or ORT raise: the one
    check behind ``accelerate``, ``accelerate_spatial`` and ``accelerate_joint``."""
    import torch

    probe = torch.from_numpy(_probe(size))
    _timed(module, probe[:1])
    ref, t_eager = _timed(module, probe)
    t0 = time.perf_counter()
    onnx_mod = OnnxModule(export_onnx(module, size, outputs), threads)
    _timed(onnx_mod, probe[:1])  # session creation
    _timed(onnx_mod, probe[:2])  # and its lanes' (a batch)
    export_seconds = round(time.perf_counter() - t0, 2)
    got, t_onnx = _timed(onnx_mod, probe)
    return OnnxTrial(onnx_mod, ref, got, t_eager, t_onnx, export_seconds)


def accelerate(
    encoder, runtime: str | None = None, *, min_speedup: float = 1.0, threads: int | None = None
):
    """Swap in a faster, equivalent module (see module docstring); returns ``encoder``.

    ``threads``: ONNX Runtime's intra-op threads (default ``inference_threads()``, which
    reads the load at start-up: right for a batch job, not for a long-lived server)."""
    runtime = (runtime or default_runtime()).lower()
    if runtime not in RUNTIMES:
        raise EncoderError(f"runtime {runtime!r}: choose one of {', '.join(RUNTIMES)}")
    if getattr(encoder, "runtime_info", None):
        return encoder  # already done
    cfg = encoder.config
    eager = encoder.module
    info = {"runtime": "torch", "requested": runtime}
    cpu = getattr(encoder.device, "type", "cpu") == "cpu"
    eligible = cfg.family in CNN_FAMILIES and cpu
    if runtime == "torch" or not eligible:
        if runtime == "onnx" and not eligible:
            raise EncoderError(f"runtime onnx: not available for {cfg.name} on {encoder.device}")
        if eligible:
            encoder.module = _torch_module()(eager).eval()
        encoder.runtime_info = info
        return encoder
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
        import onnxruntime  # noqa: F401
    except ImportError:
        if runtime == "onnx":
            raise EncoderError(
                "runtime onnx needs onnxruntime and onnx (core dependencies of radsearch): "
                "pip install onnxruntime onnx"
            ) from None
        encoder.module = _torch_module()(eager).eval()
        encoder.runtime_info = info
        return encoder
    try:
        trial = try_onnx(eager, cfg.input_size, threads)
    except Exception as exc:  # an op ONNX or ORT cannot handle: stay on torch
        if runtime == "onnx":
            raise EncoderError(f"runtime onnx: export of {cfg.name} failed ({exc})") from None
        info["onnx_error"] = f"{type(exc).__name__}: {exc}"[:200]
        encoder.module = _torch_module()(eager).eval()
        encoder.runtime_info = info
        return encoder
    info["export_seconds"] = trial.export_seconds
    t_eager, t_onnx, onnx_mod = trial.eager_seconds, trial.onnx_seconds, trial.module
    cos = float((_normalised(trial.eager_out) * _normalised(trial.onnx_out)).sum(axis=1).min())
    info.update(cosine_min=round(cos, 6), probe_speedup=round(t_eager / max(t_onnx, 1e-9), 2))
    faithful = cos >= 1 - COSINE_TOL
    if runtime == "onnx" and not faithful:
        raise EncoderError(f"runtime onnx: embeddings differ from torch (min cosine {cos:.5f})")
    if faithful and (runtime == "onnx" or t_onnx * min_speedup < t_eager):
        encoder.module = onnx_mod
        info["runtime"] = "onnx"
    else:
        encoder.module = _torch_module()(eager).eval()
    encoder.runtime_info = info
    return encoder


def _owner_module(owner, method: str, layer: str | None):
    """``owner.<method>(x, layer)`` (``spatial`` or ``joint``) as a module ONNX can export."""
    import torch

    class Bound(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inner = owner

        def forward(self, x):
            return getattr(self.inner, method)(x, layer)

    return Bound().eval()


def _cell_cosine(a, b) -> float:
    """Smallest cosine between matching cells of two ``BxCxHxW`` maps."""
    a = a.reshape(a.shape[0], a.shape[1], -1)
    b = b.reshape(b.shape[0], b.shape[1], -1)
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12
    return float((num / den).min())


def _vector_cosine(a, b) -> float:
    return float((_normalised(a) * _normalised(b)).sum(axis=1).min())


def _accelerate_method(encoder, method: str, layer, runtime, outputs, faithful) -> bool:
    """Put an ONNX Runtime version of the eager module's ``method`` (kept in
    ``encoder.__dict__["_<method>_fast"][layer]``) when ``faithful(eager, onnx)`` holds
    on the probe and it is faster (or ``runtime`` is ``onnx``); True when it is there."""
    runtime = (runtime or default_runtime()).lower()
    fast = encoder.__dict__.setdefault(f"_{method}_fast", {})
    cpu = getattr(encoder.device, "type", "cpu") == "cpu"
    owner = getattr(getattr(encoder, "_spatial", None), "__self__", None)
    if layer in fast:
        return True
    if runtime == "torch" or owner is None or not cpu or not hasattr(owner, method):
        return False
    if encoder.config.family not in CNN_FAMILIES:
        return False
    try:
        trial = try_onnx(
            _owner_module(owner, method, layer), encoder.config.input_size, None, outputs
        )
    except Exception:  # an op ONNX cannot handle: the eager path stays
        return False
    if faithful(trial.eager_out, trial.onnx_out) and (
        runtime == "onnx" or trial.onnx_seconds < trial.eager_seconds
    ):
        fast[layer] = lambda x, _layer=None, run=trial.module: run(x)
    return layer in fast


def accelerate_spatial(encoder, layer: str | None, runtime: str | None = None):
    """Run ``encoder``'s region-feature maps of ``layer`` on ONNX Runtime when that is
    faithful (cell cosine ``1e-3``) and faster, as ``accelerate`` does for the vectors;
    the index-time region pass is otherwise eager torch, several times slower than the
    embedding pass. Returns ``encoder``; ``encoder.feature_grid`` uses what was chosen."""

    def faithful(eager, onnx) -> bool:
        return _cell_cosine(eager, onnx) >= 1 - COSINE_TOL

    _accelerate_method(encoder, "spatial", layer, runtime, ("y",), faithful)
    return encoder


def accelerate_joint(encoder, layer: str | None, runtime: str | None = None) -> bool:
    """One ONNX model giving both the vector and ``layer``'s region map, for index
    builds with region features (``Encoder.encode_with_grid``): the map is a block on
    the way to the vector, so both cost one pass. Used when both outputs are faithful
    (vector and cell cosine ``1e-3``) and it beats the eager pass; True when in place.
    Never for a quantised variant, whose vectors must come from its own model."""
    if encoder.config.extra.get("quantize"):
        return False

    def faithful(eager, onnx) -> bool:
        vec_ok = _vector_cosine(eager[0], onnx[0]) >= 1 - COSINE_TOL
        return vec_ok and _cell_cosine(eager[1], onnx[1]) >= 1 - COSINE_TOL

    return _accelerate_method(encoder, "joint", layer, runtime, ("y", "g"), faithful)
