"""mmsb_jax: a deterministic, delta-driven, replayable state store for JAX."""

from . import semirings as semirings
from ._deltas import (
    AccumulateDelta as AccumulateDelta,
    Delta as Delta,
    DenseDelta as DenseDelta,
    SparseDelta as SparseDelta,
    accumulate_delta as accumulate_delta,
    apply_delta as apply_delta,
    dense_delta as dense_delta,
    diff_delta as diff_delta,
    merge_deltas as merge_deltas,
    sparse_delta as sparse_delta,
)
from ._errors import (
    CorruptLogError as CorruptLogError,
    GraphCycleError as GraphCycleError,
    InvalidArgumentError as InvalidArgumentError,
    InvalidDeltaError as InvalidDeltaError,
    MMSBError as MMSBError,
    PageNotFoundError as PageNotFoundError,
    ReadOnlyError as ReadOnlyError,
    SerializationError as SerializationError,
    StateClosedError as StateClosedError,
    UnsupportedLocationError as UnsupportedLocationError,
)

__version__ = "0.1.0"
