"""Layer 6 telemetry: the Prometheus endpoint, histograms, counters across reopen, the cost
model and entropy, the snapshot file, bad input."""

from __future__ import annotations

import json
import os
import urllib.request

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

import mmsb_jax as mmsb
from mmsb_jax.log._files import CRC_FIELD
from mmsb_jax.telemetry import Histogram, read_snapshot, write_entropy
from mmsb_jax.telemetry._counters import STATE_COUNTERS, count_records
from mmsb_jax.telemetry._snapshot import snapshot_path

F32 = np.float32


def scrape(srv) -> dict:
    text = urllib.request.urlopen(srv.url, timeout=10).read().decode()
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample(fams, family, name=None, **labels):
    for s in fams[family].samples:
        if (name is None or s.name == name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise KeyError((family, name, labels))


def work(state, n=5):
    ids = [int(i) for i in mmsb.create_pages(state, 4, size=8, dtype=F32)]
    for k in range(n):
        mmsb.update_page(state, ids[k % 4], np.full(8, k + 1, F32))
    mmsb.route_sparse_batch(state, np.array(ids[:2]), np.array([[0], [1]]), np.array([[7.0], [8.0]], F32))
    mmsb.update_page(state, ids[0], np.asarray(mmsb.query_page(state, ids[0])))  # a no-op
    return ids


# --------------------------------------------------------------------------- Prometheus
def test_metrics_endpoint_parses_and_histograms_move():
    s = mmsb.mmsb_start()
    srv = mmsb.serve_metrics(s, port=0)
    try:
        before = scrape(srv)
        assert sample(before, "mmsb_epoch") == 0
        assert not [x for x in before["mmsb_operation_seconds"].samples if x.labels.get("operation") == "update_page"]
        work(s)
        after = scrape(srv)
        assert sample(after, "mmsb_epoch") == s.epoch
        assert sample(after, "mmsb_updates", "mmsb_updates_total") == 5
        assert sample(after, "mmsb_noop_updates", "mmsb_noop_updates_total") == 1
        assert sample(after, "mmsb_operation_seconds", "mmsb_operation_seconds_count", operation="update_page") == 6
        inf = sample(after, "mmsb_operation_seconds", "mmsb_operation_seconds_bucket", operation="update_page",
                     le="+Inf")
        assert inf == 6
        assert after["mmsb_operation_seconds"].type == "histogram"
        assert after["mmsb_updates"].type == "counter"
        assert sample(after, "mmsb_log_bytes") > 0
        for name in after:
            assert name.startswith("mmsb_")
    finally:
        srv.close()
        mmsb.mmsb_stop(s)


def test_two_states_have_their_own_registries():
    a, b = mmsb.mmsb_start(), mmsb.mmsb_start()
    sa, sb = mmsb.serve_metrics(a), mmsb.serve_metrics(b)
    try:
        work(a)
        assert sample(scrape(sa), "mmsb_pages") == 4
        assert sample(scrape(sb), "mmsb_pages") == 0
        assert a._telemetry.registry is not b._telemetry.registry
    finally:
        sa.close(), sb.close()
        mmsb.mmsb_stop(a), mmsb.mmsb_stop(b)


@pytest.mark.parametrize("port, addr", [(-1, "127.0.0.1"), (70000, "127.0.0.1"), ("80", "127.0.0.1"), (0, 5),
                                        (0, "")])
def test_serve_metrics_refuses_bad_port_or_addr(port, addr):
    s = mmsb.mmsb_start()
    try:
        with pytest.raises(mmsb.InvalidArgumentError, match="port|addr"):
            mmsb.serve_metrics(s, port=port, addr=addr)
    finally:
        mmsb.mmsb_stop(s)


def test_serve_metrics_refuses_a_port_in_use_and_a_non_state():
    s = mmsb.mmsb_start()
    srv = mmsb.serve_metrics(s)
    try:
        with pytest.raises(mmsb.InvalidArgumentError, match=f"port={srv.port}"):
            mmsb.serve_metrics(s, port=srv.port)
        with pytest.raises(mmsb.InvalidArgumentError, match="not an MMSBState"):
            mmsb.serve_metrics("a path")
    finally:
        srv.close()
        mmsb.mmsb_stop(s)


# --------------------------------------------------------------------------- get_stats
def test_stats_keep_old_keys_and_add_sections():
    s = mmsb.mmsb_start(semiring="tropical")
    try:
        a, b, c = (int(i) for i in mmsb.create_pages(s, 3, size=4, dtype=F32))
        mmsb.add_dependencies(s, [a, b], [b, c])
        for k in range(6):
            mmsb.update_page(s, a, np.full(4, float(k + 1), F32))
        st = mmsb.get_stats(s)
        for key in ("epoch", "pages", "bytes", "capacity", "pressure", "pools", "path", "semiring", "enable_gpu",
                    "kernels", "log", *STATE_COUNTERS):
            assert key in st
        for key in ("latency", "propagation", "checkpoint_files", "cost", "adaptive", "replay"):
            assert key in st
        p = st["propagation"]
        assert p["full_passes"] + p["incremental_passes"] == 6  # one pass per write (edge edits only mark stale)
        assert sum(st["adaptive"]["propagation"]["chosen"].values()) >= 6
        assert st["latency"]["update_page"]["count"] == 6
        assert st["cost"]["pools"][0]["edges"] == 2
        assert 0.0 <= st["cost"]["pools"][0]["gather_locality"] <= 1.0
        assert st["cost"]["write_entropy_pages"] == 0.0  # every write went to one of three pages
        assert st["log"]["tail_records"] == s.epoch and st["log"]["tail_bytes"] == st["log"]["bytes"]
    finally:
        mmsb.mmsb_stop(s)


def test_write_entropy_and_histogram_against_numpy():
    rng = np.random.default_rng(0)
    c = rng.integers(0, 9, 50)
    p = c[c > 0] / c.sum()
    assert write_entropy(c) == pytest.approx(-(p * np.log(p)).sum() / np.log(50))
    x = rng.exponential(1e-3, 1000)
    h = Histogram()
    for v in x:
        h.observe(float(v))
    want = np.histogram(x, bins=[0.0, *h.bounds, np.inf])[0]
    assert h.counts == want.tolist() and h.sum == pytest.approx(x.sum())
    assert abs(h.quantile(0.5) - np.median(x)) < 0.5 * np.median(x)
    with pytest.raises(mmsb.InvalidArgumentError, match="q=2"):
        h.quantile(2)
    with pytest.raises(mmsb.InvalidArgumentError, match="bounds"):
        Histogram((2.0, 1.0))


def test_replay_tail_and_throughput_after_reopen(tmp_state_dir):
    s = mmsb.mmsb_start(tmp_state_dir)
    ids = work(s)
    mmsb.checkpoint(s)
    assert mmsb.get_stats(s)["replay"]["tail_records"] == 0
    mmsb.update_page(s, ids[1], np.full(8, 42, F32))
    mmsb.update_page(s, ids[2], np.full(8, 43, F32))
    st = mmsb.get_stats(s)
    assert st["replay"]["tail_records"] == 2 and st["replay"]["tail_bytes"] > 0
    tail = st["replay"]["tail_bytes"]
    mmsb.mmsb_stop(s)
    s = mmsb.mmsb_open(tmp_state_dir)
    try:
        st = mmsb.get_stats(s)
        assert st["replay"]["records"] == 2 and st["replay"]["bytes"] == tail
        assert st["replay"]["bytes_per_second"] > 0
        assert st["cost"]["replay_seconds"] == pytest.approx(tail / st["replay"]["bytes_per_second"])
        assert st["latency"]["open"]["count"] == 1 and "update_page" not in st["latency"]
        assert st["checkpoint_files"]["count"] == 1 and st["checkpoint_files"]["newest_bytes"] > 0
    finally:
        mmsb.mmsb_stop(s)


# --------------------------------------------------------------------------- counters survive reopen
def _counters(s):
    st = mmsb.get_stats(s)
    return {k: st[k] for k in STATE_COUNTERS}


def test_counters_survive_stop_and_open(tmp_state_dir):
    s = mmsb.mmsb_start(tmp_state_dir)
    work(s)
    mmsb.delete_page(s, 3)
    want = _counters(s)
    assert want["noop_updates"] == 1 and want["batches"] == 1 and want["pages_deleted"] == 1
    mmsb.mmsb_stop(s)
    s = mmsb.mmsb_open(tmp_state_dir)
    try:
        assert _counters(s) == want
        assert "update_page" not in mmsb.get_stats(s)["latency"]  # process figures start fresh
    finally:
        mmsb.mmsb_stop(s)


def test_counters_survive_a_checkpoint_restore_without_the_snapshot(tmp_state_dir):
    s = mmsb.mmsb_start(tmp_state_dir)
    ids = work(s)
    mmsb.checkpoint(s)
    mmsb.update_page(s, ids[3], np.full(8, 9, F32))
    want = _counters(s)
    mmsb.mmsb_stop(s)
    os.remove(snapshot_path(str(tmp_state_dir)))  # only the checkpoint's manifest and the log tail
    s = mmsb.mmsb_open(tmp_state_dir)
    try:
        assert _counters(s) == want
    finally:
        mmsb.mmsb_stop(s)


def test_checkpoint_with_bad_counters_is_refused(tmp_state_dir):
    from mmsb_jax.log._checkpoint import read_manifest
    from mmsb_jax.log._files import write_checked_json
    from mmsb_jax.shell._restore import check_checkpoint
    from mmsb_jax.log._checkpoint import load_arrays

    s = mmsb.mmsb_start(tmp_state_dir)
    work(s)
    d = mmsb.checkpoint(s)
    mmsb.mmsb_stop(s)
    m = read_manifest(d)
    assert m["counters"]["updates"] == 5
    m["counters"]["updates"] = -1
    with pytest.raises(mmsb.SerializationError, match="counters="):
        check_checkpoint(d, m, load_arrays(d), "real")
    m.pop(CRC_FIELD)
    write_checked_json(os.path.join(d, "manifest.json"), m)  # re-signed: only the cross-check catches it
    s = mmsb.mmsb_open(tmp_state_dir)  # the bad checkpoint is passed over for the log
    try:
        assert s.recovery_report.skipped_checkpoints and "counters=" in s.recovery_report.skipped_checkpoints[0][1]
    finally:
        mmsb.mmsb_stop(s)


def test_count_records_matches_live_counting(tmp_state_dir):
    s = mmsb.mmsb_start(tmp_state_dir)
    work(s, n=7)
    mmsb.batch_route_deltas(s, [(0, mmsb.sparse_delta([0], np.ones(1, F32), (8,))),
                                (1, mmsb.accumulate_delta(np.ones(8, F32), "real"))])
    mmsb.delete_page(s, 2)
    want = _counters(s)
    recs = mmsb.query_log(s)
    mmsb.mmsb_stop(s)
    got = count_records(recs)
    for k in ("pages_created", "pages_deleted", "updates", "deltas_routed", "batches"):
        assert got[k] == want[k], k


# --------------------------------------------------------------------------- the snapshot file
def test_snapshot_written_at_close_and_refused_when_damaged(tmp_state_dir):
    s = mmsb.mmsb_start(tmp_state_dir)
    work(s)
    epoch = s.epoch
    mmsb.mmsb_stop(s)
    snap = read_snapshot(str(tmp_state_dir))
    assert snap["epoch"] == epoch and snap["counters"]["updates"] == 5
    assert snap["latency"]["update_page"]["count"] == 6
    f = snapshot_path(str(tmp_state_dir))
    obj = json.loads(open(f).read())
    obj["counters"]["updates"] = 500  # edited: the CRC no longer matches
    open(f, "w").write(json.dumps(obj))
    with pytest.raises(mmsb.SerializationError, match="crc32c"):
        read_snapshot(str(tmp_state_dir))
    s = mmsb.mmsb_open(tmp_state_dir)  # a refused snapshot lends nothing: counters from the log
    try:
        c = _counters(s)
        assert c["updates"] == 5 and c["noop_updates"] == 0
    finally:
        mmsb.mmsb_stop(s)


def test_background_snapshot_of_a_live_state(tmp_state_dir):
    import time

    s = mmsb.mmsb_start(tmp_state_dir)
    try:
        work(s)
        deadline = time.time() + 10
        while time.time() < deadline:
            snap = read_snapshot(str(tmp_state_dir))
            if snap is not None and snap["epoch"] == s.epoch:
                break
            time.sleep(0.2)
        assert snap is not None and snap["epoch"] == s.epoch and snap["pid"] == os.getpid()
    finally:
        mmsb.mmsb_stop(s)


def test_fsync_latency_is_recorded(tmp_state_dir):
    s = mmsb.mmsb_start(tmp_state_dir, fsync="always")
    try:
        work(s)
        st = mmsb.get_stats(s)
        assert st["log"]["fsync_seconds"]["count"] == st["log"]["fsyncs"] > 0
    finally:
        mmsb.mmsb_stop(s)


def test_propagation_policy_refuses_unknown_modes():
    s = mmsb.mmsb_start()
    try:
        with pytest.raises(mmsb.InvalidArgumentError, match="'sometimes'"):
            s.propagation_policy = "sometimes"
        assert s.propagation_policy == "cost"
    finally:
        mmsb.mmsb_stop(s)


def test_save_tree_checkpoint_and_open_are_timed(tmp_state_dir):
    s = mmsb.mmsb_start(tmp_state_dir)
    mmsb.save_tree(s, "params", {"w": np.ones(3, F32)})
    mmsb.checkpoint(s)
    lat = mmsb.get_stats(s)["latency"]
    assert lat["save_tree"]["count"] == 1 and lat["checkpoint"]["count"] == 1
    mmsb.mmsb_stop(s)
