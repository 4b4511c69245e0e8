"""Small helpers shared by every layer (no heavy imports)."""

from __future__ import annotations

import re


class UsageError(ValueError):
    """Bad input or an unusable environment: reported as one line, exit code 2."""


_PASSWORD = re.compile(r"(://[^:/@]+:)([^@]*)(@)")


def mask_url(url: str) -> str:
    """'postgresql://u:secret@h/db' -> 'postgresql://u:***@h/db'."""
    return _PASSWORD.sub(r"\1***\3", url)
