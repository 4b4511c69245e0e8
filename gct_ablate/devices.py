"""Which device each local worker trains on: round-robin over the visible GPUs.

Pure functions (no torch import) so the placement is testable on a machine without CUDA.
GPU indices are positions in the visible list: with ``CUDA_VISIBLE_DEVICES=2,3`` index 0 is
physical GPU 2, as torch numbers them (``cuda:0``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from gct_ablate.errors import UsageError

VISIBLE_ENV = "CUDA_VISIBLE_DEVICES"
GPU_DEVICES = ("auto", "cuda")  # --device values that --gpus may place over


class GpuError(UsageError):
    """A --gpus list that cannot be used on this machine."""


def parse_gpus(text: str, visible: int | None = None,
               env: Mapping[str, str] | None = None) -> tuple[int, ...]:
    """``"0,2"`` -> ``(0, 2)``: distinct indices >= 0, each below ``visible`` (the number of
    visible GPUs) when it is given; ``env`` (default ``os.environ``) names the
    ``CUDA_VISIBLE_DEVICES`` behind that number in the error."""
    items = [item.strip() for item in str(text).split(",")]
    if not text.strip() or any(not item for item in items):
        raise GpuError(f"invalid --gpus {text!r}; expected GPU indices such as 0,2")
    gpus = []
    for item in items:
        if not item.isdecimal():
            raise GpuError(f"invalid GPU index {item!r} in --gpus {text!r}; expected "
                           "indices >= 0 such as 0,2")
        gpus.append(int(item))
    doubled = sorted({g for g in gpus if gpus.count(g) > 1})
    if doubled:
        raise GpuError(f"GPU {doubled[0]} given twice in --gpus {text!r}")
    if visible is not None:
        missing = [g for g in gpus if g >= visible]
        if missing:
            seen = f"0-{visible - 1}" if visible > 1 else "0"
            raise GpuError(f"GPU {missing[0]} of --gpus {text!r} is not visible; this machine "
                           f"shows {visible} GPU(s) ({seen})" + _visible_hint(env))
    return tuple(gpus)


def _visible_hint(env: Mapping[str, str] | None = None) -> str:
    value = (os.environ if env is None else env).get(VISIBLE_ENV)
    return f" under {VISIBLE_ENV}={value}" if value is not None else ""


def visible_gpus(env: Mapping[str, str], count: int) -> tuple[int, ...]:
    """Indices of the GPUs a process may use: ``count`` (what the driver reports) limited by
    ``CUDA_VISIBLE_DEVICES`` (an empty or ``-1`` list hides them all; CUDA stops reading the
    list at its first invalid entry)."""
    value = env.get(VISIBLE_ENV)
    if value is None:
        return tuple(range(count))
    listed = 0
    for item in value.split(","):
        item = item.strip()
        if not item or item.startswith("-"):
            break
        listed += 1
    return tuple(range(min(count, listed)))


def place_workers(n_workers: int, gpus: Sequence[int]) -> list[str]:
    """Torch device strings of ``n_workers`` workers: round-robin over ``gpus``
    (``cuda:0, cuda:1, cuda:0, ...``), all ``"cpu"`` when there is none."""
    if n_workers < 1:
        raise UsageError(f"invalid number of workers {n_workers}; must be >= 1")
    if not gpus:
        return ["cpu"] * n_workers
    return [f"cuda:{gpus[i % len(gpus)]}" for i in range(n_workers)]


def worker_devices(device: str, n_workers: int, gpus: str | Sequence[int] | None,
                   count: int, env: Mapping[str, str]) -> list[str]:
    """The device of each of ``n_workers`` local workers.

    ``device`` is the --device option, ``gpus`` the --gpus text (or indices; None: every
    visible GPU), ``count`` the GPUs the driver reports. ``auto`` and ``cuda`` are placed
    round-robin over the GPUs; ``auto`` stays ``auto`` (cuda, then mps, then cpu) when no
    GPU is visible. Any other device (``cpu``, ``cuda:1``, ``mps``) is used by every worker.
    """
    visible = visible_gpus(env, count)
    if gpus is not None:
        parse_gpus(_text(gpus))  # bad text first, whatever the machine
        if not visible:
            raise GpuError(f"--gpus {_text(gpus)} given but this machine has no visible CUDA "
                           "GPU" + _visible_hint(env))
        if device not in GPU_DEVICES:
            raise GpuError(f"--gpus {_text(gpus)} places workers on GPUs; it does not go with "
                           f"--device {device} (use --device auto or cuda)")
        chosen = parse_gpus(_text(gpus), len(visible), env)
    elif device in GPU_DEVICES and visible:
        chosen = visible
    else:
        return [device] * n_workers
    return place_workers(n_workers, chosen)


def _text(gpus: str | Sequence[int]) -> str:
    return gpus if isinstance(gpus, str) else ",".join(str(g) for g in gpus)


def cuda_count() -> int:
    """GPUs the CUDA driver reports to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def gpu_index(device: str) -> int | None:
    """``"cuda:2"`` -> 2; None for any other device."""
    kind, _, index = device.partition(":")
    return int(index) if kind == "cuda" and index.isdecimal() else None
