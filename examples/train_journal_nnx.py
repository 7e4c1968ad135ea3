"""A flax nnx + optax training loop journaled from inside ``lax.scan``, then any step back out.

Every step of every compiled chunk records the whole training state (params + Adam moments +
count, mixed dtypes) into a device ring with ``record_tree``; one ``drain_ring`` per chunk
turns each recorded step into its own epoch, so a step in the middle of a chunk loads back
bit for bit, also after the state is stopped and reopened.

Needs flax and optax (the library imports neither): ``pip install 'mmsb-jax[train]'``, or
``pip install -e '.[train]'`` in a checkout.
"""

import functools
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

try:
    import optax
    from flax import nnx
except ImportError as e:  # say how to get them rather than a bare traceback
    raise SystemExit(f"this example needs flax and optax ({e}): pip install 'mmsb-jax[train]'") from None

import mmsb_jax as mmsb


class MLP(nnx.Module):
    def __init__(self, rngs: nnx.Rngs):
        self.hidden = nnx.Linear(8, 32, rngs=rngs)
        self.out = nnx.Linear(32, 1, rngs=rngs)

    def __call__(self, x):
        return self.out(jax.nn.relu(self.hidden(x)))


graphdef, params = nnx.split(MLP(nnx.Rngs(0)))
tx = optax.adam(1e-2)
opt_state = tx.init(params)
x = jax.random.normal(jax.random.key(1), (64, 8))
y = jnp.sin(x.sum(axis=1, keepdims=True))


def train_step(params, opt_state):
    def loss_fn(p):
        return jnp.mean((nnx.merge(graphdef, p)(x) - y) ** 2)

    loss, grads = jax.value_and_grad(loss_fn)(params)
    with jax.numpy_dtype_promotion("standard"):  # optax mixes its int32 count with floats
        updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss


CHUNK = 8


@functools.partial(jax.jit, donate_argnums=(2,))  # donated: each step writes its ring slot in place
def chunk(params, opt_state, ring, first_step):
    def body(carry, i):
        params, opt_state, ring = carry
        params, opt_state, loss = train_step(params, opt_state)
        ring = mmsb.record_tree(ring, {"params": params, "opt": opt_state}, first_step + i)
        return (params, opt_state, ring), (loss, params)

    (params, opt_state, ring), (losses, seen) = jax.lax.scan(
        body, (params, opt_state, ring), jnp.arange(CHUNK, dtype=jnp.int32))
    return params, opt_state, ring, losses, seen


path = tempfile.mkdtemp(prefix="mmsb-nnx-") + "/state"
state = mmsb.mmsb_start(path)
ring = mmsb.tree_ring(state, "train", {"params": params, "opt": opt_state}, steps=CHUNK)
seen_at = {}
for c in range(4):
    params, opt_state, ring, losses, seen = chunk(params, opt_state, ring, jnp.int32(c * CHUNK))
    assert not bool(ring.overflowed)
    epoch, ring = state.drain_ring(ring)  # one epoch per recorded step
    for k in range(CHUNK):
        seen_at[c * CHUNK + k] = jax.tree.map(lambda leaf: np.asarray(leaf[k]), seen)
    print(f"chunk {c}: loss {float(losses[0]):.4f} -> {float(losses[-1]):.4f}, drained up to epoch {epoch}")

steps = mmsb.tree_steps(state, "train")
print(f"{len(steps)} steps journaled, epochs {steps[0][1]}..{steps[-1][1]}")
mmsb.mmsb_stop(state)

state = mmsb.mmsb_open(path)  # the structure and leaf paths come from the log
step = 13  # in the middle of the second chunk
back = mmsb.load_tree(state, "train", step=step)
print("restored types:", type(back["params"]).__name__, type(back["opt"][0]).__name__,
      "count dtype", back["opt"][0].count.dtype)
same = all(np.array_equal(np.asarray(a).view(np.uint8), np.asarray(b).view(np.uint8))
           for a, b in zip(jax.tree.leaves(back["params"]), jax.tree.leaves(seen_at[step])))
print(f"params at step {step} bit-exact after reopen: {same}")
assert same and int(back["opt"][0].count) == step + 1
model = nnx.merge(graphdef, back["params"])  # a model at that step, ready to evaluate
print(f"loss of the step-{step} model: {float(jnp.mean((model(x) - y) ** 2)):.4f}")
mmsb.mmsb_stop(state)
