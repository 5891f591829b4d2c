"""benchmarks/gpu_check.sh: argument handling, and what it does on a machine without CUDA."""

from __future__ import annotations

import os
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


def test_bundle_and_session_scripts_refuse_bad_arguments(tmp_path):
    """benchmarks/gpu_bundle.sh (prepares a device call's wheels and photos) and gpu_session.sh (the call):
    wrong arguments stop them before anything is downloaded or run."""
    bundle = ROOT / "benchmarks" / "gpu_bundle.sh"
    r = subprocess.run(["bash", str(bundle)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "usage:" in r.stderr
    r = subprocess.run(["bash", str(bundle), str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "no such folder" in r.stderr
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    r = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_session.sh")], capture_output=True, text=True,
                       timeout=60, env=env, cwd=ROOT)
    assert r.returncode != 0 and "set OUT" in r.stderr
