"""Pools split over 8 (virtual CPU) devices by slot: the same state, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_bits_equal
from jax.sharding import Mesh

import mmsb_jax as mmsb
from mmsb_jax import InvalidArgumentError

MESH = Mesh(np.array(jax.devices()), ("pages",))
MESH_2D = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))


def scripted(state, semiring_zero):
    """Every kind of write, across shards, with deletes, slot reuse, growth and dependencies."""
    rng = np.random.default_rng(0)
    ids = mmsb.create_pages(state, 20, size=16, dtype=jnp.float32).tolist()
    flags = mmsb.create_pages(state, 5, shape=(2, 3), dtype=jnp.bool_).tolist()
    for i in ids:
        mmsb.update_page(state, i, rng.random(16).astype(np.float32))
    mmsb.route_delta(state, ids[3], mmsb.sparse_delta([0, 5, 0], jnp.array([1.0, 2.0, 9.0]), 16))
    mmsb.route_delta(state, ids[17], mmsb.dense_delta(jnp.arange(16) < 4, jnp.ones(16)))
    mmsb.route_delta(state, ids[9], mmsb.accumulate_delta(jnp.ones(16)))
    mmsb.route_sparse_batch(state, [ids[1], ids[18], ids[1]], np.array([[0, 1], [2, 3], [1, 4]]),
                            np.arange(6, dtype=np.float32).reshape(3, 2))
    mmsb.route_sparse_batch(state, [ids[4], ids[4]], np.tile(np.arange(16), (2, 1)),  # whole-page rows
                            np.stack([np.zeros(16, np.float32), np.full(16, 5.0, np.float32)]))
    mmsb.batch_route_deltas(state, [(ids[2], mmsb.sparse_delta([1], jnp.array([3.0]), 16)),
                                    (ids[19], mmsb.dense_delta(jnp.arange(16) > 10, jnp.zeros(16))),
                                    (ids[2], mmsb.accumulate_delta(jnp.full(16, 2.0)))])
    mmsb.update_page(state, flags[4], np.ones((2, 3), bool))
    mmsb.delete_page(state, ids[5])
    ids[5] = mmsb.create_page(state, size=16, dtype=jnp.float32).id  # reuses the zeroed slot
    more = mmsb.create_pages(state, 40, size=16, dtype=jnp.float32).tolist()  # the pool grows
    mmsb.update_page(state, more[-1], np.full(16, 4.0, np.float32))
    mmsb.update_page(state, ids[19], np.full(16, semiring_zero, np.float32))
    mmsb.add_dependency(state, ids[0], ids[19], weight=2.0)
    mmsb.add_dependency(state, more[-1], ids[19])
    mmsb.update_page(state, ids[0], np.full(16, 3.0, np.float32))  # propagates
    return ids + more + flags


@pytest.mark.parametrize("semiring", ["real", "tropical"])
@pytest.mark.parametrize("mesh", [MESH, MESH_2D], ids=["1d", "2d"])
def test_sharded_state_equals_single_device_state(semiring, mesh):
    one = mmsb.mmsb_start(semiring=semiring, fsync="never")
    split = mmsb.mmsb_start(semiring=semiring, fsync="never", mesh=mesh)
    try:
        zero = float(mmsb.semirings.get_semiring(semiring).zero)
        pages = scripted(one, zero)
        assert scripted(split, zero) == pages
        assert mmsb.state_digest(split) == mmsb.state_digest(one)
        for pid in pages:
            assert_bits_equal(mmsb.query_page(split, pid), mmsb.query_page(one, pid), f"page {pid}")
        for pool in split._pools:
            assert pool.array.sharding == pool.sharding and len(pool.sharding.device_set) == 8
            assert pool.capacity % 8 == 0
        assert "NamedSharding" in mmsb.get_stats(split)["pools"][0]["device"]
        assert mmsb.create_page(split, size=16, dtype=jnp.float32).device == split._pools[0].sharding
    finally:
        mmsb.mmsb_stop(one)
        mmsb.mmsb_stop(split)


def test_placement_is_not_state(tmp_path):
    """A sharded state checkpoints, logs and reopens like any other, with any mesh or none."""
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path, semiring="tropical", fsync="never", mesh=MESH)
    pages = scripted(state, float("inf"))
    mmsb.checkpoint(state)
    digest_before_batch = mmsb.state_digest(state)
    mmsb.route_sparse_batch(state, pages[:3], np.zeros((3, 1), np.int32), np.full((3, 1), -1.0, np.float32))
    digest, epoch = mmsb.state_digest(state), state.epoch
    mmsb.mmsb_stop(state)
    for mesh in (None, MESH, MESH_2D):
        again = mmsb.mmsb_open(path, mesh=mesh)
        try:
            assert (again.epoch, mmsb.state_digest(again)) == (epoch, digest)
            assert all((p.sharding is None) == (mesh is None) for p in again._pools)
            assert mmsb.state_digest(mmsb.replay_to_epoch(again, epoch - 1)) == digest_before_batch
        finally:
            again.close()
    # written sharded, read single-device
    again = mmsb.mmsb_open(path, mesh=MESH_2D)
    mmsb.update_page(again, pages[0], np.full(16, 7.0, np.float32))
    digest = mmsb.state_digest(again)
    again.close()
    plain = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(plain) == digest
        assert np.asarray(mmsb.query_page(plain, pages[0])).tolist() == [7.0] * 16
    finally:
        plain.close()


def test_mesh_must_be_a_mesh():
    with pytest.raises(InvalidArgumentError, match="is not a jax.sharding.Mesh"):
        mmsb.mmsb_start(mesh=jax.devices())
