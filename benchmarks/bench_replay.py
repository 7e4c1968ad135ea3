"""Replay and time-travel benchmarks (the transaction-log issue's targets).

* Replay of 1M logged sparse deltas from disk (read + CRC + apply), target <= 2 s, next to a
  numpy loop applying the same deltas one by one.
* Time travel vs snapshots: N steps, each changing 1% of 10k 1 KiB pages. The log plus one
  checkpoint must take <= 1/20 of the disk of one orbax checkpoint per step, and restoring the
  last step (checkpoint + replay) <= 2x the time of restoring one orbax checkpoint.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

import numpy as np

import mmsb_jax as mmsb

from ._harness import result

PAGE = 1024


def _dir_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(r, f)) for r, _, fs in os.walk(path) for f in fs)


def bench_replay_1m(quick: bool) -> dict:
    n_total = 200_000 if quick else 1_000_000
    n_pages, k, batch = 10_000, 4, 100_000
    rng = np.random.default_rng(1)
    root = tempfile.mkdtemp(prefix="mmsb-bench-")
    try:
        path = os.path.join(root, "s")
        st = mmsb.mmsb_start(path, fsync="batch")
        ids = mmsb.create_pages(st, n_pages, size=PAGE)
        rows_all, ind_all, vals_all = [], [], []
        for _ in range(n_total // batch):
            rows = rng.integers(0, n_pages, batch)
            ind = rng.integers(0, PAGE, (batch, k)).astype(np.int32)
            vals = rng.integers(0, 256, (batch, k), dtype=np.uint8)
            mmsb.route_sparse_batch(st, ids[rows], ind, vals)
            rows_all.append(rows), ind_all.append(ind), vals_all.append(vals)
        digest = mmsb.state_digest(st)
        mmsb.mmsb_stop(st)
        t0 = time.perf_counter()
        reopened = mmsb.mmsb_open(path)  # no checkpoint: full replay of the log
        t = time.perf_counter() - t0
        ok = mmsb.state_digest(reopened) == digest
        reopened.close()
        rows, ind, vals = (np.concatenate(a) for a in (rows_all, ind_all, vals_all))
        host = np.zeros((n_pages, PAGE), np.uint8)
        nb = min(n_total, 100_000)
        t0 = time.perf_counter()
        for i in range(nb):
            host[rows[i], ind[i]] = vals[i]
        tb = (time.perf_counter() - t0) * n_total / nb
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return result(
        f"replay/{n_total // 1000}k logged sparse deltas from disk (read+CRC+apply)",
        value=t, unit="s", baseline="numpy loop applying them one by one", baseline_value=tb,
        higher_is_better=False, target="<= 2 s for 1M" + (" (quick: 200k)" if quick else ""),
        met=ok and t <= 2.0 * n_total / 1_000_000, digest_matches=ok, deltas=n_total,
    )


def bench_time_travel(quick: bool, *, whole_pages: bool, policy: bool = False) -> dict:
    import orbax.checkpoint as ocp

    n_pages, steps = 10_000, (100 if quick else 1000)
    changed = n_pages // 100
    rng = np.random.default_rng(2)
    root = tempfile.mkdtemp(prefix="mmsb-bench-")
    try:
        path = os.path.join(root, "s")
        # the policy's bound: a tail of at most ~10 ms of replay (a fifth of an orbax restore here)
        st = mmsb.mmsb_start(path, fsync="batch",
                             checkpoint_policy=mmsb.CheckpointPolicy(max_replay_seconds=0.01) if policy else None)
        ids = mmsb.create_pages(st, n_pages, size=PAGE)
        mmsb.checkpoint(st)
        for _ in range(steps):
            rows = rng.choice(n_pages, changed, replace=False)
            if whole_pages:
                ind = np.tile(np.arange(PAGE, dtype=np.int32), (changed, 1))
                vals = rng.integers(0, 256, (changed, PAGE), dtype=np.uint8)
            else:
                ind = rng.integers(0, PAGE, (changed, 16)).astype(np.int32)
                vals = rng.integers(0, 256, (changed, 16), dtype=np.uint8)
            mmsb.route_sparse_batch(st, ids[rows], ind, vals)
        last = st.epoch
        digest = mmsb.state_digest(st)
        taken = mmsb.get_stats(st)["adaptive"]["checkpoint_policy"].get("checkpoints", 0)
        pool = np.asarray(st._pools[0].array[:n_pages])
        mmsb.mmsb_stop(st)
        ours = _dir_bytes(path)

        # Baseline: one orbax checkpoint per step. Write a few, measure, scale to `steps`.
        ck = ocp.StandardCheckpointer()
        sizes, saves = [], []
        for i in range(3):
            d = os.path.join(root, f"orbax-{i}")
            t0 = time.perf_counter()
            ck.save(d, {"pool": pool})
            ck.wait_until_finished()
            saves.append(time.perf_counter() - t0)
            sizes.append(_dir_bytes(d))
        restores = []
        for i in range(3):
            t0 = time.perf_counter()
            np.asarray(ck.restore(os.path.join(root, f"orbax-{i}"))["pool"])
            restores.append(time.perf_counter() - t0)
        ck.close()
        per_step = float(np.median(sizes)) * steps
        t_orbax = float(np.median(restores))

        t0 = time.perf_counter()
        snap = mmsb.replay_to_epoch(path, last)
        t_first = time.perf_counter() - t0  # includes compiling the replay's batch shapes
        ok = snap.digest() == digest
        warm = []
        for _ in range(3):
            t0 = time.perf_counter()
            mmsb.replay_to_epoch(path, last)
            warm.append(time.perf_counter() - t0)
        t_ours = float(np.median(warm))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    what = "whole 1 KiB pages rewritten" if whole_pages else "16 B changed per page"
    disk_ratio = ours / per_step
    bound = 1.5 if policy else 2
    return result(
        f"time travel/{steps} steps x 1% of 10k pages ({what}{', CheckpointPolicy(max_replay_seconds=0.01)' if policy else ''}): "
        "restore last step",
        value=t_ours, unit="s", baseline="restore one orbax checkpoint (s)", baseline_value=t_orbax,
        higher_is_better=False,
        target=f"restore <= {bound}x orbax restore; disk <= 1/20 of per-step checkpoints",
        met=ok and t_ours <= bound * t_orbax and disk_ratio <= 1 / 20,
        disk_bytes_log_plus_checkpoint=ours, disk_bytes_per_step_checkpoints=per_step,
        disk_ratio=disk_ratio, restore_ratio=t_ours / t_orbax, digest_matches=ok,
        orbax_save_s=float(np.median(saves)), first_restore_s_with_compile=t_first, policy_checkpoints=taken,
    )


def run(quick: bool = False) -> list[dict]:
    return [
        bench_replay_1m(quick),
        bench_time_travel(quick, whole_pages=False),
        bench_time_travel(quick, whole_pages=True),
        bench_time_travel(quick, whole_pages=False, policy=True),
    ]
