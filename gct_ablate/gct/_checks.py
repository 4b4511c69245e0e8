"""Argument checks shared by the attention modules (one-line ValueErrors)."""

from __future__ import annotations

from typing import Any


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; valid: {', '.join(allowed)}")
    return value


def _check_channels(channels: Any) -> int:
    if isinstance(channels, bool) or not isinstance(channels, int) or channels < 1:
        raise ValueError(f"invalid channels {channels!r}; expected a positive int")
    return channels
