"""Index directories: build, extend, remove, open, search.

``core`` (``Index``: the directory), ``manifest`` (what ``manifest.json`` must hold),
``rows`` (what a row remembers about how it was read, unique ids), ``commit``
(crash-safe staged writes under one writer's lock), and the vector stores behind one
interface: ``faiss_store`` (with ``ann``'s approximate types) and ``milvus_store``. The
directory is the contract between stages.
"""

from radsearch.index.core import Index

__all__ = ["Index"]
