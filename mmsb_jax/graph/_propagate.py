"""Full propagation (Layer 4): ``x = b ⊕ (Aᵀ ⊗ x)`` in one topological pass.

One ``lax.scan`` over the compiled steps, all of one shape (see :mod:`._plan`): each gathers
its ``(width, rows)`` edge slots, ⊗-multiplies by the weights, ⊕-reduces over the short axis
and writes ``rows`` consecutive internal rows. The body is traced once whatever the depth,
so compile time does not grow with it; a derived node's step is a branch of a ``lax.switch``
(one branch per derive group, none without derived nodes).
"""

from __future__ import annotations

import contextvars
import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from .._compat import is_tracer
from .._errors import InvalidArgumentError
from ..semirings import cast_weights
from ._compiled import CompiledGraph, check_weight_fit


def check_pages(cg: CompiledGraph, b, name: str = "b"):
    """``b`` as an array, checked against the graph's size and the semiring's carriers.

    Raises:
      InvalidArgumentError: not a ``CompiledGraph``; wrong leading size; a dtype the semiring
        refuses (the message says why).
    """
    if not isinstance(cg, CompiledGraph):
        raise InvalidArgumentError(f"expected a CompiledGraph (from g.compile(...)), got {type(cg).__name__}")
    if not isinstance(b, jax.Array):
        b = jnp.asarray(b)
    if b.ndim < 1 or b.shape[0] != cg.num_nodes:
        raise InvalidArgumentError(
            f"{name} must have shape (num_nodes, *page_shape) with num_nodes={cg.num_nodes}, got {name}.shape={b.shape}"
        )
    why = cg.semiring.refusal(b.dtype)
    if why is not None:
        raise InvalidArgumentError(f"{name}.dtype={b.dtype}: {why}")
    return b


def _plain_gather(x, idx, expanded: bool):
    page = x.shape[1:]
    idx = idx if expanded else idx[..., None]
    dims = lax.GatherDimensionNumbers(
        offset_dims=tuple(range(idx.ndim - 1, idx.ndim - 1 + len(page))), collapsed_slice_dims=(0,), start_index_map=(0,)
    )
    return lax.gather(x, idx, dims, (1,) + page, mode=lax.GatherScatterMode.PROMISE_IN_BOUNDS)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _bit_gather(x, idx, expanded: bool):
    bits = jnp.dtype(f"uint{8 * x.dtype.itemsize}")
    return lax.bitcast_convert_type(_plain_gather(lax.bitcast_convert_type(x, bits), idx, expanded), x.dtype)


@_bit_gather.defjvp
def _bit_gather_jvp(expanded, primals, tangents):
    x, idx = primals
    return _bit_gather(x, idx, expanded), _plain_gather(tangents[0], idx, expanded)


def gather_rows(x, idx, *, expanded: bool = False):
    """``x[idx]`` along the leading axis (``idx`` of any shape, every entry in range), as one
    XLA gather without the bounds handling of ``x[idx]`` (measurably faster on CPU).

    In the program for sharded pages (:func:`propagate`), floats are gathered as their bits:
    XLA partitions a gather over a sharded ``x`` into an all-reduce of the shards' parts,
    which flushes subnormals to zero, turns -0.0 into 0.0 and quiets signalling NaNs; an
    all-reduce of integers is exact. (Differentiable: the tangent is gathered as values. Not
    everywhere: on one device the bitcasts kept XLA from fusing a scalar pass, 1.8 -> 14.7 ms
    for 100k / 500k.)

    ``expanded``: ``idx`` already has a trailing axis of 1 (inside ``lax.scan`` this lets
    autodiff forward the scanned indices instead of stacking a reshaped copy per step).
    """
    if _BIT_GATHERS.get() and jnp.issubdtype(x.dtype, jnp.floating):
        return _bit_gather(x, idx, expanded)
    return _plain_gather(x, idx, expanded)


#: Set while the program for sharded pages is traced (see :func:`gather_rows`).
_BIT_GATHERS = contextvars.ContextVar("mmsb_bit_gathers", default=False)


def fold_left(sr, parts: list):
    """``((p0 ⊕ p1) ⊕ p2) ⊕ ...`` of ``parts`` (arrays of one shape)."""
    acc = parts[0]
    for p in parts[1:]:
        acc = sr.add(acc, p)
    return acc


#: pages of at least this many elements are reduced by :func:`fold_left`; smaller ones by
#: XLA's reduction (measured on CPU, ``benchmarks/bench_propagation.py``: 16-element pages
#: ran 1.7x faster with the reduction, 256-element pages 7x faster elementwise)
WIDE_PAGE = 32


def wide(page: tuple) -> bool:
    """Whether pages of shape ``page`` are reduced by :func:`fold_left` (see :data:`WIDE_PAGE`)."""
    return int(np.prod(page, dtype=np.int64)) >= WIDE_PAGE


def fold(sr, x, axis: int, page: tuple):
    """⊕ of ``x`` (``(..., *page)``) along ``axis`` in the association full and incremental
    propagation share: XLA's reduction for small pages, else :func:`fold_left` of the slices
    along ``axis`` in order (:func:`wide`).

    XLA's CPU reduction over a short major axis of wide pages is slow (a ``(4, 512, 256)``
    min took 1.4 ms, elementwise ⊕ of its slices 0.07 ms; ``benchmarks/bench_graph.py``); for
    scalar pages it is the fastest form. Under the exact semirings (min, max, or; integer
    pages) every association gives the same result.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> fold(semirings.TROPICAL, jnp.array([[3.0, 1.0], [2.0, 5.0], [4.0, 0.5]]), 0, (2,)).tolist()
      [2.0, 0.5]
    """
    if not wide(page) or x.shape[axis] == 0:
        return sr.reduce(x, axis)
    return fold_left(sr, [lax.index_in_dim(x, k, axis, keepdims=False) for k in range(x.shape[axis])])


def weights_for_pages(w, lead: int, page: tuple):
    """Reshape weights ``(*lead_dims, *s)`` so they broadcast against ``(*lead_dims, *page)``."""
    tail = w.shape[lead:]
    if len(tail) > len(page):
        raise InvalidArgumentError(f"weights of shape {w.shape[lead:]} do not broadcast against pages of shape {page}")
    return w.reshape(w.shape[:lead] + (1,) * (len(page) - len(tail)) + tail)


def call_derive(fn, args, rows: int, page: tuple, dtype):
    """``vmap(fn)(*args)`` checked to return ``rows`` pages of the right shape and dtype."""
    out = jnp.asarray(jax.vmap(fn)(*args))
    if out.shape != (rows,) + page or out.dtype != dtype:
        raise InvalidArgumentError(
            f"derive function {getattr(fn, '__name__', fn)!r} must return a page of shape {page} and "
            f"dtype {dtype}, got shape {out.shape[1:]} and dtype {out.dtype}"
        )
    return out


def _run_steps(cg: CompiledGraph, x):
    """The step program over internal rows ``x`` (``(num_rows, *page)``, starting as ``b``)."""
    sr = cg.semiring
    page = x.shape[1:]
    dt = x.dtype
    rows = cg.rows
    w_all = weights_for_pages(cast_weights(sr, cg.ell_weights, dt), 3, page)
    lane = jnp.arange(rows, dtype=jnp.int32).reshape((rows,) + (1,) * len(page))

    def chunk_values(x, src, w):
        """⊕ of each column's edge slots (a chunk): small pages take one gather and XLA's
        reduction (see fold); wide pages one gather per edge slot, each ⊗ then ⊕ in slot
        order, fold's association (elementwise; a (width, rows, *page) product and its
        reduction cost ~10x more)."""
        if not wide(page):
            return fold(sr, sr.mul(w, gather_rows(x, src, expanded=True)), 0, page)

        def slot(k):
            return sr.mul(w[k], gather_rows(x, src[k], expanded=True))

        # a loop, not one gather per slot traced out: compile time does not grow with width
        return lax.fori_loop(1, src.shape[0], lambda k, acc: sr.add(acc, slot(k)), slot(0))

    def reduce_rows(x, src, w, poff, base):
        del poff
        return sr.add(base, chunk_values(x, src, w))

    def derive_rows(fn, arity):
        def run(x, src, w, poff, base):
            del src, w, base
            par = lax.dynamic_slice_in_dim(cg.der_par, poff, rows * arity).reshape(rows, arity)
            return call_derive(fn, [gather_rows(x, par[:, a]) for a in range(arity)], rows, page, dt)

        return run

    def hub_rows(x, src, w, poff, base):
        """A hub step (see :mod:`._plan`): columns are ``rows // h`` hubs x ``h`` chunks;
        each hub folds its chunks in order, ``((x ⊕ c0) ⊕ c1) ...`` (padding chunks skipped)."""
        del poff
        h = cg.hub_chunks
        per = rows // h
        c = chunk_values(x, src, w).reshape((per, h) + page)
        real = (src[0, :, 0] != cg.num_nodes + rows).reshape(per, h)  # a chunk's first slot is an edge
        acc = base[:per]
        for j in range(h):
            acc = jnp.where(real[:, j].reshape((per,) + (1,) * len(page)), sr.add(acc, c[:, j]), acc)
        return jnp.concatenate([acc, base[per:]])

    branches = [reduce_rows] + [derive_rows(fn, arity) for fn, arity in cg.derive_fns]
    if cg.hub_chunks:
        branches.append(hub_rows)

    def body(x, step):
        if len(branches) == 1:
            (src, w, row0, count), kind, poff = step, None, None
        else:
            src, w, row0, count, kind, poff = step
        base = lax.dynamic_slice_in_dim(x, row0, rows)
        if len(branches) == 1:
            new = reduce_rows(x, src, w, poff, base)
        else:
            new = lax.switch(kind, branches, x, src, w, poff, base)
        new = jnp.where(lane < count, new, base)
        # the write stays outside the switch: XLA copies a whole operand updated inside a branch
        return lax.dynamic_update_slice_in_dim(x, new, row0, axis=0), None

    steps = (cg.ell_src[..., None], w_all, cg.step_row0, cg.step_count)  # indices with their index axis
    if len(branches) > 1:
        steps += (cg.step_kind, cg.step_poff)
    x, _ = lax.scan(body, x, steps)
    return x


def propagate_impl(cg: CompiledGraph, b):
    """:func:`propagate` without checks (traceable; ``cg`` may be a program key)."""
    if cg.num_steps == 0:
        return b
    page = b.shape[1:]
    zero = cg.semiring.zero_for(b.dtype)
    x = jnp.concatenate([gather_rows(b, cg.perm), jnp.full((cg.rows + 1,) + page, zero, b.dtype)])
    return gather_rows(_run_steps(cg, x), cg.inv)


_propagate_jit = jax.jit(propagate_impl)


def _propagate_sharded_impl(key, b):
    token = _BIT_GATHERS.set(True)  # while this is traced: its gathers move bits
    try:
        return propagate_impl(key, b)
    finally:
        _BIT_GATHERS.reset(token)


@functools.lru_cache(maxsize=64)
def _propagate_jit_sharded(sharding):
    return jax.jit(_propagate_sharded_impl, out_shardings=sharding)


def propagate(cg: CompiledGraph, b):
    """Solve ``x = b ⊕ (Aᵀ ⊗ x)`` on the compiled DAG: one topological pass.

    ``x[v] = b[v] ⊕ ⨁_{u -> v} (w_uv ⊗ x[u])`` over data edges; a node without parents keeps
    ``x[v] = b[v]``; a derived node gets ``fn(*parents)``. Each node is computed once.
    Works under ``jit``, ``vmap``, ``grad`` (w.r.t. ``b`` and, through :func:`with_weights`,
    the weights) and inside ``lax.scan``; a sharded ``b`` gives a result with the same
    sharding. Pages may have any dtype the semiring accepts (integers wrap; weights follow
    the rule of :meth:`ShadowPageGraph.compile`).

    Args:
      cg: from :meth:`ShadowPageGraph.compile`.
      b: ``(num_nodes,)`` or ``(num_nodes, *page_shape)`` base values. Weights broadcast
        over the page dimensions.

    Returns:
      ``x``, same shape and dtype as ``b``.

    Raises:
      InvalidArgumentError: ``b`` has the wrong leading size or a dtype the semiring refuses;
        a weight does not fit pages of ``b``'s dtype (checked where the weights are concrete).

    Example:
      >>> import jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> from mmsb_jax.graph import ShadowPageGraph, propagate
      >>> g = ShadowPageGraph()
      >>> g.add_dependencies([0, 1], [1, 2])          # 0 -> 1 -> 2, weights = one
      >>> cg = g.compile(semirings.REAL, num_nodes=3)
      >>> propagate(cg, jnp.array([1.0, 10.0, 100.0])).tolist()
      [1.0, 11.0, 111.0]
      >>> propagate(cg, jnp.array([200, 50, 10], jnp.uint8)).tolist()  # uint8 wraps mod 256
      [200, 250, 4]
    """
    b = check_pages(cg, b)
    check_weight_fit(cg, b.dtype)
    key = cg.program_key()
    sharding = getattr(b, "sharding", None) if not is_tracer(b) else None
    if isinstance(sharding, jax.sharding.NamedSharding) and not sharding.is_fully_replicated:
        return _propagate_jit_sharded(sharding)(key, b)
    return _propagate_jit(key, b)

