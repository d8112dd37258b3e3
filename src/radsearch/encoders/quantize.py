"""Statically quantised int8 ONNX models of the offline CNN encoders (opt-in variants).

``efficientnet-lite0-int8`` is a registered variant of ``efficientnet-lite0`` with
``extra["quantize"] = "int8"``, so it has **its own config hash**. That is the choice
made here rather than a ``--runtime int8`` flag: int8 vectors are within about 0.99
cosine of the fp32 ones, not within the ``1e-3`` that ``encoders.accel`` promises, so
they must never be mixed with fp32 vectors. A separate hash makes every existing check
do the right thing without new plumbing: an index (or an embedding work directory)
built with the int8 variant refuses ``--model efficientnet-lite0`` and vice versa, and
queries against it are encoded by the index's own encoder, i.e. the same int8 model.

How the model is made (``quantize_int8``): the eager module is exported to fp32 ONNX
(``accel.export_onnx``), then ONNX Runtime's static quantiser writes a QDQ model with
per-channel int8 weights and uint8 activations whose ranges are calibrated on up to
``CALIBRATION_IMAGES`` images preprocessed exactly as the encoder does: items spread
evenly over the first batch of the index being built (``calibration_images``), so
calibration is deterministic. The variant's config says how (``calibration``:
percentile, minmax or entropy; ``float_layers``: the early, high-resolution layers
kept fp32, where uint8 steps cost most fidelity); both were chosen by the cosine to
fp32 on RadBench val images (``benchmarks/int8_parity.py`` reports the test P@1). The
model is cached in ``cache_dir()`` under the digest of the fp32 model and of the
calibration batch (a rebuild of the same index re-uses it) and stored in the index
directory (``INT8_FILE``, recorded under ``manifest["encoder"]["int8"]``), so
searching the index later, or on another machine, runs exactly the model that encoded
it. ``--runtime`` does not apply to these variants: they always run their int8 model.
The hash does not cover the calibration images: two int8 indexes of different archives
hold slightly different models (each consistent with its own queries).

Faithfulness (``install_int8``): on load, the int8 vectors of the calibration images
(or, from an index, the fixed probe of ``accel``) must be within ``INT8_COSINE`` of the
fp32 vectors; a model that is not (a broken calibration, an ORT kernel problem) is not
used: a warning is given and the encoder runs fp32 (``accel.accelerate``), whose
vectors meet the same bound. ``encoder.runtime_info`` says what ran.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

from radsearch.errors import EncoderError

INT8_FILE = "encoder-int8.onnx"
CALIBRATION_IMAGES = 128
CALIBRATION_BATCH = 16
# smallest per-image cosine between int8 and fp32 vectors accepted at load
INT8_COSINE = 0.97
# ONNX node-name prefixes of the layers ``extra["float_layers"]`` may keep in fp32
_STEM = ("/_conv_stem/", "/_bn0/", "/_swish/")
_HEAD = ("/_conv_head/", "/_bn1/", "/_swish_1/", "/ReduceMean")


def wants_int8(config) -> bool:
    return (config.extra or {}).get("quantize") == "int8"


def cache_dir() -> Path:
    """``$RADSEARCH_CACHE/onnx`` (default ``~/.cache/radsearch/onnx``)."""
    root = os.environ.get("RADSEARCH_CACHE") or Path.home() / ".cache" / "radsearch"
    return Path(root) / "onnx"


class _Batches:
    """ONNX Runtime calibration reader over a preprocessed ``Nx3xSxS`` array, in batches
    of one size (the largest divisor of N up to ``batch``): the percentile and entropy
    collectors stack every batch's outputs and fail on a short last batch."""

    def __init__(self, images: np.ndarray, batch: int = CALIBRATION_BATCH):
        n = len(images)
        batch = max(d for d in range(1, max(1, min(batch, n)) + 1) if n % d == 0)
        self.chunks = [images[i : i + batch] for i in range(0, n, batch)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.chunks):
            return None
        self.pos += 1
        return {"x": np.ascontiguousarray(self.chunks[self.pos - 1], dtype=np.float32)}

    def rewind(self):
        self.pos = 0


def float_nodes(fp32: bytes, layers) -> list[str]:
    """Names of the nodes of ``layers`` (``stem``, ``bN``, ``head``) left unquantised."""
    import onnx

    prefixes = []
    for layer in layers:
        prefixes += _STEM if layer == "stem" else _HEAD if layer == "head" else ()
        if layer.startswith("b"):
            prefixes.append(f"/_blocks.{int(layer[1:])}/")
    graph = onnx.load_from_string(fp32).graph
    return [n.name for n in graph.node if n.name.startswith(tuple(prefixes))]


def quantize_onnx(
    fp32: bytes, images: np.ndarray, method: str = "minmax", float_layers=()
) -> bytes:
    """A QDQ model of ``fp32``: per-channel int8 weights, uint8 activations calibrated
    on ``images``; the nodes of ``float_layers`` stay fp32."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }
    if method not in methods:
        raise EncoderError(f"int8 calibration {method!r}: choose one of {', '.join(methods)}")
    reader = type("Reader", (_Batches, CalibrationDataReader), {})(images)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = (Path(tmp) / n for n in ("fp32.onnx", "pre.onnx", "int8.onnx"))
        src.write_bytes(fp32)
        # the quantiser prints its progress; radsearch's stdout carries results only
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
            quantize_static(
                str(pre),
                str(out),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=methods[method],
                nodes_to_exclude=float_nodes(pre.read_bytes(), float_layers),
            )
        return out.read_bytes()


def calibration_images(encoder, refs) -> np.ndarray:
    """``extra["calibration_images"]`` readable items spread evenly over ``refs`` (every
    k-th, in order: archives are often sorted by modality), preprocessed exactly as the
    encoder preprocesses what it embeds. Deterministic: same refs, same model."""
    from radsearch.decode import decode_item

    refs = list(refs)
    n = int(encoder.config.extra.get("calibration_images", CALIBRATION_IMAGES))
    step = max(1, len(refs) // n)
    pre, out = encoder.preprocess_fn(), []
    for ref in refs[::step] + [r for i, r in enumerate(refs) if i % step]:
        x, err = decode_item(ref, pre)
        if err is None:
            out.append(x)
            if len(out) >= n:
                break
    if not out:
        raise EncoderError(
            f"model {encoder.config.name!r}: int8 calibration needs readable images "
            "(embed or index some first)"
        )
    return np.stack(out).astype(np.float32)


def quantize_int8(encoder, images: np.ndarray) -> tuple[bytes, dict]:
    """``(int8 model, calibration record)`` for ``encoder`` calibrated on ``images``;
    cached in ``cache_dir()`` by the digest of the fp32 model and of ``images``."""
    from radsearch.encoders.accel import export_onnx

    extra = encoder.config.extra
    method = extra.get("calibration", "minmax")
    layers = list(extra.get("float_layers", ()))
    fp32 = export_onnx(eager_module(encoder), encoder.config.input_size)
    h = hashlib.sha256(fp32)
    h.update(np.ascontiguousarray(images, np.float32).tobytes())
    h.update(f"{method}{layers}".encode())
    record = {"images": len(images), "method": method, "digest": h.hexdigest()[:16]}
    path = cache_dir() / f"{encoder.config.hash}-{record['digest']}.onnx"
    if path.exists():
        return path.read_bytes(), record
    model = quantize_onnx(fp32, images, method, layers)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(model)
    os.replace(tmp, path)
    return model, record


def eager_module(encoder):
    """The encoder's own torch module (before any runtime swapped it)."""
    return encoder.__dict__.setdefault("_eager", encoder.module)


def install_int8(encoder, model: bytes, record: dict, check: np.ndarray | None = None):
    """Run ``encoder`` on the int8 ``model`` if its vectors of ``check`` (default: the
    fixed probe of ``accel``) are within ``INT8_COSINE`` of fp32; else warn and fall
    back to the fp32 model (``accel.accelerate``). Returns ``encoder``."""
    from radsearch.encoders.accel import OnnxModule, _probe, _run, accelerate

    eager = eager_module(encoder)
    batch = _probe(encoder.config.input_size) if check is None else check[:8]
    batch = np.ascontiguousarray(batch, np.float32)
    ref, _ = _run(eager, batch)
    info = {"runtime": "onnx-int8", "requested": "int8", "calibration": record}
    try:
        int8 = OnnxModule(model)
        t0 = time.perf_counter()
        got, _ = _run(int8, batch)
        info["check_seconds"] = round(time.perf_counter() - t0, 2)
        cos = float((ref * got).sum(axis=1).min())
    except Exception as exc:  # ORT cannot run it here: stay on fp32
        cos, info["int8_error"] = -1.0, f"{type(exc).__name__}: {exc}"[:200]
    info["int8_cosine_min"] = round(cos, 6)
    encoder.int8_model, encoder.int8_record = model, record
    if cos >= INT8_COSINE:
        encoder.module, encoder.runtime_info = int8, info
        return encoder
    warnings.warn(
        f"model {encoder.config.name!r}: int8 vectors differ from fp32 (min cosine "
        f"{cos:.4f} < {INT8_COSINE}); using the fp32 model",
        stacklevel=2,
    )
    encoder.module, encoder.runtime_info = eager, None
    accelerate(encoder, "auto")
    encoder.runtime_info.update(requested="int8", int8_rejected=info)
    return encoder


def ensure_int8(encoder, refs=()) -> None:
    """For an int8 variant not yet quantised: calibrate on the first items of ``refs``
    and install the model (no-op for other encoders, or once installed)."""
    if not wants_int8(encoder.config) or getattr(encoder, "int8_model", None) is not None:
        return
    images = calibration_images(encoder, refs)
    model, record = quantize_int8(encoder, images)
    install_int8(encoder, model, record, check=images)


def load_for_index(encoder, path: Path, manifest: dict) -> None:
    """Install the int8 model an index was built with (``INT8_FILE`` in its folder)."""
    if not wants_int8(encoder.config) or "int8" not in manifest["encoder"]:
        return
    file = Path(path) / INT8_FILE
    if not file.exists():
        from radsearch.errors import IndexFormatError

        raise IndexFormatError(
            f"{path}: built with the int8 model {INT8_FILE}, which is missing; "
            "copy the whole index folder or rebuild it"
        )
    install_int8(encoder, file.read_bytes(), manifest["encoder"]["int8"])


def save_for_index(encoder, stage: Path, manifest: dict) -> None:
    """Stage the int8 model and record its calibration in the manifest."""
    model = getattr(encoder, "int8_model", None)
    if model is None:
        return
    (stage / INT8_FILE).write_bytes(model)
    info = getattr(encoder, "runtime_info", None) or {}
    manifest["encoder"]["int8"] = {
        **encoder.int8_record,
        "file": INT8_FILE,
        "runtime": info.get("runtime"),
    }
