"""The tree journal of :class:`MMSBState`: pytrees in, one atomic epoch per step, any step back out.

A tree (a params / optimizer pytree, any leaves) is kept as one page per leaf, created with
its first step. Each step is one epoch, one log batch: the CREATE_PAGES + TREE_DEF records on
the first step, then the ROWS / SPARSE records of the leaves that changed (bitwise, on the
host) and a TREE_STEP tag. ``save_tree`` copies the leaves to (recycled) host memory and
``drain_ring`` hands over the drained ring itself (returning a spare one to go on with); the
background writer (:mod:`._tree_writer`) then compares, encodes and writes, except under
``fsync="always"``, where that runs before returning so the step is durable. The pages take
the journaled values later, when an operation needs them (:meth:`._tree_jobs.TreeJobs._apply_tree_writes`). Replay rebuilds trees through the same functions
(:meth:`TreeJournal._tree_define`, :meth:`TreeJournal._tree_tag`, :class:`._tree_writes.PageWrites`).
"""

from __future__ import annotations

import bisect
import math

import jax
import numpy as np

from .._checks import is_int
from .._compat import is_tracer
from .._errors import (
    InvalidArgumentError,
    InvalidDeltaError,
    RingOverflowError,
)
from ..deltas._tree_ring import empty_tree_ring, ring_steps, spare_key, tree_ring_swapped
from . import _tree_codec as codec
from ._tree_jobs import TreeJobs, _Job
from ..telemetry._recorder import timed

tu = jax.tree_util


class TreeInfo:
    """A journaled tree: its structure, the page of each leaf, and its step -> epoch map."""

    __slots__ = ("name", "spec", "page_ids", "steps", "epochs", "treedef", "mirror", "mirror_epoch")

    def __init__(self, name: str, spec: codec.TreeSpec, page_ids: np.ndarray):
        self.name = name
        self.spec = spec
        self.page_ids = np.asarray(page_ids, np.int64)
        self.steps: list[int] = []
        self.epochs: list[int] = []
        self.treedef = None  # the treedef last seen to match (a cache; None after a reopen)
        # host copies of the leaves at the last step the writer journaled (it alone updates
        # them, in place), and that step's epoch
        self.mirror: list | None = None
        self.mirror_epoch = -1

    @property
    def paths(self) -> list[str]:
        return [s.path for s in self.spec.leaves]


def _flatten(tree):
    """``tree_flatten_with_path``, its failures (e.g. a dict whose keys cannot be sorted) as an MMSBError."""
    try:
        return tu.tree_flatten_with_path(tree)
    except (TypeError, ValueError) as e:
        raise InvalidArgumentError(f"the tree cannot be flattened by jax.tree_util: {e}") from None


def check_name(name) -> str:
    if not isinstance(name, str) or not name or len(name.encode("utf-8")) > 255:
        raise InvalidArgumentError(f"tree name={name!r} must be a non-empty str of at most 255 bytes")
    return name


def _leaf_dtype_ok(dt: np.dtype) -> bool:
    return dt.kind in "biuf" or dt.name == "bfloat16"


def host_view(x, path: str) -> np.ndarray:
    """A host view (or a device-to-host copy) of one leaf, after checking it can be journaled."""
    if is_tracer(x):
        raise InvalidArgumentError(
            f"leaf {path} is a traced value: save_tree runs on the host (call it outside jit, or record "
            "the tree inside jit with record_tree)"
        )
    if not isinstance(x, (jax.Array, np.ndarray, np.generic)):
        raise InvalidArgumentError(
            f"leaf {path} is a {type(x).__name__} ({x!r:.40}), not an array; journal arrays "
            "(e.g. jnp.asarray(x) for a Python number)"
        )
    try:
        arr = np.asarray(x)
    except RuntimeError as e:  # e.g. a donated or deleted jax.Array
        raise InvalidArgumentError(f"leaf {path} cannot be read ({e}); pass a live array") from e
    check_leaf_spec(tuple(arr.shape), arr.dtype, path)
    return arr


def check_leaf_spec(shape: tuple, dtype, path: str) -> np.dtype:
    dt = np.dtype(dtype)
    if not _leaf_dtype_ok(dt):
        raise InvalidArgumentError(f"leaf {path} has dtype {dt}; expected a bool, integer, float or bfloat16 dtype")
    if jax.dtypes.canonicalize_dtype(dt) != dt:
        raise InvalidArgumentError(
            f"leaf {path} has dtype {dt}, which needs JAX's 64-bit mode (off: jax would store "
            f"{jax.dtypes.canonicalize_dtype(dt)}); call jax.config.update('jax_enable_x64', True) first"
        )
    if any(d == 0 for d in shape):
        raise InvalidArgumentError(f"leaf {path} has no elements (shape {list(shape)}); pages hold at least one")
    return dt


class TreeJournal(TreeJobs):
    """Mixin of :class:`MMSBState`: ``save_tree``, ``load_tree``, ``tree_steps``, ``tree_ring``
    and the drain of a tree ring."""

    # ------------------------------------------------------------------ queries
    def tree_names(self) -> list[str]:
        """The names of the journaled trees, sorted."""
        with self._lock:
            return sorted(self._trees)

    def _refuse_distributed(self, what: str) -> None:
        if self._dist is not None:
            raise InvalidArgumentError(
                f"{what}: the tree journal is not supported on a state over several processes yet "
                f"(its background writer writes the log directly); journal the tree in a state of one process")

    def _tree(self, name) -> TreeInfo:
        t = self._trees.get(name) if isinstance(name, str) else None
        if t is None:
            known = sorted(self._trees)
            raise InvalidArgumentError(f"no tree named {name!r} is journaled here; trees: {known}")
        return t

    def tree_steps(self, name) -> list[tuple[int, int]]:
        """``[(step, epoch), ...]`` of a tree, in order; see :func:`mmsb_jax.tree_steps`."""
        with self._lock:
            self._raise_journal_failure()
            t = self._tree(name)
            return list(zip(t.steps, t.epochs))

    def _step_epoch(self, t: TreeInfo, step) -> tuple[int, int]:
        """``(step, epoch)`` of a step of ``t`` (None: the last)."""
        if step is None:
            return t.steps[-1], t.epochs[-1]
        if not is_int(step):
            raise InvalidArgumentError(f"step={step!r} must be an int (or None: the last step)")
        i = bisect.bisect_left(t.steps, int(step))
        if i == len(t.steps) or t.steps[i] != step:
            raise InvalidArgumentError(
                f"tree {t.name!r} has no step {step}; it has {len(t.steps)} steps from {t.steps[0]} to {t.steps[-1]}"
            )
        return int(step), t.epochs[i]

    # ------------------------------------------------------------------ replay-shared primitives
    def _tree_define(self, name: str, spec: codec.TreeSpec, page_ids) -> TreeInfo:
        """Register a tree whose leaf pages exist (live: just created; replay: a TREE_DEF)."""
        if name in self._trees:
            raise InvalidArgumentError(f"tree {name!r} is already defined")
        ids = np.asarray(page_ids, np.int64)
        if ids.shape != (len(spec.leaves),):
            raise InvalidArgumentError(f"tree {name!r} has {len(spec.leaves)} leaves but {ids.size} pages")
        for pid, leaf in zip(ids.tolist(), spec.leaves):
            _, pool, _ = self._locate(pid)
            if pool.shape != leaf.shape or pool.dtype != leaf.dtype:
                raise InvalidDeltaError(
                    f"page {pid} of tree {name!r} leaf {leaf.path} is {pool.dtype}{list(pool.shape)}, "
                    f"the structure says {leaf.dtype}{list(leaf.shape)}"
                )
        t = self._trees[name] = TreeInfo(name, spec, ids)
        return t

    def _refuse_tree_page(self, pid: int) -> None:
        """A journaled tree's pages are not deleted (its journal would lose a leaf)."""
        for t in self._trees.values():
            hit = np.flatnonzero(t.page_ids == pid)
            if hit.size:
                raise InvalidArgumentError(
                    f"page {pid} holds leaf {t.spec.leaves[int(hit[0])].path} of the journaled tree {t.name!r}; "
                    "a tree's pages cannot be deleted"
                )

    def _tree_tag(self, name: str, step: int, epoch: int) -> None:
        """Record that ``epoch`` is step ``step`` of tree ``name`` (live and replay)."""
        t = self._tree(name)
        if t.steps and step <= t.steps[-1]:
            raise InvalidArgumentError(f"step {step} of tree {name!r} is not after its last step {t.steps[-1]}")
        t.steps.append(int(step))
        t.epochs.append(int(epoch))

    # ------------------------------------------------------------------ checks
    def _next_step(self, t: TreeInfo | None, name: str, step) -> int:
        last = t.steps[-1] if t is not None else None
        if step is None:
            if last is not None and last + 1 >= 2**63:
                raise InvalidArgumentError(
                    f"step=None would be step {last + 1} of tree {name!r} (its last step + 1), past int64; "
                    "steps are int64")
            return 0 if last is None else last + 1
        if not is_int(step) or not -(2**63) <= step < 2**63:
            raise InvalidArgumentError(f"step={step!r} must be an int64 (or None: the last step + 1)")
        if last is not None and step <= last:
            raise InvalidArgumentError(f"step={step} of tree {name!r} must be greater than its last step {last}")
        return int(step)

    def _check_same_tree(self, t: TreeInfo, tree, td, paths, shapes, dtypes) -> None:
        if t.treedef is not None and td == t.treedef:
            same_paths = True
        else:
            same_paths = paths == t.paths
            if not same_paths:
                raise InvalidArgumentError(f"tree {t.name!r} changed structure: {codec.first_difference(t.paths, tree)}")
        for path, shape, dtype, leaf in zip(paths, shapes, dtypes, t.spec.leaves):
            if shape != leaf.shape or np.dtype(dtype) != leaf.dtype:
                raise InvalidDeltaError(
                    f"leaf {path} of tree {t.name!r} is {np.dtype(dtype)}{list(shape)}; its journal holds "
                    f"{leaf.dtype}{list(leaf.shape)} (a leaf keeps its shape and dtype)"
                )
        if t.treedef is None or td != t.treedef:
            text = codec.encode_structure(tree, td, list(t.spec.leaves))
            if text != t.spec.text:
                raise InvalidArgumentError(
                    f"tree {t.name!r} changed structure: the leaf paths agree but a container type or its "
                    "static data differs from the journal's"
                )
            t.treedef = td

    def _new_spec(self, tree, td, paths, shapes, dtypes, location) -> codec.TreeSpec:
        leaves = [codec.LeafSpec(p, tuple(s), np.dtype(d)) for p, s, d in zip(paths, shapes, dtypes)]
        for leaf in leaves:
            self._resolve_spec(None, leaf.shape, leaf.dtype, location, register=False)
        return codec.decode_structure(codec.encode_structure(tree, td, leaves))

    # ------------------------------------------------------------------ creating a tree
    def _tree_create(self, name: str, spec: codec.TreeSpec, epoch: int, source: str, location: str):
        """Create the leaf pages and the tree in ``epoch``; returns ``(tree, log batch)`` with
        the batch holding their CREATE_PAGES and TREE_DEF records (not yet committed)."""
        first = self._log.batch(epoch, source=source, zero_copy=True) if self._log is not None else None
        saved, self._log_batch = self._log_batch, first
        ids = np.zeros(len(spec.leaves), np.int64)
        try:
            groups: dict[tuple, list[int]] = {}
            for i, leaf in enumerate(spec.leaves):
                groups.setdefault((leaf.shape, leaf.dtype.str), []).append(i)
            for members in groups.values():
                leaf = spec.leaves[members[0]]
                self._epoch = epoch - 1  # create_pages takes the next epoch: this step's
                ids[members] = self.create_pages(len(members), None, leaf.dtype, location, shape=leaf.shape)
        finally:
            self._log_batch = saved
            self._epoch = epoch
        if first is not None:
            first.log_tree_def(name, spec.text, ids)
        t = self._tree_define(name, spec, ids)
        return t, first

    def _tree_prev(self, t: TreeInfo) -> list:
        """The leaves' values before the next step the writer journals (host; run by the writer).

        The writer's own copies, unless a page of the tree changed since (the epoch of a page
        written by anything but the journal is past the copies'): then the pages themselves.
        """
        with self._lock:
            ids = t.page_ids
            if t.mirror is None or (ids.size and int(self._table.epoch[ids].max()) > t.mirror_epoch):
                self._apply_tree_writes()
                t.mirror = [self._page_base(pid) for pid in ids.tolist()]
            return t.mirror

    def _page_base(self, pid: int) -> np.ndarray:
        """A host copy of what a page holds (its base, before any dependency)."""
        _, pool, slot = self._locate(pid)
        arena = pool.array
        if pool.sharding is None and pool.location == "cpu":  # one copy out of a view of the arena
            return np.array(np.asarray(arena)[slot])  # (the view is dropped at once: donation stays in place)
        return np.array(pool.ops.read_slot(arena, np.int32(slot)))

    # ------------------------------------------------------------------ save_tree
    @timed("save_tree")
    def save_tree(self, name, tree, *, step=None, location: str = "cpu") -> int:
        """Journal ``tree`` as one step of tree ``name`` in one epoch; see :func:`mmsb_jax.save_tree`."""
        self._refuse_distributed("save_tree")
        check_name(name)
        pairs, td = _flatten(tree)
        paths = [tu.keystr(p) for p, _ in pairs]
        views = [host_view(x, p) for (_, x), p in zip(pairs, paths)]
        nbytes = sum(v.nbytes for v in views)
        with self._lock.journaling(nbytes):
            self._check_open()
            t = self._trees.get(name)
            shapes, dtypes = [v.shape for v in views], [v.dtype for v in views]
            if t is None:
                spec = self._new_spec(tree, td, paths, shapes, dtypes, location)
            else:
                self._check_same_tree(t, tree, td, paths, shapes, dtypes)
            step = self._next_step(t, name, step)
            epoch = self._epoch + 1
            self._epoch = epoch
            first = None
            if t is None:
                t, first = self._tree_create(name, spec, epoch, "tree", location)
                t.treedef = td
            host = []
            for v in views:  # the step's values, copied into (recycled) host memory
                h = self._tree_buffers.take((1, *v.shape), v.dtype)
                np.copyto(h[0, ...], v)
                host.append(h)
            del views
            self._tree_tag(name, step, epoch)
            self._tree_submit(_Job(t, host, [epoch], [step], first, "tree", host), nbytes)
        if self._ckpt_policy is not None:  # save_tree is not a collective operation: ask here
            self._maybe_checkpoint()
        return epoch

    # ------------------------------------------------------------------ tree rings
    def tree_ring(self, name, like_tree, *, steps: int, location: str = "cpu", device=None):
        """A device ring for ``steps`` recorded steps of tree ``name``; see :func:`mmsb_jax.tree_ring`."""
        self._refuse_distributed("tree_ring")
        check_name(name)
        pairs, td = _flatten(like_tree)
        paths = [tu.keystr(p) for p, _ in pairs]
        shapes, dtypes = [], []
        for (_, x), path in zip(pairs, paths):
            if not hasattr(x, "shape") or not hasattr(x, "dtype"):
                raise InvalidArgumentError(f"leaf {path} is a {type(x).__name__}, not an array (or ShapeDtypeStruct)")
            shapes.append(tuple(x.shape))
            dtypes.append(check_leaf_spec(tuple(x.shape), x.dtype, path))
        with self._lock:
            self._check_open()
            t = self._trees.get(name)
            if t is None:
                spec = self._new_spec(like_tree, td, paths, shapes, dtypes, location)
            else:
                self._check_same_tree(t, like_tree, td, paths, shapes, dtypes)
                spec = t.spec
        if device is not None and not isinstance(device, (jax.Device, jax.sharding.Sharding)):
            raise InvalidArgumentError(f"device={device!r} must be a jax.Device or a Sharding (or None)")
        return empty_tree_ring(name, spec.text, td, shapes, dtypes, steps, device)

    def _drain_tree_ring(self, ring):
        if getattr(ring.count, "ndim", None) != 0 and np.ndim(ring.count) != 0:  # (the attribute: 10x faster)
            raise InvalidArgumentError(
                f"this tree ring has a batch axis (count of shape {np.shape(ring.count)}): it went through "
                "jax.vmap, which cannot share one ring; record each step from the unbatched loop")
        count, steps = ring_steps(ring)
        if count > ring.capacity:
            raise RingOverflowError(
                f"the tree ring of {ring.name!r} overflowed: {count} steps were recorded into a ring of "
                f"{ring.capacity}; {count - ring.capacity} were overwritten. Nothing was applied; drain more "
                "often or make the ring larger (test ring.overflowed inside the loop)"
            )
        if count == 0:
            return None, ring
        steps = steps.tolist()
        nbytes = count * sum(math.prod(b.shape[1:]) * b.dtype.itemsize for b in ring.buffers)
        with self._lock.journaling(nbytes):
            self._check_open()
            name = check_name(ring.name)
            t = self._trees.get(name)
            if t is None:
                spec = codec.decode_structure(ring.structure)
                for leaf in spec.leaves:
                    self._resolve_spec(None, leaf.shape, leaf.dtype, "cpu", register=False)
            elif t.spec.text != ring.structure:
                raise InvalidArgumentError(f"this ring was made for another structure of tree {name!r}")
            else:
                spec = t.spec
            key = spare_key(ring)
            spares = self._tree_spares.get(key)
            if spares is None:  # the first drain of this kind of ring: do its buffers fit the tree?
                for b, leaf in zip(ring.buffers, spec.leaves):
                    if b.shape[1:] != leaf.shape or b.dtype != leaf.dtype:
                        raise InvalidDeltaError(f"ring buffer of leaf {leaf.path} is {b.dtype}{list(b.shape[1:])}; "
                                                f"the tree has {leaf.dtype}{list(leaf.shape)}")
                spares = self._tree_spares[key] = []
            last = t.steps[-1] if t is not None else None
            for i, s in enumerate(steps):
                before = steps[i - 1] if i else last
                if before is not None and s <= before:
                    raise InvalidArgumentError(
                        f"recorded step {s} (slot {i}) of tree {name!r} is not after step {before}: steps must increase"
                    )
            first_epoch = self._epoch + 1
            epochs = list(range(first_epoch, first_epoch + count))
            first = None
            if t is None:
                self._epoch = first_epoch
                t, first = self._tree_create(name, spec, first_epoch, "jit-ring", "cpu")
            self._epoch = epochs[-1]
            for s, e in zip(steps, epochs):
                self._tree_tag(name, s, e)
            # the loop goes on with another ring while the writer reads this one (made before the
            # writer thread wakes up and takes the GIL)
            swapped = tree_ring_swapped(ring, spares, self._tree_zeros)
            job = _Job(t, list(ring.buffers), epochs, steps, first, "jit-ring", [], (key, (ring.buffers, ring.steps)))
            self._tree_submit(job, nbytes)
            return self._epoch, swapped

    # ------------------------------------------------------------------ checkpoints and digests
    def _checkpoint_trees(self, manifest: dict, arrays: dict) -> None:
        """Add the trees (structure, pages, step -> epoch map) to a checkpoint being written."""
        names = sorted(self._trees)
        manifest["trees"] = [{"name": n, "pages": self._trees[n].page_ids.tolist()} for n in names]
        if names:
            arrays["trees"] = {
                f"tree_{i}": {
                    "structure": np.frombuffer(self._trees[n].spec.text.encode("utf-8"), np.uint8).copy(),
                    "steps": np.asarray(self._trees[n].steps, np.int64),
                    "epochs": np.asarray(self._trees[n].epochs, np.int64),
                }
                for i, n in enumerate(names)
            }

    def _install_trees(self, trees) -> None:
        """Take a checkpoint's checked trees (see :mod:`._tree_restore`)."""
        for ct in trees:
            t = self._tree_define(ct.name, ct.spec, ct.page_ids)
            t.steps, t.epochs = list(ct.steps), list(ct.epochs)

    def _digest_trees(self, h) -> None:
        for name in sorted(self._trees):
            t = self._trees[name]
            h.update(name.encode("utf-8") + b"\0" + t.spec.text.encode("utf-8"))
            h.update(t.page_ids.tobytes())
            h.update(np.asarray(t.steps, np.int64).tobytes() + np.asarray(t.epochs, np.int64).tobytes())
