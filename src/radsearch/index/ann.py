"""Approximate FAISS index types (filled in by the scale work)."""

from radsearch.errors import RadsearchError


def new_index(dim, spec, vectors):
    raise RadsearchError(f"index type {spec.get('type')!r} is not supported")


def search_params(index, spec):
    return None
