"""What every route of ``radsearch serve`` shares: the index, the settings, the caches.

Route modules (``routes_*.py``) receive one ``ServeContext`` and answer through it, so
the privacy rules (no PHI, no server paths unless asked) live in one place:
``ServeContext.public``.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field

from starlette.exceptions import HTTPException

from radsearch.io.sources import PRIVATE_KEYS
from radsearch.io.upload import DecodeBudget

# Never stored by sources (PRIVATE_KEYS) plus patient_id, which is stored for
# one-per-patient search but is an identifier all the same: hidden unless --show-phi.
PHI_COLUMNS = ("patient_id", *PRIVATE_KEYS)
# Columns holding server file paths: hidden unless --show-paths.
PATH_COLUMNS = ("source",)
THUMB_CACHE_SIZE = 512


class LRU:
    """A small thread-safe least-recently-used cache (rendered thumbnails)."""

    def __init__(self, size: int):
        self.size = size
        self.data: OrderedDict = OrderedDict()
        self.lock = threading.Lock()

    def get(self, key):
        with self.lock:
            value = self.data.get(key)
            if value is not None:
                self.data.move_to_end(key)
            return value

    def put(self, key, value) -> None:
        with self.lock:
            self.data[key] = value
            self.data.move_to_end(key)
            while len(self.data) > self.size:
                self.data.popitem(last=False)


@dataclass
class Settings:
    """The server's limits and disclosure switches (``radsearch serve`` options)."""

    max_upload_bytes: int
    max_pixels: int
    max_k: int
    show_phi: bool = False
    show_paths: bool = False
    token: bool = False
    cors_origins: list[str] = field(default_factory=list)
    allowed_hosts: list[str] = field(default_factory=list)


@dataclass
class ServeContext:
    index: object  # radsearch.index.Index
    settings: Settings
    budget: DecodeBudget
    batcher: object = None  # radsearch.serve.batcher.QueryBatcher: encoder + search
    info: dict = field(default_factory=dict)
    thumbs: LRU = field(default_factory=lambda: LRU(THUMB_CACHE_SIZE))

    @property
    def search_lock(self) -> threading.BoundedSemaphore:
        """A slot of the encoder (one per batch worker): routes that embed outside the
        batcher hold one while they do."""
        return self.batcher.lock

    def hidden(self) -> set[str]:
        """Columns no response may carry under the current settings."""
        out = set()
        if not self.settings.show_phi:
            out.update(PHI_COLUMNS)
        if not self.settings.show_paths:
            out.update(PATH_COLUMNS)
        return out

    def public(self, record: dict) -> dict:
        """``record`` without the PHI and path columns the settings hide."""
        hidden = self.hidden()
        return {k: v for k, v in record.items() if k not in hidden}

    def refuse_phi(self, columns) -> None:
        """400 when a client filters or votes on a PHI column without --show-phi."""
        if self.settings.show_phi:
            return
        for col in columns:
            if col in PHI_COLUMNS:
                raise HTTPException(
                    400,
                    f"column {col!r} is protected health information; "
                    "the server was not started with --show-phi",
                )

    def row_or_404(self, item_id: str) -> int:
        row = self.index.row_of(item_id)
        if row is None:
            raise HTTPException(404, "no such item in the index")
        return row

    def read_query(self, upload, frame: int | None = None):
        """An uploaded query's pixels (``HxWx3`` uint8) within the server's limits: 413 over
        ``max_upload_bytes``; the pixel cap and decode budget of ``radsearch.io.upload``."""
        from radsearch.io.upload import read_upload

        size = upload.size
        if size is None:
            upload.file.seek(0, os.SEEK_END)
            size = upload.file.tell()
        upload.file.seek(0)
        limit = self.settings.max_upload_bytes
        if size > limit:
            raise HTTPException(413, f"upload too large: {size} bytes > limit {limit}")
        return read_upload(
            upload.file,
            upload.filename,
            frame=frame,
            max_pixels=self.settings.max_pixels,
            budget=self.budget,
        )

    def item_ref(self, row: int):
        """The ``ItemRef`` that reads row ``row``'s pixels as indexing read them."""
        return self.index.ref(row)
