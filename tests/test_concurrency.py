"""Many threads on one state: writers, background and blocking checkpoints, readers and
dependency edits at once; afterwards live == reopen == full replay, and verify passes."""

from __future__ import annotations

import random
import threading

import jax.numpy as jnp
import numpy as np

import mmsb_jax as mmsb
from mmsb_jax.shell._replay import rebuild
from mmsb_jax.shell._state import MMSBState

F32 = np.float32
N = 16


def test_writers_checkpoints_readers_and_edits_at_once(tmp_path):
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="batch", segment_bytes=1 << 16)
    ids = [int(i) for i in mmsb.create_pages(s, 8 * 6 + 8, size=N, dtype=jnp.float32)]
    edge_pages = ids[48:]  # the edit thread's pages: edges only from lower to higher ids (no cycles)
    errors: list[BaseException] = []
    stop = threading.Event()

    def guard(fn):
        def run(*args):
            try:
                fn(*args)
            except BaseException as e:  # noqa: BLE001 - reported by the test
                errors.append(e)
                stop.set()

        return run

    @guard
    def writer(t):
        rng = random.Random(t)
        mine = ids[6 * t : 6 * t + 6]
        for i in range(40):
            p = rng.choice(mine)
            k = i % 4
            if k == 0:
                mmsb.update_page(s, p, np.full(N, t * 1000 + i, F32))
            elif k == 1:
                mmsb.route_delta(s, p, mmsb.sparse_delta([i % N], np.array([float(i)], F32), N))
            elif k == 2:
                mmsb.batch_route_deltas(s, [(p, mmsb.sparse_delta([1], np.array([-1.0], F32), N)),
                                            (rng.choice(mine), mmsb.accumulate_delta(np.ones(N, F32), "real"))])
            else:
                mmsb.route_sparse_batch(s, np.array(mine[:2]), np.array([[0, 1], [2, 3]]),
                                        np.full((2, 2), float(i), F32))

    @guard
    def checkpointer():
        i = 0
        while not stop.is_set():
            out = mmsb.checkpoint(s, block=bool(i % 2))
            if not i % 2:
                out.result(120)
            i += 1
            stop.wait(0.05)

    @guard
    def reader():
        rng = random.Random(99)
        while not stop.is_set():
            p = rng.choice(ids)
            assert mmsb.query_page(s, p).shape == (N,)
            mmsb.state_digest(s)
            e = s.epoch
            if e > 2 and rng.random() < 0.2:
                snap = mmsb.replay_to_epoch(s, rng.randrange(1, e))
                assert snap.read_only

    @guard
    def editor():
        rng = random.Random(7)
        added = []
        for _ in range(30):
            if added and rng.random() < 0.3:
                u, v = added.pop(rng.randrange(len(added)))
                mmsb.remove_dependency(s, u, v)
            else:
                u, v = sorted(rng.sample(edge_pages, 2))
                if (u, v) not in added:
                    mmsb.add_dependency(s, u, v, weight=rng.choice([None, 0.5]))
                    added.append((u, v))
            mmsb.update_page(s, u, np.full(N, rng.random(), F32))

    workers = [threading.Thread(target=writer, args=(t,)) for t in range(8)] + [threading.Thread(target=editor)]
    others = [threading.Thread(target=checkpointer), threading.Thread(target=reader), threading.Thread(target=reader)]
    for th in workers + others:
        th.start()
    for th in workers:
        th.join(600)
    stop.set()
    for th in others:
        th.join(600)
    assert not errors, errors
    live = mmsb.state_digest(s)
    epoch = s.epoch
    assert epoch > 8 * 40
    s.close()
    reopened = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(reopened) == live and reopened.epoch == epoch
    finally:
        reopened.close()
    full = MMSBState(path, _snapshot=True)
    rebuild(full, str(path), checkpoint=None)
    assert full.digest() == live
    rep = mmsb.verify_state(path)
    assert rep["ok"], rep["faults"]
    assert len(rep["checkpoints"]) >= 2
