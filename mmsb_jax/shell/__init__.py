"""The imperative shell: :class:`MMSBState` and the seed-compatible functions.

The one place with side effects: it owns the page table, epochs, the transaction log,
checkpoints, the dependency graph of each pool, observers and locks, and replays a state
from its files; a state over several JAX processes agrees on each operation across them
(``_distributed``) and checkpoints with orbax's multi-process save (``_dist_checkpoint``). May import every layer below it (``pages``, ``deltas``, ``log``,
``semirings``, ``graph``, ``adaptive``, ``telemetry``); only ``cli`` and ``_tools`` sit above.
"""

from ._api import (
    add_dependency as add_dependency,
    add_dependencies as add_dependencies,
    batch_route_deltas as batch_route_deltas,
    checkpoint as checkpoint,
    create_page as create_page,
    create_pages as create_pages,
    delete_page as delete_page,
    get_stats as get_stats,
    serve_metrics as serve_metrics,
    query_log as query_log,
    query_page as query_page,
    remove_dependency as remove_dependency,
    remove_dependencies as remove_dependencies,
    derive as derive,
    route_delta as route_delta,
    route_sparse_batch as route_sparse_batch,
    state_digest as state_digest,
    update_page as update_page,
)
from ._distributed import init_distributed as init_distributed
from ._lifecycle import (
    mmsb_open as mmsb_open,
    mmsb_start as mmsb_start,
    mmsb_stop as mmsb_stop,
    replay_to_epoch as replay_to_epoch,
)
from ._history import compact_log as compact_log, diff as diff
from ._layout import optimize_layout as optimize_layout
from ._page import Page as Page
from ._state import MMSBState as MMSBState
from ._tree_api import save_tree as save_tree, tree_ring as tree_ring, tree_steps as tree_steps
from ._tree_history import (
    any_nonfinite as any_nonfinite,
    find_step as find_step,
    load_tree as load_tree,
    tree_diff as tree_diff,
)
