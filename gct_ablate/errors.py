"""The user errors: bad input or an unusable environment, reported as one line, exit code 2.

Every one derives from :class:`UsageError`; callers tell them apart by class, never by
their message. No heavy imports here: every layer imports this module.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad input or an unusable environment (the message is one line)."""


class FactorError(UsageError):
    """A factor name or level that the registry does not accept."""


class SpecError(UsageError):
    """A study description that cannot run."""


class DataError(UsageError):
    """Data that cannot be loaded (the message names the path)."""


class SummaryError(UsageError):
    """Results that cannot be loaded or rendered."""


class StudyNotFound(UsageError):
    """The storage has no study of that name (the message lists the ones it has)."""


def disk_full(err: BaseException) -> bool:
    """A full disk or quota, or a file size limit: no trial's fault (it is re-queued)."""
    import errno

    return isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
