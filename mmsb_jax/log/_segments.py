"""Segment files of the log: what a header walk (no CRC) says about one, and the marker
that rotates the writer to a new one."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ._encode import HEADER_SIZE, RECORD_HEADER, SEGMENT_HEADER_SIZE, BadRecord
from ._scan import _check_segment_header


@dataclasses.dataclass
class SegmentInfo:
    """One segment file. ``last_epoch``/``records`` come from a header walk (no CRC)."""

    index: int
    path: Path
    first_epoch: int | None
    last_epoch: int | None
    bytes: int
    records: int
    kind_counts: dict[int, int]
    complete: bool  # the header walk reached the end of the file exactly


def walk_segment(index: int, path: Path) -> SegmentInfo:
    with open(path, "rb") as f:
        buf = f.read()
    size = len(buf)
    first = None
    try:
        first = _check_segment_header(buf, index, str(path))
    except BadRecord:
        return SegmentInfo(index, path, None, None, size, 0, {}, False)
    off, last, counts = SEGMENT_HEADER_SIZE, None, {}
    while size - off >= HEADER_SIZE:
        length, _crc, epoch, _ts, kind = RECORD_HEADER.unpack_from(buf, off)[:5]
        if length < HEADER_SIZE or length & 7 or length > size - off:
            break
        counts[kind] = counts.get(kind, 0) + 1
        last = epoch
        off += length
    return SegmentInfo(index, path, first, last, size, sum(counts.values()), counts, off == size)


class Rotate:
    """Buffer marker: close the current segment file and create ``path``."""

    __slots__ = ("path",)

    def __init__(self, path: Path):
        self.path = path
