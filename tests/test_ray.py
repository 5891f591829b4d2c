"""`darkfix batch --ray` on a local Ray instance: the same files as the local batch, byte for byte."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from darkfix.cli import main
from darkfix.raybatch import is_remote

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'darkfix[ray]')")


def batch(*args):
    return CliRunner().invoke(main, ["batch", *map(str, args), "--device", "cpu", "--threads", "1"])


def test_ray_batch_equals_the_local_batch(make_dng, weights_file, tmp_path):
    folder = tmp_path / "shots"
    for i, name in enumerate(("a.dng", "b.dng", "sub/c.dng")):
        make_dng(name.split("/")[-1], size=(48, 66), seed=i, directory=folder / name.rpartition("/")[0])
    (folder / "bad.dng").write_bytes(b"not a raw")
    local = batch(folder, "-o", tmp_path / "local", "-r", "--weights", weights_file)
    assert local.exit_code == 1, local.output
    r = batch(folder, "-o", tmp_path / "ray", "-r", "--weights", weights_file, "--ray", "--ray-actors", "2")
    assert r.exit_code == 1, r.output  # one file failed...
    assert "bad.dng" in r.output and "corrupt or truncated raw" in r.output  # ...named with its reason
    made = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.png"))
    assert made == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.png"))
    assert len(made) == 3
    for rel in made:
        assert (tmp_path / "ray" / rel).read_bytes() == (tmp_path / "local" / rel).read_bytes()
    assert not list((tmp_path / "ray").rglob("*.part"))
    again = batch(folder, "-o", tmp_path / "ray", "-r", "--weights", weights_file, "--ray")
    assert again.exit_code == 1 and "│        0 │                       3 │      1 │" in again.output  # skips all


def test_remote_cluster_refuses_relative_paths(make_dng, tmp_path, monkeypatch):
    make_dng(directory=tmp_path / "in")
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["batch", "in", "--ray-address", "ray://10.0.0.5:10001"])
    assert r.exit_code == 2 and "absolute paths" in r.output


@pytest.mark.parametrize("address, remote", [(None, False), ("auto", False), ("127.0.0.1:6379", False),
                                             ("ray://localhost:10001", False), ("ray://head.cluster:10001", True),
                                             ("10.1.2.3:6379", True)])
def test_is_remote(address, remote, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert is_remote(address) is remote
