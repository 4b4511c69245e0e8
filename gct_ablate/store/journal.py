"""The Optuna journal file, guarded: a torn last record is set aside before anything is
appended, and damage in the middle is one line naming the file and the byte offset.

A journal is one JSON record per line, appended under Optuna's file lock. A process that
dies mid-append (a full disk, a power cut) leaves a last line without its end; Optuna
reads past it, but a record appended after it glues onto it and the whole journal becomes
unreadable. :class:`GuardedJournal` checks the end of the file, under the same lock, before
every append: a torn tail is moved to ``JOURNAL.torn-OFFSET`` beside it (one line on stderr
says so) and the file cut back to its last whole record.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Generator
from pathlib import Path
from typing import Any

from optuna.storages.journal import JournalFileBackend

from gct_ablate.errors import UsageError
from gct_ablate.store import _optuna

_TAIL_BLOCK = 1 << 16


class JournalDamaged(UsageError):
    """A journal with a record that is not JSON before its last line (one line)."""


def _last_line_start(f: Any, size: int) -> int:
    """Byte offset where the file's last line starts (the file ends with ``\\n`` or not)."""
    end = size - 1 if size else 0  # a final newline belongs to the last line
    pos = end
    while pos > 0:
        start = max(0, pos - _TAIL_BLOCK)
        f.seek(start)
        block = f.read(pos - start)
        cut = block.rfind(b"\n")
        if cut >= 0:
            return start + cut + 1
        pos = start
    return 0


def _is_record(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        return False


def torn_tail(path: str | Path) -> int | None:
    """The offset of a torn last record (no line end, or not a JSON object); None if whole."""
    with open(path, "rb") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return None
        start = _last_line_start(f, size)
        f.seek(start)
        line = f.read()
    if line.endswith(b"\n") and _is_record(line):
        return None
    return start


def set_aside_torn_tail(path: str | Path) -> Path | None:
    """Move a torn last record to ``PATH.torn-OFFSET`` and cut the journal there; the side
    file, or None when the journal ends whole. The caller holds the journal's lock."""
    offset = torn_tail(path)
    if offset is None:
        return None
    path = Path(path)
    side = path.with_name(f"{path.name}.torn-{offset}")
    with open(path, "r+b") as f:
        f.seek(offset)
        side.write_bytes(f.read())
        f.truncate(offset)
        f.flush()
        os.fsync(f.fileno())
    print(f"Warning: {path} ended in a torn record (a write cut short at byte {offset}); "
          f"it was moved to {side} and the journal continues from its last whole record",
          file=sys.stderr)
    return side


def find_damage(path: str | Path) -> tuple[int, str] | None:
    """(offset, what) of the first damaged record before the last line; None if none."""
    offset = 0
    with open(path, "rb") as f:
        previous: tuple[int, bytes] | None = None
        for line in f:
            if previous is not None and not (previous[1].endswith(b"\n")
                                             and _is_record(previous[1])):
                return previous[0], _describe(previous[1])
            previous = (offset, line)
            offset += len(line)
    return None


def _describe(line: bytes) -> str:
    text = line[:40].decode("utf-8", "replace").rstrip("\n")
    return f"{text!r}{'...' if len(line) > 40 else ''}"


def damaged(path: str | Path) -> JournalDamaged:
    """The one-line error for a journal damaged before its last line."""
    found = find_damage(path)
    offset, what = found if found is not None else (0, "an unreadable record")
    return JournalDamaged(
        f"Optuna journal {path} is damaged at byte {offset} (a record that is not JSON: {what}); "
        f"nothing was written. Back it up, then cut the damaged line out (e.g. with a text "
        f"editor) or move the journal aside to start again")


class GuardedJournal(JournalFileBackend):
    """Optuna's journal file backend that never appends after a torn record and reads
    damage as one line (:class:`JournalDamaged`)."""

    def read_logs(self, log_number_from: int) -> Generator[dict[str, Any], None, None]:
        try:
            yield from super().read_logs(log_number_from)
        except (ValueError, UnicodeDecodeError):  # JSONDecodeError is a ValueError
            raise damaged(self._file_path) from None

    def append_logs(self, logs: list[dict[str, Any]]) -> None:
        with _optuna.journal_lock(self):
            set_aside_torn_tail(self._file_path)
            data = "\n".join(json.dumps(log, separators=(",", ":")) for log in logs) + "\n"
            with open(self._file_path, "ab") as f:
                f.write(data.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())


def check_readable(path: str | Path) -> None:
    """One line (:class:`JournalDamaged`) when the journal is damaged before its last line."""
    if find_damage(path) is not None:
        raise damaged(path)
