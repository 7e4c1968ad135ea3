"""When to take a checkpoint: keep the replay tail (what a reopen or ``replay_to_epoch`` of the
newest epochs replays after the newest checkpoint) under a bound.

Cost model of replaying a tail of ``records`` log records holding ``nbytes`` bytes::

    replay_seconds ~= records * seconds_per_record + nbytes * seconds_per_byte

The defaults were measured on the 2-core development machine (``benchmarks/bench_replay.py``:
a tail of 1% of 10k pages per step, 100 sparse deltas per record, replays at about 0.3 ms per
record; bulk sparse records at about 50 MB/s including last-writer resolution); give your own
in :class:`CheckpointPolicy` for another machine. A checkpoint is due when the estimate
passes ``max_replay_seconds`` or the tail passes ``max_tail_bytes`` (either may be ``None``),
but never twice within ``min_records`` records (so a burst of large records does not write a
checkpoint per record). The decision is a pure function of the counts: the same operations
take the same checkpoints, which are placement, not state (a checkpoint never changes what a
reader sees; logs and digests are the same with or without the policy).

Example:
  >>> from mmsb_jax.adaptive import CheckpointPolicy
  >>> policy = CheckpointPolicy(max_replay_seconds=0.02)
  >>> policy.due(records=10, nbytes=10_000)
  (False, '')
  >>> policy.due(records=100, nbytes=10_000)[0]
  True
"""

from __future__ import annotations

import dataclasses
import math

from .._errors import InvalidArgumentError


@dataclasses.dataclass(frozen=True)
class CheckpointPolicy:
    """Take a background checkpoint when the estimated replay of the log tail passes a bound.

    Attributes:
      max_replay_seconds: bound on the estimated replay time of the tail (``None``: no bound).
      max_tail_bytes: bound on the tail's log bytes (``None``: no bound).
      min_records: at least this many records between two policy checkpoints.
      seconds_per_record, seconds_per_byte: the cost model (see the module docstring).
      enabled: ``False`` switches the policy off (nothing is ever taken).
    """

    max_replay_seconds: float | None = 0.05
    max_tail_bytes: int | None = 256 << 20
    min_records: int = 16
    seconds_per_record: float = 3e-4
    seconds_per_byte: float = 1 / 50e6
    enabled: bool = True

    def __post_init__(self):
        for name in ("max_replay_seconds", "max_tail_bytes"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0
                                  or not math.isfinite(v)):
                raise InvalidArgumentError(f"{name}={v!r} must be a positive number or None")
        v = self.max_tail_bytes
        if v is not None and (type(v) is not int or v >= 2**63):
            raise InvalidArgumentError(f"max_tail_bytes={v!r} must be a whole number of bytes (an int below 2**63) or None")
        for name in ("seconds_per_record", "seconds_per_byte"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0 or not math.isfinite(v):
                raise InvalidArgumentError(f"{name}={v!r} must be a non-negative number")
        if isinstance(self.min_records, bool) or not isinstance(self.min_records, int) or self.min_records < 1:
            raise InvalidArgumentError(f"min_records={self.min_records!r} must be an int >= 1")
        if not isinstance(self.enabled, bool):
            raise InvalidArgumentError(f"enabled={self.enabled!r} must be a bool")

    def estimate(self, records: int, nbytes: int) -> float:
        """Estimated seconds to replay a tail of ``records`` records and ``nbytes`` bytes."""
        return records * self.seconds_per_record + nbytes * self.seconds_per_byte

    def due(self, records: int, nbytes: int) -> tuple[bool, str]:
        """Whether a tail of ``records`` / ``nbytes`` calls for a checkpoint, and why."""
        if not self.enabled or records < self.min_records:
            return False, ""
        if self.max_tail_bytes is not None and nbytes > self.max_tail_bytes:
            return True, f"tail of {nbytes} bytes > max_tail_bytes={self.max_tail_bytes}"
        if self.max_replay_seconds is not None:
            est = self.estimate(records, nbytes)
            if est > self.max_replay_seconds:
                return True, (f"estimated replay {est * 1e3:.1f} ms of {records} records / {nbytes} bytes "
                              f"> max_replay_seconds={self.max_replay_seconds}")
        return False, ""


def checkpoint_policy(value) -> CheckpointPolicy | None:
    """``mmsb_start(checkpoint_policy=...)``: ``None`` / ``False`` (off), ``True`` / ``"auto"``
    (the defaults), or a :class:`CheckpointPolicy`."""
    if value is None or value is False:
        return None
    if value is True or value == "auto":
        return CheckpointPolicy()
    if isinstance(value, CheckpointPolicy):
        return value if value.enabled else None
    raise InvalidArgumentError(
        f"checkpoint_policy={value!r}: expected None or False (off), 'auto' or True (the defaults), or a CheckpointPolicy")
