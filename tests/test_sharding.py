"""Pools split over 8 (virtual CPU) devices by slot: the same state, bit for bit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_bits_equal
from helpers import every_write as scripted
from jax.sharding import Mesh

import mmsb_jax as mmsb
from mmsb_jax import InvalidArgumentError

MESH = Mesh(np.array(jax.devices()), ("pages",))
MESH_2D = Mesh(np.array(jax.devices()).reshape(2, 4), ("a", "b"))


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


@pytest.mark.parametrize("dtype", [np.float32, np.float16, "bfloat16"])
def test_subnormal_floats_of_a_sharded_pool_survive_a_checkpoint(tmp_path, dtype):
    """A checkpoint of a sharded pool keeps every bit: subnormal floats were saved as zeros
    (the rows went through an all-reduce on the devices, which flushes them), so a reopen, a
    replay from the checkpoint and load_tree of an earlier step all lost them."""
    dtype = jnp.dtype(dtype)
    bits = np.dtype(f"u{dtype.itemsize}")
    x = np.arange(1, 21, dtype=bits).view(dtype).reshape(4, 5)  # the smallest subnormals
    path = tmp_path / "s"
    state = mmsb.mmsb_start(path, mesh=MESH)
    page = mmsb.create_page(state, shape=(4, 5), dtype=dtype)
    mmsb.update_page(state, page.id, x)
    ckpt = mmsb.checkpoint(state)
    digest = mmsb.state_digest(state)
    assert_bits_equal(mmsb.query_page(mmsb.replay_to_epoch(state, state.epoch), page.id), x, "snapshot")
    mmsb.mmsb_stop(state)
    for mesh in (MESH, None):
        for where in (path, ckpt):
            again = mmsb.mmsb_open(where, mesh=mesh)
            try:
                assert_bits_equal(mmsb.query_page(again, page.id), x, f"{where} on {mesh}")
                assert mmsb.state_digest(again) == digest
            finally:
                again.close()
