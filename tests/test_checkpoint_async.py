"""Background checkpoints: same result as a blocking one; failures are raised, never swallowed."""

import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import SerializationError


def test_background_checkpoint_equals_blocking(tmp_path):
    st = mmsb.mmsb_start(tmp_path / "s")
    ids = mmsb.create_pages(st, 5, size=16, dtype=np.float32)
    mmsb.update_page(st, int(ids[2]), np.arange(16, dtype=np.float32))
    digest = mmsb.state_digest(st)
    fut = mmsb.checkpoint(st, tmp_path / "bg", block=False)
    # Writes after the call do not leak into the checkpoint: it was copied at call time.
    mmsb.update_page(st, int(ids[2]), np.zeros(16, np.float32))
    assert fut.result(timeout=120) == str(tmp_path / "bg")
    mmsb.mmsb_stop(st)
    reopened = mmsb.mmsb_open(tmp_path / "bg")
    assert mmsb.state_digest(reopened) == digest
    mmsb.mmsb_stop(reopened)


def test_background_checkpoint_failure_is_raised(tmp_path):
    st = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_page(st, size=4)
    mmsb.checkpoint(st, tmp_path / "taken")
    mmsb.create_page(st, size=4)
    fut = mmsb.checkpoint(st, tmp_path / "taken", block=False)  # the directory already holds one
    with pytest.raises(SerializationError, match="already holds a checkpoint"):
        fut.result(timeout=120)
    with pytest.raises(SerializationError, match="background checkpoint failed"):
        mmsb.checkpoint(st)  # the next checkpoint reports it too
    mmsb.checkpoint(st)  # ...once; then checkpoints work again
    mmsb.mmsb_stop(st)


def test_stop_waits_for_and_reports_a_failed_background_checkpoint(tmp_path):
    st = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_page(st, size=4)
    mmsb.checkpoint(st, tmp_path / "taken")
    mmsb.create_page(st, size=4)
    mmsb.checkpoint(st, tmp_path / "taken", block=False)
    with pytest.raises(SerializationError, match="background checkpoint failed"):
        mmsb.mmsb_stop(st)
    assert st.closed
