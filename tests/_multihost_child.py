"""One process of a multi-process test run (tests/test_multihost.py launches 2 or 4 of these).

``python tests/_multihost_child.py <scenario> <process id> <processes> <port> <workdir> [args]``:
starts JAX's multi-controller runtime over loopback (2 virtual CPU devices per process, gloo
collectives), runs the scenario on a state whose mesh spans every process's devices, and
writes what it saw to ``<workdir>/<scenario>.<process id>.json`` (process 0 also writes page
contents as ``.npz``). :func:`run_script` is also what the parent runs in one process, to compare.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import traceback

import numpy as np
from helpers import every_write


def record(rec) -> dict:
    """A log record as comparable data (timestamps left out)."""
    out = {"kind": rec.kind.name, "epoch": int(rec.epoch), "source": rec.source}
    for name in sorted(f.name for f in dataclasses.fields(rec)):
        if name in ("kind", "epoch", "source", "timestamp", "segment", "offset"):
            continue
        v = getattr(rec, name)
        if isinstance(v, np.ndarray):
            out[name] = [str(v.dtype), list(v.shape), v.tobytes().hex()]
        elif isinstance(v, (int, float, str, bool, type(None), tuple, list)):
            out[name] = repr(v)
        else:
            out[name] = repr(type(v))
    return out


def pages_of(mmsb, state, ids) -> dict:
    return {str(i): np.asarray(mmsb.query_page(state, i)) for i in ids}


def short_script(mmsb, state):
    """A few writes of each kind and a propagation (the 4-process run)."""
    import jax.numpy as jnp

    ids = mmsb.create_pages(state, 12, size=16, dtype=jnp.float32).tolist()
    for i in ids[:6]:
        mmsb.update_page(state, i, np.full(16, float(i), np.float32))
    mmsb.route_sparse_batch(state, ids[6:9], np.array([[0, 1], [2, 3], [4, 5]]), np.ones((3, 2), np.float32))
    mmsb.route_delta(state, ids[9], mmsb.accumulate_delta(jnp.full(16, 2.0)))
    mmsb.add_dependency(state, ids[0], ids[11], weight=3.0)
    mmsb.update_page(state, ids[0], np.full(16, 5.0, np.float32))
    return ids


# --------------------------------------------------------------------------- scenarios
def run_script(mmsb, state, semiring: str):
    """:func:`helpers.every_write`, a checkpoint, a write after it (a log tail), and what a
    reader sees: ``(result, pages)``. The parent runs the same in one process."""
    ids = every_write(state, float(mmsb.semirings.get_semiring(semiring).zero))
    mid = state.epoch
    mmsb.checkpoint(state)
    mmsb.update_page(state, ids[1], np.full(16, 6.0, np.float32))  # a log tail after the checkpoint
    pages = pages_of(mmsb, state, ids)
    snap = mmsb.replay_to_epoch(state, mid - 3)
    result = {
        "ids": ids,
        "epoch": state.epoch,
        "digest": mmsb.state_digest(state),
        "snap_digest": mmsb.state_digest(snap),
        "log": [record(r) for r in mmsb.query_log(state)],
    }
    return result, pages


def scenario_script(mmsb, mesh, me, work, params):
    """The script under real and tropical, a checkpoint in the middle, replay, reopen N -> N,
    and a state the parent wrote alone reopened here (1 -> N)."""
    out = {}
    for semiring in ("real", "tropical"):
        path = os.path.join(work, f"n-{semiring}")
        state = mmsb.mmsb_start(path, semiring=semiring, mesh=mesh, peer_timeout=60)
        res, pages = run_script(mmsb, state, semiring)
        res["local_shards"] = [len(p.array.addressable_shards) for p in state._pools]
        res["global_devices"] = [len(p.sharding.device_set) for p in state._pools if p.sharding is not None]
        res["fully_addressable"] = [p.array.is_fully_addressable for p in state._pools]
        mmsb.mmsb_stop(state)
        again = mmsb.mmsb_open(path, mesh=mesh, peer_timeout=60)
        res["reopened_digest"] = mmsb.state_digest(again)
        res["reopened_skipped"] = [list(x) for x in again.recovery_report.skipped_checkpoints]
        mmsb.mmsb_stop(again)
        if me == 0:
            np.savez(os.path.join(work, f"pages-{semiring}.npz"), **pages)
        out[semiring] = res
    if params.get("one"):  # a directory the parent wrote in one process
        st = mmsb.mmsb_open(params["one"], mesh=mesh, peer_timeout=60)
        out["from_one"] = {"digest": mmsb.state_digest(st), "epoch": st.epoch,
                           "skipped": [list(x) for x in st.recovery_report.skipped_checkpoints]}
        mmsb.mmsb_stop(st)
    return out


def scenario_diverge(mmsb, mesh, me, work, params):
    """Processes asked different things (other data; another operation): refused in every
    process, before anything is logged or applied."""
    import jax.numpy as jnp

    out = {}
    state = mmsb.mmsb_start(os.path.join(work, "div"), mesh=mesh, peer_timeout=60)
    page = mmsb.create_page(state, size=8, dtype=jnp.float32)
    mmsb.update_page(state, page.id, np.arange(8, dtype=np.float32))
    out["before"] = state.epoch
    try:  # process 1 writes other data
        mmsb.update_page(state, page.id, np.full(8, 1.0 + (me == 1), np.float32))
        out["data"] = None
    except mmsb.MMSBError as e:
        out["data"] = [type(e).__name__, str(e)]
    out["epoch_after"] = state.epoch
    try:
        mmsb.update_page(state, page.id, np.zeros(8, np.float32))
        out["then"] = None
    except mmsb.MMSBError as e:
        out["then"] = type(e).__name__
    mmsb.mmsb_stop(state)
    state = mmsb.mmsb_start(os.path.join(work, "div2"), mesh=mesh, peer_timeout=60)
    page = mmsb.create_page(state, size=8, dtype=jnp.float32)
    try:  # another operation in one process
        if me == 0:
            mmsb.delete_page(state, page.id)
        else:
            mmsb.update_page(state, page.id, np.ones(8, np.float32))
        out["kind"] = None
    except mmsb.MMSBError as e:
        out["kind"] = [type(e).__name__, str(e)]
    out["kind_epoch"] = state.epoch
    mmsb.mmsb_stop(state)
    return out


def _lock_is_free(path) -> bool:
    """Whether nothing in this process (a leaked log) holds the flock of ``path``."""
    import fcntl

    if not os.path.exists(path):
        return True
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False
        fcntl.flock(f, fcntl.LOCK_UN)
        return True


def scenario_bad_input(mmsb, mesh, me, work, params):
    """Bad input to a distributed state: a clear error in every process, nothing created or
    changed (a wrong page id inside an agreed operation, options only a distributed state has)."""
    import jax.numpy as jnp

    out = {}
    for name, call in [
        ("path_none", lambda: mmsb.mmsb_start(None, mesh=mesh)),
        ("peer_timeout", lambda: mmsb.mmsb_start(os.path.join(work, "bad"), mesh=mesh, peer_timeout=-1)),
        ("per_host", lambda: mmsb.mmsb_start(os.path.join(work, f"host{me}"), mesh=mesh)),
    ]:
        try:
            call()
            out[name] = None
        except mmsb.MMSBError as e:
            out[name] = [type(e).__name__, str(e)]
    out["bad_dir_created"] = os.path.exists(os.path.join(work, "bad", "mmsb-state.json"))
    out["per_host_lock_free"] = _lock_is_free(os.path.join(work, f"host{me}", "log", "tlog.lock"))
    state = mmsb.mmsb_start(os.path.join(work, "good"), mesh=mesh, peer_timeout=60)
    page = mmsb.create_page(state, size=4, dtype=jnp.float32)
    digest = mmsb.state_digest(state)
    try:
        mmsb.update_page(state, page.id + 7, np.ones(4, np.float32))
        out["page"] = None
    except mmsb.MMSBError as e:
        out["page"] = [type(e).__name__, str(e)]
    out["unchanged"] = mmsb.state_digest(state) == digest  # and the state still works
    out["after"] = mmsb.update_page(state, page.id, np.ones(4, np.float32))
    # the propagation policy is "fixed" here: choices from each process's timings would differ
    out["policy"] = state.propagation_policy
    try:
        state.propagation_policy = "cost"
        out["policy_cost"] = None
    except mmsb.MMSBError as e:
        out["policy_cost"] = [type(e).__name__, str(e)]
    mmsb.mmsb_stop(state)
    return out


def tools_script(mmsb, state):
    """Observers, diffs between epochs, a page's history, compaction and replay after it."""
    import jax.numpy as jnp

    seen = []
    ids = mmsb.create_pages(state, 4, size=8, dtype=jnp.float32).tolist()
    mmsb.add_dependency(state, ids[0], ids[3])
    state.observe(ids[3], lambda pid, epoch: seen.append([pid, epoch]))
    for k in range(4):
        mmsb.update_page(state, ids[k % 3], np.full(8, float(k + 1), np.float32))
    out = {
        "seen": seen,
        "diff": {str(k): v for k, v in mmsb.diff(state, 2, state.epoch)["changed"].items()},
        "history": [r.epoch for r in mmsb.query_log(state, page_id=ids[1])],
    }
    pending = mmsb.checkpoint(state, block=False)  # orbax writes on the state's thread while writes go on
    for k in range(3):
        mmsb.update_page(state, ids[1], np.full(8, 10.0 + k, np.float32))
    out["background"] = os.path.basename(pending.result(120))
    compacted = mmsb.compact_log(state)
    out["compacted"] = [compacted["epoch"], len(compacted["dropped_segments"])]
    mmsb.update_page(state, ids[2], np.full(8, 9.0, np.float32))
    out["replayed"] = mmsb.state_digest(mmsb.replay_to_epoch(state, state.epoch))
    out["digest"] = mmsb.state_digest(state)
    try:
        mmsb.replay_to_epoch(state, 2)
        out["before_compaction"] = None
    except mmsb.MMSBError as e:
        out["before_compaction"] = type(e).__name__
    return out


def scenario_tools(mmsb, mesh, me, work, params):
    state = mmsb.mmsb_start(os.path.join(work, "tools"), mesh=mesh, peer_timeout=60)
    out = tools_script(mmsb, state)
    mmsb.mmsb_stop(state, checkpoint_path=os.path.join(work, "tools-stopped"))
    again = mmsb.mmsb_open(os.path.join(work, "tools-stopped"), mesh=mesh)  # a checkpoint directory
    out["stopped_digest"] = mmsb.state_digest(again)
    mmsb.mmsb_stop(again)
    return out


def scenario_four(mmsb, mesh, me, work, params):
    """4 processes: a state written by 2 reopened here (N -> M), the short script on a new
    state, its checkpoint, reopen (N -> N)."""
    out = {}
    for name in params.get("reopen", []):
        st = mmsb.mmsb_start(name, mesh=mesh, exist_ok=True, semiring=os.path.basename(name).split("-")[-1])
        out[name] = {"digest": mmsb.state_digest(st), "epoch": st.epoch}
        mmsb.mmsb_stop(st)
    path = os.path.join(work, "four")
    state = mmsb.mmsb_start(path, mesh=mesh, peer_timeout=60)
    ids = short_script(mmsb, state)
    mmsb.checkpoint(state)
    out["digest"] = mmsb.state_digest(state)
    out["pages"] = {str(i): np.asarray(mmsb.query_page(state, i)).tolist() for i in ids}
    mmsb.mmsb_stop(state)
    again = mmsb.mmsb_open(path, mesh=mesh)
    out["reopened_digest"] = mmsb.state_digest(again)
    mmsb.mmsb_stop(again)
    return out


def scenario_kill(mmsb, mesh, me, work, params):
    """Process ``victim`` dies after epoch ``k``; the others must raise within the bound."""

    victim, k, timeout = params["victim"], params["k"], params["timeout"]
    state = mmsb.mmsb_start(os.path.join(work, "kill"), mesh=mesh, peer_timeout=timeout, fsync="always")
    ids = kill_script(mmsb, state, k)
    if me == victim:
        os.kill(os.getpid(), 9)
    t0 = time.monotonic()
    out = {"committed": state.epoch}
    try:
        mmsb.update_page(state, ids[0], np.full(16, -1.0, np.float32))
        out["error"] = None
    except mmsb.MMSBError as e:
        out["error"] = [type(e).__name__, str(e), getattr(e, "processes", None)]
    out["seconds"] = time.monotonic() - t0
    try:
        mmsb.update_page(state, ids[0], np.full(16, -2.0, np.float32))
        out["then"] = None
    except mmsb.MMSBError as e:
        out["then"] = type(e).__name__
    mmsb.mmsb_stop(state)
    out["stopped"] = True
    return out


def kill_script(mmsb, state, k):
    """Writes up to epoch ``k`` (the same in the parent, to compare)."""
    import jax.numpy as jnp

    ids = mmsb.create_pages(state, 8, size=16, dtype=jnp.float32).tolist()
    while state.epoch < k:
        mmsb.update_page(state, ids[state.epoch % 8], np.full(16, float(state.epoch), np.float32))
    return ids


SCENARIOS = {"script": scenario_script, "diverge": scenario_diverge, "bad_input": scenario_bad_input,
             "tools": scenario_tools, "four": scenario_four, "kill": scenario_kill}


def main(argv):
    scenarios, me, n, port, work, params = argv
    me, n, params = int(me), int(n), json.loads(params)
    import jax

    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    import mmsb_jax as mmsb

    mmsb.init_distributed(f"127.0.0.1:{port}", n, me, heartbeat_timeout=params.get("heartbeat", 60),
                          initialization_timeout=60, recoverable=params.get("recoverable", False))
    import jax.numpy as jnp
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    mesh = Mesh(np.array(jax.devices()), ("pages",))
    # multi-process collectives work here: one psum over every process's devices
    ones = jax.make_array_from_callback((len(jax.devices()),), NamedSharding(mesh, PartitionSpec("pages")),
                                        lambda idx: np.ones(1, np.int32))
    total = int(jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, PartitionSpec()))(ones))
    with open(os.path.join(work, f"ready.{me}"), "w") as f:
        f.write(str(total))
    for scenario in scenarios.split(","):
        t0 = time.monotonic()
        try:
            out = SCENARIOS[scenario](mmsb, mesh, me, work, params)
            out["ok"] = True
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            out = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        out["wall"] = time.monotonic() - t0
        result = os.path.join(work, f"{scenario}.{me}.json")
        with open(result + ".tmp", "w") as f:
            json.dump(out, f)
        os.replace(result + ".tmp", result)
        if not out["ok"]:
            break
    if me == 0 and out["ok"] and "kill" not in scenarios.split(","):
        # process 0 hosts the coordination service: leaving before a peer has written its
        # result resets the peer's connection, and the peer aborts without reporting
        # (seen under load in the full suite). Wait (bounded) for every peer's result.
        peers = [os.path.join(work, f"{scenario}.{i}.json") for i in range(n)]
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(os.path.exists(p) for p in peers):
            time.sleep(0.01)
    sys.stdout.flush()
    os._exit(0)  # skip the runtime's shutdown barrier: a peer may be gone on purpose


if __name__ == "__main__":
    main(sys.argv[1:])
