#!/usr/bin/env python
"""GPU benchmark of pallas_kernels: each kernel vs its XLA path vs the device's copy bandwidth.

On the GPU machine, from the repository root (a few minutes on an H100)::

    python benchmarks/gpu.py                 # prints a table, writes bench-results/gpu.json

On CPU, a quick check that everything runs (tiny sizes, kernels in interpret mode)::

    python benchmarks/gpu.py --smoke

Cases (sizes of the full run):

* ``copy``: ``x + 1`` over a 1 GiB float32 pool (read + write): the bandwidth reference.
* ``scatter_merge.{dense,accumulate,overwrite}``: 100k delta rows of 1 KiB pages into that pool;
  ``scatter_merge.sparse``: 100k rows x 16 float32 values. XLA path: ``scatter_merge_xla``
  (gather, merge, scatter) — plus, for sparse, a plain unordered XLA scatter (no in-row
  last-writer resolution: a lower bound, not deterministic on repeats).
* ``gather_segment_reduce`` (TROPICAL, i.e. one propagation level: ``min_e w + x[src]``) and
  ``segment_reduce`` (plain ``segment_min``): 5M edges -> 1M nodes. XLA path:
  ``jax.ops.segment_min`` with sorted ids (the kernel's CSR layout) and with unsorted ids.
* ``propagate`` (if ``mmsb_jax.graph`` imports): TROPICAL propagation on random DAGs of
  100k nodes / 500k edges and 1M / 5M (XLA only today; for scale).

Every timing is one jitted ``fori_loop`` of ``iters`` steps, after a warm-up run, with
``block_until_ready``; the best of ``--repeats`` runs. Bandwidth = bytes the operation must
touch / time. A case that fails (e.g. a lowering error) is reported and the rest go on.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time
import traceback
import warnings

ROOT = pathlib.Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mmsb_jax import semirings
from mmsb_jax import adaptive as backend
from pallas_kernels.scatter_merge import scatter_merge, scatter_merge_xla
from pallas_kernels.segment_reduce import (
    csr_from_segment_ids,
    gather_segment_reduce_csr,
    segment_reduce_csr,
)

TARGETS = {
    "scatter_merge": {"speedup": 1.5, "copy_fraction": 0.8},
    "segment": {"speedup": 1.3},
}

FULL = dict(pool_bytes=1 << 30, page_bytes=1024, n_dense=100_000, n_sparse=100_000, k_sparse=16,
            seg_nodes=1_000_000, seg_edges=5_000_000, graphs=((100_000, 500_000), (1_000_000, 5_000_000)),
            iters_copy=40, iters_merge=200, iters_seg=100, iters_prop=20)
SMOKE = dict(pool_bytes=64 * 200 * 4, page_bytes=200 * 4, n_dense=16, n_sparse=16, k_sparse=5,
             seg_nodes=50, seg_edges=200, graphs=((200, 1000),), iters_copy=2, iters_merge=2, iters_seg=2,
             iters_prop=2)


# --------------------------------------------------------------------------- timing
def time_loop(step, carry, args, iters: int, repeats: int):
    """Seconds per step of ``carry = step(carry, *args)`` in one jitted fori_loop (donated carry).

    Returns ``(seconds, carry)``; the carry is threaded on so the caller keeps a live buffer.
    """

    def many(c, *a):
        return lax.fori_loop(0, iters, lambda i, c: step(c, *a), c)

    run = jax.jit(many, donate_argnums=0)
    carry = run(carry, *args)
    jax.block_until_ready(carry)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        carry = run(carry, *args)
        jax.block_until_ready(carry)
        best = min(best, time.perf_counter() - t0)
    return best / iters, carry


class Bench:
    def __init__(self, smoke: bool, repeats: int):
        self.smoke = smoke
        self.repeats = repeats
        self.rows: list[dict] = []
        self.copy_bw = None
        self.device = "?"

    def measure(self, case, impl, step, carry, args, iters, nbytes, config=None):
        """Time one implementation; append a row; return the carry (``None`` if it was lost)."""
        row = {"case": case, "impl": impl, "config": config or {}, "bytes": int(nbytes)}
        try:
            sec, carry = time_loop(step, carry, args, iters, self.repeats)
            row.update(seconds=sec, us=sec * 1e6, gbps=nbytes / sec / 1e9)
            if self.copy_bw:
                row["copy_fraction"] = nbytes / sec / self.copy_bw
        except Exception as e:  # noqa: BLE001 - report and go on
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
            row["traceback"] = traceback.format_exc(limit=4)[-2000:]
            if getattr(carry, "is_deleted", lambda: False)():  # donated, then failed
                carry = None
        self.rows.append(row)
        mark = row.get("error") or f"{row['us']:10.1f} us"
        print(f"  {case:28s} {impl:34s} {mark}", flush=True)
        return carry


def _kernel_opts(smoke):
    return {"interpret": True} if smoke else {}


# --------------------------------------------------------------------------- cases
def bench_copy(b: Bench, s):
    n = s["pool_bytes"] // 4
    x = jnp.zeros((n,), jnp.float32)
    b.measure("copy", "xla x+1", lambda c: c + jnp.float32(1), x, (), s["iters_copy"], 2 * n * 4)
    if b.rows[-1].get("gbps"):
        b.copy_bw = b.rows[-1]["gbps"] * 1e9


def _pool(s, rng):
    width = s["page_bytes"] // 4
    slots_total = s["pool_bytes"] // s["page_bytes"]
    key = jax.random.key(int(rng.integers(2**31)))
    pool = jax.random.normal(key, (slots_total, width), jnp.float32)  # made on the device: no 1 GiB upload
    return pool, slots_total, width


def bench_scatter(b: Bench, s, rng):
    kopts = _kernel_opts(b.smoke)
    pool, total, width = _pool(s, rng)
    n = s["n_dense"]
    slots = jnp.asarray(rng.choice(total, size=n, replace=False).astype(np.int32))
    payload = jnp.asarray(rng.standard_normal((n, width), np.float32))
    mask = jnp.asarray(rng.random((n, width)) < 0.5)
    sweep = [{}] if b.smoke else [{}, {"block_rows": 8, "num_warps": 4}, {"block_rows": 16, "num_warps": 8},
                                   {"block_rows": 32, "num_warps": 8}]

    dense_bytes = n * width * (4 + 4 + 1 + 4) + 4 * n  # read page, payload, mask; write page
    acc_bytes = n * width * (4 + 4 + 4) + 4 * n
    over_bytes = n * width * (4 + 4) + 4 * n
    cases = [
        ("scatter_merge.dense", dense_bytes, (slots, payload, mask),
         lambda c, sl, p, m: scatter_merge_xla(c, sl, p, mask=m, unique_slots=True),
         lambda cfg: lambda c, sl, p, m: scatter_merge(c, sl, p, mask=m, unique_slots=True, **cfg, **kopts)),
        ("scatter_merge.accumulate", acc_bytes, (slots, payload),
         lambda c, sl, p: scatter_merge_xla(c, sl, p, semiring=semirings.REAL, unique_slots=True),
         lambda cfg: lambda c, sl, p: scatter_merge(c, sl, p, semiring=semirings.REAL, unique_slots=True, **cfg,
                                                    **kopts)),
        ("scatter_merge.overwrite", over_bytes, (slots, payload),
         lambda c, sl, p: scatter_merge_xla(c, sl, p, unique_slots=True),
         lambda cfg: lambda c, sl, p: scatter_merge(c, sl, p, unique_slots=True, **cfg, **kopts)),
    ]
    def again(p):  # a carry lost to a failed run: make a new pool
        return p if p is not None else _pool(s, rng)[0]

    for case, nbytes, args, xla, kern in cases:
        pool = again(b.measure(case, "xla (gather, merge, scatter)", xla, pool, args, s["iters_merge"], nbytes))
        for cfg in (sweep if case == "scatter_merge.dense" else sweep[:2]):
            pool = again(b.measure(case, "pallas " + _cfg_name(cfg), kern(cfg), pool, args, s["iters_merge"], nbytes,
                                   config=cfg))

    # sparse: n rows x k values, distinct slots, random indices (repeats within a row possible)
    n, k = s["n_sparse"], s["k_sparse"]
    slots = jnp.asarray(rng.choice(total, size=n, replace=False).astype(np.int32))
    idx = jnp.asarray(rng.integers(0, width, size=(n, k)).astype(np.int32))
    vals = jnp.asarray(rng.standard_normal((n, k), np.float32))
    nbytes = n * k * (4 + 4 + 4) + 4 * n  # read index + value, write value

    def xla_unordered(c, sl, ix, v):
        return c.at[sl[:, None], ix].set(v, mode="drop")

    pool = again(b.measure("scatter_merge.sparse", "xla scatter (unordered)", xla_unordered, pool,
                           (slots, idx, vals), s["iters_merge"], nbytes))
    pool = again(b.measure("scatter_merge.sparse", "xla (last writer per row)",
                           lambda c, sl, ix, v: scatter_merge_xla(c, sl, v, indices=ix, unique_slots=True), pool,
                           (slots, idx, vals), s["iters_merge"], nbytes))
    for cfg in ([{}] if b.smoke else [{}, {"block_rows": 8}, {"block_rows": 32}]):
        pool = again(b.measure("scatter_merge.sparse", "pallas " + _cfg_name(cfg),
                               lambda c, sl, ix, v, cfg=cfg: scatter_merge(c, sl, v, indices=ix, unique_slots=True,
                                                                           **cfg, **kopts),
                               pool, (slots, idx, vals), s["iters_merge"], nbytes, config=cfg))
    del pool


def _cfg_name(cfg):
    return ("(" + ", ".join(f"{k}={v}" for k, v in cfg.items()) + ")") if cfg else "(default blocks)"


def bench_segment(b: Bench, s, rng):
    kopts = _kernel_opts(b.smoke)
    n, e = s["seg_nodes"], s["seg_edges"]
    src = rng.integers(0, n, size=e).astype(np.int32)
    dst = rng.integers(0, n, size=e).astype(np.int32)
    w = rng.random(e).astype(np.float32)
    order = np.argsort(dst, kind="stable")
    src_s, dst_s, w_s = (jnp.asarray(a[order]) for a in (src, dst, w))
    _, offsets = csr_from_segment_ids(dst_s, n, indices_are_sorted=True)
    src_u, dst_u, w_u = jnp.asarray(src), jnp.asarray(dst), jnp.asarray(w)
    x = jnp.asarray(rng.random(n).astype(np.float32))
    trop = semirings.TROPICAL
    nbytes = e * 4 * 3 + n * 4 * 2  # src, w, gathered x (>= 4 B each); offsets, out

    def xla_sorted(c, sr_, w_, d_):
        return jax.ops.segment_min(w_ + c[sr_], d_, num_segments=n, indices_are_sorted=True)

    def xla_unsorted(c, sr_, w_, d_):
        return jax.ops.segment_min(w_ + c[sr_], d_, num_segments=n)

    case = "gather_segment_reduce"
    def again(c, size):
        return c if c is not None else jnp.asarray(rng.random(size).astype(np.float32))

    x = again(b.measure(case, "xla segment_min (sorted ids)", xla_sorted, x, (src_s, w_s, dst_s), s["iters_seg"],
                        nbytes), n)
    x = again(b.measure(case, "xla segment_min (unsorted ids)", xla_unsorted, x, (src_u, w_u, dst_u),
                        s["iters_seg"], nbytes), n)
    sweep = [{}] if b.smoke else [{}, {"block_segments": 64}, {"block_segments": 256},
                                   {"block_segments": 128, "num_warps": 8}]
    for cfg in sweep:
        x = again(b.measure(case, "pallas " + _cfg_name(cfg),
                            lambda c, sr_, w_, off, cfg=cfg: gather_segment_reduce_csr(c, sr_, w_, off, trop, **cfg,
                                                                                        **kopts),
                            x, (src_s, w_s, offsets), s["iters_seg"], nbytes, config=cfg), n)

    # plain segment_min over per-edge data (no gather): carry the data, reduce, broadcast back
    case = "segment_reduce"
    data = jnp.asarray(rng.random(e).astype(np.float32))
    nbytes = e * 4 + n * 4 * 2

    def plain_xla(c, d_):
        out = jax.ops.segment_min(c, d_, num_segments=n, indices_are_sorted=True)
        return c.at[0].set(out[0])  # keep the reduction live, carry the data

    def plain_kernel(cfg):
        def f(c, off):
            return c.at[0].set(segment_reduce_csr(c, off, trop, **cfg, **kopts)[0])
        return f

    data = again(b.measure(case, "xla segment_min (sorted ids)", plain_xla, data, (dst_s,), s["iters_seg"], nbytes), e)
    for cfg in ([{}] if b.smoke else [{}, {"block_segments": 256}]):
        data = again(b.measure(case, "pallas " + _cfg_name(cfg), plain_kernel(cfg), data, (offsets,), s["iters_seg"],
                               nbytes, config=cfg), e)


def random_dag(n, m, rng):
    u = rng.integers(0, n, size=int(m * 1.2))
    v = rng.integers(0, n, size=int(m * 1.2))
    keep = u != v
    lo, hi = np.minimum(u[keep], v[keep]), np.maximum(u[keep], v[keep])
    key = np.unique(lo.astype(np.int64) * n + hi)
    rng.shuffle(key)
    key = key[:m]
    return key // n, key % n, rng.random(len(key)).astype(np.float32)


def bench_propagate(b: Bench, s, rng):
    try:
        from mmsb_jax.graph import ShadowPageGraph, propagate
    except Exception as e:  # noqa: BLE001  # pragma: no cover
        print(f"  propagate: mmsb_jax.graph not importable ({e}); skipped")
        return
    for n, m in s["graphs"]:
        t0 = time.perf_counter()
        us, vs, ws = random_dag(n, m, rng)
        g = ShadowPageGraph()
        g.add_dependencies(us, vs, ws)
        cg = g.compile(semirings.TROPICAL, num_nodes=n)
        build = time.perf_counter() - t0
        bvec = jnp.asarray(rng.random(n).astype(np.float32))
        levels = len(g.levels())
        b.measure(f"propagate {n}/{len(us)}", "xla level scan (mmsb_jax.graph)",
                  lambda c, cg_: propagate(cg_, c), bvec, (cg,), s["iters_prop"], (len(us) * 3 + n * 2) * 4,
                  config={"levels": levels, "build_s": round(build, 2)})


# --------------------------------------------------------------------------- report
def summarize(b: Bench) -> dict:
    """Best kernel vs best XLA per case, targets, and suggested MEASURED_FASTER entries."""
    summary, suggested = {}, {}
    cases = sorted({r["case"] for r in b.rows if r["case"] != "copy" and not r["case"].startswith("propagate")})
    for case in cases:
        ok = [r for r in b.rows if r["case"] == case and "seconds" in r]
        xla = [r for r in ok if r["impl"].startswith("xla") and "unordered" not in r["impl"]]
        ker = [r for r in ok if r["impl"].startswith("pallas")]
        if not xla or not ker:
            summary[case] = {"note": "missing measurement (see errors)"}
            continue
        bx = min(xla, key=lambda r: r["seconds"])
        bk = min(ker, key=lambda r: r["seconds"])
        speed = bx["seconds"] / bk["seconds"]
        t = TARGETS["scatter_merge" if case.startswith("scatter_merge") else "segment"]
        met = speed >= t["speedup"]
        if "copy_fraction" in t:
            met = met and bk.get("copy_fraction", 0.0) >= t["copy_fraction"]
        summary[case] = {"xla_us": bx["us"], "xla_impl": bx["impl"], "pallas_us": bk["us"], "pallas_config": bk["config"],
                         "speedup": speed, "pallas_copy_fraction": bk.get("copy_fraction"), "target": t, "met": met}
        if speed >= 1.1 and not b.smoke and jax.default_backend() == "gpu":
            suggested[case] = {"device": b.device, "jax": jax.__version__, "speedup": round(speed, 2),
                               "config": bk["config"], "source": "benchmarks/gpu.py"}
    return {"summary": summary, "suggested_measured_faster": suggested}


def print_table(b: Bench, summ: dict):
    print()
    print(f"{'case':28s} {'impl':34s} {'time':>12s} {'GB/s':>9s} {'% copy':>7s}")
    for r in b.rows:
        if "error" in r:
            print(f"{r['case']:28s} {r['impl']:34s} ERROR {r['error'][:60]}")
            continue
        frac = f"{100 * r['copy_fraction']:6.1f}%" if r.get("copy_fraction") is not None else "      -"
        print(f"{r['case']:28s} {r['impl']:34s} {r['us']:9.1f} us {r['gbps']:9.1f} {frac}")
    print()
    for case, v in summ["summary"].items():
        if "speedup" in v:
            print(f"{case:28s} pallas {v['pallas_us']:.1f} us vs xla {v['xla_us']:.1f} us: {v['speedup']:.2f}x "
                  f"(target {v['target']}) -> {'MET' if v['met'] else 'not met'}")
        else:
            print(f"{case:28s} {v['note']}")
    if summ["suggested_measured_faster"]:
        print("\nsuggested mmsb_jax/adaptive/_kernels.py MEASURED_FASTER entries:")
        print(json.dumps(summ["suggested_measured_faster"], indent=2))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, kernels in interpret mode (runs on CPU)")
    ap.add_argument("--out", default=None, help="JSON output path (default bench-results/gpu[-smoke].json)")
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--only", default="copy,scatter,segment,propagate", help="comma list of case groups")
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*[Dd]onat.*")
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    s = SMOKE if args.smoke else FULL
    repeats = args.repeats or (1 if args.smoke else 3)
    b = Bench(args.smoke, repeats)
    dev = jax.devices()[0]
    b.device = getattr(dev, "device_kind", str(dev))
    print(f"device: {b.device} ({jax.default_backend()}), jax {jax.__version__}, "
          f"{'SMOKE (interpret mode)' if args.smoke else 'full'}", flush=True)
    if not args.smoke and jax.default_backend() != "gpu":
        print("warning: not on a GPU; compiled Pallas kernels will fail here (use --smoke)", flush=True)
    rng = np.random.default_rng(0)
    groups = set(args.only.split(","))
    t0 = time.perf_counter()
    if "copy" in groups:
        bench_copy(b, s)
    if "scatter" in groups:
        bench_scatter(b, s, rng)
    if "segment" in groups:
        bench_segment(b, s, rng)
    if "propagate" in groups:
        bench_propagate(b, s, rng)
    summ = summarize(b)
    print_table(b, summ)
    out = pathlib.Path(args.out or ROOT / "bench-results" / ("gpu-smoke.json" if args.smoke else "gpu.json"))
    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"device": b.device, "platform": jax.default_backend(), "jax": jax.__version__, "smoke": args.smoke,
           "sizes": {k: v for k, v in s.items()}, "copy_bw_gbps": (b.copy_bw or 0) / 1e9, "rows": b.rows,
           "backend_report": backend.backend_report(), "wall_s": time.perf_counter() - t0, **summ}
    out.write_text(json.dumps(doc, indent=1, default=str))
    print(f"\nwrote {out} ({doc['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
