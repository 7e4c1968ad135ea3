"""Helpers shared by the test modules: random page contents, bit-exact comparison, the no-op rule,
a script of every kind of write."""

import numpy as np


def rand_array(rng, shape, dtype):
    """Random values over the dtype's range; floats include NaN and -0.0."""
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.random(shape) < 0.5
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return rng.integers(info.min, info.max, size=shape, endpoint=True, dtype=dtype)
    out = (rng.standard_normal(shape) * 10).astype(dtype)
    out[rng.random(shape) < 0.1] = np.nan
    out[rng.random(shape) < 0.1] = -0.0
    return out


def as_bits(x):
    """The array's bit patterns (so NaN == NaN and -0.0 != 0.0)."""
    x = np.asarray(x)
    return x if x.dtype == np.bool_ else x.view(f"u{x.dtype.itemsize}")


def assert_bits_equal(got, want, what=""):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape and got.dtype == want.dtype, (what, got.shape, got.dtype, want.shape, want.dtype)
    np.testing.assert_array_equal(as_bits(got), as_bits(want), err_msg=what)


def writes_nothing(d) -> bool:
    """The model's rule: a delta that writes no element (an all-false mask, no sparse indices)
    changes nothing, so it takes no epoch."""
    import mmsb_jax as mmsb

    if isinstance(d, mmsb.DenseDelta):
        return not np.asarray(d.mask).any()
    return isinstance(d, mmsb.SparseDelta) and np.asarray(d.indices).size == 0


def run_and_kill(code: str, args, delay: float, started=lambda lines: any(ln.startswith("ACK") for ln in lines)):
    """Run ``python -c code *args``; once ``started(lines)`` holds (its output so far), wait
    ``delay`` s and SIGKILL it. Returns the complete lines it printed (acknowledgements)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    proc = subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, text=True)
    lines: list[str] = []
    ready = threading.Event()

    def reader():
        for line in proc.stdout:
            if line.endswith("\n"):  # only complete lines are acknowledgements
                lines.append(line.strip())
                if started(lines):
                    ready.set()

    t = threading.Thread(target=reader, daemon=True)
    t.start()
    try:
        assert ready.wait(120), f"the child did not start writing: {lines[:5]}"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        t.join(10)
    return lines


#: Python source that a child process runs first and last to measure its own peak memory:
#: ``PEAK_RESET`` clears the kernel's high-water mark (after fork/exec it can still hold the
#: parent's size), ``peak_mb()`` then reads it (``VmHWM``), falling back to ``ru_maxrss``.
PEAK_RESET = """
def _reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
_reset_peak()

def peak_mb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) // 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
"""


def every_write(state, semiring_zero):
    """Every kind of write, across shards: creates, page rewrites, sparse / dense / accumulate
    deltas, sparse batches (also whole-page rows), mixed batches, a drained delta ring,
    deletes with slot reuse, pool growth, dependencies added and removed (one and many at once),
    pages created at the semiring's zero, propagation.
    Returns the page ids. (The sharded and the multi-process tests run it against one device.)"""
    import jax.numpy as jnp

    import mmsb_jax as mmsb

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
    ring = mmsb.delta_ring(capacity=8, k=2, dtype=jnp.float32)
    ring = mmsb.ring_append(ring, jnp.array([ids[6], ids[7]], jnp.int32), jnp.array([[0, 1], [2, 3]]),
                            jnp.array([[7.0, 8.0], [9.0, 10.0]]))
    state.drain_ring(ring)
    mmsb.delete_page(state, ids[5])
    ids[5] = mmsb.create_page(state, size=16, dtype=jnp.float32).id  # reuses the zeroed slot
    more = mmsb.create_pages(state, 40, size=16, dtype=jnp.float32).tolist()  # the pool grows
    mmsb.update_page(state, more[-1], np.full(16, 4.0, np.float32))
    mmsb.update_page(state, ids[19], np.full(16, semiring_zero, np.float32))
    mmsb.add_dependency(state, ids[0], ids[19], weight=2.0)
    mmsb.add_dependency(state, more[-1], ids[19])
    mmsb.update_page(state, ids[0], np.full(16, 3.0, np.float32))  # propagates
    mmsb.remove_dependency(state, more[-1], ids[19])
    mmsb.route_delta(state, ids[0], mmsb.sparse_delta([2], jnp.array([-1.0]), 16))  # propagates again
    kids = mmsb.create_pages(state, 2, size=16, dtype=jnp.float32, fill="zero").tolist()  # passthroughs
    mmsb.add_dependencies(state, [ids[0], ids[1], kids[0]], [kids[0], kids[0], kids[1]], weights=[1.0, None, 3.0])
    mmsb.update_page(state, ids[1], np.full(16, 1.5, np.float32))
    mmsb.remove_dependencies(state, [ids[1]], [kids[0]])
    return ids + more + flags + kids


def parse_source(text: str):
    """``ast.parse(text)``; on CPython 3.11's spurious ``SystemError: AST constructor recursion
    depth mismatch`` (python/cpython#106905: the parser's depth count goes stale after deep
    recursion elsewhere in the process, seen when test_faults ran first) it parses again in a
    fresh thread, whose depth count starts clean."""
    import ast
    import concurrent.futures

    try:
        return ast.parse(text)
    except SystemError:
        with concurrent.futures.ThreadPoolExecutor(1) as ex:
            return ex.submit(ast.parse, text).result()
