"""One state over several JAX processes (``jax.distributed``): agreement, one log writer, sync.

In a multi-controller JAX job every process runs the same program; a state whose mesh spans
the devices of several processes is one state, and every process calls the same shell
operations with the same arguments, each holding only the shards of its own devices.

**Who writes the log: process 0 alone.** One writer keeps "one logical log" the very bytes a
single-process run writes (records are built from the operation's arguments, which every
process holds whole), needs no merge of per-process logs at open, and keeps the log's rule of
one writer per directory (its flock). The other processes keep a :class:`FollowerLog` (it
writes nothing) and read the log and checkpoints from the same directory, so the state
directory must lie on a filesystem every process sees (checked at start and open: process 0
writes a fresh stamp there, the others must read it back). Hosts with a directory each are
not supported: the processes would replay different logs.

**Agreement before anything changes.** Every collective operation first exchanges, through the
key-value store of JAX's coordination service (the one ``jax.distributed.initialize`` starts in
process 0, which orbax's barriers also use), a fingerprint of its kind and arguments (SHA-256
of their structure, CRC-32C of each array's bytes) together with how this process's previous
operation ended (its epoch, or its error). Any difference raises :class:`DivergenceError` in
every process before the operation is logged or applied; a previous operation that ended
differently (e.g. a memory check that failed on one host only) is found by the next one. One
exchange per operation (a ``key_value_set`` and one blocking get per other process, no XLA
collective): 1.5-1.7 ms over loopback on the 2 shared cores of the test machine, see
``benchmarks/bench_multihost.py``.
The key-value store rather than a gloo/NCCL all-gather because its waits take a timeout, and
a dead peer must not hang the others (a collective with a dead peer waits until JAX's
heartbeat ends the job).

**Failures.** A process that does not reach an operation within ``peer_timeout`` seconds
(it died, hung, or runs other operations) makes every other process raise
:class:`PeerLostError` naming it, before anything of that operation is logged or applied; the
state then refuses every operation, ``mmsb_stop`` still closes it locally (process 0 flushes
and closes the log), and the directory reopens to the last epoch process 0 committed. A peer
that dies inside an operation's collectives fails them at once when JAX runs with
``jax_enable_recoverability`` (raised as :class:`PeerLostError`); without it JAX's runtime
stops every process when its heartbeat misses the peer (``heartbeat_timeout_seconds``), so
keep ``peer_timeout`` below that to see the error first. If process 0 dies, JAX's runtime
(whose coordination service lives there) stops the others at once with its own fatal error;
the log holds what process 0 committed. :func:`init_distributed` sets these options.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import secrets
import time

import jax

from .._compat import RuntimeFailure, distributed_client, initialize_distributed, use_cpu_collectives
from .._errors import DivergenceError, InvalidArgumentError, MMSBError, PeerLostError, SerializationError
from ..log._files import read_checked_json, write_checked_json
from ..telemetry._recorder import timed_call
from ._fingerprint import fingerprint

#: The stamp process 0 writes into a distributed state's directory at each start and open.
STAMP_FILE = "mmsb-writer.json"
MAX_PEER_TIMEOUT = 2_000_000  # seconds (~23 days): the coordination service takes int32 milliseconds
_KEYS_PER_BLOCK = 64  # exchange keys are dropped a block at a time, two blocks behind
_numbers = itertools.count()  # distributed states made in this process (the same order everywhere)


def init_distributed(coordinator_address: str, num_processes: int, process_id: int, *,
                     heartbeat_timeout: int = 100, initialization_timeout: int = 300,
                     recoverable: bool = False, cpu_collectives: str = "gloo") -> None:
    """Start JAX's multi-controller runtime for a distributed state (call once per process,
    before any other JAX work).

    ``jax.distributed.initialize`` with CPU collectives on (gloo: CPU devices of several
    processes can then run one program) and the runtime's failure options:
    ``heartbeat_timeout`` (seconds before the runtime counts a silent process as dead) and
    ``recoverable`` (``jax_enable_recoverability``: when a process dies, the others keep
    running and get :class:`~mmsb_jax.PeerLostError` from the state instead of being stopped
    by the runtime; JAX calls the option experimental). Calling
    ``jax.distributed.initialize`` yourself works as well.

    Args:
      coordinator_address: ``"host:port"`` of process 0 (``"127.0.0.1:<port>"`` for processes
        on one machine).
      num_processes: how many processes the job has.
      process_id: this process's index, ``0 .. num_processes - 1``.
      heartbeat_timeout, initialization_timeout: seconds, passed to ``jax.distributed.initialize``.
      recoverable: set ``jax_enable_recoverability`` first.
      cpu_collectives: the CPU collectives implementation (``"gloo"``; ``"mpi"`` where built).

    Example (each of two processes on one machine, ``i`` being 0 or 1)::

        import jax, numpy as np, mmsb_jax as mmsb
        mmsb.init_distributed("127.0.0.1:12345", num_processes=2, process_id=i)
        mesh = jax.sharding.Mesh(np.array(jax.devices()), ("pages",))  # both processes' devices
        state = mmsb.mmsb_start("/shared/state", mesh=mesh)             # one state, two processes
    """
    if recoverable:
        jax.config.update("jax_enable_recoverability", True)
    use_cpu_collectives(cpu_collectives)
    initialize_distributed(coordinator_address=coordinator_address, num_processes=num_processes,
                           process_id=process_id, heartbeat_timeout_seconds=int(heartbeat_timeout),
                           initialization_timeout=int(initialization_timeout))


def processes_of(mesh) -> list[int]:
    """The indices of the processes whose devices ``mesh`` holds."""
    return sorted({d.process_index for d in mesh.devices.flat})


def coordinator_for(mesh, path, peer_timeout) -> Coordinator | None:
    """A :class:`Coordinator` for a state on ``mesh`` when the mesh spans several processes,
    else ``None`` (a state of this process alone)."""
    if (isinstance(peer_timeout, bool) or not isinstance(peer_timeout, (int, float))
            or not 0 < peer_timeout <= MAX_PEER_TIMEOUT):
        raise InvalidArgumentError(
            f"peer_timeout={peer_timeout!r} must be a number of seconds > 0 and <= {MAX_PEER_TIMEOUT} "
            "(the runtime waits in whole milliseconds of a 32-bit int)")
    if not isinstance(mesh, jax.sharding.Mesh) or len(processes_of(mesh)) <= 1:
        return None  # no mesh, a bad one (MMSBState names it), or this process's devices alone
    if processes_of(mesh) != list(range(jax.process_count())):
        raise InvalidArgumentError(
            f"the mesh holds devices of processes {processes_of(mesh)}; a distributed state needs a mesh "
            f"over the devices of every process (0..{jax.process_count() - 1})"
        )
    if path is None:
        raise InvalidArgumentError(
            "a state spread over several processes needs path= (a directory on a filesystem every "
            "process sees); path=None would give each process a temporary directory of its own"
        )
    client = distributed_client()
    if client is None:  # pragma: no cover - a mesh over several processes needs the runtime
        raise InvalidArgumentError("the mesh spans several processes, but jax.distributed is not initialized")
    return Coordinator(client, float(peer_timeout), f"mmsb/{next(_numbers)}")


# --------------------------------------------------------------------------- the coordinator
class Coordinator:
    """What the processes of one distributed state share: agreement on each operation,
    out-of-band exchanges (checkpoint checksums), and the failure that stops them.

    Attributes:
      index: this process's index (0 writes the log and the checkpoint manifests).
      count: how many processes hold the state.
      timeout: ``peer_timeout``, the longest wait for another process at one exchange.
    """

    def __init__(self, client, timeout: float, namespace: str, *, index: int | None = None,
                 count: int | None = None):
        self.client = client  # the coordination service's client (its key-value store)
        self.index = jax.process_index() if index is None else index
        self.count = jax.process_count() if count is None else count
        self.timeout = timeout
        self.namespace = namespace
        self.seq = 0  # exchanges made (the same sequence in every process)
        self.tickets = itertools.count()  # numbers for out-of-band exchanges (checkpoints)
        self.depth = 0  # > 0 inside an operation (or a replay): nested calls do not agree again
        self.last = "epoch 0"  # how this process's previous operation ended
        self.failure: MMSBError | None = None  # once set, every operation raises it
        self.nonce = None

    @property
    def is_writer(self) -> bool:
        return self.index == 0

    # ------------------------------------------------------------------ exchanges
    def exchange(self, what: str, payload: str, *, key: str | None = None) -> list[str]:
        """Every process's ``payload`` for this step, in process order (an all-gather over the
        coordination service's key-value store).

        ``key`` names an out-of-band exchange (any thread; unique per state); without it the
        exchange takes the next step of the operation sequence (the calling thread holds the
        state's lock).

        Raises:
          PeerLostError: a process did not post its payload within ``timeout`` seconds, or the
            coordination service is unreachable; the state is stopped.
        """
        self.raise_failure()
        sequenced = key is None
        if sequenced:
            self.seq += 1
            key = f"{self.namespace}/{self.seq // _KEYS_PER_BLOCK}/{self.seq}"
        else:
            key = f"{self.namespace}/x/{key}"
        out = [""] * self.count
        out[self.index] = payload
        try:
            self.client.key_value_set(f"{key}/{self.index}", payload)
        except RuntimeFailure as e:
            raise self.fail(PeerLostError(
                f"{what}: the coordination service (process 0) cannot be reached: {_first_line(e)}",
                [0], what)) from e
        deadline = time.monotonic() + self.timeout
        for q in range(self.count):
            if q == self.index:
                continue
            wait_ms = max(1, int((deadline - time.monotonic()) * 1000))
            try:
                out[q] = self.client.blocking_key_value_get(f"{key}/{q}", wait_ms)
            except RuntimeFailure as e:
                raise self.fail(self._lost(what, key, q, e)) from e
        if sequenced and self.index == 0 and self.seq % _KEYS_PER_BLOCK == 0:
            self._drop_block(self.seq // _KEYS_PER_BLOCK - 2)
        return out

    def _lost(self, what: str, key: str, first: int, error) -> PeerLostError:
        missing = [first]
        for q in range(first + 1, self.count):
            if q != self.index:
                try:
                    self.client.key_value_try_get(f"{key}/{q}")
                except RuntimeFailure:
                    missing.append(q)
        names = ", ".join(map(str, missing))
        if "DEADLINE" not in str(error).upper():
            return PeerLostError(
                f"{what}: waiting for process {names} failed ({_first_line(error)}); the state refuses "
                "every operation from now on (mmsb_stop still closes it here; reopen it with mmsb_open)",
                missing, what)
        return PeerLostError(
            f"{what}: process {names} did not reach this operation within peer_timeout={self.timeout:g} s "
            f"(it died, hung, or runs other operations); the state refuses every operation from now on "
            f"(mmsb_stop still closes it here; reopen it with mmsb_open)", missing, what)

    def _drop_block(self, block: int) -> None:
        """Delete exchange keys two blocks behind: every process has read them (each has
        posted a later step, which it does only after reading all of the earlier ones)."""
        if block >= 0:
            try:
                self.client.key_value_delete(f"{self.namespace}/{block}")
            except RuntimeFailure:  # pragma: no cover - best effort; a leftover key is harmless
                pass

    def barrier(self, what: str) -> None:
        self.exchange(what, "")

    # ------------------------------------------------------------------ agreement
    def agree(self, kind: str, print_: str) -> None:
        """Exchange this operation's fingerprint and the previous operation's outcome; raise
        :class:`DivergenceError` (in every process) unless all are equal."""
        what = f"{kind} (step {self.seq + 1} of this state)"
        got = [p.split("|", 2) for p in self.exchange(what, f"{kind}|{print_}|{self.last}")]
        if all(g == got[0] for g in got):
            return
        if any(g[2] != got[0][2] for g in got):
            per = {q: f"ended the previous operation with {g[2]}" for q, g in enumerate(got)}
            head = f"{what}: the processes ended their previous operation differently"
        else:
            per = {q: f"asked for {g[0]}(<{g[1][:12]}>)" for q, g in enumerate(got)}
            head = f"{what}: the processes were asked different things (kind and arguments' fingerprint)"
        detail = "; ".join(f"process {q} {v}" for q, v in per.items())
        raise self.fail(DivergenceError(
            f"{head}: {detail}. Nothing of it was logged or applied; every process must call the same "
            "operations with the same arguments. The state refuses every operation from now on.",
            what, per))

    def settle(self, state, error: BaseException | None) -> None:
        """Remember how the operation ended, for the next agreement to compare."""
        self.last = f"epoch {state.epoch}" if error is None else f"{type(error).__name__} at epoch {state.epoch}"

    def everywhere(self, what: str, fn, *, share=lambda result: ""):
        """Run ``fn()`` here, then compare outcomes: raise the error all processes hit alike,
        :class:`DivergenceError` when they differ; return ``(result, [shared payload per
        process])`` when all succeeded."""
        try:
            result, error = fn(), None
            note = "ok|" + share(result)
        except Exception as e:  # noqa: BLE001 - compared across processes, then raised
            result, error = None, e
            note = f"{type(e).__name__}|{fingerprint(str(e))}"
        got = self.exchange(what, note)
        kinds = [g.split("|", 1)[0] for g in got]
        if all(k == "ok" for k in kinds):
            return result, [g.split("|", 1)[1] for g in got]
        if all(g == got[0] for g in got):
            raise error
        per = {q: (g if g.startswith("ok|") else g.split("|", 1)[0]) for q, g in enumerate(got)}
        err = DivergenceError(
            f"{what} ended differently in the processes: "
            + "; ".join(f"process {q}: {'succeeded' if v.startswith('ok|') else v}" for q, v in per.items())
            + (f" (here: {type(error).__name__}: {error})" if error is not None else ""), what, per)
        raise self.fail(err) from error

    # ------------------------------------------------------------------ failure
    def fail(self, error: MMSBError) -> MMSBError:
        if self.failure is None:
            self.failure = error
        return error

    def raise_failure(self) -> None:
        if self.failure is not None:
            raise type(self.failure)(*self.failure.args[:1], *_extra(self.failure)) from self.failure

    def lost_in_collective(self, what: str, error) -> PeerLostError:
        return self.fail(PeerLostError(
            f"{what}: a collective with the other processes failed ({_first_line(error)}): a process "
            "died or left; the state refuses every operation from now on (mmsb_stop still closes it here)",
            [], what))

    @property
    def usable(self) -> bool:
        return self.failure is None

    # ------------------------------------------------------------------ the directory
    def open_log(self, state, recovery: str) -> None:
        """Start journaling: process 0 opens the log (taking its lock) and stamps the
        directory; the others keep a :class:`FollowerLog` and check that they see the stamp,
        i.e. the same directory."""
        self.barrier("open the log (every process has read the directory)")
        stamp = os.path.join(state.path, STAMP_FILE)

        def open_writer():
            if self.is_writer:
                state._open_writer_log(recovery)
                nonce = secrets.token_hex(16)
                write_checked_json(stamp, {"format": "mmsb-writer", "nonce": nonce, "processes": self.count})
                return nonce
            state._log = FollowerLog()
            return ""

        _, shared = self.everywhere("open the log", open_writer, share=lambda nonce: nonce)
        self.nonce = shared[0]

        def sees_stamp() -> bool:
            try:
                return read_checked_json(stamp, "writer stamp").get("nonce") == self.nonce
            except SerializationError:
                return False

        _, seen = self.everywhere("check the shared directory", sees_stamp, share=lambda ok: "1" if ok else "0")
        blind = [q for q, ok in enumerate(seen) if ok != "1"]
        if blind:  # the same error in every process (not a divergence: they agree on who is blind)
            raise SerializationError(
                f"process{'es' if len(blind) > 1 else ''} {', '.join(map(str, blind))} of {self.count} "
                f"{'do' if len(blind) > 1 else 'does'} not see the stamp process 0 just wrote to {stamp!r}: "
                "a distributed state's directory must lie on a filesystem every process shares (a "
                "directory per host is refused: the processes would replay different logs)"
            )


_PEER_WORDS = ("gloo", "nccl", "connection", "unavailable", "deadline_exceeded", "coordination service", "peer")


def _peer_failure(error) -> bool:
    """Whether a runtime error says a peer or the link to it failed (not, e.g., out of memory)."""
    text = str(error).lower()
    return any(w in text for w in _PEER_WORDS)


def _first_line(error) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _extra(error) -> tuple:
    if isinstance(error, DivergenceError):
        return (error.operation, error.processes)
    if isinstance(error, PeerLostError):
        return (error.processes, error.operation)
    return ()


class FollowerLog:
    """The log of a process other than 0: it writes nothing (process 0 writes every record)."""

    def __getattr__(self, name):
        if name.startswith("log_") or name in ("sync", "flush", "close", "seal", "append_record"):
            return _nothing
        raise AttributeError(name)

    def batch(self, epoch, *, source=None):
        return _NullBatch()

    def drop_segments_through(self, epoch):
        return []

    def stats(self):
        return {"writer": False}


def _nothing(*args, **kwargs):
    return None


class _NullBatch:
    def __getattr__(self, name):
        if name.startswith("log_") or name in ("commit", "abort", "append_record"):
            return _nothing
        raise AttributeError(name)


# --------------------------------------------------------------------------- operations
def collective(kind: str):
    """Make an :class:`MMSBState` method (or a function of a state) a collective operation:
    in a distributed state, the processes agree on it (:meth:`Coordinator.agree`) before it
    runs; its outcome is compared at the next agreement. Nested calls and replays run as
    they are; a state of one process is untouched. Every call is timed here, the one place
    (:func:`~mmsb_jax.telemetry.timed_call`: the ``kind`` latency histogram of the state)."""

    def wrap(fn):
        @functools.wraps(fn)
        def run(state, *args, **kwargs):
            dist = getattr(state, "_dist", None)
            if dist is None:
                out = timed_call(state, kind, fn, args, kwargs)
                if getattr(state, "_ckpt_policy", None) is not None:
                    state._maybe_checkpoint()  # after the operation, outside it (adaptive/_checkpoint_policy)
                return out
            with state._lock:
                if dist.depth or state.closed:
                    return timed_call(state, kind, fn, args, kwargs)
                dist.agree(kind, fingerprint(args, kwargs))
                dist.depth += 1
                try:
                    out = timed_call(state, kind, fn, args, kwargs)
                except RuntimeFailure as e:
                    dist.settle(state, e)
                    if _peer_failure(e):  # a collective failed under us: a peer left
                        raise dist.lost_in_collective(kind, e) from e
                    raise
                except BaseException as e:
                    dist.settle(state, e)
                    raise
                finally:
                    dist.depth -= 1
                dist.settle(state, None)
                return out

        return run

    return wrap


class paused:
    """``with paused(state):`` runs replays and restores without agreement (every process
    reads the same files, so they apply the same records)."""

    def __init__(self, state):
        self.dist = getattr(state, "_dist", None)

    def __enter__(self):
        if self.dist is not None:
            self.dist.depth += 1

    def __exit__(self, *exc):
        if self.dist is not None:
            self.dist.depth -= 1


def same_everywhere(dist, what: str, value) -> None:
    """Raise :class:`DivergenceError` unless every process computed the same ``value`` (e.g.
    whether a state exists at the path, or the epoch a replay reached)."""
    if dist is None:
        return
    got = dist.exchange(what, json.dumps(value, sort_keys=True, default=str))
    if len(set(got)) > 1:
        per = {q: g for q, g in enumerate(got)}
        raise dist.fail(DivergenceError(
            f"the processes disagree on {what}: " + "; ".join(f"process {q}: {g}" for q, g in per.items())
            + " (is the state directory on a filesystem every process shares?)", what, per))

