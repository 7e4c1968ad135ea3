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
import time
from pathlib import Path

import numpy as np
import pytest

import _multihost_child as child
import mmsb_jax as mmsb
from mmsb_jax.log._checkpoint import load_arrays

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
    run = launch(2, "script,diverge,bad_input", work / "run", {"one": str(work / "one-real")})
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
        assert res["page"][0] == "PageNotFoundError" and "page_id=7" in res["page"][1]
        assert res["unchanged"] and res["after"] == 2


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
