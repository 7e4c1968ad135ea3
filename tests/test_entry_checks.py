"""Bad arguments at the entry points a new-user review found unchecked: each is an MMSBError
naming the value (they raised AttributeError / NotADirectoryError / TypeError / ValueError),
and background checkpoints honour ``keep_checkpoints`` once they are complete."""

from __future__ import annotations

import os
import time

import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

import mmsb_jax as mmsb
from mmsb_jax.cli import main


@pytest.fixture
def stopped(tmp_path):
    path = tmp_path / "s"
    st = mmsb.mmsb_start(path)
    p = mmsb.create_page(st, size=4, dtype=jnp.float32)
    mmsb.update_page(st, p.id, np.ones(4, np.float32))
    mmsb.mmsb_stop(st)
    return path


@pytest.mark.parametrize("bad", ["tropical", [1], 5])
def test_semirings_must_be_semiring_records(stopped, bad):
    with pytest.raises(mmsb.InvalidArgumentError, match="semirings=.*Semiring records"):
        mmsb.mmsb_open(stopped, semirings=bad)
    with pytest.raises(mmsb.InvalidArgumentError, match="semirings="):
        mmsb.replay_to_epoch(stopped, None, semirings=bad)
    st = mmsb.mmsb_open(stopped, semirings=mmsb.semirings.MAX_PLUS._replace(name="mine"))  # one record: fine
    mmsb.mmsb_stop(st)


@pytest.mark.parametrize("bad", [None, 1, "path"])
def test_get_stats_of_something_else(bad):
    with pytest.raises(mmsb.InvalidArgumentError, match="is not an MMSBState"):
        mmsb.get_stats(bad)


def test_orbax_restore_into_a_path_that_cannot_be_a_directory(tmp_path):
    st = mmsb.mmsb_start(tmp_path / "s")
    mmsb.create_page(st, size=4)
    ck = ocp.Checkpointer(ocp.CompositeCheckpointHandler())
    ck.save(tmp_path / "ck", ocp.args.Composite(state=mmsb.MMSBSave(st)))
    mmsb.mmsb_stop(st)
    afile = tmp_path / "file"
    afile.write_text("x")
    for target, needle in ((afile, "is not a directory"), (afile / "sub", "is not a directory"), (5, "not a path")):
        with pytest.raises(mmsb.InvalidArgumentError, match=needle):
            ck.restore(tmp_path / "ck", ocp.args.Composite(state=mmsb.MMSBRestore(path=target)))
    ck.close()


def test_report_out_below_a_file_and_watch_intervals(stopped, tmp_path, capsys):
    afile = tmp_path / "file"
    afile.write_text("x")
    assert main(["report", str(stopped), "--out", str(afile / "plots")]) == 2
    assert "cannot be made a directory" in capsys.readouterr().out
    for interval in ("nan", "inf", "0"):
        assert main(["stats", str(stopped), "--watch", "--interval", interval, "--count", "1"]) == 2
        assert "--interval" in capsys.readouterr().out


def test_background_checkpoints_keep_keep_checkpoints_once_complete(tmp_path):
    st = mmsb.mmsb_start(tmp_path / "s", keep_checkpoints=2)
    p = mmsb.create_page(st, size=4, dtype=jnp.float32)
    for i in range(5):
        mmsb.update_page(st, p.id, np.full(4, i, np.float32))
        mmsb.checkpoint(st, block=False)
    # idle from here: no operation prunes; the last checkpoint does, from its writer thread
    ck = tmp_path / "s" / "checkpoints"
    newest = ck / f"epoch-{st.epoch:012d}" / "manifest.json"
    deadline = time.monotonic() + 20
    while not (newest.exists() and len(os.listdir(ck)) == 2) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert newest.exists() and len(os.listdir(ck)) == 2, os.listdir(ck)
    mmsb.mmsb_stop(st)


@pytest.mark.parametrize("bad", [1.5, 2**80, 1e9])
def test_checkpoint_policy_max_tail_bytes_is_a_whole_number_of_bytes(bad):
    with pytest.raises(mmsb.InvalidArgumentError, match="max_tail_bytes"):
        mmsb.CheckpointPolicy(max_tail_bytes=bad)
    assert mmsb.CheckpointPolicy(max_tail_bytes=1 << 20).max_tail_bytes == 1 << 20
