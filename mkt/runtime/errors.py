"""Errors raised by the runtime.

Every failure caused by bad input (a corrupt photo, a tampered bundle, a missing index) is an
:class:`MktError` subclass with a one-line message that names the file and the reason, so the
CLI can print ``mkt: error: ...`` and callers can catch one type.
"""

from __future__ import annotations


class MktError(Exception):
    """Base class of all mkt errors. ``exit_code`` is what the CLI exits with."""

    exit_code = 2

    def __init__(self, message: str) -> None:
        # One line: newlines in the message would break the CLI's one-line-per-error promise.
        super().__init__(" ".join(str(message).split()))


class BadImageError(MktError):
    """A photo could not be read: missing, unreadable, not an image, truncated, too large."""

    exit_code = 1


class ImageTooLargeError(BadImageError):
    """A photo has more pixels than the decompression-bomb limit."""


class BundleError(MktError):
    """The model bundle is missing, malformed, or its files do not match their hashes."""


class MktIndexError(MktError):
    """The similarity index is missing, malformed, tampered with, or built by another model."""


class CatalogueError(MktError):
    """A dataset folder (Products.csv / Images.csv / images/) could not be read."""


__all__ = [
    "BadImageError",
    "BundleError",
    "CatalogueError",
    "ImageTooLargeError",
    "MktError",
    "MktIndexError",
]
