"""ONNX Runtime sessions for the offline CNN encoders: how many threads, how a batch runs.

``OnnxModule`` stands in for a torch module (``encoders.accel`` swaps it in when it is
faithful and faster); ``ConcurrentOnnxModule`` is the server's variant for forward
passes run side by side. Kept apart from ``accel``, which decides *whether* to use them.
"""

from __future__ import annotations

import os
import threading

import numpy as np

# Images per ONNX Runtime call. On CPU a batch of 32 costs Lite0 about 3.5x the CPU per
# image of single images (42 vs 12 ms on one thread, 23 vs 15 on two): one image's
# activations fit in a core's L2 cache, a batch's do not. Vectors do not depend on it.
MICRO_BATCH = 1


def cpu_threads() -> int:
    """Cores this process may run on (cgroup/affinity aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def inference_threads() -> int:
    """Threads for inference: ``$RADSEARCH_THREADS``, else the usable cores not already
    busy (1-minute load average), at least one. Oversubscribing a loaded machine makes
    every thread wait: one thread beats two on two busy cores."""
    env = os.environ.get("RADSEARCH_THREADS")
    if env:
        return max(1, int(env))
    cores = cpu_threads()
    try:
        busy = os.getloadavg()[0]
    except OSError:  # pragma: no cover
        busy = 0.0
    return int(min(cores, max(1, round(cores - busy))))


def lane_threads() -> int:
    """Lanes for a batch (``OnnxModule``): ``$RADSEARCH_THREADS``, else every usable core,
    whatever the load. Lanes share nothing, so unlike an intra-op pool they do not stall
    on a busy core: with two other processes spinning on the two cores, two lanes still
    encoded 50-53 images/s against 33-37 for one."""
    env = os.environ.get("RADSEARCH_THREADS")
    return max(1, int(env)) if env else cpu_threads()


class OnnxModule:
    """Callable like the torch module (tensor in, tensor out; a tuple of tensors for a
    model with several outputs), backed by ONNX Runtime.

    It runs ``MICRO_BATCH`` images per ORT call whatever the batch it is given, and
    spreads a batch over single-threaded sessions, one per core ("lanes", each taking
    the next image as it finishes one), rather than giving one session several
    intra-op threads: Lite0 then costs 9-10 ms of CPU per image instead of 11-15, and
    a batch finishes about a third sooner on two cores. A single image runs on one
    session with ``threads`` intra-op threads (lowest latency). ``threads`` (default:
    ``lane_threads()`` lanes, ``inference_threads()`` for the single-image session)
    sets both.
    """

    def __init__(self, model_bytes: bytes, threads: int | None = None):
        self.model_bytes = model_bytes
        self.threads = threads
        self.micro_batch = MICRO_BATCH
        self._session = None
        self._lanes = None

    def __getstate__(self):
        return {**self.__dict__, "_session": None, "_lanes": None}

    def _make_session(self, threads: int):
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # no busy-waiting: decode workers (and other tenants) need those cycles
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        return ort.InferenceSession(self.model_bytes, so, providers=["CPUExecutionProvider"])

    @property
    def session(self):
        if self._session is None:
            self._session = self._make_session(self.threads or inference_threads())
        return self._session

    @property
    def lanes(self) -> int:
        return self.threads or lane_threads()

    def _lane_pool(self):
        """``(thread pool, queue of free single-threaded sessions)``, made on first use."""
        if self._lanes is None:
            import queue
            from concurrent.futures import ThreadPoolExecutor

            free: queue.SimpleQueue = queue.SimpleQueue()
            for _ in range(self.lanes):
                free.put(self._make_session(1))
            self._lanes = (ThreadPoolExecutor(self.lanes, "onnx-lane"), free)
        return self._lanes

    def _run(self, session, arr: np.ndarray) -> list[np.ndarray]:
        step = max(1, self.micro_batch)
        starts = range(0, len(arr), step) if len(arr) else [0]
        parts = [session.run(None, {"x": arr[i : i + step]}) for i in starts]
        return [np.concatenate(o) for o in zip(*parts, strict=True)]

    def _run_on_a_lane(self, arr: np.ndarray) -> list[np.ndarray]:
        free = self._lanes[1]
        session = free.get()
        try:
            return self._run(session, arr)
        finally:
            free.put(session)

    def __call__(self, x):
        import torch

        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if self.lanes > 1 and len(arr) > 1:
            pool, _ = self._lane_pool()
            step = max(1, self.micro_batch)
            chunks = [arr[i : i + step] for i in range(0, len(arr), step)]
            parts = list(pool.map(self._run_on_a_lane, chunks))
            outs = [np.concatenate(o) for o in zip(*parts, strict=True)]
        else:
            outs = self._run(self.session, arr)
        outs = [torch.from_numpy(o) for o in outs]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def concurrent(self, threads: int) -> ConcurrentOnnxModule:
        """The same model for callers on several threads (see ``ConcurrentOnnxModule``)."""
        return ConcurrentOnnxModule(self.model_bytes, threads)

    # the Encoder treats its module like an nn.Module
    def eval(self):
        return self

    def to(self, *_args, **_kwargs):
        return self

    def parameters(self):
        return iter(())


class ConcurrentOnnxModule(OnnxModule):
    """An ``OnnxModule`` for forward passes run side by side (the server's batch workers).

    A lone call runs as ``OnnxModule`` does (a single image on every core: lowest
    latency; a batch over the lanes); a call made while another is running takes a
    second, single-threaded session, so concurrent calls spread over the cores without
    an intra-op pool's hand-offs.
    """

    def __init__(self, model_bytes: bytes, threads: int | None = None):
        super().__init__(model_bytes, threads)
        self.narrow = OnnxModule(model_bytes, 1)
        self._running = 0
        self._lock = threading.Lock()

    def __getstate__(self):
        state = {**super().__getstate__(), "_running": 0}
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __call__(self, x):
        with self._lock:
            alone = self._running == 0
            self._running += 1
        try:
            return super().__call__(x) if alone else self.narrow(x)
        finally:
            with self._lock:
                self._running -= 1
