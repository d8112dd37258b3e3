"""Index directories: build, extend, remove, open, search."""

from radsearch.index.core import Index

__all__ = ["Index"]
