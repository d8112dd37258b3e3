"""radsearch: content-based image retrieval for radiology with frozen foundation models.

Data flow: ``io`` (read images, enumerate sources) -> ``encoders`` (registry of frozen
feature extractors) -> ``decode`` + ``embed`` (batched, resumable extraction;
``distributed`` on Ray) -> ``index`` (vectors + metadata + manifest on disk;
``pipeline`` strings these stages together) -> ``search`` (query -> hits, with
``recipe`` and ``vote``) -> ``evaluate`` / ``serve``. ``tune``, ``selection`` and
``lodo`` choose a configuration; ``studies`` searches whole studies, ``regions`` parts
of images. The index directory is the contract between the stages: whatever reads one
checks its manifest's encoder against the one it uses.
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
