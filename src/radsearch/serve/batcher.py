"""Batched query encoding for ``radsearch serve``: concurrent searches share one forward pass.

Request threads decode their uploads concurrently, then hand the pixels to one
``QueryBatcher``. Its worker thread takes the first waiting query, collects more for
at most ``window`` seconds (up to ``max_batch``), embeds them in one batch through
``search.embed_queries`` (the encoder and the index's recipe, as every search does)
and searches each with its own options through ``search.search_vectors``. Only the
encoder and the search are serialised; a lone query waits for no one (the window
starts only when a second is already queued). ``max_batch=1`` is the one-at-a-time
path. Hits equal the one-at-a-time ones; scores agree within float rounding of the
batched forward pass (1e-5).
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("radsearch.serve")

DEFAULT_MAX_BATCH = 8
DEFAULT_WINDOW = 0.005


@dataclass
class _Query:
    pixels: np.ndarray
    name: str
    options: dict
    done: Future = field(default_factory=Future)


class QueryBatcher:
    """Serialises encoder + search and batches the queries that arrive together."""

    def __init__(self, index, max_batch: int = DEFAULT_MAX_BATCH, window: float = DEFAULT_WINDOW):
        self.index = index
        self.max_batch = max(1, int(max_batch))
        self.window = max(0.0, float(window))
        self.largest_batch = 0
        # Held while a batch runs; other users of the encoder (study search) take it too.
        self.lock = threading.Lock()
        self._queue: queue.Queue[_Query] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="radsearch-batcher", daemon=True)
        self._worker.start()

    def search(self, pixels: np.ndarray, name: str, **options):
        """One query's ``QueryResult`` (options as ``search_vectors`` takes them)."""
        job = _Query(pixels, name, options)
        self._queue.put(job)
        return job.done.result()

    def _collect(self) -> list[_Query]:
        batch = [self._queue.get()]
        deadline = time.monotonic() + self.window
        while len(batch) < self.max_batch:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except queue.Empty:
                pass
            remaining = deadline - time.monotonic()
            if len(batch) == 1 or remaining <= 0:
                break  # a lone query goes at once; a group waits out the window
            try:
                batch.append(self._queue.get(timeout=remaining))
            except queue.Empty:
                break
        return batch

    def _run(self) -> None:
        while True:
            batch = self._collect()
            self.largest_batch = max(self.largest_batch, len(batch))
            try:
                with self.lock:
                    self._answer(batch)
            except BaseException as exc:  # every waiting request gets the error
                for job in batch:
                    if not job.done.done():
                        job.done.set_exception(exc)

    def _answer(self, batch: list[_Query]) -> None:
        from radsearch.search import embed_queries, search_vectors

        _, vectors = embed_queries(self.index, [job.pixels for job in batch])
        for job, vector in zip(batch, vectors, strict=True):
            try:
                result = search_vectors(self.index, vector[None], names=[job.name], **job.options)
                job.done.set_result(result[0])
            except Exception as exc:  # this query's options (a bad filter) fail it alone
                job.done.set_exception(exc)
