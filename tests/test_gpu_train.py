"""benchmarks/gpu_train.sh: argument handling, and what it does on a machine without CUDA."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import ROOT

SCRIPT = ROOT / "benchmarks" / "gpu_train.sh"


def run(*args, **kw):
    return subprocess.run(["bash", str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.parametrize("args", [(), ("out",), ("a", "b", "c", "d", "e")])
def test_usage(args):
    r = run(*args)
    assert r.returncode == 2 and "usage:" in r.stderr


def test_bad_paths_are_refused_before_anything(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for args, message in (((tmp_path / "out", tmp_path / "none"), "no such photo folder"),
                          ((tmp_path / "out", photos, tmp_path / "x.ckpt"), "no such checkpoint"),
                          ((tmp_path / "out", photos, "", tmp_path / "no-wheels"), "no such wheel folder")):
        r = run(*args)
        assert r.returncode == 2 and message in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()
    (tmp_path / "file").write_text("x")
    r = run(tmp_path / "file" / "out", photos)
    assert r.returncode == 2 and "cannot create" in r.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA: the script would train for real")
def test_without_cuda_it_says_so(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    r = run(tmp_path / "out", photos, env={"PATH": "/usr/bin:/bin", "PYTHON": sys.executable})
    assert r.returncode == 3
    assert "no CUDA device" in (tmp_path / "out" / "status.txt").read_text()
    assert "available False" in (tmp_path / "out" / "env.txt").read_text()
