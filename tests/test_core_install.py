"""The plain install (README's set-up command) carries the fast CPU path."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_onnx_runtime_is_a_core_dependency():
    deps = tomllib.loads(PYPROJECT.read_text())["project"]["dependencies"]
    names = {d.split(">")[0].split("=")[0].split("[")[0].strip().lower() for d in deps}
    assert {"onnxruntime", "onnx"} <= names


@pytest.mark.slow
def test_auto_runtime_exports_and_checks_onnx_without_extras():
    import onnx  # noqa: F401  (no importorskip: the core install must have them)
    import onnxruntime  # noqa: F401

    from radsearch.encoders import create_encoder
    from radsearch.encoders.accel import accelerate

    info = accelerate(create_encoder("efficientnet-lite0"), "auto").runtime_info
    assert "onnx_error" not in info, info
    assert info["cosine_min"] >= 0.999  # the faithfulness check ran on the ONNX model
