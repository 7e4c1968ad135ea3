"""Background checkpoints: same result as a blocking one; failures are raised, never swallowed."""

import os
import threading

import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import SerializationError
from mmsb_jax.shell import _checkpointing as _state_ckpt
from mmsb_jax.log._checkpoint import read_manifest


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


# ------------------------------------------------------------------ one epoch, several requests
@pytest.fixture
def held_writer(monkeypatch):
    """Background writes wait until ``gate.set()`` (at most 60 s): a checkpoint stays pending."""
    gate = threading.Event()
    write = _state_ckpt.save_checkpoint

    def held(*args):
        if threading.current_thread().name.startswith("mmsb-checkpoint"):
            gate.wait(60)
        return write(*args)

    monkeypatch.setattr(_state_ckpt, "save_checkpoint", held)
    yield gate
    gate.set()


def _one_page_state(path):
    st = mmsb.mmsb_start(path)
    p = mmsb.create_page(st, size=16, dtype=np.float32)
    mmsb.update_page(st, p.id, np.arange(16, dtype=np.float32))
    return st


def _assert_reopens_to(path, digest):
    reopened = mmsb.mmsb_open(path)
    assert mmsb.state_digest(reopened) == digest
    mmsb.mmsb_stop(reopened)


def test_background_checkpoints_at_one_epoch_share_a_future(tmp_path, held_writer):
    st = _one_page_state(tmp_path / "s")
    digest = mmsb.state_digest(st)
    f1 = mmsb.checkpoint(st, block=False)
    f2 = mmsb.checkpoint(st, block=False)
    assert f2 is f1 and not f1.done()
    held_writer.set()
    assert f1.result(timeout=120) == os.path.join(st.path, "checkpoints", "epoch-000000000002")
    f3 = mmsb.checkpoint(st, block=False)  # written already: a done future of the same directory
    assert f3.done() and f3.result() == f1.result()
    mmsb.mmsb_stop(st)
    _assert_reopens_to(tmp_path / "s", digest)
    _assert_reopens_to(f1.result(), digest)


def test_blocking_checkpoint_joins_a_pending_background_one(tmp_path, held_writer):
    st = _one_page_state(tmp_path / "s")
    digest = mmsb.state_digest(st)
    fut = mmsb.checkpoint(st, block=False)
    threading.Timer(0.5, held_writer.set).start()
    assert mmsb.checkpoint(st) == fut.result(timeout=0)  # waited for the background write
    assert st._ckpt_pending == []  # nothing left over
    mmsb.mmsb_stop(st)
    _assert_reopens_to(fut.result(), digest)


def test_checkpoint_into_a_taken_directory_is_refused_at_the_call(tmp_path):
    """A directory that holds a checkpoint (or anything else) is refused when asked for, also
    with ``block=False`` (not only later by the writer), and nothing is written."""
    st = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_page(st, size=4)
    mmsb.checkpoint(st, tmp_path / "taken")
    mmsb.create_page(st, size=4)
    for block in (True, False):
        with pytest.raises(SerializationError, match="already holds a checkpoint"):
            mmsb.checkpoint(st, tmp_path / "taken", block=block)
    assert read_manifest(str(tmp_path / "taken"))["epoch"] == 1
    mmsb.checkpoint(st)  # nothing failed in the background
    mmsb.mmsb_stop(st)


def _failing_background_checkpoint(st, directory, gate):
    """A background checkpoint that fails in its writer: another one, pending at an earlier
    epoch, writes ``directory`` first."""
    gate.clear()
    first = mmsb.checkpoint(st, directory, block=False)
    mmsb.create_page(st, size=4)
    fut = mmsb.checkpoint(st, directory, block=False)  # accepted: the directory is still empty
    gate.set()
    assert first.result(timeout=120) == str(directory)
    return fut


def test_background_checkpoint_failure_is_raised(tmp_path, held_writer):
    st = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_page(st, size=4)
    fut = _failing_background_checkpoint(st, tmp_path / "taken", held_writer)
    with pytest.raises(SerializationError, match="already holds a checkpoint"):
        fut.result(timeout=120)
    with pytest.raises(SerializationError, match="background checkpoint failed"):
        mmsb.checkpoint(st)  # the next checkpoint reports it too
    mmsb.checkpoint(st)  # ...once; then checkpoints work again
    mmsb.mmsb_stop(st)


def test_stop_waits_for_and_reports_a_failed_background_checkpoint(tmp_path, held_writer):
    st = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_page(st, size=4)
    _failing_background_checkpoint(st, tmp_path / "taken", held_writer)
    with pytest.raises(SerializationError, match="background checkpoint failed"):
        mmsb.mmsb_stop(st)
    assert st.closed


def test_joined_background_failure_is_raised_once(tmp_path, held_writer):
    st = _one_page_state(tmp_path / "s")
    first = mmsb.checkpoint(st, tmp_path / "taken", block=False)  # held: the directory stays empty
    mmsb.update_page(st, 0, np.zeros(16, np.float32))
    fut = mmsb.checkpoint(st, tmp_path / "taken", block=False)  # will fail: the first writes it
    threading.Timer(0.5, held_writer.set).start()
    with pytest.raises(SerializationError, match="background checkpoint failed.*already holds a checkpoint"):
        mmsb.checkpoint(st, tmp_path / "taken")  # joins it, and reports its failure
    with pytest.raises(SerializationError, match="already holds a checkpoint"):
        fut.result(timeout=0)
    assert st._ckpt_pending == [] and first.result(timeout=0) == str(tmp_path / "taken")
    mmsb.mmsb_stop(st)  # reported once: stopping is clean


def test_blocking_checkpoint_into_a_directory_pending_at_another_epoch(tmp_path, held_writer):
    st = _one_page_state(tmp_path / "s")
    fut = mmsb.checkpoint(st, tmp_path / "c", block=False)
    mmsb.update_page(st, 0, np.zeros(16, np.float32))
    with pytest.raises(SerializationError, match="being written by a background checkpoint of another epoch"):
        mmsb.checkpoint(st, tmp_path / "c")
    held_writer.set()
    assert fut.result(timeout=120) == str(tmp_path / "c")
    assert read_manifest(str(tmp_path / "c"))["epoch"] == 2  # the background one, untouched
    mmsb.mmsb_stop(st)


def test_threads_checkpointing_one_epoch(tmp_path, held_writer):
    """A pending background checkpoint, then 8 threads asking for one at the same epoch (half
    blocking): every request ends in the same directory and stopping is clean."""
    st = _one_page_state(tmp_path / "s")
    digest = mmsb.state_digest(st)
    first = mmsb.checkpoint(st, block=False)
    start = threading.Barrier(8)
    futures, dirs, errors = [], [], []

    def ask(block):
        try:
            start.wait()
            (dirs if block else futures).append(mmsb.checkpoint(st, block=block))
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    background = [threading.Thread(target=ask, args=(False,)) for _ in range(4)]
    blocking = [threading.Thread(target=ask, args=(True,)) for _ in range(4)]
    for t in background + blocking:
        t.start()
    for t in background:
        t.join(60)
    assert len(futures) == 4 and all(f is first for f in futures)
    held_writer.set()
    for t in blocking:
        t.join(120)
    assert errors == []
    assert dirs == [first.result(timeout=0)] * 4
    mmsb.mmsb_stop(st)
    _assert_reopens_to(tmp_path / "s", digest)
