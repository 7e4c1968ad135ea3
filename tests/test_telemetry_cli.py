"""``mmsb stats`` (files + the telemetry snapshot, ``--watch``, ``--url``), ``mmsb report`` and
``mmsb bench --plot``: the commands run, and their PNG files parse."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import mmsb_jax as mmsb
from mmsb_jax.cli import main
from mmsb_jax.telemetry._snapshot import snapshot_path

F32 = np.float32
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def state_dir(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tel") / "s")
    s = mmsb.mmsb_start(path)
    ids = [int(i) for i in mmsb.create_pages(s, 3, size=4, dtype=F32)]
    for k in range(6):
        mmsb.update_page(s, ids[k % 3], np.full(4, k + 1, F32))
        if k == 2:
            mmsb.checkpoint(s)
    mmsb.mmsb_stop(s)
    return path


def run(capsys, *argv):
    code = main(list(argv))
    return code, capsys.readouterr().out


def assert_png(path):
    import matplotlib.image

    assert os.path.getsize(path) > 0
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 50 and img.shape[1] > 50


def test_stats_combines_files_and_snapshot(state_dir, capsys):
    code, out = run(capsys, "stats", state_dir)
    assert code == 0
    st = json.loads(out)
    f = st["files"]
    assert f["log"]["records"] == 7 and f["checkpoint_files"]["count"] == 1
    assert f["tail"]["records"] == 3 and 0 < f["tail"]["bytes"] < f["log"]["bytes"]
    assert f["telemetry"]["epoch"] == 7 and f["telemetry"]["counters"]["updates"] == 6
    assert f["telemetry_error"] is None
    assert st["updates"] == 6  # the replayed state's counters: the checkpoint's plus the tail's


def test_stats_without_a_good_snapshot(state_dir, tmp_path, capsys):
    import shutil

    copy = str(tmp_path / "copy")
    shutil.copytree(state_dir, copy)
    with open(snapshot_path(copy), "r+b") as fh:
        fh.seek(20)
        fh.write(b"#")
    code, out = run(capsys, "stats", copy)
    assert code == 0
    f = json.loads(out)["files"]
    assert f["telemetry"] is None and "telemetry snapshot" in f["telemetry_error"]
    os.remove(snapshot_path(copy))
    code, out = run(capsys, "stats", copy)
    assert code == 0 and json.loads(out)["files"]["telemetry_error"] is None


def test_stats_watch_in_a_subprocess(state_dir):
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run([sys.executable, "-m", "mmsb_jax", "stats", state_dir, "--watch", "--count", "2",
                        "--interval", "0.1"], capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert p.returncode == 0, p.stderr
    assert "replay tail" in p.stdout and "update_page" in p.stdout


def test_stats_url_reads_a_live_endpoint(capsys):
    s = mmsb.mmsb_start()
    srv = mmsb.serve_metrics(s)
    try:
        mmsb.create_page(s, size=4)
        code, out = run(capsys, "stats", "--url", srv.url)
        assert code == 0
        assert json.loads(out)["mmsb_pages"] == 1.0
        code, out = run(capsys, "stats", "--url", "ftp://x")
        assert code == 2 and "url='ftp://x'" in out
        code, out = run(capsys, "stats")
        assert code == 2 and "PATH or --url" in out
    finally:
        srv.close()
        mmsb.mmsb_stop(s)


def test_stats_refuses_bad_interval(state_dir, capsys):
    code, out = run(capsys, "stats", state_dir, "--watch", "--interval", "0")
    assert code == 2 and "--interval=0" in out
    code, out = run(capsys, "stats", state_dir, "--watch", "--count", "0")
    assert code == 2 and "--count=0 must be at least 1" in out and "--interval" not in out


def test_report_writes_pngs(state_dir, tmp_path, capsys):
    out_dir = str(tmp_path / "report")
    code, out = run(capsys, "report", state_dir, "--out", out_dir)
    assert code == 0
    names = sorted(os.listdir(out_dir))
    assert names == ["checkpoints.png", "epoch_rate.png", "latency.png", "log_growth.png"]
    for n in names:
        assert_png(os.path.join(out_dir, n))


def test_report_refuses_bad_paths(state_dir, tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    code, out = run(capsys, "report", state_dir, "--out", str(f))
    assert code == 2 and "exists and is not a directory" in out
    code, out = run(capsys, "report", str(tmp_path), "--out", str(tmp_path / "r"))
    assert code == 2 and "holds no mmsb state" in out


def test_bench_plot_from_results(tmp_path, capsys):
    rows = [
        {"module": "bench_a", "case": "x", "value": 1.0, "unit": "s", "baseline": "numpy", "baseline_value": 3.0,
         "ratio_vs_baseline": 3.0, "met": True, "target": ">= 2x"},
        {"module": "bench_a", "case": "y", "value": 2.0, "unit": "s", "baseline": "scipy", "baseline_value": 1.0,
         "ratio_vs_baseline": 0.5, "met": False, "target": ">= 1x"},
        {"module": "bench_b", "case": "z", "skipped": "no GPU", "target": ""},
        {"module": "bench_c", "case": "w", "value": 5.0, "unit": "MB/s", "baseline": "orbax", "baseline_value": 4.0,
         "ratio_vs_baseline": 1.25, "met": True, "target": ">= 1x"},
    ]
    results = tmp_path / "r.json"
    results.write_text(json.dumps({"meta": {}, "results": rows}))
    out_dir = tmp_path / "plots"
    code, out = run(capsys, "bench", "--plot", str(out_dir), "--from", str(results))
    assert code == 0
    assert sorted(os.listdir(out_dir)) == ["bench_a.png", "bench_c.png"]
    for n in os.listdir(out_dir):
        assert_png(str(out_dir / n))
    code, out = run(capsys, "bench", "--from", str(results))
    assert code == 2 and "needs --plot" in out
    code, out = run(capsys, "bench", "--plot", str(out_dir), "--from", str(tmp_path / "missing.json"))
    assert code == 2 and "missing.json" in out
