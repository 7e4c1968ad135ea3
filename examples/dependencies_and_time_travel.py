"""Dependencies between pages, propagation on every write, and replay to any past epoch."""

import tempfile

import jax.numpy as jnp

import mmsb_jax as mmsb

path = tempfile.mkdtemp() + "/state"
state = mmsb.mmsb_start(path, semiring="real")
a = mmsb.create_page(state, size=4, dtype=jnp.float32)
b = mmsb.create_page(state, size=4, dtype=jnp.float32)
total = mmsb.create_page(state, size=4, dtype=jnp.float32)
mmsb.add_dependency(state, a.id, total.id)              # total = a + 2 b (plus what total holds)
mmsb.add_dependency(state, b.id, total.id, weight=2.0)

changes = []
state.observe(total.id, lambda pid, epoch: changes.append(epoch))
mmsb.update_page(state, a.id, jnp.ones(4, jnp.float32))
before = state.epoch
mmsb.update_page(state, b.id, jnp.full(4, 10.0, jnp.float32))
print("total:", mmsb.query_page(state, total.id))       # [21, 21, 21, 21]
print("observer fired at epochs", changes)

try:
    mmsb.add_dependency(state, total.id, a.id)           # would close a cycle
except mmsb.GraphCycleError as e:
    print("refused cycle:", e.cycle)

snap = mmsb.replay_to_epoch(state, before)               # read-only, rebuilt from the log
print(f"at epoch {before}: total =", mmsb.query_page(snap, total.id))
print("what changed since:", mmsb.diff(state, before, state.epoch)["changed"])
mmsb.mmsb_stop(state)

reopened = mmsb.mmsb_open(path)                          # full replay of the log
print("reopened total:", mmsb.query_page(reopened, total.id))
mmsb.mmsb_stop(reopened)
