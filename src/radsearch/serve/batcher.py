"""Batched query encoding for ``radsearch serve``: concurrent searches share one forward pass.

Request threads decode their uploads and preprocess them (``search.prepare_query``:
resize, normalisation) concurrently, then hand the encoder input to one
``QueryBatcher``. Its worker thread takes the first waiting query, collects more for
at most ``window`` seconds (up to ``max_batch``), embeds them in one forward pass
(``search.encode_prepared``: the encoder and the index's recipe, as every search does)
and searches the batch with one index call per distinct set of options
(``search.search_vectors``). Only the forward pass and the search are serialised; a lone
query waits for no one (the window starts only when a second is already queued).
``max_batch=1`` is the one-at-a-time path, through the same code. Hits equal the
one-at-a-time ones; scores agree within float rounding of the batched forward pass (1e-5).

``workers`` threads run batches side by side (``app.encoder_plan``: one per core with
single-threaded ONNX Runtime runs, which release the GIL). A batch is encoded one image
per ORT call over one single-threaded session per core (``encoders.onnx_module``: a
stacked batch costs more CPU per image, not less), so the gain of batching is in the
serial part around the forward pass (one index call per batch) and in keeping every
core busy, not in the forward pass itself.

``batch_sizes`` counts the batches run by size, so tests and ``/api/info`` can see
whether concurrent requests were actually collected together.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections import Counter
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("radsearch.serve")

DEFAULT_MAX_BATCH = 8
DEFAULT_WINDOW = 0.005


@dataclass
class _Query:
    prepared: object  # the encoder's preprocessed input (search.prepare_query)
    name: str
    options: dict
    done: Future = field(default_factory=Future)


class QueryBatcher:
    """Serialises encoder + search and batches the queries that arrive together."""

    def __init__(
        self,
        index,
        max_batch: int = DEFAULT_MAX_BATCH,
        window: float = DEFAULT_WINDOW,
        workers: int = 1,
    ):
        self.index = index
        self.max_batch = max(1, int(max_batch))
        self.window = max(0.0, float(window))
        self.workers = max(1, int(workers))
        self.batch_sizes: Counter[int] = Counter()  # batch size -> batches run
        # One slot per worker, held while a batch runs; other users of the encoder
        # (region search, explain) take one too, so the encoder never runs more often
        # at once than there are workers.
        self.lock = threading.BoundedSemaphore(self.workers)
        self._queue: queue.Queue[_Query] = queue.Queue()
        self._count_lock = threading.Lock()
        for n in range(self.workers):
            name = f"radsearch-batcher-{n}"
            threading.Thread(target=self._run, name=name, daemon=True).start()

    @property
    def largest_batch(self) -> int:
        return max(self.batch_sizes, default=0)

    def search(self, pixels: np.ndarray, name: str, **options):
        """One query's ``QueryResult`` (options as ``search_vectors`` takes them).

        Preprocessing runs here, in the caller's thread, concurrently with other requests.
        """
        from radsearch.search import prepare_query

        job = _Query(prepare_query(self.index, pixels), name, options)
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
            with self._count_lock:
                self.batch_sizes[len(batch)] += 1
            try:
                with self.lock:
                    self._answer(batch)
            except BaseException as exc:  # every waiting request gets the error
                for job in batch:
                    if not job.done.done():
                        job.done.set_exception(exc)

    def _answer(self, batch: list[_Query]) -> None:
        from radsearch.search import encode_prepared

        vectors = encode_prepared(self.index, [job.prepared for job in batch])
        groups: dict[str, list[int]] = {}
        for i, job in enumerate(batch):  # queries with the same options: one index call
            groups.setdefault(json.dumps(job.options, sort_keys=True, default=str), []).append(i)
        for members in groups.values():
            self._search_group([batch[i] for i in members], vectors[members])

    def _search_group(self, jobs: list[_Query], vectors: np.ndarray) -> None:
        from radsearch.search import search_vectors

        try:
            results = search_vectors(
                self.index, vectors, names=[job.name for job in jobs], **jobs[0].options
            )
        except Exception as exc:  # these queries' options (a bad filter) fail them alone
            for job in jobs:
                job.done.set_exception(exc)
            return
        for job, result in zip(jobs, results, strict=True):
            job.done.set_result(result)
