"""What a read of the log returns and reports: positions, skipped ranges, the recovery report,
the recovery modes' names."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from .._errors import InvalidArgumentError
from ._records import LogRecord

MODES = ("torn_tail", "absolute", "point_in_time", "skip_corrupt")
_MODE_ALIASES = {
    "torn_tail": "torn_tail",
    "tolerate_corrupted_tail_records": "torn_tail",
    "absolute": "absolute",
    "absolute_consistency": "absolute",
    "point_in_time": "point_in_time",
    "skip_corrupt": "skip_corrupt",
    "skip_any_corrupted_records": "skip_corrupt",
}


class LogPosition(NamedTuple):
    """A byte position in the log: segment index and offset in that segment file."""

    segment: int
    offset: int


class ResumePoint(NamedTuple):
    """A record boundary a writer reported (:meth:`TLog.resume_point`): segment index, offset,
    the ``created_ns`` stamp of that segment's header (which names the segment file), and the
    length and header CRC of the record that ends at the boundary (``0, 0`` when the boundary
    is the end of the segment header). A read given it starts there only if the stamp matches
    and that very record ends there; it then reads what follows."""

    segment: int
    offset: int
    created_ns: int
    prev_length: int
    prev_crc: int


@dataclasses.dataclass
class SkippedRange:
    """Bytes ``[start, end)`` of segment file ``path`` that were not returned, and why."""

    path: str
    start: int
    end: int
    reason: str


@dataclasses.dataclass
class RecoveryReport:
    """What a read found besides the records.

    ``torn_tail``: the dropped incomplete tail (``torn_tail`` mode); ``stopped_at``: where a
    ``point_in_time`` read stopped; ``skipped``: regions ``skip_corrupt`` jumped over (also
    missing segments, with ``start == end == 0``); ``end``: position just after the last
    valid committed record read (where a writer continues); ``kind_counts``: committed
    records seen per kind (int kind -> count), including ones filtered out by epoch (from
    where the read started: a read from a resume point counts what follows the point);
    ``skipped_checkpoints``: ``(directory, reason)`` of checkpoints a state's replay could not
    use (damaged, or not continued by the log), newest first.
    """

    mode: str
    segments: list[str] = dataclasses.field(default_factory=list)
    skipped: list[SkippedRange] = dataclasses.field(default_factory=list)
    torn_tail: SkippedRange | None = None
    stopped_at: SkippedRange | None = None
    end: LogPosition | None = None
    last_epoch: int | None = None
    kind_counts: dict[int, int] = dataclasses.field(default_factory=dict)
    skipped_checkpoints: list[tuple[str, str]] = dataclasses.field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.skipped and self.torn_tail is None and self.stopped_at is None and not self.skipped_checkpoints


@dataclasses.dataclass
class ReadResult:
    """Records (in log order) plus the :class:`RecoveryReport`; iterates over the records."""

    records: list[LogRecord]
    report: RecoveryReport

    def __iter__(self):
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def _mode(mode: str) -> str:
    try:
        return _MODE_ALIASES[mode]
    except (KeyError, TypeError):
        raise InvalidArgumentError(f"mode={mode!r}; expected one of {MODES}") from None
