"""The tree journal's log records (ROWS, TREE_DEF, TREE_STEP): round trips, and damage found."""

import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax.log import Rows, TLog, TreeDef, TreeStep, read_records
from mmsb_jax.log._encode import Kind, body_rows, body_tree_step
from mmsb_jax.log._framing import frame
from mmsb_jax.shell._tree_codec import decode_structure


def test_records_round_trip(tmp_path):
    log = TLog(tmp_path / "log")
    rows = np.array([3, 0], np.int32)
    vals = np.arange(8, dtype=np.float32)
    log.log_rows(1, 7, 4, rows, vals)
    with log.batch(2) as b:
        b.log_tree_def("train", '{"a":1}', np.array([7, 9], np.uint64))
        b.log_tree_step("train", -5)
    log.log_tree_step(3, "t\u00e9", 2**62)
    log.close()
    recs = read_records(tmp_path / "log", "absolute").records
    assert recs[0] == Rows(epoch=1, page_id=7, row_len=4, rows=rows, values=vals,
                           timestamp=recs[0].timestamp, source="user")
    assert isinstance(recs[1], TreeDef) and recs[1].page_ids.tolist() == [7, 9] and recs[1].batched
    assert isinstance(recs[2], TreeStep) and recs[2].step == -5 and recs[2].name == "train"
    assert recs[3].name == "t\u00e9" and recs[3].step == 2**62
    assert recs[0].touches(7) and not recs[0].touches(9) and recs[1].touches(9)
    again = TLog(tmp_path / "copy")  # decoded records re-encode to the same records
    for i, r in enumerate(recs):
        r.epoch, r.batched = i + 1, False  # appended one by one
        again.append_record(r)
    again.close()
    assert read_records(tmp_path / "copy").records == recs


@pytest.mark.parametrize("args, needle", [
    ((0, 0, [0], np.zeros(0, np.float32)), "row_len"),
    ((0, 2, [0], np.zeros(3, np.float32)), "need 2 values"),
    ((0, 2, [-1], np.zeros(2, np.float32)), "negative"),
])
def test_bad_rows_are_refused_on_write(args, needle):
    with pytest.raises(mmsb.InvalidArgumentError, match=needle):
        body_rows(*args)


def _raw_rows(page_id, row_len, rows, values) -> list:
    """A ROWS body that skips the encoder's checks (to plant damage a decoder must catch)."""
    from mmsb_jax.log._encode import _QQ, _arr_parts

    parts = [_QQ.pack(page_id, row_len)]
    _arr_parts(np.asarray(rows, np.int32), parts)
    _arr_parts(np.asarray(values), parts)
    return parts


@pytest.mark.parametrize("body, needle", [
    ((1, 0, [0], np.zeros(1, np.float32)), "row_len"),
    ((1, 2, [0], np.zeros(3, np.float32)), "values for 1 rows"),
    ((1, 2, [-4], np.zeros(2, np.float32)), "negative"),
])
def test_damaged_rows_end_a_read_with_file_and_offset(tmp_path, body, needle):
    log = TLog(tmp_path / "log")
    log.log_rows(1, 0, 1, [0], np.zeros(1, np.float32))
    log.close()
    seg = sorted((tmp_path / "log").glob("*.mmsblog"))[-1]
    offset = seg.stat().st_size
    with open(seg, "ab") as f:
        f.write(frame(2, Kind.ROWS, 0, 0, "user", _raw_rows(*body)))
    with open(seg, "ab") as f:  # an intact record after it: damage, not a torn tail
        f.write(frame(3, Kind.TREE_STEP, 0, 0, "user", body_tree_step("t", 1)[1]))
    with pytest.raises(mmsb.CorruptLogError) as ei:
        read_records(tmp_path / "log")
    assert ei.value.offset == offset and ei.value.path == str(seg) and needle in str(ei.value)


def test_semantically_impossible_tree_records_end_replay(tmp_path):
    """CRC-valid records that cannot apply raise an MMSBError (replay names file and offset)."""
    import jax.numpy as jnp

    cases = {
        "unknown tree": lambda log, pid: log.log_tree_step(3, "nope", 1),
        "json": lambda log, pid: log.log_tree_def(3, "t", "{not json", [pid]),
        "missing page": lambda log, pid: log.log_tree_def(3, "t", _structure(), [pid + 5]),
        "leaf count": lambda log, pid: log.log_tree_def(3, "t", _structure(), [pid, pid]),
        "row out of range": lambda log, pid: log.log_rows(3, pid, 2, [2], np.zeros(2, np.float32)),
        "dtype": lambda log, pid: log.log_rows(3, pid, 4, [0], np.zeros(4, np.int32)),
    }
    for name, plant in cases.items():
        path = tmp_path / name.replace(" ", "-")
        state = mmsb.mmsb_start(path)
        page = mmsb.create_page(state, size=4, dtype=jnp.float32)
        mmsb.update_page(state, page.id, jnp.ones(4, jnp.float32))
        plant(state._log, page.id)
        mmsb.mmsb_stop(state)
        with pytest.raises(mmsb.MMSBError):
            mmsb.mmsb_open(path)


def _structure() -> str:
    import jax

    from mmsb_jax.shell._tree_codec import LeafSpec, encode_structure

    tree = {"w": np.zeros(4, np.float32)}
    return encode_structure(tree, jax.tree_util.tree_structure(tree), [LeafSpec("['w']", (4,), np.dtype("float32"))])


@pytest.mark.parametrize("text", [
    "[]", '{"format": "mmsb-tree", "version": 2}', '{"format": "mmsb-tree", "version": 1, "root": {"t": "leaf"}}',
    '{"format": "mmsb-tree", "version": 1, "root": {"t": "dict", "k": ["a"], "c": []}, "leaves": []}',
    '{"format": "mmsb-tree", "version": 1, "root": {"t": "leaf"}, "leaves": [{"path": "", "shape": [-1], '
    '"dtype": "float32"}]}',
    '{"format": "mmsb-tree", "version": 1, "root": {"t": "leaf"}, "leaves": [{"path": "", "shape": [], '
    '"dtype": "object"}]}',
    '{"format": "mmsb-tree", "version": 1, "root": {"t": "exec", "c": []}, "leaves": []}',
    "[" * 5000 + "]" * 5000,
])
def test_malformed_structures_are_refused(text):
    with pytest.raises(mmsb.SerializationError):
        decode_structure(text)
