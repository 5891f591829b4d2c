"""More bad input for `darkfix restore`: absurd header dimensions, unreadable files, unwritable outputs."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import time

import numpy as np
import pytest
from _util import default_signals, run_restorer, shell_env
import tifffile
from click.testing import CliRunner

from darkfix.cli import main
from test_cli_restore import assert_refused, files_under, restore


def _patch_tag(path, name: str, value: int) -> None:
    """Overwrite a LONG/SHORT tag of the first IFD in place."""
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags[name]
        offset, dtype = tag.valueoffset, tag.dtype
    data = bytearray(path.read_bytes())
    fmt = "<I" if dtype == 4 else "<H"
    data[offset : offset + struct.calcsize(fmt)] = struct.pack(fmt, value)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("width,height", [(65535, 65535), (200000, 3), (3, 4000000)])
def test_absurd_dimensions_refused(make_dng, weights_file, tmp_path, width, height):
    src = make_dng("huge.dng", size=(32, 48))
    _patch_tag(src, "ImageWidth", width)
    _patch_tag(src, "ImageLength", height)
    before = files_under(tmp_path)
    r = restore(weights_file, src)
    assert_refused(r, src)
    assert files_under(tmp_path) == before


def _without_root_powers() -> list[str]:
    """A command prefix under which file permissions hold: nothing for a user; for root (as CI runs the
    tests), setpriv without the capabilities that let root read and write any file."""
    if os.geteuid() != 0:
        return []
    caps = "-dac_override,-dac_read_search"
    return ["setpriv", f"--bounding-set={caps}", f"--inh-caps={caps}"]


def test_unreadable_file_refused(make_dng, weights_file, tmp_path):
    """Was skipped whenever the tests ran as root, which CI does: now run where root's powers are dropped."""
    import shutil

    prefix = _without_root_powers()
    if prefix and shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permissions cannot be made to hold")
    src = make_dng("locked.dng")
    src.chmod(0)
    try:
        r = subprocess.run([*prefix, sys.executable, "-m", "darkfix", "restore", str(src), "--weights",
                            str(weights_file), "--engine", "torch"], capture_output=True, text=True, timeout=120)
    finally:
        src.chmod(0o644)
    assert r.returncode == 2 and r.stdout == "", (r.returncode, r.stdout, r.stderr)
    assert r.stderr.splitlines() == [f"darkfix: error: {src}: permission denied"], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["locked.dng"]


def test_output_under_a_file_refused(make_dng, weights_file, tmp_path):
    src = make_dng()
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    out = blocker / "frame.png"
    assert_refused(restore(weights_file, src, "-o", out), out, "does not exist")
    assert blocker.read_text() == "x"


@pytest.mark.parametrize("good_writes", [0, 3])
def test_write_failure_removes_partial_file(make_dng, weights_file, tmp_path, monkeypatch, good_writes):
    """A disk that fills up at the first write, or mid-image on the PNG writer's thread (small tiles: many
    bands, each written as it is done): one line, no PNG, no temporary file."""
    src = make_dng(size=(300, 410))
    real_fdopen = os.fdopen

    class FullDisk:
        def __init__(self, f):
            self.f = f
            self.writes = 0

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def write(self, data):
            self.writes += 1
            if self.writes <= good_writes:
                return self.f.write(data)
            self.f.write(data[: len(data) // 2])
            raise OSError(28, "No space left on device")

    monkeypatch.setattr("darkfix.pngio.os.fdopen", lambda fd, mode: FullDisk(real_fdopen(fd, mode)))
    r = restore(weights_file, src, "--tile", "64")
    assert_refused(r, src.with_suffix(".png"), "disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == [src.name]


def test_non_bayer_tiff_named_raw_refused(weights_file, tmp_path):
    """An ordinary RGB TIFF renamed .NEF: LibRaw opens TIFFs, darkfix must not treat it as a mosaic."""
    src = tmp_path / "photo.NEF"
    tifffile.imwrite(src, np.zeros((16, 16, 3), np.uint8), photometric="rgb")
    r = restore(weights_file, src)
    assert_refused(r, src)


def test_out_of_memory_splits_tiles_and_matches(weights_file):
    """CUDA out of memory: the tile is split and retried; the result is the same as without the failure."""
    import torch

    from darkfix.inference import Restorer
    from darkfix.weights import load_weights

    model, _ = load_weights(weights_file)
    packed = np.random.default_rng(0).random((4, 200, 264), dtype=np.float32) * 0.2

    expected = run_restorer(Restorer(model, device="cpu", tile=512), packed)
    flaky = Restorer(model, device="cpu", tile=512)
    flaky.split_on_oom = True  # as on CUDA
    real_fine = flaky.net.fine

    def fine(x, b):
        if x.shape[-1] * x.shape[-2] > 130 * 130:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return real_fine(x, b)

    flaky.net.fine = fine
    got = run_restorer(flaky, packed)
    assert flaky.tile < 512
    assert np.abs(got - expected).max() < 1e-5
    cpu = Restorer(model, device="cpu", tile=512)
    cpu.net.fine = fine
    with pytest.raises(torch.OutOfMemoryError):
        run_restorer(cpu, packed)


# a signal that arrives while the part file is being created and locked, before any claim knows it
_SIGNAL_IN_CLAIM = """
import os, signal, sys
import darkfix.pngio as pngio
from darkfix.cli.common import stop_on_signals
stop_on_signals()
real = getattr(pngio, sys.argv[2])
sent = []
def interrupted(*args):
    if not sent:  # one signal, as a user sends
        sent.append(os.kill(os.getpid(), int(sys.argv[3])))
    return real(*args)
setattr(pngio, sys.argv[2], interrupted)
try:
    pngio.write_atomic(sys.argv[1], b"x" * 100)
except KeyboardInterrupt:
    sys.exit(130)
"""


@pytest.mark.parametrize("where", ["_lock", "_still_named"])
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_while_claiming_leaves_no_part_file(tmp_path, where, sig):
    """The window the CI once caught (a SIGTERM between the part file's creation and its claim): the
    signal takes effect after the claim is registered, so the exit removes the file."""
    out = tmp_path / "x.png"
    r = subprocess.run([sys.executable, "-c", _SIGNAL_IN_CLAIM, str(out), where, str(int(sig))],
                       capture_output=True, text=True, env=shell_env(), preexec_fn=default_signals)
    assert r.returncode == 130, r.stderr
    assert "Traceback" not in r.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupted_restore_leaves_no_partial_file(make_dng, weights_file, tmp_path, sig):
    """The PNG streams into a temporary file while the network runs: a signal then must remove it."""
    from test_batch import SLOWED_DARKFIX

    src = make_dng(size=(512, 768))
    out = tmp_path / "out"
    out.mkdir()
    # slowed (a fifth of a second a band, 4 bands): caught mid-way however fast the machine is
    cmd = [sys.executable, "-c", SLOWED_DARKFIX, "restore", str(src), "-o", str(out / "x.png"), "--weights",
           str(weights_file), "--threads", "1", "--tile", "64"]
    # started with the signal blocked, as a parent's mask is inherited: darkfix must unblock it
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=shell_env(),
                            preexec_fn=lambda: (default_signals(), signal.pthread_sigmask(signal.SIG_BLOCK, {sig})))
    deadline = time.monotonic() + 120
    while not list(out.glob(".x.png*.part")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert list(out.iterdir()) == []


# --- user mistakes found in review: nothing made before a refusal, one line each ------------------------


@pytest.mark.parametrize("args,fragment", [
    (["restore", "x.dng", "--ratio", "0"], "'--ratio'"),
    (["restore", "x.dng", "--no-such-option"], "--no-such-option"),
    (["restore"], "FILES"),
    (["batch", ".", "--tile", "8"], "--tile"),
    (["no-such-command"], "no-such-command"),
])
def test_usage_errors_are_one_line(args, fragment):
    """click's usage errors (a bad value, an unknown option or command, a missing argument) as darkfix's own
    are: one line, exit code 2, naming what was wrong and where to look."""
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and r.stdout == "", r.output
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("darkfix: error: ") and fragment in lines[0], r.stderr
    assert lines[0].endswith(" -h)")


def test_nothing_made_before_a_refusal(make_dng, weights_file, tmp_path):
    src = make_dng("s.dng", size=(40, 58))
    missing = tmp_path / "missing.dng"
    assert_refused(restore(weights_file, missing, "-o", f"{tmp_path / 'newdir'}/"), missing, "no such file")
    assert not (tmp_path / "newdir").exists()
    shots = tmp_path / "shots"
    shots.mkdir()
    (shots / "notes.txt").write_text("no raws here")
    r = CliRunner().invoke(main, ["batch", str(shots), "-o", str(tmp_path / "out1"), "--weights", str(weights_file)])
    assert r.exit_code == 0 and "no raw files found" in r.output and not (tmp_path / "out1").exists()
    make_dng("a.dng", size=(40, 58), directory=shots)
    bad = CliRunner().invoke(main, ["batch", str(shots), "-o", str(tmp_path / "out2"), "--format", "jpeg",
                                    "--bit-depth", "16", "--weights", str(weights_file)])
    assert bad.exit_code == 2 and "JPEG holds 8 bits" in bad.stderr and not (tmp_path / "out2").exists()
    # weights that cannot be loaded: refused before -o is made, by restore and by batch
    nowhere = tmp_path / "missing.safetensors"
    r = CliRunner().invoke(main, ["restore", str(src), "-o", f"{tmp_path / 'out3'}/", "--weights", str(nowhere)])
    assert r.exit_code == 2 and not (tmp_path / "out3").exists(), r.output
    r = CliRunner().invoke(main, ["batch", str(shots), "-o", str(tmp_path / "out4"), "--weights", str(nowhere)])
    assert r.exit_code == 2 and not (tmp_path / "out4").exists(), r.output
    # the same file named twice is restored once, not refused as its own clash; one file to -o X is X
    r = restore(weights_file, src, str(src).replace("s.dng", "./s.dng"), "-o", f"{tmp_path / 'twice'}/")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "twice").iterdir()) == ["s.png"]
    r = restore(weights_file, src, str(src).replace("s.dng", "./s.dng"), "-o", tmp_path / "one.png")
    assert r.exit_code == 0 and (tmp_path / "one.png").is_file(), r.output


def test_a_picture_given_as_raw_is_named_as_such(tmp_path, weights_file):
    picture = tmp_path / "photo.png"
    picture.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(64))
    before = picture.read_bytes()
    assert_refused(restore(weights_file, picture), picture, "a picture, not a raw file")
    assert picture.read_bytes() == before


@pytest.mark.parametrize("option,value,fragment", [
    ("device", "gpu", "unknown device"), ("tile", 0, "tile must be"), ("tile", 10, "tile must be"),
    ("tile", 256.5, "tile must be"), ("threads", 0, "threads must be"), ("threads", True, "threads must be"),
])
def test_library_refuses_what_the_cli_refuses(weights_file, option, value, fragment):
    import darkfix

    with pytest.raises(ValueError, match=fragment):
        darkfix.load(weights_file, **{option: value})
