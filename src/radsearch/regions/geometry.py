"""Where a grid cell lies in the stored image, and which cells a box covers.

The encoder's ``resize`` policy (``squash``, ``pad``, ``shorter-crop``) maps stored-image
pixels to the ``S x S`` input; the feature grid divides that input evenly. Boxes are
``(x0, y0, x1, y1)`` in pixels, x1/y1 exclusive, like the ROI table and the API.
"""

from __future__ import annotations

import numpy as np

from radsearch.errors import RadsearchError


def _affine(width: int, height: int, size: int, resize: str) -> tuple[float, float, float, float]:
    """``(sx, sy, ox, oy)`` with ``input = image * s + o`` for this resize policy."""
    if resize == "squash":
        return size / width, size / height, 0.0, 0.0
    if resize == "pad":
        s = size / max(width, height)
        nw, nh = max(1, round(width * s)), max(1, round(height * s))
        return s, s, (size - nw) // 2, (size - nh) // 2
    if resize == "shorter-crop":
        s = size / min(width, height)
        nw, nh = max(size, round(width * s)), max(size, round(height * s))
        return s, s, -((nw - size) // 2), -((nh - size) // 2)
    raise RadsearchError(f"unknown resize policy {resize!r}")


def image_to_cells(box, width: int, height: int, size: int, resize: str, grid: tuple[int, int]):
    """A box in image pixels -> the same box in (fractional) cell units ``(c0, r0, c1, r1)``."""
    sx, sy, ox, oy = _affine(width, height, size, resize)
    gh, gw = grid
    x0, y0, x1, y1 = box
    return (
        (x0 * sx + ox) * gw / size,
        (y0 * sy + oy) * gh / size,
        (x1 * sx + ox) * gw / size,
        (y1 * sy + oy) * gh / size,
    )


def cells_to_image(cbox, width: int, height: int, size: int, resize: str, grid: tuple[int, int]):
    """A box in cell units -> integer image pixels, clipped to the image."""
    sx, sy, ox, oy = _affine(width, height, size, resize)
    gh, gw = grid
    c0, r0, c1, r1 = cbox
    x0 = (c0 * size / gw - ox) / sx
    y0 = (r0 * size / gh - oy) / sy
    x1 = (c1 * size / gw - ox) / sx
    y1 = (r1 * size / gh - oy) / sy
    return [
        int(np.clip(np.floor(x0), 0, width - 1)),
        int(np.clip(np.floor(y0), 0, height - 1)),
        int(np.clip(np.ceil(x1), 1, width)),
        int(np.clip(np.ceil(y1), 1, height)),
    ]


def cell_weights(cbox, grid: tuple[int, int]) -> np.ndarray:
    """``H x W`` fraction of each cell covered by a cell-unit box (sums to the box area)."""
    gh, gw = grid
    c0, r0, c1, r1 = cbox
    cols = np.clip(np.minimum(np.arange(1, gw + 1), c1) - np.maximum(np.arange(gw), c0), 0, 1)
    rows = np.clip(np.minimum(np.arange(1, gh + 1), r1) - np.maximum(np.arange(gh), r0), 0, 1)
    w = np.outer(rows, cols)
    if w.sum() <= 0:  # a box inside the padding of a ``pad`` input: nearest cell
        r = int(np.clip((r0 + r1) / 2, 0, gh - 1))
        c = int(np.clip((c0 + c1) / 2, 0, gw - 1))
        w[r, c] = 1.0
    return w.astype(np.float32)


def parse_box(text, what: str = "--roi") -> tuple[int, int, int, int]:
    """``"X0,Y0,X1,Y1"`` (or a 4-sequence) -> ints, or a one-line error."""
    parts = str(text).replace(" ", "").split(",") if isinstance(text, str) else list(text)
    try:
        vals = tuple(int(round(float(p))) for p in parts)
    except (TypeError, ValueError):
        raise RadsearchError(f"{what} {text!r}: expected four numbers X0,Y0,X1,Y1") from None
    if len(vals) != 4:
        raise RadsearchError(f"{what} {text!r}: expected four numbers X0,Y0,X1,Y1")
    return vals  # type: ignore[return-value]


def check_box(box, width: int, height: int, what: str) -> tuple[int, int, int, int]:
    """Refuse inverted, empty and out-of-image boxes (x1/y1 exclusive)."""
    x0, y0, x1, y1 = parse_box(box, what)
    if x1 < x0 or y1 < y0:
        raise RadsearchError(
            f"{what} ({x0},{y0},{x1},{y1}): inverted box (need x0 <= x1, y0 <= y1)"
        )
    if x1 == x0 or y1 == y0:
        raise RadsearchError(f"{what} ({x0},{y0},{x1},{y1}): empty box")
    if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
        raise RadsearchError(
            f"{what} ({x0},{y0},{x1},{y1}): outside the image ({width}x{height} pixels)"
        )
    return x0, y0, x1, y1
