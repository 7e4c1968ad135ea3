"""The ``mmsb`` tools: inspect, verify, replay, stats (``mmsb demo`` is tested elsewhere)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax.log._checkpoint import load_arrays, read_manifest, save_checkpoint
from mmsb_jax.cli import main

F32 = np.float32


def build(path):
    """epochs: 1 create 3 pages, 2 add_dep, 3-4 updates, checkpoint at 4, 5 sparse batch,
    6 delete, 7 accumulate, checkpoint at 7, 8 update."""
    s = mmsb.mmsb_start(path, fsync="batch")
    a, b, c = (int(i) for i in mmsb.create_pages(s, 3, size=4, dtype=np.float32))
    mmsb.add_dependency(s, a, b, weight=2.0)
    mmsb.update_page(s, a, np.array([1, 2, 3, 4], F32))
    mmsb.update_page(s, c, np.array([5, 5, 5, 5], F32))
    mmsb.checkpoint(s)
    mmsb.route_sparse_batch(s, np.array([a, c]), np.array([[0], [1]]), np.array([[9], [9]], F32))
    mmsb.delete_page(s, c)
    mmsb.route_delta(s, b, mmsb.accumulate_delta(np.ones(4, F32), "real"))
    mmsb.checkpoint(s)
    mmsb.update_page(s, a, np.zeros(4, F32))
    digest = mmsb.state_digest(s)
    mmsb.mmsb_stop(s)
    return digest


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "state"
    digest = build(path)
    return path, digest


@pytest.fixture
def state_dir(built, tmp_path):
    path, digest = built
    dst = tmp_path / "state"
    shutil.copytree(path, dst)
    return dst, digest


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out + out.err


# --------------------------------------------------------------------------- inspect
def test_inspect_json(state_dir, capsys):
    path, _ = state_dir
    code, out = run(capsys, "inspect", path, "--json")
    assert code == 0
    info = json.loads(out)
    assert info["first_epoch"] == 1 and info["last_epoch"] == 8
    assert info["pages_created"] == 3 and info["pages_deleted"] == 1
    assert info["records_by_kind"] == {"CREATE_PAGES": 1, "DELETE_PAGES": 1, "DENSE": 3, "SPARSE_BATCH": 1,
                                       "ACCUMULATE": 1, "ADD_DEP": 1}
    assert [c["epoch"] for c in info["checkpoints"]] == [4, 7]
    assert info["skipped_ranges"] == []
    seg_bytes = sum(s["bytes"] for s in info["segments"])
    assert seg_bytes == sum(os.path.getsize(p) for p in (path / "log").glob("log-*.mmsblog"))
    assert info["log_bytes"] >= seg_bytes and info["total_bytes"] > info["log_bytes"]


def test_inspect_table(state_dir, capsys):
    path, _ = state_dir
    code, out = run(capsys, "inspect", path)
    assert code == 0
    assert "1 .. 8" in out and "3 / 1" in out
    assert "epoch-000000000004" in out and "epoch-000000000007" in out
    assert "DAMAGED" not in out


def test_inspect_a_checkpoint_without_a_log(state_dir, capsys, tmp_path):
    path, _ = state_dir
    code, out = run(capsys, "inspect", path / "checkpoints" / "epoch-000000000007")
    assert code == 0 and "none (no log records)" in out and "None" not in out, out


def test_inspect_reports_damage(state_dir, capsys):
    path, _ = state_dir
    rec = mmsb.query_log(path, epochs=(5, 5))[0]
    seg = path / "log" / f"log-{rec.segment:08d}.mmsblog"
    _flip(seg, rec.offset + 40)
    code, out = run(capsys, "inspect", path, "--json")
    assert code == 0
    info = json.loads(out)
    assert len(info["skipped_ranges"]) == 1
    assert info["skipped_ranges"][0]["start"] == rec.offset
    assert "SPARSE_BATCH" not in info["records_by_kind"]


# --------------------------------------------------------------------------- verify
def _flip(file, offset):
    with open(file, "r+b") as f:
        f.seek(offset)
        b = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([b ^ 0xFF]))


def test_verify_healthy(state_dir, capsys):
    path, _ = state_dir
    code, out = run(capsys, "verify", path)
    assert code == 0, out
    assert out.count("matches replay") == 2
    assert "FAULT" not in out and "OK" in out


def test_verify_flipped_log_byte(state_dir, capsys):
    path, _ = state_dir
    rec = mmsb.query_log(path, epochs=(6, 6))[0]
    seg = path / "log" / f"log-{rec.segment:08d}.mmsblog"
    _flip(seg, rec.offset + 40)
    code, out = run(capsys, "verify", path)
    assert code != 0
    assert "FAULT" in out and f"log-{rec.segment:08d}.mmsblog" in out.replace("\n", "")


def test_verify_torn_tail_is_a_fault(state_dir, capsys):
    """verify checks every CRC (mode "absolute"): a torn tail is reported."""
    path, _ = state_dir
    seg = sorted((path / "log").glob("log-*.mmsblog"))[-1]
    os.truncate(seg, os.path.getsize(seg) - 5)
    code, out = run(capsys, "verify", path)
    assert code != 0 and "FAULT" in out


def _rewrite_checkpoint(ckpt, change):
    """Rewrite a checkpoint with orbax (valid files, valid manifest), changing its tree."""
    manifest = read_manifest(ckpt)
    tree = load_arrays(ckpt)
    change(tree, manifest)
    shutil.rmtree(ckpt)
    manifest = {k: v for k, v in manifest.items() if k not in ("format", "version")}
    save_checkpoint(str(ckpt), manifest, tree)


def test_verify_tampered_checkpoint_pages(state_dir, capsys):
    path, _ = state_dir
    ckpt = path / "checkpoints" / "epoch-000000000007"

    def change(tree, manifest):
        arr = np.array(tree["pools"]["pool_0"])
        arr[0, 0] += 1.0  # page a's first element
        tree["pools"]["pool_0"] = arr

    _rewrite_checkpoint(ckpt, change)
    code, out = run(capsys, "verify", path)
    assert code != 0
    assert "DIFFERS" in out and "epoch-000000000007" in out
    assert "epoch-000000000004 (epoch 4): matches replay" in out


def test_verify_tampered_checkpoint_page_table(state_dir, capsys):
    path, _ = state_dir
    ckpt = path / "checkpoints" / "epoch-000000000004"

    def change(tree, manifest):
        ep = np.array(tree["page_table"]["epoch"])
        ep[0] += 1  # a page "last changed" at another epoch
        tree["page_table"]["epoch"] = ep

    _rewrite_checkpoint(ckpt, change)
    code, out = run(capsys, "verify", path)
    assert code != 0 and "DIFFERS" in out


def test_verify_a_path_without_a_state_fails(tmp_path, capsys):
    code, out = run(capsys, "verify", tmp_path / "nothing-here")
    assert code != 0, out


def test_verify_after_compaction(tmp_path, capsys):
    path = tmp_path / "s"
    s = mmsb.mmsb_start(path, fsync="never")
    from mmsb_jax.log import TLog  # MMSBState has no segment-size option

    s._log.close()
    s._log = TLog(os.path.join(s.path, "log"), fsync="never", segment_bytes=4096)
    p = mmsb.create_page(s, size=512, dtype=np.float32).id
    for i in range(1, 12):
        mmsb.update_page(s, p, np.full(512, i, F32))
    res = mmsb.compact_log(s)
    assert res["dropped_segments"]
    mmsb.update_page(s, p, np.zeros(512, F32))
    mmsb.mmsb_stop(s)
    code, out = run(capsys, "verify", path)
    assert code == 0, out
    assert "not comparable" in out


# --------------------------------------------------------------------------- replay
@pytest.mark.parametrize("epoch", [3, 5, 8])
def test_replay_out_checkpoint(state_dir, capsys, tmp_path, epoch):
    path, _ = state_dir
    out_dir = tmp_path / f"out-{epoch}"
    code, out = run(capsys, "replay", path, "--epoch", epoch, "--out", out_dir)
    assert code == 0, out
    want = mmsb.replay_to_epoch(path, epoch)
    assert mmsb.state_digest(want) in out
    s = mmsb.mmsb_open(out_dir)
    try:
        assert s.epoch == epoch
        assert mmsb.state_digest(s) == mmsb.state_digest(want)
        for pid in want.page_ids().tolist():
            np.testing.assert_array_equal(np.asarray(mmsb.query_page(s, pid)), np.asarray(mmsb.query_page(want, pid)))
        e = mmsb.create_page(s, size=2, dtype=np.int32)  # the reopened checkpoint is a live state
        assert s.epoch == epoch + 1 and e.id == 3
        digest = mmsb.state_digest(s)
    finally:
        s.close()
    s = mmsb.mmsb_open(out_dir)
    try:
        assert mmsb.state_digest(s) == digest
    finally:
        s.close()


@pytest.mark.parametrize("where", ["the state itself", "its log", "below a file", "not creatable"])
def test_replay_out_refuses_a_directory_it_cannot_take(state_dir, capsys, tmp_path, where):
    """--out must be a new or an empty directory: one line, exit 2, nothing written."""
    path, digest = state_dir
    (tmp_path / "afile").write_text("x")
    out_dir = {"the state itself": path, "its log": path / "log", "below a file": tmp_path / "afile" / "x",
               "not creatable": "/proc/mmsb-no/x"}[where]
    before = sorted(os.listdir(path))
    code, out = run(capsys, "replay", path, "--epoch", 5, "--out", out_dir)
    assert code == 2 and out.startswith("error: SerializationError") and "Traceback" not in out, out
    assert len(out.strip().splitlines()) == 1, out
    assert sorted(os.listdir(path)) == before
    s = mmsb.mmsb_open(path)
    assert mmsb.state_digest(s) == digest
    s.close()


def test_replay_out_is_checked_before_the_replay(state_dir, capsys, tmp_path):
    path, _ = state_dir
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("x")
    code, out = run(capsys, "replay", path, "--epoch", 10**6, "--out", tmp_path / "full")
    assert code == 2 and "is not empty" in out and "epoch" not in out.split("not empty")[1], out


def test_replay_bad_epoch(state_dir, capsys):
    path, _ = state_dir
    code, out = run(capsys, "replay", path, "--epoch", -1)
    assert code == 2 and "InvalidArgumentError" in out


# --------------------------------------------------------------------------- stats
def test_stats_json(state_dir, capsys):
    path, digest = state_dir
    code, out = run(capsys, "stats", path)
    assert code == 0
    stats = json.loads(out)
    assert stats["epoch"] == 8 and stats["pages"] == 2 and stats["bytes"] == 2 * 4 * 4
    assert stats["semiring"] == "real"
    assert [p["dtype"] for p in stats["pools"]] == ["float32"]
    s = mmsb.mmsb_open(path)
    try:
        assert mmsb.state_digest(s) == digest  # the tools changed nothing on disk
    finally:
        s.close()


# --------------------------------------------------------------------------- as a process
def test_module_entry_point(state_dir):
    path, _ = state_dir
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    ok = subprocess.run([sys.executable, "-m", "mmsb_jax", "verify", str(path)], capture_output=True,
                        text=True, env=env, timeout=120)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    rec = mmsb.query_log(path, epochs=(3, 3))[0]
    _flip(path / "log" / f"log-{rec.segment:08d}.mmsblog", rec.offset + 40)
    bad = subprocess.run([sys.executable, "-m", "mmsb_jax", "verify", str(path)], capture_output=True,
                         text=True, env=env, timeout=120)
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "FAULT" in bad.stdout


# --------------------------------------------------------------------------- bench, installed
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_outside_checkout(site, cwd, *args, timeout=120):
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(site)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def test_bench_finds_the_shipped_benchmarks(tmp_path):
    """Laid out as an install lays it out (setup.py ships benchmarks/ as mmsb_jax.benchmarks),
    ``mmsb bench`` takes its modules from the package, with no checkout on the path."""
    site = tmp_path / "site"
    shutil.copytree(os.path.join(ROOT, "mmsb_jax"), site / "mmsb_jax", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(os.path.join(ROOT, "benchmarks"), site / "mmsb_jax" / "benchmarks",
                    ignore=shutil.ignore_patterns("__pycache__"))
    code = "from mmsb_jax.cli import _benchmarks_package as b; p = b(); print(p.__name__, p.__file__)"
    out = _run_outside_checkout(site, tmp_path, "-c", code)
    assert out.returncode == 0, out.stderr
    name, where = out.stdout.split()
    assert name == "mmsb_jax.benchmarks" and where.startswith(str(site))
    with open(os.path.join(ROOT, "setup.py")) as f:
        assert '"mmsb_jax.benchmarks": "benchmarks"' in f.read()  # what the install ships


@pytest.mark.slow
def test_bench_runs_from_a_pip_installed_package(tmp_path):
    """``pip install .`` (non-editable, into a temporary target) and ``mmsb bench --quick
    --only pages`` from outside the checkout, bounded in time."""
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".git", "__pycache__", "build", "*.egg-info",
                                                             ".hypothesis", "bench-results"))
    site = tmp_path / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(src)],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, pip.stdout + pip.stderr
    assert (site / "mmsb_jax" / "benchmarks" / "bench_pages.py").is_file()
    out_json = tmp_path / "r.json"
    out = _run_outside_checkout(site, tmp_path, "-m", "mmsb_jax", "bench", "--quick", "--only", "pages",
                                "--out", str(out_json), timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    results = json.loads(out_json.read_text())["results"]
    assert {r["module"] for r in results} == {"bench_pages"} and len(results) >= 4


@pytest.mark.parametrize("argv, needle", [
    (["--only", "no-such-bench"], "no benchmark module's name contains any of these (the modules: bench_"),
    (["--only", "pages", "--out", "{f}/r.json"], "is below '{f}', which is not a directory"),
    (["--only", "pages", "--out", "{d}"], "exists and is a directory"),
    (["--only", "pages", "--plot", "{f}"], "exists and is not a directory"),
    (["--only", "pages", "--out", "/proc/mmsb-no/r.json"], "cannot be written"),
    (["--only", "pages", "--plot", "/proc/mmsb-no"], "cannot be written"),
    (["--only", ""], "an empty name matches every module"),
])
def test_bench_refuses_bad_arguments_before_running(tmp_path, capsys, argv, needle):
    """Checked before any benchmark runs (each takes minutes): one line, exit 2."""
    f, d = tmp_path / "afile", tmp_path / "adir"
    f.write_text("x")
    d.mkdir()
    argv = [a.format(f=f, d=d) for a in argv]
    code, out = run(capsys, "bench", *argv)
    assert code == 2 and needle.format(f=f) in out and "bench_pages ..." not in out, out
    assert f.read_text() == "x" and not os.listdir(d)


def test_errors_are_one_line_with_nothing_before_them(tmp_path, capsys):
    """No blank line from a progress bar outside a terminal, no wrapping of a long message."""
    (tmp_path / "afile").write_text("x")
    deep = tmp_path / ("d" * 150)
    for argv in (["verify", tmp_path / "afile"], ["verify", deep], ["demo", "--path", tmp_path / "afile" / "x"]):
        code, out = run(capsys, *argv)
        assert code == 2 and out.startswith("error: ") and out.count("\n") == 1, (argv, out)
    assert "is below" in out and "afile'" in out  # the demo names the file in the way


def test_positional_arguments_have_help():
    from mmsb_jax.cli import build_parser

    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "cmd").choices
    for name, sub in subs.items():
        for action in sub._actions:
            if not action.option_strings:
                assert action.help, (name, action.dest)


def test_bench_ratio_words_say_the_direction():
    """A ratio below 1 in a "faster" row reads "the speed", never "0.55x faster"; time and size
    rows say "the time" / "the size"; a row without a ratio shows "-"."""
    from benchmarks._harness import result
    from mmsb_jax.cli import _ratio_words

    def row(value, base, higher_is_better=True, **kw):
        return result("c", value=value, unit="M/s", baseline="b", baseline_value=base, target="t", met=True,
                      higher_is_better=higher_is_better, **kw)

    assert _ratio_words(row(1.55, 2.8)) == "0.55x the speed"
    assert _ratio_words(row(5.0, 2.5)) == "2.00x faster"
    assert _ratio_words(row(4.0, 2.0, higher_is_better=False)) == "0.50x the speed"  # twice the time
    assert _ratio_words(row(4.49, 1.0, higher_is_better=False, ratio_as="time")) == "4.49x the time"
    assert _ratio_words(row(1.0, 100.0, higher_is_better=False, ratio_as="size")) == "0.01x the size"
    assert _ratio_words(row(3.0, 0.0, ratio_as="none")) == "-"


def test_bench_table_fits_100_columns_with_every_met_cell():
    """The bench table outside a terminal: no line past 100 columns (rich crops, it does not
    wrap, a table wider than its console: the "met" column was cut off), a met cell per row,
    long case names and skip reasons included (a skip reason is printed below the table)."""
    from rich.console import Console

    from benchmarks._harness import result
    from mmsb_jax.cli import _bench_table

    rows = [result("journal/MLP 1M params + Adam, record_tree every step, drain every 16: loop time per step",
                   value=46.83, unit="ms", baseline="max(unlogged loop, plain writes of the same bytes)",
                   baseline_value=37.2, higher_is_better=False, ratio_as="time", target="<= 1.10x the bound",
                   met=False),
            result("journal/embedding 100k x 64, 256 rows per step, 1000 steps: journal bytes per step",
                   value=2.8e5, unit="B", baseline="one orbax checkpoint", baseline_value=2.366e7,
                   higher_is_better=False, ratio_as="size", target="<= 1/50 of one orbax checkpoint per step",
                   met=True),
            {"case": "pages/a case whose name is long enough to wrap over several lines of the table",
             "skipped": "needs a GPU: no accelerator on this machine, so nothing was measured", "target": "<= 5 us"}]
    console = Console(width=100, record=True)
    with console.capture() as cap:
        console.print(_bench_table(rows, quick=False))
    lines = cap.get().splitlines()
    assert max(len(ln) for ln in lines) <= 100
    assert lines[2].rstrip().endswith("┃ met ┃")
    cells = [ln.split("│")[-2].strip() for ln in lines if ln.startswith("│") and ln.split("│")[-2].strip()]
    assert cells == ["NO", "yes", "-"]


def test_a_damaged_log_is_a_fault_exit_1_not_a_usage_error(state_dir, capsys):
    path, _ = state_dir
    seg = sorted((path / "log").glob("*.mmsblog"))[0]
    _flip(seg, 200)
    for p in (path / "checkpoints").glob("*"):
        shutil.rmtree(p)  # the log alone: its damage is met
    code, out = run(capsys, "replay", path, "--epoch", 8)
    assert code == 1 and "CorruptLogError" in out, out
    code, out = run(capsys, "replay", path, "--epoch", -1)
    assert code == 2, out
