"""The seed-compatible functions over :class:`MMSBState` (the original ``mmsb_*`` API).

Each takes the state first. Most forward to the :class:`MMSBState` method of the same name;
:func:`query_log` also takes a path, :func:`state_digest` calls ``state.digest()`` and
:func:`get_stats` ``state.stats()``. The lifecycle functions (:func:`mmsb_start`,
:func:`mmsb_stop`, :func:`mmsb_open`, :func:`replay_to_epoch`) are in :mod:`._lifecycle`.
"""

from __future__ import annotations

import os

import jax.numpy as jnp
import numpy as np

from .._errors import InvalidArgumentError
from ..log import query_records
from ..log._directory import (
    require_state,
)
from . import _inputs
from ._distributed import collective
from ._inputs import page_id as _page_id
from ._page import Page
from ._state import MMSBState
from ..telemetry import registry_for, serve_registry


@collective("query_log")
def query_log(state, page_id=None, epochs=None, source=None, kinds=None) -> list:
    """Log records (decoded, arrays copied) matching every given filter, in log order.

    ``page_id``: records touching the page; ``epochs=(a, b)``: inclusive range; ``source``:
    the records' source tag; ``kinds``: e.g. ``"SPARSE"`` or ``["DENSE", "SPARSE_BATCH"]``.
    Each record has ``epoch``, ``kind``, ``timestamp`` (ns since the Unix epoch), ``source``.
    ``state`` is a state or the path of one.
    """
    if page_id is not None:
        page_id = _page_id(page_id)  # a Page handle or an int id, as everywhere else
    if isinstance(state, MMSBState):
        state._flush_log()
        path = state.path
    else:
        path = _inputs.path(state, "state")
        require_state(path)
    return query_records(os.path.join(path, "log"), page_id=page_id, epochs=epochs, source=source, kinds=kinds)


def create_page(state: MMSBState, size=None, dtype=jnp.uint8, location: str = "cpu", *, shape=None,
                fill=None) -> Page:
    """Create one page in a new epoch, zero-filled (or every element ``fill``).

    Args:
      size: number of elements of a 1-D page (or give ``shape=``).
      dtype: page dtype (bool, integer or float).
      location: ``"cpu"`` or ``"gpu"`` (falls back to the CPU, with a warning, without one).
      shape: the page shape, for pages of more than one dimension.
      fill: ``None`` (zeros), a value of the page's dtype, or ``"zero"`` / ``"one"``: the
        state's semiring's zero / one for the dtype. A page made with ``fill="zero"`` and given
        dependencies is a passthrough of its parents under any semiring (under tropical, numeric
        0 is the semiring's *one*: ``min(0, parent)`` would hide a positive parent).

    Returns:
      a :class:`Page` handle; ``page.id`` names the page.

    Raises:
      InvalidArgumentError: missing, negative or zero size, bad shape or dtype.
      UnsupportedLocationError: ``location`` not ``"cpu"`` / ``"gpu"``.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> mmsb.create_page(state, shape=(2, 3), dtype=jnp.float32)
      Page(id=0, shape=(2, 3), dtype=float32, location='cpu')
      >>> mmsb.mmsb_stop(state)
      >>> state = mmsb.mmsb_start(semiring="tropical")
      >>> child = mmsb.create_page(state, size=2, dtype=jnp.int32, fill="zero")
      >>> mmsb.query_page(state, child.id).tolist()   # int32's tropical zero: its largest value
      [2147483647, 2147483647]
      >>> mmsb.mmsb_stop(state)
    """
    return state.create_page(size, dtype, location, shape=shape, fill=fill)


def create_pages(state: MMSBState, n: int, size=None, dtype=jnp.uint8, location: str = "cpu", *, shape=None,
                 fill=None) -> np.ndarray:
    """Create ``n`` pages of one spec in a single epoch; returns their ids. ``fill`` as for
    :func:`create_page` (default: zeros).

    Example:
      >>> import mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> mmsb.create_pages(state, 3, size=16).tolist()
      [0, 1, 2]
      >>> mmsb.mmsb_stop(state)
    """
    return state.create_pages(n, size, dtype, location, shape=shape, fill=fill)


def update_page(state: MMSBState, page_id, data) -> int | None:
    """Replace a page's whole content: diff -> dense delta -> log -> propagate.

    Returns the new epoch, or ``None`` when ``data`` equals the page bit for bit (a no-op:
    no epoch, nothing logged).

    ``data`` is an array of the page's shape and dtype (arrays are never cast), or plain Python
    data (a list, nested lists), which takes the page's dtype when every value fits it: a float
    rounds, but an integer that wraps around, a fraction on an integer page or a float that
    overflows to infinity is refused.

    On a page with dependencies this writes its *base* (``b`` in ``b ⊕ ⨁ w ⊗ x``): what
    :func:`query_page` reads is the propagated value; on a derived page (:func:`derive`) the
    base is kept under the function, which alone decides what the page reads.

    Raises:
      PageNotFoundError: unknown page id.
      InvalidDeltaError: ``data`` has another shape or dtype than the page, or holds a value
        the page's dtype cannot represent.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> page = mmsb.create_page(state, size=3, dtype=jnp.uint8)
      >>> mmsb.update_page(state, page.id, [1, 2, 255])
      2
      >>> mmsb.update_page(state, page.id, [1, 2, 255]) is None  # same content: no epoch
      True
      >>> mmsb.update_page(state, page.id, [1, 2, 256])
      Traceback (most recent call last):
      ...
      mmsb_jax.InvalidDeltaError: data for page 0 holds 256, which dtype uint8 cannot represent
      >>> mmsb.mmsb_stop(state)
    """
    return state.update_page(page_id, data)


def route_delta(state: MMSBState, page_id, delta) -> int | None:
    """Apply any :class:`Delta` to a page in a new epoch (apply, log, propagate); returns the epoch.

    A delta that touches no element (a sparse delta without indices, a dense delta whose mask
    is all false) changes nothing: it takes no epoch, is not logged, and returns ``None``
    (as :func:`update_page` does for identical content).

    Raises:
      PageNotFoundError: unknown page id.
      InvalidDeltaError: the delta's shape, dtype or indices do not fit the page.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> p = mmsb.create_page(state, size=3, dtype=jnp.float32)
      >>> mmsb.route_delta(state, p.id, mmsb.sparse_delta([1], jnp.array([4.0]), 3))
      2
      >>> mmsb.route_delta(state, p.id, mmsb.sparse_delta([], jnp.zeros(0, jnp.float32), 3)) is None
      True
      >>> mmsb.mmsb_stop(state)
    """
    return state.route_delta(page_id, delta)


def batch_route_deltas(state: MMSBState, entries) -> int | None:
    """Route ``[(page_id, delta), ...]`` atomically in one epoch, with one propagation.

    The result equals routing the same deltas one by one, in order, also when a page repeats
    (repeated sparse targets: the later entry wins, resolved before the scatter). If any entry
    is invalid nothing is applied and no epoch is used. Entries whose delta touches no element
    are skipped, as :func:`route_delta` skips them. Returns the epoch, or ``None`` when nothing
    is left to write.

    Raises:
      PageNotFoundError / InvalidDeltaError: naming the offending entry's position and page id.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> p = mmsb.create_page(state, size=4, dtype=jnp.float32)
      >>> d1 = mmsb.sparse_delta([0], jnp.array([1.0]), 4)
      >>> d2 = mmsb.sparse_delta([0, 3], jnp.array([2.0, 5.0]), 4)
      >>> mmsb.batch_route_deltas(state, [(p.id, d1), (p.id, d2)])
      2
      >>> mmsb.query_page(state, p.id).tolist()
      [2.0, 0.0, 0.0, 5.0]
      >>> mmsb.mmsb_stop(state)
    """
    return state.batch_route_deltas(entries)


def route_sparse_batch(state: MMSBState, page_ids, indices, values) -> int | None:
    """Route ``n`` sparse deltas given as arrays, in one epoch: the vectorized router.

    ``page[page_ids[i]].flat[indices[i, j]] = values[i, j]``, last writer wins in batch order.
    No per-delta Python objects: this is the path for millions of deltas per second. Returns
    the epoch, or ``None`` when there is nothing to write (``n == 0`` or ``k == 0``).

    Args:
      page_ids: int ``(n,)``.
      indices: int ``(n, k)`` flat indices into each page.
      values: ``(n, k)`` of the pages' dtype.

    Raises:
      PageNotFoundError / InvalidDeltaError: naming the offending entry; nothing is applied.

    Example:
      >>> import numpy as np, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> ids = mmsb.create_pages(state, 2, size=4, dtype=np.uint8)
      >>> mmsb.route_sparse_batch(state, ids, np.array([[0, 1], [2, 3]]), np.full((2, 2), 7, np.uint8))
      2
      >>> mmsb.query_page(state, int(ids[1])).tolist()
      [0, 0, 7, 7]
      >>> mmsb.mmsb_stop(state)
    """
    return state.route_sparse_batch(page_ids, indices, values)


def query_page(state, page_id):
    """The value a reader sees for a page (after propagation), as a ``jax.Array``.

    Raises:
      PageNotFoundError: unknown page id.
    """
    return state.query_page(page_id)


def delete_page(state: MMSBState, page_id) -> None:
    """Delete a page in a new epoch; its slot is zeroed and later reused.

    Its dependency edges go with it: children it fed read on without its contribution (a
    parent of a derived page cannot be deleted while the child is derived from it).

    Raises:
      PageNotFoundError: unknown page id.
      InvalidArgumentError: the page is a parent of a derived page.
    """
    state.delete_page(page_id)


def add_dependency(state: MMSBState, parent_id, child_id, weight=None, edge_type: str = "data") -> int:
    """Make ``child_id`` depend on ``parent_id`` in a new epoch; returns the epoch.

    The child's visible value becomes ``b[child] ⊕ ⨁ (w ⊗ x[parent])`` under the state's
    semiring (``weight=None``: the semiring's one). Adding an existing edge replaces its weight.
    Non-``"data"`` edge types (``"control"``, ``"gpu_sync"``, ``"compiler"``) only order pages.

    New pages hold numeric zeros. Under the real, boolean and max-times semirings that is the
    semiring's zero, so a child with one parent of weight one reads its parent's value (a
    passthrough copy), on every dtype (a uint8 child of uint8 parents sums them modulo 256).
    Under tropical (zero ``+inf``), max-plus and log (``-inf``) it is not: ``0`` is tropical's
    *one*, and ``min(0, parent)`` hides a positive parent. For a passthrough there, create the
    child with ``fill="zero"`` (:func:`create_page`), as the second example shows.

    The edit is logged at once; the child's value is recomputed (through the new edge's cone
    under min/max/or semirings) when it is next read or written, so many edits in a row cost
    one propagation. Many edges at once: :func:`add_dependencies`.

    Raises:
      PageNotFoundError: an unknown page.
      GraphCycleError: the edge would close a cycle (``.cycle`` names the page path); nothing
        changes.
      InvalidArgumentError: pages of different shape/dtype/location, a dtype the semiring
        cannot carry, or a bad weight (not one real number, NaN, or not fitting the pages:
        integral and in the dtype's range on integer pages, finite on float pages).

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start(semiring="real")
      >>> a, b, c = (mmsb.create_page(state, size=2, dtype=jnp.float32) for _ in range(3))
      >>> _ = mmsb.add_dependency(state, a.id, c.id)
      >>> _ = mmsb.add_dependency(state, b.id, c.id, weight=2.0)
      >>> _ = mmsb.update_page(state, a.id, jnp.ones(2, jnp.float32))
      >>> _ = mmsb.update_page(state, b.id, jnp.full(2, 3.0, jnp.float32))
      >>> mmsb.query_page(state, c.id).tolist()
      [7.0, 7.0]
      >>> mmsb.mmsb_stop(state)

      Under tropical, a passthrough child starts at the semiring's zero:

      >>> state = mmsb.mmsb_start(semiring="tropical")
      >>> parent = mmsb.create_page(state, size=2, dtype=jnp.float32)
      >>> child = mmsb.create_page(state, size=2, dtype=jnp.float32, fill="zero")
      >>> _ = mmsb.update_page(state, parent.id, jnp.array([5.0, 6.0]))
      >>> _ = mmsb.add_dependency(state, parent.id, child.id)
      >>> mmsb.query_page(state, child.id).tolist()
      [5.0, 6.0]
      >>> mmsb.mmsb_stop(state)
    """
    return state.add_dependency(parent_id, child_id, weight=weight, edge_type=edge_type)


def remove_dependency(state: MMSBState, parent_id, child_id) -> int:
    """Remove the dependency ``parent_id -> child_id`` in a new epoch; returns the epoch.

    Raises:
      InvalidArgumentError: there is no such dependency.
    """
    return state.remove_dependency(parent_id, child_id)


def add_dependencies(state: MMSBState, parents, children, weights=None, edge_type: str = "data") -> int | None:
    """Add the dependencies ``parents[i] -> children[i]`` in ONE epoch (one log record).

    Atomic: every page, pool, dtype and weight is checked, and the whole batch is checked for
    cycles (one O(V + E) pass per pool), before anything changes; a refused batch leaves the
    state exactly as it was. A pair already present, or repeated in the batch, is re-weighted
    (the last weight wins), as by repeated :func:`add_dependency`. Cheaper than a loop of
    :func:`add_dependency`: one check, one record, one recompile of the pool's graph.

    Args:
      parents, children: equal-length sequences (or 1-D int arrays) of page ids.
      weights: ``None`` (the semiring's one for every edge), one number for all, or one per
        edge (``None`` entries: the semiring's one).
      edge_type: one type for the batch (``"data"``, ``"control"``, ``"gpu_sync"``, ``"compiler"``).

    Returns:
      the epoch, or ``None`` for an empty batch (checked, nothing logged).

    Raises:
      GraphCycleError: the batch closes a cycle (``.cycle`` names its pages); nothing changes.
      PageNotFoundError: an unknown page (``parents[i]`` / ``children[i]`` named).
      InvalidArgumentError: pages of two pools, a dtype the semiring cannot carry, bad weights
        (a NaN, the wrong count), a derived child.

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start(semiring="real")
      >>> ids = mmsb.create_pages(state, 4, size=2, dtype=jnp.float32)
      >>> _ = mmsb.update_page(state, ids[0], jnp.ones(2, jnp.float32))
      >>> epoch = mmsb.add_dependencies(state, [ids[0], ids[1], ids[2]], [ids[1], ids[2], ids[3]],
      ...                               weights=[2.0, None, 3.0])
      >>> mmsb.query_page(state, ids[3]).tolist()
      [6.0, 6.0]
      >>> try:
      ...     mmsb.add_dependencies(state, [ids[3]], [ids[0]])
      ... except mmsb.GraphCycleError as e:
      ...     print(e.cycle)
      [0, 1, 2, 3, 0]
      >>> mmsb.mmsb_stop(state)
    """
    return state.add_dependencies(parents, children, weights=weights, edge_type=edge_type)


def remove_dependencies(state: MMSBState, parents, children) -> int | None:
    """Remove the dependencies ``parents[i] -> children[i]`` in one epoch; all or nothing.

    Returns the epoch (``None`` for an empty batch).

    Raises:
      InvalidArgumentError: one of them is not a dependency (or is named twice); nothing is removed.
      PageNotFoundError: an unknown page.
    """
    return state.remove_dependencies(parents, children)


def derive(state: MMSBState, child_id, fn, parent_ids, *, name: str) -> int:
    """Make ``child_id`` a page computed by ``fn`` from its parents, in a new epoch.

    ``query_page(child)`` reads ``fn(*parent_values)`` (the parents' propagated values),
    recomputed inside the state's compiled propagation when a parent changes and skipped
    when none did. ``fn`` must be a pure, jittable, ``vmap``-able function of
    ``len(parent_ids)`` pages returning one page of the same shape and dtype (propagation
    applies it to a level's derived pages at once with ``jax.vmap``; both are checked with
    ``jax.eval_shape`` now: a ``jax.pure_callback`` needs a ``vmap_method``).
    A function cannot be logged, so it is logged by ``name``: reopening the state needs
    ``mmsb_open(path, derive={name: fn})`` (and ``replay_to_epoch(path, e, derive=...)``);
    a missing or non-fitting function raises :class:`DeriveFunctionError` naming it, never
    a stale page. Calling ``derive`` again on the child replaces its function and parents.
    The child's own data is kept under it and not visible while it is derived.

    Raises:
      DeriveFunctionError: ``fn`` does not take the parents or returns another shape/dtype.
      GraphCycleError: a parent depends on the child; nothing changes.
      InvalidArgumentError: the child has data dependencies, pages of two pools, a bad or
        reused name (a name logs one function).

    Example:
      >>> import tempfile, jax.numpy as jnp, mmsb_jax as mmsb
      >>> path = tempfile.mkdtemp() + "/s"
      >>> state = mmsb.mmsb_start(path)
      >>> a, b, c = mmsb.create_pages(state, 3, size=2, dtype=jnp.float32)
      >>> mul = lambda x, y: x * y
      >>> _ = mmsb.derive(state, c, mul, [a, b], name="mul")
      >>> _ = mmsb.update_page(state, a, jnp.array([2.0, 3.0]))
      >>> _ = mmsb.update_page(state, b, jnp.array([4.0, 5.0]))
      >>> mmsb.query_page(state, c).tolist()
      [8.0, 15.0]
      >>> mmsb.mmsb_stop(state)
      >>> state = mmsb.mmsb_open(path, derive={"mul": mul})
      >>> mmsb.query_page(state, c).tolist()
      [8.0, 15.0]
      >>> mmsb.mmsb_stop(state)
    """
    return state.derive(child_id, fn, parent_ids, name=name)


def checkpoint(state: MMSBState, directory=None, *, block: bool = True):
    """Write a checkpoint of the state; returns its directory, or with ``block=False`` a
    ``Future`` of it, written in the background (see :meth:`MMSBState.checkpoint`)."""
    return state.checkpoint(directory, block=block)


def state_digest(state) -> str:
    """A hex digest of every page's id, epoch and bytes, the dependencies and the state's epoch;
    for pages with dependencies, of their propagated values too (what :func:`query_page` returns).

    Two states (or snapshots) with equal digests hold the same pages bit for bit.

    Example:
      >>> import mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> page = mmsb.create_page(state, size=4)
      >>> before = mmsb.state_digest(state)
      >>> _ = mmsb.update_page(state, page.id, [1, 2, 3, 4])
      >>> mmsb.state_digest(state) != before
      True
      >>> mmsb.mmsb_stop(state)
    """
    return state.digest()


def get_stats(state) -> dict:
    """Telemetry of the state as a dict: what ``/metrics`` (:func:`serve_metrics`) exports.

    Keys: ``epoch``, ``pages``, ``bytes``, ``capacity``, ``pressure``, ``pools`` (allocator
    figures per pool), ``path``, ``semiring``, ``enable_gpu``, ``kernels``, ``log`` (the
    writer's figures plus ``fsync_seconds``, ``tail_bytes``, ``tail_records``; ``None`` for a
    snapshot), the state's counters (``pages_created``, ``pages_deleted``, ``updates``,
    ``noop_updates``, ``deltas_routed``, ``batches``, ``checkpoints``: they survive reopen),
    and the sections ``latency`` (operation -> histogram summary in seconds, since open),
    ``propagation`` (passes, nodes, edges, rounds, cone, cutoff rate), ``checkpoint_files``
    (count, newest epoch, bytes, age; ``checkpoints`` is the counter), ``cost`` (the cost
    model and write entropy, see ``mmsb_jax/telemetry/_cost.py``), ``adaptive`` (the
    propagation strategy's choices and reasons, the checkpoint policy's, and the last
    :func:`optimize_layout` report) and ``replay`` (the last open's replay
    throughput, the current tail).

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> p = mmsb.create_page(state, size=4, dtype=jnp.float32)
      >>> _ = mmsb.update_page(state, p.id, jnp.ones(4, jnp.float32))
      >>> s = mmsb.get_stats(state)
      >>> s["updates"], s["latency"]["update_page"]["count"], s["cost"]["write_entropy_pages"]
      (1, 1, 0.0)
      >>> mmsb.mmsb_stop(state)
    """
    if not isinstance(state, MMSBState):
        raise InvalidArgumentError(f"state={state!r} is not an MMSBState")
    return state.stats()


def serve_metrics(state: MMSBState, port: int = 0, addr: str = "127.0.0.1"):
    """Serve the state's figures as a Prometheus endpoint (``http://addr:port/metrics``).

    Built on ``prometheus_client`` with a registry of this state's own (several states in
    one process do not clash); metric names start with ``mmsb_`` (the README's "Telemetry"
    section lists them); the figures are those of :func:`get_stats`, read at each scrape.

    Args:
      port: the TCP port (``0``: any free one; read it from ``server.port``).
      addr: the address to bind (default: this machine only).

    Returns:
      A :class:`~mmsb_jax.telemetry.MetricsServer`: ``.port``, ``.url``, ``.close()``.

    Raises:
      InvalidArgumentError: ``state`` is not a state, a bad ``port`` or ``addr``, or the
        address cannot be bound (both named).

    Example:
      >>> import urllib.request, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> srv = mmsb.serve_metrics(state)
      >>> text = urllib.request.urlopen(srv.url).read().decode()
      >>> "mmsb_epoch 0.0" in text
      True
      >>> srv.close(); mmsb.mmsb_stop(state)
    """
    if not isinstance(state, MMSBState):
        raise InvalidArgumentError(f"state={state!r} is not an MMSBState")
    return serve_registry(registry_for(state._telemetry, state.stats), port=port, addr=addr)
