"""Layer 1 (durability): the transaction log and checkpoint files.

* the log: :class:`TLog` (append-only, CRC-framed, segmented writer), :func:`read_records` /
  :func:`query_records` (reader with RocksDB-style recovery modes) and the decoded record
  types (:class:`LogRecord` and one class per :class:`Kind`); the byte format is specified in
  ``docs/tlog-format.md``;
* checkpoints: plain orbax arrays plus a JSON manifest (:mod:`mmsb_jax.log._checkpoint`) and
  the directory helpers that find them; CRC-32Cs of arrays, also put together from the
  checksums of their parts (:mod:`mmsb_jax.log._crc`: shards written by several processes).

Pure Python + numpy + ``crc32c`` (orbax for checkpoint arrays): no jax arrays, never
pickles, never trusts a length field beyond the bytes present. May import ``mmsb_jax._errors``.
"""

from ._records import (
    Accumulate as Accumulate,
    AddDep as AddDep,
    AddDeps as AddDeps,
    Derive as Derive,
    Commit as Commit,
    CreatePages as CreatePages,
    DeletePages as DeletePages,
    Dense as Dense,
    LogRecord as LogRecord,
    RemoveDep as RemoveDep,
    RemoveDeps as RemoveDeps,
    Rows as Rows,
    Sparse as Sparse,
    SparseBatch as SparseBatch,
    TreeDef as TreeDef,
    TreeStep as TreeStep,
)
from ._encode import Kind as Kind
from ._report import (
    MODES as MODES,
    LogPosition as LogPosition,
    ReadResult as ReadResult,
    RecoveryReport as RecoveryReport,
    ResumePoint as ResumePoint,
    SkippedRange as SkippedRange,
)
from ._reader import (
    first_logged_epoch as first_logged_epoch,
    list_segments as list_segments,
    query_records as query_records,
    read_records as read_records,
    segment_path as segment_path,
)
from ._checkpoint import read_resume as read_resume
from ._writer import SegmentInfo as SegmentInfo, TLog as TLog, TLogBatch as TLogBatch
