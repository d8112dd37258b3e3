"""radsearch: content-based image retrieval for radiology with frozen foundation models.

Data flow: ``io`` (read images, enumerate sources) -> ``encoders`` (registry of frozen
feature extractors) -> ``embed`` (batched, resumable extraction) -> ``index`` (vectors +
metadata + manifest on disk) -> ``search`` (query -> hits) -> ``evaluate`` / ``serve``.
"""

from radsearch.errors import RadsearchError

__version__ = "0.1.0"

__all__ = ["Index", "RadsearchError", "__version__"]


def __getattr__(name):
    # Lazy so that `import radsearch` stays cheap (no torch/faiss import).
    if name == "Index":
        from radsearch.index import Index

        return Index
    raise AttributeError(name)
