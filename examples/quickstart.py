"""The README quickstart: pages, deltas, epochs, a checkpoint and reopening it."""

import tempfile

import jax.numpy as jnp
import numpy as np

import mmsb_jax as mmsb

state = mmsb.mmsb_start()  # path=None: a temporary state directory
page = mmsb.create_page(state, size=8, dtype=jnp.float32)

mmsb.update_page(state, page.id, jnp.arange(8, dtype=jnp.float32))  # diff -> dense delta -> epoch
mmsb.route_delta(state, page.id, mmsb.sparse_delta([0, 7], jnp.array([100.0, -1.0]), shape=8))
print("page:", mmsb.query_page(state, page.id))
print("epoch:", state.epoch)

# Many pages and many sparse deltas at once: one epoch, one scatter, last writer wins.
ids = mmsb.create_pages(state, 1000, size=1024, dtype=jnp.uint8)
rng = np.random.default_rng(0)
mmsb.route_sparse_batch(state, ids[rng.integers(0, 1000, 5000)],
                        rng.integers(0, 1024, (5000, 16)).astype(np.int32),
                        rng.integers(0, 256, (5000, 16), dtype=np.uint8))

ckpt = tempfile.mkdtemp() + "/ckpt"
digest = mmsb.state_digest(state)
mmsb.mmsb_stop(state, checkpoint_path=ckpt)  # plain orbax arrays + a JSON manifest

reopened = mmsb.mmsb_open(ckpt)
assert mmsb.state_digest(reopened) == digest
print("reopened at epoch", reopened.epoch, "with", mmsb.get_stats(reopened)["pages"], "pages")
mmsb.mmsb_stop(reopened)
