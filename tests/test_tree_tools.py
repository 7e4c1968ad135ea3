"""The tree journal from outside: an orbax CheckpointManager, and the mmsb steps / diff / bisect commands."""

import jax.numpy as jnp
import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax import cli


@pytest.fixture(scope="module")
def nan_run(tmp_path_factory):
    """A 24-step run whose weights turn NaN at step 113 (and stay NaN)."""
    path = tmp_path_factory.mktemp("run") / "s"
    state = mmsb.mmsb_start(path)
    w = np.zeros((4, 3), np.float32)
    for s in range(24):
        w = w + 0.5
        if s >= 13:
            w[1, 2] = np.nan
        mmsb.save_tree(state, "train", {"w": w.copy(), "loss": np.float32(24 - s), "n": np.int32(s)}, step=100 + s)
    mmsb.mmsb_stop(state)
    return str(path)


def run_cli(capsys, *argv):
    code = cli.main(list(argv))
    return code, capsys.readouterr().out


def test_cli_steps(nan_run, capsys):
    code, out = run_cli(capsys, "steps", nan_run, "train", "--limit", "6")
    assert code == 0
    assert "3 leaves, 24 steps" in out and "18 more" in out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("│ ")]
    assert [c.strip() for c in lines[0].split("│")[1:4]] == ["100", "1", "2 / 3"]  # n=0 is a zero page: unwritten
    assert lines[-1].split("│")[1].strip() == "123"
    code, out = run_cli(capsys, "steps", nan_run, "nope")
    assert code == 2 and "no tree named 'nope'" in out


@pytest.mark.parametrize("limit, first, last", [(1, ["100"], []), (2, ["100"], ["123"]), (5, ["100", "101", "102"], ["122", "123"])])
def test_cli_steps_shows_exactly_limit_steps(nan_run, capsys, limit, first, last):
    code, out = run_cli(capsys, "steps", nan_run, "train", "--limit", str(limit))
    assert code == 0 and f"({24 - limit} more; --all shows them)" in out
    rows = [ln.split("│")[1].strip() for ln in out.splitlines() if ln.strip().startswith("│ ")]
    assert rows == first + ["..."] + last


@pytest.mark.parametrize("limit", ["0", "-3", "x"])
def test_cli_steps_refuses_a_limit_below_one(nan_run, capsys, limit):
    with pytest.raises(SystemExit) as ei:
        cli.main(["steps", nan_run, "train", "--limit", limit])
    assert ei.value.code == 2 and "--limit" in capsys.readouterr().err


def test_cli_diff(nan_run, capsys):
    code, out = run_cli(capsys, "diff", nan_run, "train", "100", "104")
    assert code == 0
    row = next(ln for ln in out.splitlines() if "['w']" in ln)
    assert "12 / 12" in row and "2 " in row.split("│")[5]  # every weight moved by exactly 2.0
    assert "14 elements changed in 3 of 3 leaves" in out
    code, out = run_cli(capsys, "diff", nan_run, "train", "100", "99")
    assert code == 2 and "no step 99" in out


def test_cli_bisect(nan_run, capsys):
    code, out = run_cli(capsys, "bisect", nan_run, "train", "--nonfinite")
    assert code == 0 and "first step with a non-finite leaf: 113" in out
    assert int(out.split(" loads")[0].split()[-1]) <= 7  # log2(24) + 1, not 24
    row = next(ln for ln in out.splitlines() if "['w']" in ln)
    assert row.split("│")[4].strip() == "1"  # one NaN
    code, out = run_cli(capsys, "bisect", nan_run, "train", "--above", "['n']", "19.5")
    assert code == 0 and "first step with max(['n']) > 19.5: 120" in out
    code, out = run_cli(capsys, "bisect", nan_run, "train", "--above", "['loss']", "100")
    assert code == 1 and "does not have" in out and "assumes" in out


def test_orbax_manager_round_trip_next_to_params(tmp_path):
    import jax.numpy as jnp
    import orbax.checkpoint as ocp

    state = mmsb.mmsb_start(tmp_path / "state")
    params = {"w": jnp.ones((3, 2)), "b": jnp.zeros(2)}
    mngr = ocp.CheckpointManager(tmp_path / "ckpts")
    digests = {}
    for step in range(3):
        params = {"w": params["w"] * 2.0, "b": params["b"] - 1.0}
        mmsb.save_tree(state, "params", params, step=step)
        mngr.save(step, args=ocp.args.Composite(mmsb=mmsb.MMSBSave(state), params=ocp.args.StandardSave(params)))
        digests[step] = mmsb.state_digest(state)  # the save copied the state when it was called
        mmsb.save_tree(state, "noise", {"x": np.full(2, step, np.int32)})  # changes after each save
    mngr.wait_until_finished()
    assert mngr.all_steps() == [0, 1, 2]
    out = mngr.restore(1, args=ocp.args.Composite(mmsb=mmsb.MMSBRestore(), params=ocp.args.StandardRestore(params)))
    assert out.params["w"].tolist() == [[4.0, 4.0]] * 3
    snap = out.mmsb
    assert snap.read_only and mmsb.state_digest(snap) == digests[1]
    assert mmsb.load_tree(snap, "params")["w"].tolist() == out.params["w"].tolist()
    assert mngr.item_metadata(1)["mmsb"]["epoch"] == snap.epoch
    live = mngr.restore(2, args=ocp.args.Composite(mmsb=mmsb.MMSBRestore(path=tmp_path / "resumed")))["mmsb"]
    assert mmsb.state_digest(live) == digests[2] and not live.read_only
    mmsb.save_tree(live, "params", params, step=3)  # continues in its own directory
    assert [s for s, _ in mmsb.tree_steps(live, "params")] == [0, 1, 2, 3]
    with pytest.raises(mmsb.SerializationError, match="not empty"):
        mngr.restore(2, args=ocp.args.Composite(mmsb=mmsb.MMSBRestore(path=tmp_path / "resumed")))
    mmsb.mmsb_stop(live)
    mmsb.mmsb_stop(state)
    mngr.close()
    # the saved item is a plain mmsb checkpoint: mmsb_open reads it too
    reopened = mmsb.mmsb_open(tmp_path / "ckpts" / "0" / "mmsb")
    assert mmsb.state_digest(reopened) == digests[0]
    mmsb.mmsb_stop(reopened)


def test_mmsbsave_of_a_stopped_state_is_refused_before_orbax_starts(tmp_path):
    state = mmsb.mmsb_start(tmp_path / "state")
    mmsb.mmsb_stop(state)
    with pytest.raises(mmsb.StateClosedError):
        mmsb.MMSBSave(state)
    with pytest.raises(mmsb.InvalidArgumentError):
        mmsb.MMSBSave("not a state")


def test_cli_bisect_refuses_a_bound_that_is_not_a_number(nan_run, capsys):
    code, out = run_cli(capsys, "bisect", nan_run, "train", "--above", "['loss']", "abc")
    assert code == 2 and "must be a number" in out  # a usage error: exit 2, like the others
    for nan in ("nan", "-nan", "NaN"):
        code, out = run_cli(capsys, "bisect", nan_run, "train", "--above", "['loss']", nan)
        assert code == 2 and "not NaN" in out, nan  # nothing is above NaN: it would never be found


@pytest.mark.parametrize("bound, first", [("-inf", 100), ("-1e3", 100), ("-2.5", 100), ("-5", 100), ("1.5e1", 116)])
def test_cli_bisect_takes_negative_and_exponent_bounds(nan_run, capsys, bound, first):
    """A negative bound is a number, not an option (argparse alone takes only -5 and -.5)."""
    code, out = run_cli(capsys, "bisect", nan_run, "train", "--above", "['n']", bound)
    assert code == 0 and f"first step with max(['n']) > {float(bound)}: {first}" in out


def test_find_step_after_compaction_searches_the_steps_that_can_be_restored():
    """compact_log drops the epochs of the first steps: the search covers the steps from
    the first restorable one (the compaction's checkpoint), and finds the answer past it."""
    state = mmsb.mmsb_start()
    for i in range(4):
        mmsb.save_tree(state, "t", {"k": jnp.int32(i)}, step=i)
    mmsb.compact_log(state)  # a checkpoint at step 3; the epochs of steps 0..2 are gone
    for i in range(4, 9):
        mmsb.save_tree(state, "t", {"k": jnp.int32(i)}, step=i)
    with pytest.raises(mmsb.SerializationError):
        mmsb.load_tree(state, "t", step=1)
    for bound in range(3, 9):
        assert mmsb.find_step(state, "t", lambda t, b=bound: int(t["k"]) >= b) == bound
    assert mmsb.find_step(state, "t", lambda t: True) == 3
    assert mmsb.find_step(state, "t", lambda t: False) is None
    mmsb.mmsb_stop(state)


def test_find_step_refuses_a_predicate_that_is_not_callable():
    state = mmsb.mmsb_start()
    mmsb.save_tree(state, "t", {"k": jnp.int32(0)})
    with pytest.raises(mmsb.InvalidArgumentError, match="predicate=5 is not callable"):
        mmsb.find_step(state, "t", 5)
    mmsb.mmsb_stop(state)
