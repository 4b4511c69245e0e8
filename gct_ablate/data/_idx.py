"""A strict reader of the idx format of MNIST and Fashion-MNIST (gzip-compressed or plain).

An idx file is two zero bytes, a type code, the number of dimensions, each dimension as a
big-endian uint32, then the values in C order (big-endian for multi-byte types).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from gct_ablate.errors import DataError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path, hint: str = "") -> np.ndarray:
    """The array in the idx file ``path``; any defect is a one-line DataError naming the
    path (followed by ``hint``, e.g. how to get the data again)."""
    path = Path(path)
    suffix = f"; {hint}" if hint else ""

    def bad(reason: str) -> DataError:
        return DataError(f"{path}: {reason}{suffix}")

    try:
        raw = path.read_bytes()
        if raw[:2] == GZIP_MAGIC:
            raw = gzip.decompress(raw)
    except FileNotFoundError:
        raise bad("file not found") from None
    except OSError as err:  # gzip.BadGzipFile is an OSError
        raise bad(f"cannot read ({err})") from None
    except (EOFError, zlib.error) as err:
        raise bad(f"corrupt gzip data ({err})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise bad("not an idx file (bad magic number)")
    code, ndim = raw[2], raw[3]
    if code not in IDX_TYPES:
        raise bad(f"not an idx file (unknown type code 0x{code:02x})")
    if ndim == 0 or len(raw) < 4 + 4 * ndim:
        raise bad(f"not an idx file ({ndim} dimensions, header cut short)")
    dims = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(IDX_TYPES[code])
    expected = 4 + 4 * ndim + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise bad(f"{len(raw)} bytes where an idx array of shape {dims} has {expected} "
                  "(truncated or corrupt)")
    data = np.frombuffer(raw, dtype=dtype, offset=4 + 4 * ndim).reshape(dims)
    return data.astype(dtype.newbyteorder("="), copy=False)
