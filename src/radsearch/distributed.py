"""Distributed extraction on Ray: ``radsearch index ... --engine ray [--ray-address ...]``.

A Ray Data pipeline: items -> decode + preprocess (Ray tasks, any node) -> collate and
encode (an actor pool, one encoder replica per actor; GPUs when the cluster has them;
both steps are :mod:`radsearch.decode`'s, as in the local engine) -> the
driver, which writes the *same* resumable shards and ``failures.jsonl`` as the local
engine (``radsearch.embed.ShardWriter``), in the same order (``preserve_order``), so
the index built from them is identical. Only pending items are sent: a re-run after a
crash resumes from the shards already written.

On a cluster every node needs radsearch and the encoder's weights package installed
(or pass a ``runtime_env``); image paths must be readable from every node (shared
storage) - the decode step runs where Ray schedules it.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from radsearch.decode import collate_decoded, decode_item
from radsearch.embed import EmbedResult, start_run
from radsearch.encoders import Encoder
from radsearch.errors import RadsearchError
from radsearch.io.items import ItemRef

QUIET_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_BACKEND_LOG_LEVEL": "fatal",
}


def init_ray(address: str | None = None, *, num_cpus: int | None = None, **kwargs):
    """Connect to ``address`` (a running cluster) or start a quiet local instance."""
    for k, v in QUIET_ENV.items():
        os.environ.setdefault(k, v)
    try:
        import ray
    except ImportError:
        raise RadsearchError('the ray engine needs Ray: pip install "radsearch[scale]"') from None
    if ray.is_initialized():
        return ray
    if address:
        ray.init(address=address, log_to_driver=False, **kwargs)
    else:
        from radsearch.encoders.accel import cpu_threads

        ray.init(
            num_cpus=num_cpus or cpu_threads(),
            include_dashboard=False,
            object_store_memory=kwargs.pop("object_store_memory", 256 * 1024**2),
            log_to_driver=False,
            **kwargs,
        )
    return ray


class _DecodeBatch:
    """Ray task body: pickled refs -> pickled ``decode_item`` outputs and reasons.

    Inputs travel pickled, whatever their shape (a fusion encoder's item is a tuple of
    arrays, one per member), and only the encode actor collates them."""

    def __init__(self, preprocess):
        self.preprocess = preprocess

    def __call__(self, batch: dict) -> dict:
        xs, errs = [], []
        for blob in batch["ref"]:
            x, err = decode_item(pickle.loads(blob), self.preprocess)
            xs.append(b"" if err else pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL))
            errs.append(err or "")
        return {
            "i": np.asarray(batch["i"]),
            "x": np.asarray(xs, dtype=object),
            "err": np.asarray(errs, dtype=object),
        }


class _EncodeActor:
    """One encoder replica per actor: collates the rows that decoded through the
    encoder (``collate_decoded``) and encodes them."""

    def __init__(self, encoder: Encoder, threads: int):
        import torch

        self.encoder = encoder
        torch.set_num_threads(max(1, threads))
        for member in getattr(encoder, "members", [encoder]):
            if hasattr(member.module, "threads"):  # an ONNX Runtime session
                member.module.threads = max(1, threads)

    def __call__(self, batch: dict) -> dict:
        decoded = [
            (j, None if err else pickle.loads(x), err or None)
            for j, (x, err) in enumerate(zip(batch["x"], batch["err"], strict=True))
        ]
        rows, x, _ = collate_decoded(self.encoder.collate, decoded)
        vec = np.zeros((len(decoded), self.encoder.dim), np.float32)
        if rows:
            vec[rows] = self.encoder.encode(x)
        return {"i": batch["i"], "vec": vec, "err": batch["err"]}


def embed_refs_ray(
    refs: Sequence[ItemRef],
    encoder: Encoder,
    work_dir: str | Path,
    *,
    batch_size: int = 32,
    progress: bool = True,
    address: str | None = None,
    num_actors: int | None = None,
    actor_cpus: float | None = None,
    actor_gpus: float = 0,
    shard_size: int = 2048,
    runtime: str | None = None,
    desc: str = "embedding (ray)",
) -> EmbedResult:
    """``embed_refs`` on Ray Data: same arguments, same shards, same ``EmbedResult``."""
    from radsearch.encoders.accel import accelerate, cpu_threads
    from radsearch.encoders.quantize import ensure_int8

    writer, pending, bar = start_run(refs, encoder, work_dir, shard_size, progress, desc)
    try:
        if pending:
            ray = init_ray(address)
            import ray.data  # noqa: F811 (the submodule)

            ensure_int8(encoder, refs)  # int8 variants: calibrated on the first of refs
            if len(pending) >= 2 * batch_size:
                accelerate(encoder, runtime)
            cpus = int(ray.cluster_resources().get("CPU", cpu_threads()))
            gpus = int(ray.cluster_resources().get("GPU", 0)) if actor_gpus else 0
            size = num_actors or (
                gpus if gpus else max(1, min(cpus, 2 if cpus <= 4 else cpus // 2))
            )
            per_actor = (
                actor_cpus if actor_cpus is not None else max(0.25, min(1.0, cpus / (2 * size)))
            )
            threads = max(1, int(cpus // size))
            ctx = ray.data.DataContext.get_current()
            ctx.execution_options.preserve_order = True
            ctx.enable_progress_bars = False
            rows = [{"i": i, "ref": pickle.dumps(r)} for i, r in enumerate(pending)]
            blocks = max(1, min(len(rows) // max(batch_size, 1), 4 * cpus) or 1)
            ds = ray.data.from_items(rows, override_num_blocks=blocks)
            ds = ds.map_batches(
                _DecodeBatch(encoder.preprocess_fn()),
                batch_size=batch_size,
                batch_format="numpy",
                num_cpus=0.5,
            )
            ds = ds.map_batches(
                _EncodeActor,
                fn_constructor_args=(encoder, threads),
                batch_size=batch_size,
                batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=size),
                num_cpus=per_actor,
                num_gpus=actor_gpus or None,
            )
            for batch in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
                good_ids, good_vecs = [], []
                for i, v, err in zip(batch["i"], batch["vec"], batch["err"], strict=True):
                    ref = pending[int(i)]
                    if err:
                        writer.fail(ref, str(err))
                    else:
                        good_ids.append(ref.id)
                        good_vecs.append(v)
                if good_ids:
                    writer.put(good_ids, np.stack(good_vecs))
                bar.update(len(batch["i"]))
    finally:
        writer.close()
        bar.close()
    return writer.result(refs, encoder.dim)
