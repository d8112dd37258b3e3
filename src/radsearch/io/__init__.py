"""Reading radiology images and enumerating sources.

``ItemRef`` is a lazy reference (id, source file, frame/slice, metadata); ``load_pixels``
turns it into an ``HxWx3 uint8`` RGB array. Sources yield ``ItemRef`` without decoding
pixels so that decoding can run in worker processes.
"""

from radsearch.io.items import ItemRef, load_pixels, read_image

__all__ = ["ItemRef", "iter_source", "load_pixels", "read_image"]


def __getattr__(name):
    if name == "iter_source":
        from radsearch.io.sources import iter_source

        return iter_source
    raise AttributeError(name)
