"""Full propagation (Layer 4): ``x = b ⊕ (Aᵀ ⊗ x)`` in one topological pass."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from .._compat import is_tracer
from .._errors import InvalidArgumentError
from ._compiled import CompiledGraph


def check_pages(cg: CompiledGraph, b, name: str = "b"):
    """``b`` as an array, checked against the graph's size and the semiring's dtype kind."""
    if not isinstance(cg, CompiledGraph):
        raise InvalidArgumentError(f"expected a CompiledGraph (from g.compile(...)), got {type(cg).__name__}")
    if not isinstance(b, jax.Array):
        b = jnp.asarray(b)
    if b.ndim < 1 or b.shape[0] != cg.num_nodes:
        raise InvalidArgumentError(
            f"{name} must have shape (num_nodes, *page_shape) with num_nodes={cg.num_nodes}, got {name}.shape={b.shape}"
        )
    if not _accepts(cg.semiring.dtype_kind, b.dtype):
        raise InvalidArgumentError(
            f"semiring {cg.semiring.name} works on {cg.semiring.dtype_kind} pages, got {name}.dtype={b.dtype}"
        )
    return b


@functools.lru_cache(maxsize=None)
def _accepts(kind: str, dtype) -> bool:
    if kind == "bool":
        return dtype == jnp.bool_
    return bool(jnp.issubdtype(dtype, jnp.floating))


def _bcast_weights(w, n_edges: int, page: tuple):
    """Reshape laid-out weights ``(n, *s)`` so they broadcast against ``(n, *page)``."""
    tail = w.shape[1:]
    if len(tail) > len(page):
        raise InvalidArgumentError(f"weights of shape {w.shape} do not broadcast against pages of shape {page}")
    return w.reshape((n_edges,) + (1,) * (len(page) - len(tail)) + tail)


def fold(sr, c, axis: int):
    """``⊕`` of ``c`` along ``axis`` as a left fold ``((c0 ⊕ c1) ⊕ c2) ...``.

    Full and incremental propagation both reduce a node's in-edges with this fold, in the
    same edge order, padded with zeros at the end, so they associate floating-point sums the
    same way (a library ``reduce`` may reassociate differently for different shapes). XLA
    may still contract ``b + w * x`` into an FMA in one program and not the other, so for
    REAL / LOG the two can differ in the last bit; idempotent semirings agree exactly.
    """
    k = c.shape[axis]
    if k > 64:  # wide rows (hubs) only occur in full propagation
        return sr.reduce(c, axis)
    parts = [lax.index_in_dim(c, j, axis, keepdims=False) for j in range(k)]
    r = parts[0]
    for p in parts[1:]:
        r = sr.add(r, p)
    return r


def _zeros(sr, shape, dtype):
    return jnp.full(shape, sr.zero, dtype)


def call_derive(fn, args, rows: int, page: tuple, dtype):
    """``vmap(fn)(*args)`` checked to return ``rows`` pages of the right shape and dtype."""
    out = jax.vmap(fn)(*args)
    out = jnp.asarray(out)
    if out.shape != (rows,) + page or out.dtype != dtype:
        raise InvalidArgumentError(
            f"derive function {getattr(fn, '__name__', fn)!r} must return a page of shape {page} and "
            f"dtype {dtype}, got shape {out.shape[1:]} and dtype {out.dtype}"
        )
    return out


def _run_steps(cg: CompiledGraph, bi):
    """The level-ordered step program over internal rows ``bi`` (``(num_rows, *page)``)."""
    sr = cg.semiring
    page = bi.shape[1:]
    dt = bi.dtype
    dmax = cg.d_max
    w_all = cg.ell_weights.astype(dt)

    def ell_branch(k, d):
        def br(x, eo, no):
            src = lax.dynamic_slice_in_dim(cg.ell_src, eo, k * d)
            w = _bcast_weights(lax.dynamic_slice_in_dim(w_all, eo, k * d), k * d, page)
            xs = x.at[src].get(mode="promise_in_bounds")
            r = fold(sr, sr.mul(w, xs).reshape((k, d) + page), 0)
            if d < dmax:
                r = jnp.concatenate([r, _zeros(sr, (dmax - d,) + page, dt)])
            return sr.add(lax.dynamic_slice_in_dim(bi, no, dmax), r)

        return br

    def derive_branch(fn, arity, rows):
        def br(x, eo, no):
            par = lax.dynamic_slice_in_dim(cg.der_par, eo, rows * arity).reshape(rows, arity)
            args = [x.at[par[:, a]].get(mode="promise_in_bounds") for a in range(arity)]
            out = call_derive(fn, args, rows, page, dt)
            if rows < dmax:
                out = jnp.concatenate([out, lax.dynamic_slice_in_dim(bi, no + rows, dmax - rows)])
            return out

        return br

    def noop(x, eo, no):
        return lax.dynamic_slice_in_dim(x, no, dmax)

    branches = [noop] + [ell_branch(k, d) for k, d in cg.classes] + [derive_branch(*f) for f in cg.derive_fns]

    def body(x, step):
        kind, eo, no = step
        new = lax.switch(kind, branches, x, eo, no)
        # the write stays outside the switch: XLA copies a whole operand updated inside a branch
        return lax.dynamic_update_slice_in_dim(x, new, no, axis=0), None

    x, _ = lax.scan(body, bi, (cg.step_kind, cg.step_eoff, cg.step_noff))
    return x


def _propagate_impl(cg: CompiledGraph, b):
    sr = cg.semiring
    page = b.shape[1:]
    bi = jnp.concatenate([b[cg.perm], _zeros(sr, (cg.d_max + 1,) + page, b.dtype)])
    if cg.num_steps == 0:
        return b
    x = _run_steps(cg, bi)
    return x[cg.inv]


_propagate_jit = jax.jit(_propagate_impl)


@functools.lru_cache(maxsize=64)
def _propagate_jit_sharded(sharding):
    return jax.jit(_propagate_impl, out_shardings=sharding)


def propagate(cg: CompiledGraph, b):
    """Solve ``x = b ⊕ (Aᵀ ⊗ x)`` on the compiled DAG: one topological pass.

    ``x[v] = b[v] ⊕ ⨁_{u -> v} (w_uv ⊗ x[u])`` over data edges; a node without parents keeps
    ``x[v] = b[v]``; a derived node gets ``fn(*parents)``. Each node is computed once.
    Works under ``jit``, ``vmap``, ``grad`` (w.r.t. ``b`` and, through :func:`with_weights`,
    the weights) and inside ``lax.scan``; a sharded ``b`` gives a result with the same
    sharding.

    Args:
      cg: from :meth:`ShadowPageGraph.compile`.
      b: ``(num_nodes,)`` or ``(num_nodes, *page_shape)`` base values (bool pages for
        BOOLEAN, floating pages otherwise). Weights broadcast over the page dimensions.

    Returns:
      ``x``, same shape and dtype as ``b``.

    Raises:
      InvalidArgumentError: ``b`` has the wrong leading size or dtype kind.

    Example:
      >>> import jax.numpy as jnp
      >>> from mmsb_jax import semirings
      >>> from mmsb_jax.graph import ShadowPageGraph, propagate
      >>> g = ShadowPageGraph()
      >>> g.add_dependencies([0, 1], [1, 2])          # 0 -> 1 -> 2, weights = one
      >>> cg = g.compile(semirings.REAL, num_nodes=3)
      >>> propagate(cg, jnp.array([1.0, 10.0, 100.0])).tolist()
      [1.0, 11.0, 111.0]
    """
    b = check_pages(cg, b)
    sharding = getattr(b, "sharding", None) if not is_tracer(b) else None
    if isinstance(sharding, jax.sharding.NamedSharding) and not sharding.is_fully_replicated:
        return _propagate_jit_sharded(sharding)(cg, b)
    return _propagate_jit(cg, b)
