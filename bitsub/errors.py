"""Exceptions raised by bitsub."""

from __future__ import annotations

__all__ = ["FormatError"]


class FormatError(ValueError):
    """Bytes or a file that are not a valid bitsub encoding (truncated, corrupted, newer version).

    The message says what is wrong and, where possible, where.
    """
