"""``verify_state`` (``mmsb verify``) on compacted and damaged logs."""

from __future__ import annotations

import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax.log._checkpoint import load_arrays, read_manifest, save_checkpoint
from mmsb_jax.log import first_logged_epoch
from mmsb_jax._tools import verify_state
from mmsb_jax.cli import main

F32 = np.float32


def _writes(state, page, first, n=10):
    for k in range(first, first + n):
        mmsb.update_page(state, page, np.full(256, k, F32))


@pytest.fixture
def compacted(tmp_path):
    """epochs 1-10, checkpoint at 10, 11-20, compact_log (checkpoint at 20), 21-30, checkpoint
    at 30, 31: the log before the compaction is gone."""
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, segment_bytes=4096)
    p = mmsb.create_page(s, size=256, dtype=F32).id
    _writes(s, p, 1, 9)
    mmsb.checkpoint(s)
    _writes(s, p, 100)
    assert mmsb.compact_log(s)["dropped_segments"]
    _writes(s, p, 200)
    mmsb.checkpoint(s)
    mmsb.update_page(s, p, np.zeros(256, F32))
    digest = mmsb.state_digest(s)
    mmsb.mmsb_stop(s)
    return path, digest


def test_verify_skips_checkpoints_that_compaction_cut_off(compacted, capsys):
    path, digest = compacted
    reopened = mmsb.mmsb_open(path)
    assert mmsb.state_digest(reopened) == digest  # the state itself is healthy
    mmsb.mmsb_stop(reopened)
    first = first_logged_epoch(path / "log")
    assert first == 21  # compaction closed the active segment and dropped every record to epoch 20
    rep = verify_state(path)
    assert rep["ok"] and rep["faults"] == []
    skipped = {"matches_replay": None, "note": f"skipped: log compacted before epoch {first}"}
    assert rep["checkpoints"] == [
        {"dir": "checkpoints/epoch-000000000010", "epoch": 10, **skipped},
        {"dir": "checkpoints/epoch-000000000020", "epoch": 20, **skipped},
        {"dir": "checkpoints/epoch-000000000030", "epoch": 30, "matches_replay": True},
    ]
    assert rep["records"] == len(mmsb.query_log(path))
    assert main(["verify", str(path)]) == 0
    assert "FAULT" not in capsys.readouterr().out


def test_verify_after_compaction_still_finds_a_tampered_checkpoint(compacted):
    path, _ = compacted
    ckpt = str(path / "checkpoints" / "epoch-000000000030")
    manifest = {k: v for k, v in read_manifest(ckpt).items() if k not in ("format", "version")}
    tree = load_arrays(ckpt)
    pool = np.array(tree["pools"]["pool_0"])
    pool[0, 0] += 1.0
    tree["pools"]["pool_0"] = pool
    shutil.rmtree(ckpt)
    save_checkpoint(ckpt, manifest, tree)  # valid files and checksums, wrong contents
    rep = verify_state(path)
    assert not rep["ok"]
    assert rep["faults"] == [f"checkpoint {ckpt} (epoch 30) differs from a replay of the log to that epoch"]
    assert rep["checkpoints"][-1]["matches_replay"] is False


def test_verify_counts_the_records_checked_before_damage(tmp_path):
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path)
    p = mmsb.create_page(s, size=64, dtype=F32).id
    for k in range(1, 6):
        mmsb.update_page(s, p, np.full(64, k, F32))
    mmsb.mmsb_stop(s)
    assert verify_state(path)["records"] == 6
    rec = mmsb.query_log(path, epochs=(4, 4))[0]
    seg = path / "log" / f"log-{rec.segment:08d}.mmsblog"
    with open(seg, "r+b") as f:  # flip a byte inside epoch 4's record
        f.seek(rec.offset + 40)
        b = f.read(1)[0]
        f.seek(rec.offset + 40)
        f.write(bytes([b ^ 0xFF]))
    rep = verify_state(path)
    assert not rep["ok"] and rep["faults"][0].startswith("log: ") and seg.name in rep["faults"][0]
    assert rep["records"] == 3  # epochs 1-3 are intact and were checked


def _eleven_epochs(path, checkpoint_at=None):
    st = mmsb.mmsb_start(path)
    ids = mmsb.create_pages(st, 3, size=8, dtype=jnp.float32)
    for k in range(10):
        mmsb.update_page(st, int(ids[k % 3]), np.full(8, k, np.float32))
        if k == checkpoint_at:
            mmsb.checkpoint(st)
    mmsb.mmsb_stop(st)
    return ids


def test_verify_fails_when_the_log_is_gone_past_the_checkpoints(tmp_path):
    """A state stopped at epoch 11 whose only log segment was removed cannot open (records
    made durable are lost): verify says so, it used to pass with 0 records checked."""
    path = tmp_path / "s"
    _eleven_epochs(path, checkpoint_at=4)
    for f in os.listdir(path / "log"):
        if f.endswith(".mmsblog"):
            os.remove(path / "log" / f)
    with pytest.raises(mmsb.SerializationError, match="records made durable were lost"):
        mmsb.mmsb_open(path)
    rep = mmsb.verify_state(path)
    assert not rep["ok"] and any("records made durable were lost" in f for f in rep["faults"]), rep


def test_verify_is_clean_after_a_skip_corrupt_salvage_and_more_writes(tmp_path):
    """skip_corrupt keeps what it salvaged past damage in a checkpoint and cuts the log there;
    the log then jumps over those epochs. verify notes the gap the checkpoint bridges instead
    of failing on every later run ("opening fails", "checkpoint differs")."""
    path = tmp_path / "s"
    ids = _eleven_epochs(path)
    seg = next(path / "log" / f for f in os.listdir(path / "log") if f.endswith(".mmsblog"))
    b = bytearray(seg.read_bytes())
    b[len(b) // 2] ^= 0x5A
    seg.write_bytes(bytes(b))
    st = mmsb.mmsb_open(path, recovery="skip_corrupt")
    assert st.recovery_report.skipped
    mmsb.update_page(st, int(ids[0]), np.full(8, 123, np.float32))
    digest = mmsb.state_digest(st)
    mmsb.mmsb_stop(st)
    st = mmsb.mmsb_open(path)
    assert mmsb.state_digest(st) == digest
    mmsb.mmsb_stop(st)
    rep = mmsb.verify_state(path)
    assert rep["ok"], rep["faults"]
    assert any("salvage" in n for n in rep["notes"]) or any("salvage" in c.get("note", "") for c in rep["checkpoints"])
