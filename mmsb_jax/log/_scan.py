"""Finding intact records in segment bytes: the record and segment-header checks (CRC, lengths
against the bytes present, reserved bits) and the resync scan for the next intact record."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from .._errors import SerializationError
from ._encode import (
    FLAG_BATCH,
    HEADER_SIZE,
    KINDS,
    MAGIC,
    RECORD_HEADER,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    VERSION,
    BadRecord,
    crc32c,
    pad8,
)

_U32 = struct.Struct("<I")


def _check(buf: bytes, mv: memoryview, off: int, size: int) -> tuple:
    """Validate the record at ``off`` (header + CRC); BadRecord(reason) if it is not intact."""
    left = size - off
    if left < HEADER_SIZE:
        raise BadRecord(f"truncated record header ({left} of {HEADER_SIZE} bytes)")
    length, crc, epoch, ts, kind, flags, sl, res, bl = RECORD_HEADER.unpack_from(buf, off)
    if length < HEADER_SIZE or length & 7:
        raise BadRecord(f"invalid record length {length}")
    if length > left:
        raise BadRecord(f"record length {length} exceeds the {left} bytes left in the file")
    if kind not in KINDS:
        raise BadRecord(f"unknown record kind {kind}")
    if res or flags & ~FLAG_BATCH:
        raise BadRecord("reserved header bits are set")
    if HEADER_SIZE + sl + pad8(sl) + bl + pad8(bl) != length:
        raise BadRecord("record length does not match its source and body lengths")
    if crc32c(mv[off + 8 : off + length]) != crc:
        raise BadRecord("CRC mismatch")
    return length, epoch, ts, kind, flags, sl, bl


def _valid_at(buf, mv, off, size) -> bool:
    try:
        _check(buf, mv, off, size)
        return True
    except BadRecord:
        return False


def _next_valid(buf: bytes, mv: memoryview, start: int, size: int, hint: int | None = None) -> int | None:
    """Offset of the first intact record at an 8-aligned offset >= ``start`` (or None).

    Header plausibility is checked vectorised over every aligned offset; only survivors pay
    for a CRC. ``hint`` (e.g. bad offset + its claimed length) is tried first, so with a hint
    the answer is *an* intact record, not necessarily the first (use it for existence checks).
    """
    if hint is not None and start <= hint and not hint & 7 and _valid_at(buf, mv, hint, size):
        return hint
    a = start + pad8(start)
    chunk = 1 << 20
    while size - a >= HEADER_SIZE:
        n = min((size - a) // 8, chunk + 3)
        w = np.frombuffer(buf, "<u8", n, a)
        length = (w[:-3] & 0xFFFFFFFF).astype(np.int64)
        w3 = w[3:]
        kind = (w3 & 0xFF).astype(np.int64)
        flags = (w3 >> 8) & 0xFF
        sl = ((w3 >> 16) & 0xFF).astype(np.int64)
        res = (w3 >> 24) & 0xFF
        bl = (w3 >> 32).astype(np.int64)
        room = (size - a) - 8 * np.arange(n - 3, dtype=np.int64)
        ok = (
            (length == HEADER_SIZE + ((sl + 7) & -8) + ((bl + 7) & -8))
            & (kind >= 1)
            & (kind <= max(KINDS))
            & (res == 0)
            & ((flags & 0xFE) == 0)
            & (length <= room)
        )
        for i in np.flatnonzero(ok):
            off = a + 8 * int(i)
            if _valid_at(buf, mv, off, size):
                return off
        a += 8 * (n - 3)
    return None


def _check_segment_header(buf: bytes, index: int, path: str) -> int:
    """Validate a segment header; returns its first epoch. BadRecord if damaged."""
    if len(buf) < SEGMENT_HEADER_SIZE:
        raise BadRecord(f"truncated segment header ({len(buf)} of {SEGMENT_HEADER_SIZE} bytes)")
    magic, version, hlen, _flags, sidx, first_epoch, _created, _res = SEGMENT_HEADER.unpack_from(buf, 0)
    if magic != MAGIC:
        raise BadRecord("bad segment magic")
    if crc32c(buf[:44]) != _U32.unpack_from(buf, 44)[0]:
        raise BadRecord("segment header CRC mismatch")
    if version != VERSION:
        raise SerializationError(f"{path}: TLog format version {version} is not supported (this build reads {VERSION})")
    if hlen != SEGMENT_HEADER_SIZE or sidx != index:
        raise BadRecord(f"segment header names index {sidx} / size {hlen}")
    return first_epoch


def _header_first_epoch(path: Path, index: int) -> int | None:
    try:
        with open(path, "rb") as f:
            head = f.read(SEGMENT_HEADER_SIZE)
        return _check_segment_header(head, index, str(path))
    except (BadRecord, OSError):
        return None


def _stamp_of(path: Path, index: int) -> int | None:
    """The ``created_ns`` stamp of an intact segment header (None if unreadable)."""
    try:
        with open(path, "rb") as f:
            head = f.read(SEGMENT_HEADER_SIZE)
        _check_segment_header(head, index, str(path))
    except (BadRecord, OSError):
        return None
    return SEGMENT_HEADER.unpack_from(head, 0)[6]
