"""A state over 2 JAX processes vs the same state in 1 process, both on 4 virtual CPU devices.

Three cases, each run by a worker of 1 process with 4 devices (the baseline) and by 2 worker
processes of 2 devices each (``jax.distributed`` over loopback, gloo collectives), with the
same mesh size, pool and data: a sharded ``update_page`` (1 KiB pages), a 100k-delta sparse
batch (16 B on distinct 1 KiB pages) and a tropical propagation over a sharded pool (a write
to a root page reaching every page through the dependency graph). Each case is measured 3
times in each worker; the rows give the medians and their ranges. The 2-process rows also
give what one agreement exchange costs (the coordination service round trip every operation
of a distributed state makes first).

Virtual devices on 2 shared cores: read ratios, not absolute figures. Run alone with
``python -m benchmarks.bench_multihost [--quick]``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PAGE = 1024
DEVICES = 4


# --------------------------------------------------------------------------- the worker
def _cases(quick: bool, dist: bool) -> dict:
    import jax
    import jax.numpy as jnp
    from jax.sharding import Mesh

    import mmsb_jax as mmsb

    from ._harness import timeit

    mesh = Mesh(np.array(jax.devices()), ("pages",))
    work = os.environ["MMSB_BENCH_DIR"]
    me = jax.process_index()
    out: dict = {"process": me, "processes": jax.process_count(), "devices": len(jax.devices())}
    rng = np.random.default_rng(0)

    # ---- update_page, 1 KiB, sharded pool
    n_pages = 4_096 if quick else 16_384
    reps = 60 if quick else 200
    st = mmsb.mmsb_start(os.path.join(work, "update"), mesh=mesh, fsync="batch")
    ids = mmsb.create_pages(st, n_pages, size=PAGE)
    pid = int(ids[n_pages // 2])
    data = [rng.integers(0, 256, PAGE, dtype=np.uint8) for _ in range(16)]
    runs = []
    for r in range(3):
        lat = []
        for i in range(reps + 10):
            t0 = time.perf_counter()
            mmsb.update_page(st, pid, data[(i + r) % len(data)])
            if i >= 10:
                lat.append(time.perf_counter() - t0)
        runs.append(float(np.median(lat)))
    out["update_page_s"] = runs
    if dist:  # what the agreement alone costs: one exchange, as every operation makes first
        lat = []
        for _ in range(reps):
            t0 = time.perf_counter()
            st._dist.barrier("bench")
            lat.append(time.perf_counter() - t0)
        out["agreement_s"] = float(np.median(lat))
    mmsb.mmsb_stop(st)

    # ---- 100k sparse deltas, 16 B each, distinct 1 KiB pages
    n = 20_000 if quick else 100_000
    st = mmsb.mmsb_start(os.path.join(work, "sparse"), mesh=mesh, fsync="batch")
    ids = mmsb.create_pages(st, n, size=PAGE)
    rows = rng.permutation(n)
    ind = np.argsort(rng.random((n, PAGE)), axis=1)[:, :16].astype(np.int32)
    vals = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    pids = ids[rows]

    def batch():
        mmsb.route_sparse_batch(st, pids, ind, vals)
        st._pools[0].array.block_until_ready()

    out["sparse_batch_s"] = [timeit(batch, repeat=3)["median"] for _ in range(3)]
    out["sparse_deltas"] = n
    mmsb.mmsb_stop(st)

    # ---- tropical propagation over a sharded pool: a root write reaches every page
    n_nodes = 128 if quick else 512  # each add_dependency is an operation (and a propagation)
    st = mmsb.mmsb_start(os.path.join(work, "prop"), mesh=mesh, semiring="tropical", fsync="batch")
    ids = mmsb.create_pages(st, n_nodes, size=16, dtype=jnp.float32).tolist()
    inf = np.full(16, np.inf, np.float32)
    for i in ids[1:]:
        mmsb.update_page(st, i, inf)
    parents = [int(rng.integers(0, i)) for i in range(1, n_nodes)]  # a random tree, then more edges
    extra = [(int(rng.integers(0, v)), v) for v in rng.integers(1, n_nodes, n_nodes)]
    edges = sorted({(ids[u], ids[v]) for u, v in list(zip(parents, range(1, n_nodes))) + extra})
    for u, v in edges:
        mmsb.add_dependency(st, u, v, weight=float(rng.random()))
    vals = [np.full(16, float(k), np.float32) for k in range(8)]
    runs = []
    for r in range(3):
        lat = []
        for i in range(8 if quick else 20):
            t0 = time.perf_counter()
            mmsb.update_page(st, ids[0], vals[(i + r) % 8])
            mmsb.query_page(st, ids[-1]).block_until_ready()
            lat.append(time.perf_counter() - t0)
        runs.append(float(np.median(lat[2:])))
    out["propagation_s"] = runs
    out["prop_nodes"], out["prop_edges"] = n_nodes, len(edges)
    out["digest"] = mmsb.state_digest(st)
    mmsb.mmsb_stop(st)
    return out


def _worker(argv) -> None:
    quick, n, me, port = argv[0] == "quick", int(argv[1]), int(argv[2]), int(argv[3])
    import mmsb_jax as mmsb

    if n > 1:
        mmsb.init_distributed(f"127.0.0.1:{port}", n, me, initialization_timeout=60)
    out = _cases(quick, n > 1)
    work = os.environ["MMSB_BENCH_DIR"]
    with open(os.path.join(work, f"result.{me}.json.tmp"), "w") as f:
        json.dump(out, f)
    os.replace(os.path.join(work, f"result.{me}.json.tmp"), os.path.join(work, f"result.{me}.json"))
    if me == 0 and n > 1:  # the coordination service's host leaves last (a peer still writing would abort)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not all(os.path.exists(os.path.join(work, f"result.{i}.json")) for i in range(n)):
            time.sleep(0.01)
    sys.stdout.flush()
    os._exit(0)


# --------------------------------------------------------------------------- the launcher
def _launch(quick: bool, n: int, limit: float = 900) -> list[dict] | str:
    work = tempfile.mkdtemp(prefix=f"mmsb-bench-mh{n}-")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // n}", JAX_PLATFORMS="cpu",
               MMSB_BENCH_DIR=work, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])))
    code = "import sys; from benchmarks.bench_multihost import _worker; _worker(sys.argv[1:])"
    procs = [subprocess.Popen([sys.executable, "-c", code, "quick" if quick else "full", str(n), str(i), str(port)],
                              env=env, cwd=str(ROOT), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for i in range(n)]
    t0, logs = time.monotonic(), []
    try:
        for p in procs:
            try:
                logs.append(p.communicate(timeout=max(1.0, limit - (time.monotonic() - t0)))[0])
            except subprocess.TimeoutExpired:
                logs.append("(timed out)")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    got = []
    for i in range(n):
        f = Path(work) / f"result.{i}.json"
        if not f.exists():
            return f"process {i} of {n} reported nothing: " + " | ".join(logs[i].strip().splitlines()[-3:])
        got.append(json.loads(f.read_text()))
    return got


def _row(case, two, one, unit, scale, target_x, **extra):
    from ._harness import result

    med = lambda xs: float(np.median(xs))  # noqa: E731
    v, b = med(two) * scale, med(one) * scale
    return result(
        case, value=v, unit=unit, baseline="same state in 1 process (4 devices)", baseline_value=b,
        higher_is_better=False, target=f"2 processes <= {target_x:g}x the 1-process time", met=v <= target_x * b,
        range_2proc=[min(two) * scale, max(two) * scale], range_1proc=[min(one) * scale, max(one) * scale],
        slowdown=v / b if b else float("inf"), **extra,
    )


def run(quick: bool = False) -> list[dict]:
    one = _launch(quick, 1)
    two = _launch(quick, 2)
    if isinstance(one, str) or isinstance(two, str):
        why = one if isinstance(one, str) else two
        return [{"case": "multihost/1 vs 2 processes", "skipped": why, "target": "-"}]
    assert all(t["digest"] == one[0]["digest"] for t in two), "the 2-process state differs from the 1-process one"
    a, b = two[0], one[0]  # process 0's view (its peer's medians are within noise of it)
    agree_us = float(np.median([t["agreement_s"] for t in two])) * 1e6
    return [
        _row("multihost/update_page p50 (1 KiB, pool over 4 devices)", a["update_page_s"], b["update_page_s"],
             "us", 1e6, 3.0, agreement_exchange_us=agree_us),
        _row(f"multihost/route_sparse_batch {a['sparse_deltas'] // 1000}k x 16 B (distinct 1 KiB pages)",
             a["sparse_batch_s"], b["sparse_batch_s"], "ms", 1e3, 2.0),
        _row(f"multihost/tropical propagation, {a['prop_nodes']} pages / {a['prop_edges']} edges (write + read)",
             a["propagation_s"], b["propagation_s"], "ms", 1e3, 2.0),
    ]


if __name__ == "__main__":
    for row in run(quick="--quick" in sys.argv):
        print(json.dumps(row))
