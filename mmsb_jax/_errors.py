"""Exception hierarchy: every error mmsb_jax raises on bad input subclasses :class:`MMSBError`.

Each error also subclasses the matching builtin (``KeyError``, ``ValueError``, ``TypeError``),
so code that already catches those keeps working.
"""

from __future__ import annotations


class MMSBError(Exception):
    """Base class of every error raised by mmsb_jax."""


class PageNotFoundError(MMSBError, KeyError):
    """A page id that does not name a live page."""

    def __init__(self, page_id, message: str | None = None):
        self.page_id = page_id
        super().__init__(message or f"page_id={page_id!r} does not name a live page")

    def __str__(self) -> str:  # KeyError quotes its message; we don't want that.
        return str(self.args[0])


class InvalidDeltaError(MMSBError, ValueError):
    """A delta or page write whose shape, dtype, size or indices do not fit the page."""


class InvalidArgumentError(MMSBError, ValueError):
    """Any other argument out of its allowed range (negative size, unknown option, ...)."""


class UnsupportedLocationError(MMSBError, ValueError):
    """A page location other than ``"cpu"`` or ``"gpu"``."""


class GraphCycleError(MMSBError, ValueError):
    """An edge that would close a cycle in the dependency graph.

    Attributes:
      cycle: the node path of the cycle, first node repeated at the end
        (e.g. ``[3, 5, 7, 3]``).
    """

    def __init__(self, cycle, message: str | None = None):
        self.cycle = list(cycle)
        super().__init__(message or f"dependency would create a cycle: {' -> '.join(map(str, self.cycle))}")


class SerializationError(MMSBError):
    """A file that cannot be read or written as an mmsb_jax file."""


class CorruptLogError(SerializationError):
    """A transaction-log record that fails its checks.

    Attributes:
      path: the segment file.
      offset: byte offset of the bad record in that file.
    """

    def __init__(self, path, offset: int, reason: str):
        self.path = str(path)
        self.offset = int(offset)
        self.reason = reason
        super().__init__(f"corrupt log record in {self.path} at byte offset {self.offset}: {reason}")


class ResourceLimitError(MMSBError, MemoryError):
    """A request for more memory than the device holds (pages, page ids), refused before
    anything is allocated; the state is unchanged."""


class StateClosedError(MMSBError, RuntimeError):
    """An operation on a state after :func:`mmsb_stop`."""


class ReadOnlyError(MMSBError, RuntimeError):
    """A write to a read-only snapshot (e.g. from :func:`replay_to_epoch`)."""


class RingOverflowError(MMSBError, RuntimeError):
    """More deltas were appended to a :class:`~mmsb_jax.DeltaRing` than it holds; nothing was applied."""


class DivergenceError(MMSBError, RuntimeError):
    """The processes of a state spread over several JAX processes were asked different things
    (another operation, other arguments, or an operation that ended differently), found before
    the operation was logged or applied; the state refuses every operation after it.

    Attributes:
      operation: the operation (kind and sequence number) where the processes parted.
      processes: per process, what it was asked (or how its previous operation ended).
    """

    def __init__(self, message, operation: str = "", processes=None):
        self.operation = operation
        self.processes = dict(processes or {})
        super().__init__(message)


class PeerLostError(MMSBError, RuntimeError):
    """Another process of a distributed state died, hung, or stopped calling the same
    operations, found within the state's ``peer_timeout``; the state refuses every
    operation after it (``mmsb_stop`` still closes it here).

    Attributes:
      processes: the ids of the processes that did not answer.
      operation: the operation they did not reach.
    """

    def __init__(self, message, processes=(), operation: str = ""):
        self.processes = list(processes)
        self.operation = operation
        super().__init__(message)


class DeriveFunctionError(MMSBError, LookupError):
    """A derived page's function is missing (not given to ``mmsb_open(derive=...)``), or does
    not fit its parents (their number, or the page shape and dtype it must return).

    Attributes:
      name: the name the function is logged under.
    """

    def __init__(self, name: str, message: str):
        self.name = name
        super().__init__(message)


class GPUFallbackWarning(UserWarning):
    """A GPU was asked for but none is usable; pages live on the CPU instead."""


class SemiringLawError(MMSBError, ValueError):
    """A semiring record that breaks a semiring law (see :func:`mmsb_jax.semirings.check_laws`).

    Attributes:
      report: the :class:`~mmsb_jax.semirings.LawReport` naming each failed law and the values
        it failed on (``None`` when raised without one).
    """

    def __init__(self, message, report=None):
        self.report = report
        super().__init__(message)


# Public classes print as ``mmsb_jax.InvalidDeltaError`` (tracebacks, reprs, doctests), not by
# the private module that defines them.
for _cls in list(globals().values()):
    if isinstance(_cls, type) and issubclass(_cls, (MMSBError, Warning)) and _cls.__module__ == __name__:
        _cls.__module__ = "mmsb_jax"
del _cls
