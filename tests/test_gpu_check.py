"""benchmarks/gpu_check.sh: argument handling, and what it does on a machine without CUDA."""

from __future__ import annotations

import subprocess

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def run(*args, **kw):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.parametrize("args", [(), ("a", "b", "c")])
def test_usage(args):
    r = run(*args)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_missing_wheel_folder_and_unwritable_output(tmp_path):
    r = run(tmp_path / "out", tmp_path / "no-wheels")
    assert r.returncode == 2 and "no such wheel folder" in r.stderr
    (tmp_path / "file").write_text("x")
    r = run(tmp_path / "file" / "out")
    assert r.returncode == 2 and "cannot create" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would run for real")
def test_without_cuda_it_says_so_and_writes_its_environment(tmp_path):
    import sys

    r = run(tmp_path / "out", env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert r.returncode == 3
    assert "no CUDA device" in (tmp_path / "out" / "status.txt").read_text()
    assert "available False" in (tmp_path / "out" / "env.txt").read_text()
