"""CRC-32C of arrays, and of an array from the CRCs of its parts.

A checkpoint's manifest holds one CRC-32C per array. A pool spread over the devices of several
processes has no process holding all of it, so each process checksums the rows of its own
shards and the whole array's CRC is put together from the parts: CRC-32C is linear over
GF(2), so ``crc(a + b)`` follows from ``crc(a)``, ``crc(b)`` and ``len(b)`` (zlib's
``crc32_combine``, here for the Castagnoli polynomial). The result is the very checksum a
single process computes over the whole array.
"""

from __future__ import annotations

import crc32c
import numpy as np

_POLY = 0x82F63B78  # CRC-32C (Castagnoli), reflected


def array_crc(arr) -> int:
    """CRC-32C of an array's bytes (C order)."""
    return crc32c.crc32c(np.ascontiguousarray(arr).view(np.uint8).reshape(-1))


def crc_hex(crc: int) -> str:
    return f"{crc:08x}"


def _times(matrix: list[int], vector: int) -> int:
    out, i = 0, 0
    while vector:
        if vector & 1:
            out ^= matrix[i]
        vector >>= 1
        i += 1
    return out


def _square(matrix: list[int]) -> list[int]:
    return [_times(matrix, matrix[n]) for n in range(32)]


def crc32c_combine(crc1: int, crc2: int, len2: int) -> int:
    """The CRC-32C of ``a + b`` from ``crc1 = crc(a)``, ``crc2 = crc(b)`` and ``len2 = len(b)``.

    Example:
      >>> import crc32c
      >>> a, b = b"multi", b"host"
      >>> crc32c_combine(crc32c.crc32c(a), crc32c.crc32c(b), len(b)) == crc32c.crc32c(a + b)
      True
    """
    op = [_POLY] + [1 << n for n in range(31)]  # appending one zero bit, as a GF(2) matrix
    for _ in range(3):
        op = _square(op)  # ... one zero byte
    while len2 > 0:  # append len2 zero bytes to crc1: the operator squared bit by bit of len2
        if len2 & 1:
            crc1 = _times(op, crc1)
        len2 >>= 1
        if len2:
            op = _square(op)
    return crc1 ^ crc2


def combine_parts(parts) -> int:
    """The CRC-32C of consecutive byte ranges from ``[(start, length, crc), ...]`` (any order;
    the ranges must tile ``[0, total)``).

    Raises:
      ValueError: the ranges leave a gap or overlap.
    """
    crc, at = 0, 0
    for start, length, part in sorted(parts):
        if start != at:
            raise ValueError(f"the checksummed ranges are not contiguous at byte {at} (next starts at {start})")
        crc = crc32c_combine(crc, part, length)
        at += length
    return crc
