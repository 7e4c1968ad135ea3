"""TLog benchmarks: append throughput of 16-byte sparse deltas, and replay-read + CRC.

A "16-byte sparse delta" is (page_id u64, flat index i32, value f32). Each case measures the
TLog and its baseline in the same process (see ``_harness``):

* append, ``fsync="batch"``: SPARSE_BATCH records (one per group of deltas), timed until the
  last append returns (every record written to the OS: the batch promise), against plain
  buffered ``f.write`` of the same bytes (``tobytes()`` of the same three arrays per group), no
  fsync; and timed until ``close()`` returns (every delta fsynced), against the same plain
  writes plus one fsync.
* read: ``read_records`` of those deltas (one read per segment, CRC of every record,
  decode to numpy views). Baseline: reading the same segment files with ``f.read()``.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import time

import numpy as np

from mmsb_jax.log import TLog, list_segments, read_records

from ._harness import result, timeit


def _deltas(n: int, group: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    g = n // group
    pids = rng.integers(0, 100_000, (g, group)).astype(np.uint64)
    idx = rng.integers(0, 256, (g, group, 1)).astype(np.int32)
    vals = rng.random((g, group, 1), dtype=np.float32)
    return pids, idx, vals


def _append_case(root: str, n: int, group: int, repeat: int) -> tuple[list[dict], str]:
    pids, idx, vals = _deltas(n, group)
    g = pids.shape[0]
    counter = itertools.count()
    last_dir = [""]

    appended: list[float] = []  # seconds until the last append returned (every record in the OS)

    def tlog():
        d = os.path.join(root, f"log{group}-{next(counter)}")
        log = TLog(d, fsync="batch")
        t0 = time.perf_counter()
        for i in range(g):
            log.log_sparse_batch(i, pids[i], idx[i], vals[i], source="bench")
        appended.append(time.perf_counter() - t0)
        log.close()  # flush + fsync: every delta durable
        last_dir[0] = d

    def plain(sync: bool):
        with open(os.path.join(root, f"plain{group}-{next(counter)}.bin"), "wb") as f:
            for i in range(g):
                f.write(pids[i].tobytes())
                f.write(idx[i].tobytes())
                f.write(vals[i].tobytes())
            if sync:
                f.flush()
                os.fsync(f.fileno())

    # alternate the runs so machine noise (2 shared cores) hits all of them alike
    t_log, t_plain, t_sync = [], [], []
    for _ in range(2):
        t_plain.append(timeit(lambda: plain(False), repeat=repeat)["min"])
        t_log.append(timeit(tlog, repeat=repeat)["min"])
        t_sync.append(timeit(lambda: plain(True), repeat=repeat)["min"])
    rate, plain_rate, sync_rate = n / min(t_log), n / min(t_plain), n / min(t_sync)
    append_rate = n / min(appended)
    log_bytes = sum(os.path.getsize(p) for _, p in list_segments(last_dir[0]))
    common = {"deltas": n, "group": group, "bytes_per_delta": 16, "log_bytes": log_bytes}
    rows = [
        result(
            f"tlog/append 16-byte sparse deltas, SPARSE_BATCH of {group}, fsync=batch (until the appends return)",
            value=append_rate / 1e6, unit="M deltas/s", baseline="plain buffered f.write of the same bytes (no fsync)",
            baseline_value=plain_rate / 1e6, higher_is_better=True,
            target=">= 1 M deltas/s and >= 0.5x the plain buffered writes' rate",
            met=append_rate >= 1e6 and append_rate >= 0.5 * plain_rate, until_durable_m_per_s=rate / 1e6,
            **common,
        ),
        result(
            f"tlog/append 16-byte sparse deltas, SPARSE_BATCH of {group}, fsync=batch vs durable plain writes",
            value=rate / 1e6, unit="M deltas/s",
            baseline="plain buffered f.write of the same bytes + one fsync at the end",
            baseline_value=sync_rate / 1e6, higher_is_better=True,
            target=">= 1 M deltas/s and >= 0.5x the plain writes made durable the same way",
            met=rate >= 1e6 and rate >= 0.5 * sync_rate, **common,
        ),
    ]
    return rows, last_dir[0]


def _single_case(root: str, n: int) -> dict:
    rng = np.random.default_rng(1)
    pids = rng.integers(0, 100_000, n).tolist()
    idx = [np.array([i % 256], np.int32) for i in range(n)]
    vals = [np.array([i], np.float32) for i in range(n)]
    counter = itertools.count()

    def tlog():
        log = TLog(os.path.join(root, f"single{next(counter)}"), fsync="batch")
        for i in range(n):
            log.log_sparse(i, pids[i], idx[i], vals[i])
        log.close()

    def plain():
        with open(os.path.join(root, f"splain{next(counter)}.bin"), "wb") as f:
            for i in range(n):
                f.write(np.uint64(pids[i]).tobytes())
                f.write(idx[i].tobytes())
                f.write(vals[i].tobytes())

    t_log = timeit(tlog, repeat=2)["min"]  # until close(): every record fsynced
    t_base = timeit(plain, repeat=2)["min"]
    return result(
        "tlog/append single SPARSE records (1 delta each), fsync=batch",
        value=n / t_log / 1e6, unit="M deltas/s", baseline="plain buffered f.write of the same 16 bytes per delta",
        baseline_value=n / t_base / 1e6, higher_is_better=True,
        target="informational (the 1 M/s target is met with SPARSE_BATCH)", met=True, deltas=n,
    )


def _durability_case(root: str, seconds: float, rate: float) -> dict:
    """``fsync="batch"``: how long an acknowledged append stays written-but-unsynced (what a
    crash of the machine could lose; a crash of the process alone loses nothing, the append is
    in the OS before it returns). Appends come at ``rate``/s from one thread while another
    polls the log's durable position every 50 us. Baseline: an append under ``fsync="always"``
    (durable when it returns)."""
    import threading

    log = TLog(os.path.join(root, "window"), fsync="batch")
    appended: dict[int, float] = {}
    durable: dict[int, float] = {}
    stop = threading.Event()

    def poll():
        seen = 0
        while not stop.is_set():
            now_durable = log._durable_seq
            if now_durable != seen:
                t = time.perf_counter()
                for q in range(seen + 1, now_durable + 1):
                    durable[q] = t
                seen = now_durable
            time.sleep(5e-5)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    vals = np.ones(4, np.float32)
    idx = np.arange(4, dtype=np.int32)
    end, e = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        e += 1
        log.log_sparse(e, 1, idx, vals)
        appended[log._seq] = time.perf_counter()
        time.sleep(1 / rate)
    time.sleep(0.05)
    stop.set()
    th.join()
    log.close()
    ages = np.array([durable[q] - t for q, t in appended.items() if q in durable]) * 1e3
    always = TLog(os.path.join(root, "always"), fsync="always")
    t0 = time.perf_counter()
    for i in range(200):
        always.log_sparse(i + 1, 1, idx, vals)
    t_always = (time.perf_counter() - t0) / 200 * 1e3
    always.close()
    return result(
        "tlog/fsync=batch: time an append stays unsynced (machine-crash window), p99",
        value=float(np.percentile(ages, 99)), unit="ms", baseline="fsync=always: append until durable",
        baseline_value=t_always, higher_is_better=False,
        target="informational: sync_interval is 5 ms; a process crash loses nothing", met=True,
        p50_ms=float(np.median(ages)), max_ms=float(ages.max()), appends=len(ages), rate_per_s=rate,
    )


def _read_case(log_dir: str, n: int, repeat: int) -> dict:
    segs = [p for _, p in list_segments(log_dir)]

    def read():
        res = read_records(log_dir)
        assert sum(r.page_ids.shape[0] for r in res) == n

    def raw():
        for p in segs:
            with open(p, "rb") as f:
                f.read()

    t_read = timeit(read, repeat=repeat)["min"]
    t_raw = timeit(raw, repeat=repeat)["min"]
    scale = (1 << 20) / n  # report per 1 M deltas
    return result(
        "tlog/replay read + CRC of 1M 16-byte sparse deltas (SPARSE_BATCH, page cache)",
        value=t_read * scale, unit="s per 1M deltas", baseline="f.read() of the same segment files",
        baseline_value=t_raw * scale, higher_is_better=False,
        target="well under 1 s (the full replay incl. apply must be <= 2 s)", met=t_read * scale <= 0.5,
        deltas=n, segments=len(segs), bytes=sum(os.path.getsize(p) for p in segs),
    )


def run(quick: bool) -> list[dict]:
    n = 1 << 18 if quick else 1 << 20
    repeat = 2 if quick else 3
    root = tempfile.mkdtemp(prefix="mmsb-bench-tlog-")
    try:
        rows, log_dir = _append_case(root, n, 4096, repeat)
        rows += _append_case(root, n, 1024, repeat)[0]
        rows.append(_read_case(log_dir, n, repeat))
        rows.append(_single_case(root, 20_000 if quick else 100_000))
        rows.append(_durability_case(root, 1.0 if quick else 3.0, 1000.0))
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":  # pragma: no cover
    import json
    import sys

    for r in run("--quick" in sys.argv):
        print(json.dumps(r))
