"""Errors that reach the user: one line naming the thing and the reason.

The CLI catches ``RadsearchError`` and prints ``radsearch: error: <message>`` with a
non-zero exit code; anything else is a bug and keeps its traceback.
"""


class RadsearchError(Exception):
    """Base class for every error the user can cause and fix."""


class ImageReadError(RadsearchError):
    """A file (or frame/slice of it) could not be turned into pixels."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SourceError(RadsearchError):
    """A source (folder, CSV manifest, DICOMweb endpoint) is missing or malformed."""


class EncoderError(RadsearchError):
    """Unknown encoder name, or its weights cannot be found."""


class IndexFormatError(RadsearchError):
    """An index directory is missing, damaged or does not match the request."""
