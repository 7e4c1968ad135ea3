"""The imperative shell: :class:`MMSBState` owns the pages, epochs, log and graph.

Everything with a side effect (device buffers that are donated and replaced, files, epochs,
locks) lives here; the pure core (deltas, semirings, propagation) knows nothing of it.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import Any

import jax
import numpy as np

from ..adaptive import backend_report

from ..log._directory import update_state_file
from ..log._writer import FSYNC_MODES, MIN_SEGMENT_BYTES
from ..deltas._delta import touches_nothing
from .._checks import is_int, not_a_directory
from .._errors import (
    InvalidArgumentError,
    MMSBError,
    PageNotFoundError,
    ReadOnlyError,
    StateClosedError,
)
from ..adaptive import checkpoint_policy as adaptive_checkpoint_policy
from ..pages import MemoryBudget, PagePool, host_memory_bytes
from ..deltas._pool_ops import host_rows
from ..deltas._router import host_change_mask, write_page
from ._batch import BatchRouting
from ._checkpointing import Checkpointing
from ._deps import Dependencies
from ._placement import Placement
from ._layout import Layout
from ._logging import Logging
from ._distributed import collective, coordinator_for
from . import _inputs
from ._pages import PageLifecycle
from ._page_table import PageTable
from ._telemetry import Telemetered
from ._tree_writer import HostBuffers, JournalLock
from ._tree_writes import PageWrites
from ._trees import TreeJournal
from ..semirings import get_semiring
from ..telemetry import Telemetry


# --------------------------------------------------------------------------- the state
class MMSBState(PageLifecycle, BatchRouting, Dependencies, Checkpointing, TreeJournal, Telemetered, Layout, Placement, Logging):
    """A state store: pages, epochs, the transaction log and the dependency graph.

    Create it with :func:`mmsb_start` or :func:`mmsb_open`. Every method is thread-safe.
    ``state.epoch`` is the last committed epoch (0 for a new state).

    Example:
      >>> import jax.numpy as jnp, mmsb_jax as mmsb
      >>> state = mmsb.mmsb_start()
      >>> page = mmsb.create_page(state, size=4, dtype=jnp.float32)
      >>> mmsb.update_page(state, page.id, jnp.arange(4, dtype=jnp.float32))
      2
      >>> mmsb.query_page(state, page.id).tolist()
      [0.0, 1.0, 2.0, 3.0]
      >>> mmsb.mmsb_stop(state)
    """

    def __init__(self, path=None, *, enable_gpu: bool = False, semiring="real", fsync: str = "batch",
                 segment_bytes: int = 64 << 20, mesh=None, keep_checkpoints: int | None = None,
                 peer_timeout: float = 60.0, derive=None, checkpoint_policy=None, _snapshot: bool = False,
                 _dist=None):
        self._telemetry = Telemetry()  # latencies, propagation figures, the strategy (mmsb_jax/telemetry)
        if derive is None:
            derive = {}
        if not isinstance(derive, dict) or not all(isinstance(k, str) and k and callable(f) for k, f in derive.items()):
            raise InvalidArgumentError(f"derive={derive!r} must be a dict of function names (str) to functions")
        #: name -> function of derived pages (mmsb.derive); replay looks them up here
        self._derive_fns: dict = dict(derive)
        if not isinstance(fsync, str) or fsync not in FSYNC_MODES:
            raise InvalidArgumentError(f"fsync={fsync!r} is not a durability policy; expected one of {FSYNC_MODES}")
        if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
            raise InvalidArgumentError(f"mesh={mesh!r} is not a jax.sharding.Mesh")
        self.mesh = mesh
        self._ckpt_policy = None if _snapshot else adaptive_checkpoint_policy(checkpoint_policy)
        self._policy = {"checkpoints": 0, "last_reason": "", "last_epoch": None}
        self._tail_mark = (0, 0)  # the log's (records, bytes) appended when the newest checkpoint was taken
        self._tail_at_open = 0  # records replayed after the newest checkpoint when the state was opened
        self._tail_first = None  # (segment, offset) of the first of them
        self._tail_bytes_at_open = 0  # and the log bytes from there to the end
        # several processes hold this state (their mesh spans them): see shell/_distributed
        self._dist = _dist if _dist is not None else coordinator_for(mesh, path, peer_timeout)
        if self._dist is not None and self._ckpt_policy is not None:
            raise InvalidArgumentError("checkpoint_policy is not supported on a state over several processes yet")
        if self._dist is not None:
            # each pass is one program with collectives: every process must choose the same
            # one, and choices from each process's own timings differ (a gloo mismatch)
            self._telemetry.strategy.mode = "fixed"
        self.semiring = get_semiring(semiring)
        self._check_semiring_name(self.semiring)
        self.fsync = fsync
        if not is_int(segment_bytes) or segment_bytes < MIN_SEGMENT_BYTES:
            raise InvalidArgumentError(f"segment_bytes={segment_bytes!r} must be an int >= {MIN_SEGMENT_BYTES}")
        self.segment_bytes = int(segment_bytes)
        if keep_checkpoints is not None and (not is_int(keep_checkpoints) or keep_checkpoints < 1):
            raise InvalidArgumentError(f"keep_checkpoints={keep_checkpoints!r} must be None or an int >= 1")
        self.keep_checkpoints = keep_checkpoints
        self._owns_dir = path is None
        self.path = _inputs.path(path) if path is not None else tempfile.mkdtemp(prefix="mmsb-")
        self._snapshot = _snapshot  # a replayed view: never writes into its path
        if not _snapshot:
            try:
                os.makedirs(self.path, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise InvalidArgumentError(f"path={self.path!r} {not_a_directory(self.path) or 'is not a directory'}") from None
            except OSError as e:
                raise InvalidArgumentError(f"path={self.path!r} cannot be made a directory: {e.strerror or e}") from None
        # reentrant; waits for the background tree writer, then applies its deferred page writes
        self._lock = JournalLock(self._apply_tree_writes)
        self._tree_buffers = HostBuffers()  # recycled host memory of queued tree steps
        self._tree_zeros: dict = {}  # unused zero step counts for drained tree rings, by sharding
        self._tree_spares: dict = {}  # drained tree rings read through, by spare key: the next drains' rings
        self._tree_failure = None  # a failed background/inline tree write: the state must be reopened
        self._closed = False
        self._epoch = 0
        self._warned_gpu = False
        self._cpu = jax.devices("cpu")[0]
        self._gpu = self._find_gpu() if enable_gpu else None
        if enable_gpu and self._gpu is None:
            self._warn_gpu("mmsb_start(enable_gpu=True) found no usable GPU; pages will live on the CPU")
        self.enable_gpu = self._gpu is not None
        self._init_content()
        self._observers: dict[int, list] = {}  # page id -> callbacks
        self._observed: dict[int, bytes] = {}  # page id -> its visible bytes at the last notification
        self._log = None  # the TLog, opened by mmsb_start / mmsb_open (None: read-only or replaying)
        self._log_batch = None  # an open multi-record log batch
        self._source = None  # a source tag for the records being logged (None: the log's default)
        self._ckpt_pool = None  # the background checkpoint writer (checkpoint(block=False))
        self._ckpt_pending: list = []  # (directory, epoch, Future) of background checkpoints not yet reported
        self.read_only = False
        self._counters = {
            "pages_created": 0,
            "pages_deleted": 0,
            "updates": 0,
            "noop_updates": 0,
            "deltas_routed": 0,
            "batches": 0,
            "checkpoints": 0,
        }

    def _init_content(self) -> None:
        """Empty pools, page table and graphs at epoch 0 (also what a failed restore returns to)."""
        self._epoch = 0
        self._pools: list[PagePool] = []
        self._pool_by_key: dict[tuple, PagePool] = {}
        self._spec_cache: dict[tuple, tuple[PagePool, tuple, Any]] = {}
        self._host_budget = MemoryBudget(host_memory_bytes(), "the host")
        self._budgets: dict[tuple, MemoryBudget] = {}  # accelerator device ids -> their budget
        self._table = PageTable(budget=self._host_budget)  # page id -> pool, slot, epoch (ids never reused)
        self._pool_graphs: dict = {}  # pool index -> dependencies in that pool
        self._trees: dict = {}  # tree name -> TreeInfo (the tree journal, shell/_trees.py)
        self._tree_pending = PageWrites()  # journaled tree steps not yet written to the pages
        self._ckpt_counters = None  # (epoch, counters) of the checkpoint restored (replay counts on from it)

    # ------------------------------------------------------------------ properties
    @property
    def epoch(self) -> int:
        """The last committed epoch (strictly increasing, one per committed operation)."""
        return self._epoch

    @property
    def closed(self) -> bool:
        return self._closed

    def __repr__(self) -> str:
        return f"MMSBState(path={self.path!r}, epoch={self._epoch}, pages={self.num_pages})"

    @property
    def num_pages(self) -> int:
        return sum(p.live for p in self._pools)

    # ------------------------------------------------------------------ page table
    def _check_open(self) -> None:
        if self._closed:
            raise StateClosedError(f"the state at {self.path!r} is stopped")
        self._raise_journal_failure()
        if self.read_only:
            raise ReadOnlyError(f"this is a read-only snapshot at epoch {self._epoch}; write to the live state")

    def _locate(self, page_id) -> tuple[int, PagePool, int]:
        pid = _inputs.page_id(page_id)
        if pid < 0 or pid >= self._table.next_id or self._table.pool[pid] < 0:
            raise PageNotFoundError(pid)
        return pid, self._pools[self._table.pool[pid]], int(self._table.slot[pid])

    @staticmethod
    def _check_semiring_name(semiring) -> None:
        """The log names the semiring, and replay resolves standard names to the standard
        records: a user record may not take one of those names."""
        try:
            standard = get_semiring(semiring.name)
        except InvalidArgumentError:
            return  # a name of its own: mmsb_open(semirings=[...]) resolves it
        if standard != semiring:
            raise InvalidArgumentError(
                f"semiring name {semiring.name!r} belongs to a standard semiring, and the log would "
                "replay it as that one; give this semiring a name of its own"
            )

    # ------------------------------------------------------------------ writes
    @collective("update_page")
    def update_page(self, page_id, data) -> int | None:
        """Replace a page's content; see :func:`mmsb_jax.update_page`."""
        with self._lock:
            self._check_open()
            pid, pool, slot = self._locate(page_id)
            arr = _inputs.page_data(data, pool, pid)
            if pool.sharding is None and getattr(pool.device, "platform", None) == "cpu":
                # CPU pool: diff against the zero-copy host view (no device round trip), then
                # one donated write, dispatched without waiting for it
                host = np.ascontiguousarray(arr)
                view = np.asarray(pool.array)  # waits for pending writes; dropped before the write
                mask = host_change_mask(view[slot], host)
                del view
                if not mask.any():
                    self._counters["noop_updates"] += 1
                    return None
                pool.array = write_page(pool.array, np.int32(slot), host)
                packed = None
            else:
                pool.array, packed = pool.ops.write_diff(pool.array, np.int32(slot), arr)
                packed = np.asarray(packed)
                if not packed.any():
                    self._counters["noop_updates"] += 1
                    return None
                host = np.asarray(arr)
                mask = np.unpackbits(packed, count=pool.page_elems).view(np.bool_)
            self._epoch += 1
            self._table.epoch[pid] = self._epoch
            self._counters["updates"] += 1
            if self._log is not None:
                if packed is None:
                    packed = np.packbits(mask)
                self._log_record("log_dense_packed", pid, pool.shape, packed, host.reshape(-1)[mask])
            self._after_write(pool, [slot])
            return self._epoch

    @collective("route_delta")
    def route_delta(self, page_id, delta) -> int | None:
        """Apply one delta to a page in a new epoch; see :func:`mmsb_jax.route_delta`."""
        with self._lock:
            self._check_open()
            pid, pool, slot = self._locate(page_id)
            delta = _inputs.delta(delta, pool, pid, where=f"page {pid}")
            if touches_nothing(delta):
                self._counters["noop_updates"] += 1
                return None
            pool.array = pool.ops.apply_at(pool.array, np.int32(slot), delta)
            self._epoch += 1
            self._table.epoch[pid] = self._epoch
            self._counters["deltas_routed"] += 1
            self._log_delta(pid, delta)
            self._after_write(pool, [slot])
            return self._epoch

    # ------------------------------------------------------------------ reads
    @collective("query_page")
    def query_page(self, page_id) -> jax.Array:
        """The page's current value; see :func:`mmsb_jax.query_page`."""
        with self._lock:
            if self._closed:
                raise StateClosedError(f"the state at {self.path!r} is stopped")
            pid, pool, slot = self._locate(page_id)
            return pool.ops.read_slot(self._visible_array(pool), np.int32(slot))

    def _visible_array(self, pool: PagePool) -> jax.Array:
        pg = self._pool_graphs.get(pool.index)
        return pool.array if pg is None else pg.visible(pool.array)

    # ------------------------------------------------------------------ replay
    def _continue_at(self, epoch: int, *, done: bool = False) -> None:
        """Replay only (journal off): the next operation takes ``epoch``, the one its log record
        carries; with ``done``, ``epoch`` is the last one applied."""
        self._epoch = int(epoch) if done else int(epoch) - 1

    # ------------------------------------------------------------------ digest & stats
    @collective("state_digest")
    def digest(self) -> str:
        """Hex digest of every live page (id, epoch, shape, dtype, bytes) and the epoch; for
        pages with dependencies, of the propagated values too (what :meth:`query_page` reads)."""
        with self._lock:
            h = hashlib.blake2b(digest_size=20)
            h.update(np.int64(self._epoch).tobytes())
            ids = self.page_ids()
            h.update(ids.tobytes())
            h.update(self._table.epoch[ids].tobytes())
            h.update(repr(self.dependencies()).encode())
            if any(pg.derive_names for pg in self._pool_graphs.values()):
                h.update(repr(self.derived()).encode())
            self._digest_trees(h)
            for pool in self._pools:
                sel = ids[self._table.pool[ids] == pool.index]
                h.update(repr((pool.shape, pool.dtype.str)).encode())
                if sel.size:
                    slots = self._table.slot[sel]
                    h.update(np.ascontiguousarray(host_rows(pool.array, slots, pool.sharding)).view(np.uint8).tobytes())
                    pg = self._pool_graphs.get(pool.index)
                    if pg is not None and pg.has_edges:  # the derived values, which replay recomputes
                        x = host_rows(pg.visible(pool.array), slots, pool.sharding)
                        h.update(np.ascontiguousarray(x).view(np.uint8).tobytes())
            return h.hexdigest()

    def stats(self) -> dict[str, Any]:
        """Telemetry: epoch, pages, bytes, per-pool allocator statistics, counters, and the
        sections ``latency``, ``propagation``, ``checkpoint_files``, ``cost``, ``adaptive`` and
        ``replay`` (see :func:`mmsb_jax.get_stats`)."""
        with self._lock:
            pools = [p.stats() for p in self._pools]
            capacity = sum(p["capacity"] for p in pools)
            pages = sum(p["pages"] for p in pools)
            log = self._log.stats() if self._log is not None else None
            extra = self._telemetry_sections(pools, log)
            extra["adaptive"]["checkpoint_policy"] = self._policy_stats()
            if log is not None:
                log = dict(log, fsync_seconds=self._telemetry.fsync.summary(), tail_bytes=extra["replay"]["tail_bytes"],
                           tail_records=extra["replay"]["tail_records"])
            return {
                "epoch": self._epoch,
                "pages": pages,
                "bytes": sum(p["bytes"] for p in pools),
                "capacity": capacity,
                "pressure": pages / capacity if capacity else 0.0,
                "pools": pools,
                "path": self.path,
                "semiring": self.semiring.name,
                "enable_gpu": self.enable_gpu,
                "kernels": backend_report(),
                "log": log,
                **self._counters,
                **extra,
            }

    # ------------------------------------------------------------------ lifecycle
    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            lost = None
            dist = self._dist
            if dist is not None and dist.usable and dist.depth == 0:
                try:  # also compares how the last operation ended
                    dist.agree("mmsb_stop", "")
                except MMSBError as e:  # a peer is gone or diverged: still close here
                    lost = e
            try:
                if self._ckpt_policy is not None and self._log is not None and not self._closed:
                    self.wait_for_checkpoints()
                    self._maybe_checkpoint()  # leave a tail within the policy's bound for the next open
                self.wait_for_checkpoints()
            finally:
                self._close_trees()
                if self._ckpt_pool is not None:
                    self._ckpt_pool.shutdown(wait=True)
                self._close_now()
            if lost is not None:
                raise lost
            self._raise_journal_failure()  # closed, but a tree step never reached the log

    def _close_now(self) -> None:
        with self._lock:
            self._closed = True
            if self._log is not None:
                log, self._log = self._log, None
                log.close()
                self._final_snapshot()
                if not self._owns_dir and self._writes_files:  # every epoch is durable now: an open that finds fewer lost some
                    # (after a failed tree write: the epochs the log holds, which reopen gives back)
                    reached = self._epoch if self._tree_failure is None else (log.last_epoch or 0)
                    update_state_file(self.path, closed_at=reached)
            if self._owns_dir and not self._snapshot:
                shutil.rmtree(self.path, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


