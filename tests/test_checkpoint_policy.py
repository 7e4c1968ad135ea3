"""Issue #13, Layer 5: a checkpoint policy keeps the replay tail bounded; it never changes
what a reader sees (digests, pages and the log are the same with and without it)."""

from __future__ import annotations

import os

import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import CheckpointPolicy, InvalidArgumentError
from mmsb_jax.log import read_records

# 20 records of the tail is the bound (the byte term is switched off)
POLICY = CheckpointPolicy(max_replay_seconds=20e-3, seconds_per_record=1e-3, seconds_per_byte=0.0, min_records=4)


def _run(path, policy, steps=120):
    s = mmsb.mmsb_start(path, checkpoint_policy=policy)
    ids = mmsb.create_pages(s, 50, size=32)
    rng = np.random.default_rng(0)
    for k in range(steps):
        rows = rng.choice(50, 5, replace=False)
        mmsb.route_sparse_batch(s, ids[rows], rng.integers(0, 32, (5, 3)).astype(np.int32),
                                np.full((5, 3), k % 256, np.uint8))
        if k % 40 == 39:
            s.wait_for_checkpoints()  # let the background writer keep up, as a slower loop would
    stats = mmsb.get_stats(s)["adaptive"]["checkpoint_policy"]
    digest = mmsb.state_digest(s)
    mmsb.mmsb_stop(s)
    return digest, stats


def _records(path):
    return [(r.epoch, r.kind.name) for r in read_records(os.path.join(path, "log")).records]


def test_policy_bounds_the_tail_and_changes_nothing_a_reader_sees(tmp_path):
    with_p, without = str(tmp_path / "with"), str(tmp_path / "without")
    d1, stats = _run(with_p, POLICY)
    d2, off = _run(without, None)
    assert d1 == d2 and _records(with_p) == _records(without)
    assert off == {"enabled": False}
    assert stats["enabled"] and stats["checkpoints"] >= 3 and "max_replay_seconds" in stats["last_reason"]
    assert len(os.listdir(os.path.join(with_p, "checkpoints"))) >= 3
    assert not os.path.isdir(os.path.join(without, "checkpoints")) or not os.listdir(os.path.join(without, "checkpoints"))
    a, b = mmsb.mmsb_open(with_p), mmsb.mmsb_open(without)
    try:
        assert mmsb.state_digest(a) == mmsb.state_digest(b) == d1
        assert a._tail_at_open <= 20 < b._tail_at_open  # the reopen replayed a bounded tail
        snap = mmsb.replay_to_epoch(with_p, a.epoch - 3)
        assert mmsb.state_digest(snap) == mmsb.state_digest(mmsb.replay_to_epoch(without, a.epoch - 3))
    finally:
        a.close(), b.close()


def test_open_past_the_bound_checkpoints_at_once(tmp_path):
    path = str(tmp_path / "s")
    _run(path, None, steps=60)
    s = mmsb.mmsb_open(path, checkpoint_policy=POLICY)
    s.wait_for_checkpoints()
    stats = mmsb.get_stats(s)["adaptive"]["checkpoint_policy"]
    assert stats["checkpoints"] == 1 and stats["tail_records"] == 0
    s.close()
    s = mmsb.mmsb_open(path)
    assert s._tail_at_open == 0
    s.close()


def test_policy_off_and_auto():
    assert CheckpointPolicy().due(1000, 0)[0]
    assert not CheckpointPolicy(enabled=False).due(10**6, 10**12)[0]
    s = mmsb.mmsb_start(checkpoint_policy=CheckpointPolicy(enabled=False))
    assert mmsb.get_stats(s)["adaptive"]["checkpoint_policy"] == {"enabled": False}
    s.close()
    s = mmsb.mmsb_start(checkpoint_policy="auto")
    st = mmsb.get_stats(s)["adaptive"]["checkpoint_policy"]
    assert st["enabled"] and st["checkpoints"] == 0 and st["tail_records"] == 0
    s.close()


@pytest.mark.parametrize("kwargs", [{"max_replay_seconds": 0}, {"max_replay_seconds": float("nan")},
                                    {"max_tail_bytes": -1}, {"min_records": 0}, {"min_records": 1.5},
                                    {"seconds_per_record": -1.0}, {"enabled": "yes"}])
def test_bad_policies_are_refused(kwargs):
    with pytest.raises(InvalidArgumentError, match=next(iter(kwargs))):
        CheckpointPolicy(**kwargs)


def test_bad_policy_argument_is_refused_before_anything_is_made(tmp_path):
    path = str(tmp_path / "s")
    with pytest.raises(InvalidArgumentError, match="checkpoint_policy"):
        mmsb.mmsb_start(path, checkpoint_policy="often")
    assert not os.path.exists(os.path.join(path, "log"))
