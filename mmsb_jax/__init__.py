"""mmsb_jax: a deterministic, delta-driven, replayable state store for JAX."""

from . import semirings as semirings
from .deltas import (
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
    DeriveFunctionError as DeriveFunctionError,
    DivergenceError as DivergenceError,
    GPUFallbackWarning as GPUFallbackWarning,
    GraphCycleError as GraphCycleError,
    InvalidArgumentError as InvalidArgumentError,
    InvalidDeltaError as InvalidDeltaError,
    MMSBError as MMSBError,
    PageNotFoundError as PageNotFoundError,
    PeerLostError as PeerLostError,
    RingOverflowError as RingOverflowError,
    ReadOnlyError as ReadOnlyError,
    ResourceLimitError as ResourceLimitError,
    SemiringLawError as SemiringLawError,
    SerializationError as SerializationError,
    StateClosedError as StateClosedError,
    UnsupportedLocationError as UnsupportedLocationError,
)

from . import adaptive as adaptive
from .adaptive import CheckpointPolicy as CheckpointPolicy
from . import telemetry as telemetry
from . import graph as graph
from . import log as log
from .shell import (
    MMSBState as MMSBState,
    Page as Page,
    add_dependency as add_dependency,
    add_dependencies as add_dependencies,
    batch_route_deltas as batch_route_deltas,
    checkpoint as checkpoint,
    compact_log as compact_log,
    create_page as create_page,
    create_pages as create_pages,
    delete_page as delete_page,
    diff as diff,
    get_stats as get_stats,
    serve_metrics as serve_metrics,
    init_distributed as init_distributed,
    mmsb_open as mmsb_open,
    mmsb_start as mmsb_start,
    mmsb_stop as mmsb_stop,
    optimize_layout as optimize_layout,
    query_log as query_log,
    query_page as query_page,
    remove_dependency as remove_dependency,
    remove_dependencies as remove_dependencies,
    derive as derive,
    replay_to_epoch as replay_to_epoch,
    route_delta as route_delta,
    route_sparse_batch as route_sparse_batch,
    state_digest as state_digest,
    update_page as update_page,
    save_tree as save_tree,
    load_tree as load_tree,
    tree_steps as tree_steps,
    tree_ring as tree_ring,
    tree_diff as tree_diff,
    find_step as find_step,
)
from ._tools import inspect_state as inspect_state, verify_state as verify_state
from .deltas import (
    DeltaRing as DeltaRing,
    TreeRing as TreeRing,
    delta_ring as delta_ring,
    record_tree as record_tree,
    ring_append as ring_append,
)
from .deltas import route_pool as route_pool, route_sparse as route_sparse

__version__ = "0.1.0"

_ORBAX = ("MMSBCheckpointHandler", "MMSBRestore", "MMSBSave")


def __getattr__(name: str):
    """The orbax handler and its args (``MMSBSave`` / ``MMSBRestore``), imported on first use."""
    if name in _ORBAX:
        from .shell import _orbax

        return getattr(_orbax, name)
    raise AttributeError(f"module 'mmsb_jax' has no attribute {name!r}")
