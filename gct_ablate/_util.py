"""Small helpers shared by every layer (no heavy imports)."""

from __future__ import annotations

import ctypes
import re


class UsageError(ValueError):
    """Bad input or an unusable environment: reported as one line, exit code 2."""


_PASSWORD = re.compile(r"(://[^:/@]+:)([^@]*)(@)")


def mask_url(url: str) -> str:
    """'postgresql://u:secret@h/db' -> 'postgresql://u:***@h/db'."""
    return _PASSWORD.sub(r"\1***\3", url)


def tune_malloc() -> bool:
    """Keep freed heap memory for reuse (glibc): no page faults on every large allocation.

    With glibc's defaults, tensors of a few MiB are returned to the OS when freed and the
    next allocation faults its pages in again, which can cost more than the kernel that
    fills them. True if applied (glibc only). Measured: about 2 % of a digits trial.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                and libc.mallopt(m_trim_threshold, 1 << 30))
