"""A state over several JAX processes: 2 and 4 local processes (``jax.distributed`` over
loopback, 2 virtual CPU devices each, gloo collectives), one mesh over all their devices.

Each run launches ``tests/_multihost_child.py`` once per process, with a hard time limit
(every child is killed after it), and compares what the processes saw with the same script
run here in one process: equal digests, bit-equal pages, identical log records and
checkpoint manifests; reopening across process counts (N -> 1, 1 -> N, N -> N, 2 -> 4);
divergent calls refused in every process before anything is logged; a killed process makes
the others raise within the bound, and the directory reopens to the last committed epoch.

Where multi-process collectives cannot start (no loopback, no gloo), every test here is
skipped with the reason printed, never silently. The longer runs (the whole script in 4
processes, the death of process 0, JAX's recoverable mode) are ``@pytest.mark.slow``.
"""

from __future__ import annotations

import glob
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import _multihost_child as child
import mmsb_jax as mmsb
from mmsb_jax import DivergenceError, InvalidArgumentError, PeerLostError
from mmsb_jax._compat import RuntimeFailure
from mmsb_jax.log._checkpoint import load_arrays
from mmsb_jax.log._crc import array_crc, combine_parts
from mmsb_jax.shell._distributed import Coordinator, FollowerLog, coordinator_for, fingerprint

ROOT = Path(__file__).resolve().parent.parent
CHILD = Path(__file__).with_name("_multihost_child.py")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}  # loopback only
    env.update(XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu", NO_PROXY="*",
               PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    return env


def launch(n: int, scenarios: str, work: Path, params: dict | None = None, *, limit: float = 240) -> dict:
    """Run ``scenarios`` in ``n`` processes; kill every one still running after ``limit`` s.

    Returns ``{"results": {scenario: [result of process i or None]}, "codes": [...],
    "outputs": [...], "seconds": wall}``. Skips the test (saying why) when the processes
    cannot start multi-process collectives at all."""
    work.mkdir(parents=True, exist_ok=True)
    port, env = _free_port(), _child_env()
    logs = [open(work / f"out.{i}", "w") for i in range(n)]
    t0 = time.monotonic()
    procs = [subprocess.Popen([sys.executable, str(CHILD), scenarios, str(i), str(n), str(port), str(work),
                               json.dumps(params or {})], env=env, stdout=logs[i], stderr=subprocess.STDOUT)
             for i in range(n)]
    try:
        for p in procs:
            try:
                p.wait(timeout=max(1.0, limit - (time.monotonic() - t0)))
            except subprocess.TimeoutExpired:
                break
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
        for f in logs:
            f.close()
    seconds = time.monotonic() - t0
    outputs = [(work / f"out.{i}").read_text(errors="replace") for i in range(n)]
    if not any((work / f"ready.{i}").exists() for i in range(n)):
        tail = "\n".join(line for line in outputs[0].splitlines()[-8:])
        pytest.skip(f"multi-process JAX collectives are unavailable here (jax.distributed over loopback "
                    f"with gloo did not start): {tail}")
    results = {}
    for sc in scenarios.split(","):
        results[sc] = []
        for i in range(n):
            f = work / f"{sc}.{i}.json"
            results[sc].append(json.loads(f.read_text()) if f.exists() else None)
    return {"results": results, "codes": [p.returncode for p in procs], "outputs": outputs, "seconds": seconds}


def _ok(run: dict, scenario: str) -> list[dict]:
    got = run["results"][scenario]
    for i, r in enumerate(got):
        assert r is not None, f"process {i} reported nothing for {scenario}:\n{run['outputs'][i][-3000:]}"
        assert r["ok"], f"process {i} failed {scenario}: {r['error']}\n{r['traceback']}"
    return got


def _one_process(path: Path, semiring: str):
    """The script in this process alone, exactly as the children run it."""
    state = mmsb.mmsb_start(path, semiring=semiring)
    out, pages = child.run_script(mmsb, state, semiring)
    out["pages"] = pages
    mmsb.mmsb_stop(state)
    return out


def _newest_checkpoint(state_dir) -> str:
    return sorted(glob.glob(os.path.join(state_dir, "checkpoints", "*")))[-1]


def _manifest(state_dir) -> dict:
    with open(os.path.join(_newest_checkpoint(state_dir), "manifest.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def two(tmp_path_factory):
    """One launch of 2 processes: the script (real, tropical), divergence, bad input; plus the
    same script run here in one process, whose directory the children reopen (1 -> N)."""
    work = tmp_path_factory.mktemp("two")
    alone = {s: _one_process(work / f"one-{s}", s) for s in ("real", "tropical")}
    run = launch(2, "script,diverge,bad_input,tools", work / "run", {"one": str(work / "one-real")})
    return work, alone, run


@pytest.mark.parametrize("semiring", ["real", "tropical"])
def test_two_processes_equal_one(two, semiring):
    work, alone, run = two
    one = alone[semiring]
    for me, res in enumerate(_ok(run, "script")):
        got = res[semiring]
        assert got["ids"] == one["ids"]
        assert got["epoch"] == one["epoch"]
        assert got["digest"] == one["digest"], f"process {me}"
        assert got["snap_digest"] == one["snap_digest"], f"process {me}: replay_to_epoch"
        assert got["log"] == one["log"], f"process {me}: the log differs from a single-process run's"
        assert got["reopened_digest"] == one["digest"] and got["reopened_skipped"] == []  # N -> N
        assert got["global_devices"] == [4, 4] and got["fully_addressable"] == [False, False]
        assert got["local_shards"] == [2, 2]  # each process holds only its own shards
    pages = np.load(work / "run" / f"pages-{semiring}.npz")
    for pid, want in one["pages"].items():
        np.testing.assert_array_equal(pages[pid].view(np.uint8), want.view(np.uint8), err_msg=f"page {pid}")
    # checkpoints: the manifest (with its CRC-32Cs put together from the shards) is identical
    assert _manifest(work / "run" / f"n-{semiring}") == _manifest(work / f"one-{semiring}")
    report = mmsb.verify_state(work / "run" / f"n-{semiring}")  # every checksum, checkpoints against replay
    assert report["ok"] and report["checkpoints"][0]["matches_replay"], report["faults"]
    # N -> 1: the directory the processes wrote opens here, equal
    state = mmsb.mmsb_open(work / "run" / f"n-{semiring}")
    try:
        assert mmsb.state_digest(state) == one["digest"]
        assert state.recovery_report.skipped_checkpoints == []
    finally:
        mmsb.mmsb_stop(state)
    # the orbax files the processes wrote (each its shards) restore here as the ones one process wrote
    many, single = (load_arrays(_newest_checkpoint(d)) for d in (work / "run" / f"n-{semiring}", work / f"one-{semiring}"))
    assert sorted(many) == sorted(single)
    for group in single:
        for key, want in (single[group].items() if isinstance(single[group], dict) else [(group, single[group])]):
            got = many[group][key] if isinstance(single[group], dict) else many[group]
            if group == "pools":  # padded with zero rows to whole shards (4 devices)
                assert got.shape[0] % 4 == 0 and not got[want.shape[0]:].any()
                got = got[: want.shape[0]]
            np.testing.assert_array_equal(got, want, err_msg=f"{group}/{key}")


def test_state_written_alone_opens_in_two(two):
    _, alone, run = two
    for res in _ok(run, "script"):
        assert res["from_one"] == {"digest": alone["real"]["digest"], "epoch": alone["real"]["epoch"],
                                   "skipped": []}  # 1 -> N, from its checkpoint


def test_divergent_calls_are_refused_everywhere(two):
    work, _, run = two
    for me, res in enumerate(_ok(run, "diverge")):
        kind, msg = res["data"]
        assert kind == "DivergenceError" and "update_page" in msg and "process 1" in msg, (me, msg)
        assert res["epoch_after"] == res["before"] == 2 and res["then"] == "DivergenceError"
        kind, msg = res["kind"]
        assert kind == "DivergenceError" and "delete_page" in msg and "update_page" in msg, (me, msg)
        assert res["kind_epoch"] == 1
    # nothing of the divergent write was logged or applied: the state reopens as it was
    assert [r.epoch for r in mmsb.query_log(work / "run" / "div")] == [1, 2]
    state = mmsb.mmsb_open(work / "run" / "div")
    try:
        assert state.epoch == 2 and mmsb.query_page(state, 0).tolist() == list(range(8))
    finally:
        mmsb.mmsb_stop(state)
    assert [r.epoch for r in mmsb.query_log(work / "run" / "div2")] == [1]


def test_bad_input_to_a_distributed_state(two):
    work, _, run = two
    for res in _ok(run, "bad_input"):
        assert res["path_none"][0] == "InvalidArgumentError" and "path=" in res["path_none"][1]
        assert res["peer_timeout"][0] == "InvalidArgumentError" and "peer_timeout=-1" in res["peer_timeout"][1]
        assert not res["bad_dir_created"]
        kind, msg = res["per_host"]  # a directory per host: the same error in every process
        assert kind == "SerializationError" and "process 1 of 2 does not see the stamp" in msg, msg
        assert res["per_host_lock_free"]  # process 0 let go of its log (and its lock)
        assert res["page"][0] == "PageNotFoundError" and "page_id=7" in res["page"][1]
        assert res["unchanged"] and res["after"] == 2
        assert res["policy"] == "fixed"
        assert res["policy_cost"][0] == "InvalidArgumentError" and "several processes" in res["policy_cost"][1]


def test_observers_diffs_history_and_compaction(two, tmp_path):
    _, _, run = two
    state = mmsb.mmsb_start(tmp_path / "alone")
    want = child.tools_script(mmsb, state)
    mmsb.mmsb_stop(state)
    assert want["seen"] and want["diff"] and want["compacted"][1] >= 1 and want["before_compaction"] == "SerializationError"
    for res in _ok(run, "tools"):
        res.pop("ok"), res.pop("wall")
        assert res.pop("stopped_digest") == want["digest"]  # mmsb_stop(checkpoint_path=...) reopened
        assert res == want


def test_four_processes(two, tmp_path):
    """2 -> 4 reopen, and the short script in 4 processes against one."""
    work, alone, _ = two
    reopen = [str(work / "run" / f"n-{s}") for s in ("real", "tropical")]
    run = launch(4, "four", tmp_path, {"reopen": reopen})
    state = mmsb.mmsb_start(tmp_path / "alone")
    ids = child.short_script(mmsb, state)
    digest = mmsb.state_digest(state)
    pages = {str(i): np.asarray(mmsb.query_page(state, i)).tolist() for i in ids}
    mmsb.checkpoint(state)
    mmsb.mmsb_stop(state)
    for res in _ok(run, "four"):
        for name, s in zip(reopen, ("real", "tropical")):
            assert res[name] == {"digest": alone[s]["digest"], "epoch": alone[s]["epoch"]}
        assert res["digest"] == digest and res["reopened_digest"] == digest and res["pages"] == pages
    assert _manifest(tmp_path / "four") == _manifest(tmp_path / "alone")


def _killed(tmp_path, n: int, victim: int, params: dict | None = None):
    k, timeout = 7, 4.0
    run = launch(n, "kill", tmp_path, {"victim": victim, "k": k, "timeout": timeout, "heartbeat": 40,
                                       **(params or {})}, limit=120)
    alone = mmsb.mmsb_start(tmp_path / "alone", fsync="never")
    child.kill_script(mmsb, alone, k)
    want = mmsb.state_digest(alone)
    mmsb.mmsb_stop(alone)
    # the directory reopens to the last committed epoch, exactly
    state = mmsb.mmsb_open(tmp_path / "kill")
    try:
        assert state.epoch == k and mmsb.state_digest(state) == want
    finally:
        mmsb.mmsb_stop(state)
    return run, k, timeout


def test_killed_process_makes_the_others_raise(tmp_path):
    run, k, timeout = _killed(tmp_path, 2, victim=1)
    assert run["codes"][1] != 0 and run["results"]["kill"][1] is None  # it died
    res = run["results"]["kill"][0]
    assert res is not None and res["ok"], run["outputs"][0][-3000:]
    kind, msg, processes = res["error"]
    assert kind == "PeerLostError" and processes == [1] and "process 1" in msg
    assert timeout - 0.5 < res["seconds"] < timeout + 5  # within the bound
    assert res["committed"] == k and res["then"] == "PeerLostError" and res["stopped"]


@pytest.mark.slow
def test_killed_writer_stops_the_others(tmp_path):
    """Process 0 (the log writer, and JAX's coordination service) dies: the others either
    raise PeerLostError naming it or are stopped by JAX's runtime at once, never hang."""
    run, k, _ = _killed(tmp_path, 3, victim=0)
    assert run["seconds"] < 100
    for i in (1, 2):
        res = run["results"]["kill"][i]
        if res is not None:  # it got there before the runtime stopped it
            assert res["error"][0] == "PeerLostError" and res["error"][2] == [0]
        else:
            assert "Terminating process because the JAX distributed service detected fatal errors" in run["outputs"][i]


@pytest.mark.slow
def test_killed_process_recoverable_mode(tmp_path):
    """With jax_enable_recoverability the survivors outlive the dead peer and close the state."""
    run, k, timeout = _killed(tmp_path, 3, victim=2, params={"recoverable": True, "heartbeat": 5})
    for i in (0, 1):
        res = run["results"]["kill"][i]
        assert res is not None and res["ok"] and res["error"][0] == "PeerLostError" and res["error"][2] == [2]
        assert res["stopped"] and run["codes"][i] == 0


@pytest.mark.slow
def test_four_processes_whole_script(tmp_path, two):
    _, alone, _ = two
    run = launch(4, "script", tmp_path, {}, limit=400)
    for res in _ok(run, "script"):
        for s in ("real", "tropical"):
            assert res[s]["digest"] == alone[s]["digest"] and res[s]["log"] == alone[s]["log"]
            assert res[s]["reopened_digest"] == alone[s]["digest"]


# --------------------------------------------------------------------------- in one process
# The agreement logic against an in-process stand-in for the coordination service's
# key-value store, one thread per "process": fast, and runs wherever the suite runs.


class FakeStore:
    """The key-value calls a Coordinator makes, over a dict (a blocking get waits on a condition)."""

    def __init__(self):
        self.data, self.cv = {}, threading.Condition()

    def key_value_set(self, key, value):
        with self.cv:
            self.data[key] = value
            self.cv.notify_all()

    def blocking_key_value_get(self, key, timeout_ms):
        with self.cv:
            if not self.cv.wait_for(lambda: key in self.data, timeout_ms / 1000):
                raise RuntimeFailure(f"DEADLINE_EXCEEDED: GetKeyValue() timed out with key: {key}")
            return self.data[key]

    def key_value_try_get(self, key):
        with self.cv:
            if key not in self.data:
                raise RuntimeFailure(f"NOT_FOUND: {key}")
            return self.data[key]

    def key_value_delete(self, key):
        with self.cv:
            for k in [k for k in self.data if k == key or k.startswith(key + "/")]:
                del self.data[k]


def _pair(timeout=5.0):
    store = FakeStore()
    return store, [Coordinator(store, timeout, "t", index=i, count=2) for i in range(2)]


def _both(fn0, fn1):
    """Run fn0 and fn1 side by side (two 'processes'); returns what each returned or raised."""
    out = [None, None]

    def go(i, fn):
        try:
            out[i] = ("ok", fn())
        except Exception as e:  # noqa: BLE001
            out[i] = ("raised", e)

    threads = [threading.Thread(target=go, args=(i, fn)) for i, fn in enumerate((fn0, fn1))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


def test_agreement_passes_and_refuses_divergence_everywhere():
    _, (a, b) = _pair()
    assert _both(lambda: a.agree("update_page", "f1"), lambda: b.agree("update_page", "f1")) == [("ok", None)] * 2
    got = _both(lambda: a.agree("update_page", "f2"), lambda: b.agree("update_page", "f3"))
    for _, e in got:
        assert isinstance(e, DivergenceError) and "process 0 asked for update_page" in str(e)
        assert "process 1 asked for update_page" in str(e) and set(e.processes) == {0, 1}
    got = _both(lambda: a.agree("delete_page", "f"), lambda: b.agree("delete_page", "f"))
    assert all(isinstance(e, DivergenceError) for _, e in got)  # the state stays refused


def test_agreement_compares_how_the_previous_operation_ended():
    _, (a, b) = _pair()

    class Fake:
        epoch = 4

    a.settle(Fake, None)
    b.settle(Fake, MemoryError("only here"))
    got = _both(lambda: a.agree("create_page", "f"), lambda: b.agree("create_page", "f"))
    for _, e in got:
        assert isinstance(e, DivergenceError) and "ended their previous operation differently" in str(e)
        assert "MemoryError at epoch 4" in str(e) and "epoch 4" in str(e)


def test_a_silent_peer_is_named_within_the_timeout():
    _, (a, _) = _pair(timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(PeerLostError, match="process 1 did not reach this operation within peer_timeout=0.3 s") as e:
        a.agree("update_page", "f")
    assert 0.25 < time.monotonic() - t0 < 3 and e.value.processes == [1]
    with pytest.raises(PeerLostError):  # every later operation, at once
        a.barrier("next")


def test_everywhere_compares_outcomes():
    _, (a, b) = _pair()

    def fails():
        raise InvalidArgumentError("bad here")

    got = _both(lambda: a.everywhere("x", lambda: 1, share=str), lambda: b.everywhere("x", lambda: 2, share=str))
    assert got == [("ok", (1, ["1", "2"])), ("ok", (2, ["1", "2"]))]
    got = _both(lambda: a.everywhere("y", fails), lambda: b.everywhere("y", fails))  # the same error everywhere
    assert all(isinstance(e, InvalidArgumentError) and str(e) == "bad here" for _, e in got)
    got = _both(lambda: a.everywhere("z", fails), lambda: b.everywhere("z", lambda: 3))
    for _, e in got:
        assert isinstance(e, DivergenceError) and "process 0: InvalidArgumentError" in str(e) and "succeeded" in str(e)


def test_exchange_keys_are_dropped_behind():
    store, (a, b) = _pair()
    _both(lambda: [a.barrier("s") for _ in range(300)], lambda: [b.barrier("s") for _ in range(300)])
    assert a.seq == b.seq == 300 and len(store.data) <= 2 * 3 * 64  # at most ~3 blocks of keys, not 600


def test_fingerprints():
    from mmsb_jax import semirings

    x = np.arange(4096, dtype=np.float32)
    assert fingerprint(1, x, "a") == fingerprint(1, x.copy(), "a") == fingerprint(1, jax.numpy.asarray(x), "a")
    y = x.copy()
    y[4000] = -1
    assert len({fingerprint(x), fingerprint(y), fingerprint(x.astype(np.float64)), fingerprint(x.reshape(64, 64)),
                fingerprint(x[:10]), fingerprint(list(x[:10]))}) == 6
    d = mmsb.sparse_delta([1, 2], np.array([1.0, 2.0], np.float32), 8)
    assert fingerprint(d) == fingerprint(mmsb.sparse_delta([1, 2], np.array([1.0, 2.0], np.float32), 8))
    assert fingerprint(d) != fingerprint(mmsb.sparse_delta([1, 3], np.array([1.0, 2.0], np.float32), 8))
    # records of functions by name, not by address
    assert fingerprint(semirings.TROPICAL) == fingerprint(semirings.get_semiring("tropical")) != fingerprint(semirings.REAL)


def _make_fn():
    return lambda x: x * 2.0


def test_fingerprints_of_functions_hold_their_code():
    """Two different lambdas (same name ``<lambda>``) passed to ``derive`` by two processes
    must not look equal; the same source gives the same fingerprint, whatever the object."""
    import functools

    assert fingerprint(_make_fn()) == fingerprint(_make_fn())
    assert fingerprint(lambda x: x * 2.0) != fingerprint(lambda x: x * 3.0)
    assert fingerprint(lambda x: x * 2.0) != fingerprint(lambda x: x + 2.0)
    assert fingerprint(functools.partial(np.add, 1.0)) != fingerprint(functools.partial(np.add, 2.0))

    def scaled(k):
        return lambda x: x * k

    assert fingerprint(scaled(2.0)) == fingerprint(scaled(2.0)) != fingerprint(scaled(3.0))  # what it captured

    def with_default(k):
        def f(x, k=k):  # same name and code, another default
            return x * k
        return f

    assert fingerprint(with_default(2.0)) == fingerprint(with_default(2.0)) != fingerprint(with_default(3.0))

    def recursive(n):
        return 1 if n <= 1 else n * recursive(n - 1)

    assert len(fingerprint(recursive)) == 32  # a function that captures itself: no endless recursion


def test_fingerprints_of_functions_ignore_the_hash_seed():
    """A set literal in a function is a frozenset constant, whose order follows each process's
    string hash seed: the fingerprint must not."""
    code = ("from mmsb_jax.shell._distributed import fingerprint; "
            "print(fingerprint(lambda x: x in {'alpha', 'beta', 'gamma', 'delta'}))")
    outs = set()
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu"}
        outs.add(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                check=True, timeout=120).stdout.strip())
    assert len(outs) == 1 and len(next(iter(outs))) == 32


@given(st.binary(max_size=3000), st.lists(st.integers(0, 3000), max_size=6))
def test_crc_of_parts_is_the_crc_of_the_whole(data, cuts):
    import crc32c

    cuts = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    parts = [(lo, hi - lo, crc32c.crc32c(data[lo:hi])) for lo, hi in zip(cuts, cuts[1:])]
    assert combine_parts(parts[::-1]) == crc32c.crc32c(data)
    arr = np.frombuffer(data, np.uint8)
    assert array_crc(arr) == crc32c.crc32c(data)


def test_padding_rows_of_a_checkpoint_are_never_restored(tmp_path):
    """A checkpoint several processes wrote pads its pools to whole shards; one process opens
    it, and the padding (not checksummed) is dropped, whatever it holds."""
    import shutil

    from mmsb_jax.log._checkpoint import ARRAYS, write_arrays
    from mmsb_jax.log._tables import pack_tables

    state = mmsb.mmsb_start(tmp_path / "s")
    ids = mmsb.create_pages(state, 5, size=4, dtype=np.float32)
    for i in ids:
        mmsb.update_page(state, int(i), np.full(4, float(i) + 1, np.float32))
    mmsb.checkpoint(state)
    digest = mmsb.state_digest(state)
    mmsb.mmsb_stop(state)
    ckpt = _newest_checkpoint(tmp_path / "s")
    tree = load_arrays(ckpt)
    tree["pools"]["pool_0"] = np.concatenate([tree["pools"]["pool_0"], np.full((3, 4), 7.0, np.float32)])  # not zeros
    shutil.rmtree(os.path.join(ckpt, ARRAYS))
    write_arrays(os.path.join(ckpt, ARRAYS), pack_tables(tree)[0])  # the manifest and its checksums as they were
    state = mmsb.mmsb_open(tmp_path / "s")
    try:
        assert state.recovery_report.skipped_checkpoints == [] and mmsb.state_digest(state) == digest
        page = mmsb.create_page(state, size=4, dtype=np.float32)  # takes slot 5, a padding row
        assert mmsb.query_page(state, page.id).tolist() == [0.0] * 4
    finally:
        mmsb.mmsb_stop(state)


def test_one_process_states_are_untouched():
    from jax.sharding import Mesh

    assert coordinator_for(Mesh(np.array(jax.devices()), ("pages",)), None, 60) is None  # this process's devices
    assert coordinator_for(None, None, 60) is None and coordinator_for("not a mesh", None, 60) is None
    for bad in (0, -1.0, "60", True, float("nan"), float("inf"), 1e300):  # inf: OverflowError deep in the runtime
        with pytest.raises(InvalidArgumentError, match="peer_timeout="):
            mmsb.mmsb_start(peer_timeout=bad)
    log = FollowerLog()
    assert log.log_dense(1, 2, 3) is None and log.batch(3).commit() is None and log.drop_segments_through(3) == []
    with pytest.raises(AttributeError):
        log.read
