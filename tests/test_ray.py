"""`darkfix batch --ray` on a local Ray instance: the same files as the local batch, byte for byte."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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


def test_usage_stats_off_in_darkfixs_ray(monkeypatch):
    """Ray reports usage to usage-stats.ray.io unless told not to: every Ray instance darkfix starts or joins
    runs with RAY_USAGE_STATS_ENABLED=0, whatever the environment said."""
    from darkfix import raybatch

    seen = {}

    def fake_init(**kwargs):
        seen.update(stats=os.environ.get("RAY_USAGE_STATS_ENABLED"), address=kwargs["address"])

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "1")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(ray, "init", fake_init)
    raybatch.connect(None)
    assert seen == {"stats": "0", "address": None}


@pytest.mark.parametrize("env, mode", [({}, None), ({"RAY_AUTH_TOKEN": "abc"}, "token"),
                                       ({"RAY_AUTH_TOKEN_PATH": "TOKENFILE"}, "token"), ({"HOMETOKEN": "1"}, "token"),
                                       ({"RAY_AUTH_TOKEN": "abc", "RAY_AUTH_MODE": "disabled"}, "disabled")])
def test_token_mode_follows_the_token_sources(env, mode, tmp_path, monkeypatch):
    """With an address, Ray's driver sends a token only in token mode: darkfix turns it on where a token is
    found as Ray's clients find it (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), never against
    the user's own RAY_AUTH_MODE."""
    from darkfix import raybatch

    for var in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "token").write_text("abc\n")
    for var, value in env.items():
        if var == "HOMETOKEN":
            (tmp_path / ".ray").mkdir()
            (tmp_path / ".ray" / "auth_token").write_text("abc\n")
        else:
            monkeypatch.setenv(var, str(tmp_path / "token") if value == "TOKENFILE" else value)
    raybatch._use_token()
    assert os.environ.get("RAY_AUTH_MODE") == mode


def _kill_cluster(marker: str) -> None:
    """End the processes of the test's own Ray cluster, by id (`ray stop` would end every Ray process on the
    machine): their command lines, environments or open files name its temporary folder. Ray's agents rename
    their command lines (ray::DashboardAgent) and need not inherit HOME, but they hold their logs there open."""
    def open_files(pid: str) -> str:
        names = []
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    names.append(os.readlink(fd))
                except OSError:  # closed meanwhile
                    pass
        except OSError:
            pass
        return " ".join(names)

    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        try:
            seen = b"".join(Path(f"/proc/{pid}/{part}").read_bytes() for part in ("cmdline", "environ")).decode(
                errors="replace")
        except OSError:
            continue
        if (marker in seen or marker in open_files(pid)) and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def test_ray_start_cluster_with_token_authentication(make_dng, weights_file, tmp_path):
    """Issue 23: against a `ray start --head` cluster (token authentication on), `--ray-address` failed with
    InvalidAuthToken. Now the driver sends the token found where Ray's clients look, and a missing or wrong
    token is one line that says what to do (exit 2). The cluster runs in a network namespace of its own with
    only the loopback device where `unshare` allows (Ray's servers listen on every interface), and is ended
    after."""
    import secrets
    import tempfile

    folder = tmp_path / "shots"
    make_dng("a.dng", size=(48, 66), directory=folder)
    base = Path(tempfile.mkdtemp(prefix="dfray"))  # short: Ray's socket paths must fit 107 bytes
    (base / "home").mkdir()
    token = secrets.token_hex(32)
    bindir = Path(sys.executable).parent
    isolated = subprocess.run(["unshare", "-n", "true"], capture_output=True).returncode == 0
    darkfix = (f"{sys.executable} -m darkfix batch {folder} --ray-address 127.0.0.1:26391 --device cpu --threads 1 "
               f"--weights {weights_file} -o")
    script = f"""
{"ip link set lo up" if isolated else ""}
export HOME={base}/home RAY_USAGE_STATS_ENABLED=0
RAY_AUTH_MODE=token RAY_AUTH_TOKEN={token} {bindir}/ray start --head --port 26391 --node-ip-address 127.0.0.1 \\
    --num-cpus 2 --include-dashboard false --disable-usage-stats --temp-dir {base}/ray >/dev/null 2>&1 || exit 9
RAY_AUTH_TOKEN=wrong{token[5:]} {darkfix} {tmp_path}/wrong > {base}/wrong.out 2>&1 &
wrong=$!
{darkfix} {tmp_path}/missing > {base}/missing.out 2>&1 &
missing=$!
RAY_AUTH_TOKEN={token} {darkfix} {tmp_path}/good > {base}/good.out 2>&1
echo "good $?"
wait $wrong; echo "wrong $?"
wait $missing; echo "missing $?"
"""
    try:
        cmd = (["unshare", "-n"] if isolated else []) + ["bash", "-c", script]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if not k.startswith("RAY_")})
    finally:
        _kill_cluster(str(base))
    codes = dict(line.split() for line in r.stdout.splitlines())
    out = {name: (base / f"{name}.out").read_text() for name in codes}
    assert codes == {"good": "0", "wrong": "2", "missing": "2"}, (r.stdout, r.stderr, out)
    assert (tmp_path / "good" / "a.png").is_file() and "InvalidAuthToken" not in out["good"], out["good"]
    for name, hint in (("wrong", "is the token in RAY_AUTH_TOKEN"), ("missing", "put its token in RAY_AUTH_TOKEN")):
        lines = [line for line in out[name].splitlines() if line.startswith("darkfix")]
        assert len(lines) == 1 and "cannot start or reach Ray at 127.0.0.1:26391" in lines[0], out[name]
        assert hint in lines[0] and "Traceback" not in out[name]
        assert not list((tmp_path / name).glob("*.png"))
