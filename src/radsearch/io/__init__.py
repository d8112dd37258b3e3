"""Reading radiology images and enumerating sources.

``ItemRef`` is a lazy reference (id, source file, frame/slice, metadata); ``load_pixels``
turns it into an ``HxWx3 uint8`` RGB array. Sources yield ``ItemRef`` without decoding
pixels so that decoding can run in worker processes.

Readers: ``raster`` (Pillow), ``dicom`` (pydicom), ``nifti`` (nibabel), behind ``items``
(the item model, the one file-kind detector, ``load_pixels``). Sources: ``sources``
(folder, CSV manifest, single file) and ``dicomweb`` (a PACS). ``upload`` decodes
untrusted query uploads for ``serve`` within a memory budget.
"""

from radsearch.io.items import MAX_PIXELS, ItemRef, file_kind, load_pixels, read_image
from radsearch.io.sources import iter_source, parse_where

__all__ = [
    "MAX_PIXELS",
    "ItemRef",
    "file_kind",
    "iter_source",
    "load_pixels",
    "parse_where",
    "read_image",
]
