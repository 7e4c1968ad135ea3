"""Framing a record: header (length, CRC-32C, epoch, timestamp, kind, flags), padded source
tag and body parts, as one buffer or as chunks written one after another; and a segment's
header. The byte layout is specified in ``docs/tlog-format.md``."""

from __future__ import annotations

from crc32c import crc32c

from .._errors import InvalidArgumentError
from ._encode import (
    HEADER_SIZE,
    MAGIC,
    MAX_RECORD_BYTES,
    RECORD_HEADER,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    VERSION,
    _U32,
    _ZEROS,
    pad8,
)

_SOURCE_CACHE: dict[str, tuple[bytes, int]] = {}


def source_bytes(source: str) -> tuple[bytes, int]:
    """The zero-padded utf-8 bytes of a source tag (<= 255 bytes) and its unpadded length."""
    b = _SOURCE_CACHE.get(source)
    if b is None:
        if not isinstance(source, str):
            raise InvalidArgumentError(f"source={source!r} must be a str")
        raw = source.encode("utf-8")
        if len(raw) > 255:
            raise InvalidArgumentError(f"source tag is {len(raw)} bytes; at most 255")
        b = (raw + _ZEROS[: pad8(len(raw))], len(raw))
        if len(_SOURCE_CACHE) < 1024:
            _SOURCE_CACHE[source] = b
    return b


def frame(epoch: int, kind: int, flags: int, timestamp: int, source: str, parts: list) -> bytearray:
    """One complete record: header (with CRC) + padded source + body parts."""
    src, src_len = source_bytes(source)
    body_len = 0
    for p in parts:
        body_len += len(p)
    length = HEADER_SIZE + len(src) + body_len  # parts are padded to 8 already
    if length > MAX_RECORD_BYTES:
        raise InvalidArgumentError(f"record of {length} bytes exceeds the 4 GiB record limit")
    rec = bytearray(b"").join(
        [RECORD_HEADER.pack(length, 0, epoch, timestamp, kind, flags, src_len, 0, body_len), src, *parts]
    )
    _U32.pack_into(rec, 4, crc32c(memoryview(rec)[8:]))
    return rec


_JOIN_LIMIT = 1 << 16  # records up to this size are joined into one buffer


def frame_chunks(epoch: int, kind: int, flags: int, timestamp: int, source: str, parts: list) -> tuple[list, int]:
    """:func:`frame` as ``(chunks, nbytes)`` to write one after another: one joined buffer for
    a small record; for a large one, the header and the body parts themselves (no copy of the
    payload; the CRC runs over them in order). The bytes are the same either way. The caller
    must not change the parts until they are written."""
    src, src_len = source_bytes(source)
    body_len = 0
    for p in parts:
        body_len += len(p)
    length = HEADER_SIZE + len(src) + body_len
    if length <= _JOIN_LIMIT:
        return [frame(epoch, kind, flags, timestamp, source, parts)], length
    if length > MAX_RECORD_BYTES:
        raise InvalidArgumentError(f"record of {length} bytes exceeds the 4 GiB record limit")
    head = bytearray(RECORD_HEADER.pack(length, 0, epoch, timestamp, kind, flags, src_len, 0, body_len) + src)
    crc = crc32c(memoryview(head)[8:])
    for p in parts:
        crc = crc32c(p, crc)
    _U32.pack_into(head, 4, crc)
    return [head, *parts], length


def segment_header(index: int, first_epoch: int, created_ns: int) -> bytes:
    head = SEGMENT_HEADER.pack(MAGIC, VERSION, SEGMENT_HEADER_SIZE, 0, index, first_epoch, created_ns, 0)
    return head + _U32.pack(crc32c(head))
