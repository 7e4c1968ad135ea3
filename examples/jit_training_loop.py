"""A jit-compiled loop that logs its page writes through a device-side ring, and a gradient
through propagation with respect to the edge weights."""

import jax
import jax.numpy as jnp

import mmsb_jax as mmsb
from mmsb_jax import semirings
from mmsb_jax.graph import ShadowPageGraph, propagate, with_weights

# 1. Log from inside lax.scan: each step writes one value into page (step % 4).
state = mmsb.mmsb_start()
ids = mmsb.create_pages(state, 4, size=8, dtype=jnp.float32)
page_ids = jnp.asarray(ids, jnp.int32)


@jax.jit
def train(ring):
    def step(ring, i):
        value = jnp.sin(i.astype(jnp.float32))
        ring = mmsb.ring_append(ring, page_ids[i % 4][None], (i % 8)[None, None], value[None, None])
        return ring, value

    return jax.lax.scan(step, ring, jnp.arange(16, dtype=jnp.int32))


ring, _ = train(mmsb.delta_ring(capacity=32, k=1, dtype=jnp.float32))
epoch, ring = state.drain_ring(ring)                     # one epoch, logged with source "jit-ring"
print("drained at epoch", epoch, "->", mmsb.query_page(state, int(ids[1])))
print("log sources:", sorted({r.source for r in mmsb.query_log(state)}))
mmsb.mmsb_stop(state)

# 2. Differentiate a REAL propagation with respect to the edge weights.
g = ShadowPageGraph()
g.add_dependencies([0, 1, 0], [1, 2, 2], [0.5, 2.0, 1.0])
cg = g.compile(semirings.REAL, num_nodes=3)
b = jnp.array([1.0, 0.0, 0.0])


def loss(w):
    return propagate(with_weights(cg, w), b)[2]         # x2 = w02*x0 + w12*(w01*x0)


print("d x2 / d w:", jax.grad(loss)(jnp.array([0.5, 2.0, 1.0])))
