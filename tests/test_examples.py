"""The examples and the CLI's main job run end to end."""

import pathlib
import runpy
import subprocess
import sys

import pytest

EXAMPLES = sorted((pathlib.Path(__file__).parent.parent / "examples").glob("*.py"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_runs(path, capsys):
    runpy.run_path(str(path), run_name="__main__")
    assert capsys.readouterr().out  # every example prints what it shows


def test_mmsb_demo_runs():
    out = subprocess.run([sys.executable, "-m", "mmsb_jax", "demo"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "reopened digest equal" in out.stdout and "yes" in out.stdout
