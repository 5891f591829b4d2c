"""PNG encoding read back by an independent decoder (pypng), and atomic writes."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import darkfix.pngio as pngio
from _util import read_png
from darkfix.errors import OutputBusyError, OutputError, OutputExistsError
from darkfix.pngio import PngStream, atomic_output, encode_png, write_atomic


@pytest.mark.parametrize("dtype,depth", [(np.uint8, 8), (np.uint16, 16)])
@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (64, 96)])
@pytest.mark.parametrize("compression", [0, 1, 3, 9])
@pytest.mark.parametrize("library", ["default", "zlib only"])
def test_round_trip_bit_exact(tmp_path, monkeypatch, dtype, depth, shape, compression, library):
    if library == "zlib only":  # what a PNG is without the isal package
        monkeypatch.setattr(pngio, "_isal", None)
    rng = np.random.default_rng(sum(shape) + depth + compression)
    img = rng.integers(0, np.iinfo(dtype).max + 1, (*shape, 3), dtype=np.int64).astype(dtype)
    path = write_atomic(tmp_path / "x.png", encode_png(img, compression))
    back, bitdepth = read_png(path)
    assert bitdepth == depth
    assert back.dtype == dtype
    assert np.array_equal(back, img)


def test_sixteen_bits_are_really_stored(tmp_path):
    img = np.zeros((2, 3, 3), np.uint16)
    img[0, 0] = (1, 256, 65535)
    img[1, 2] = (0x1234, 0xABCD, 0x00FF)
    back, depth = read_png(write_atomic(tmp_path / "x.png", encode_png(img)))
    assert depth == 16
    assert back[0, 0].tolist() == [1, 256, 65535]
    assert back[1, 2].tolist() == [0x1234, 0xABCD, 0x00FF]


def test_many_slices_and_threads(tmp_path, monkeypatch):
    """Rows deflated in independent slices concatenate into one valid stream (forced tiny slices)."""
    monkeypatch.setattr(pngio, "_SLICE_BYTES", 500)
    rng = np.random.default_rng(5)
    img = rng.integers(0, 65536, (37, 29, 3)).astype(np.uint16)
    smooth = np.repeat(np.arange(37, dtype=np.uint8)[:, None, None] * 7, 29, axis=1).repeat(3, axis=2)
    for image in (img, smooth):
        for threads, level in ((1, 6), (3, 6), (1, 1), (3, 1)):
            data = encode_png(image, level, threads=threads)
            back, _ = read_png(write_atomic(tmp_path / f"s{threads}.png", data, overwrite=True))
            assert np.array_equal(back, image)


def test_fast_levels_use_isal_and_stay_small(tmp_path, monkeypatch):
    """Levels 1-3 deflate with ISA-L (a requirement): a smooth photo-like image comes out within 2 % of the
    size zlib's own level 1 makes (measured: 9 % smaller)."""
    pytest.importorskip("isal")
    assert pngio.deflater(1).__name__.startswith("isal") and pngio.deflater(3) is pngio.deflater(1)
    assert pngio.deflater(0) is pngio.zlib and pngio.deflater(9) is pngio.zlib
    y, x = np.mgrid[0:300, 0:400]
    shade = 128 + 60 * np.sin(x / 23.0) * np.cos(y / 31.0)
    img = shade[..., None] + np.random.default_rng(1).normal(0, 3, (300, 400, 3))
    img = np.clip(img, 0, 255).astype(np.uint8)
    fast = encode_png(img, 1)
    monkeypatch.setattr(pngio, "_isal", None)
    plain = encode_png(img, 1)
    assert np.array_equal(read_png(write_atomic(tmp_path / "fast.png", fast))[0], img)
    assert len(fast) <= 1.02 * len(plain)


@pytest.mark.parametrize("dtype,depth", [(np.uint8, 8), (np.uint16, 16)])
@pytest.mark.parametrize("background", [False, True])
def test_stream_in_bands_equals_whole(tmp_path, monkeypatch, dtype, depth, background):
    """Bands of any height (one row, several slices) make the same image as one encode: the up filter
    carries across band edges and the checksum across chunks."""
    monkeypatch.setattr(pngio, "_SLICE_BYTES", 300)
    rng = np.random.default_rng(depth)
    img = rng.integers(0, np.iinfo(dtype).max + 1, (41, 23, 3), dtype=np.int64).astype(dtype)
    with atomic_output(tmp_path / "b.png") as f, PngStream(f, 23, 41, depth, 6, threads=2,
                                                           background=background) as png:
        for a, b in [(0, 1), (1, 2), (2, 17), (17, 17), (17, 40), (40, 41)]:
            png.write(img[a:b])
    back, bitdepth = read_png(tmp_path / "b.png")
    assert bitdepth == depth and np.array_equal(back, img)


def test_stream_refuses_wrong_rows_and_short_images(tmp_path):
    with pytest.raises(ValueError, match="columns"):
        with atomic_output(tmp_path / "w.png") as f, PngStream(f, 5, 4) as png:
            png.write(np.zeros((2, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="2 of its 4 rows"):
        with atomic_output(tmp_path / "s.png") as f, PngStream(f, 5, 4) as png:
            png.write(np.zeros((2, 5, 3), np.uint8))
    with pytest.raises(ValueError, match="more rows"):
        with atomic_output(tmp_path / "m.png") as f, PngStream(f, 5, 4) as png:
            png.write(np.zeros((5, 5, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []  # nothing half-written stays


def test_bad_arguments():
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(ValueError):
        encode_png(np.zeros((4, 4, 3), np.uint8), compression=10)


def test_non_contiguous_input(tmp_path):
    img = np.random.default_rng(1).integers(0, 256, (10, 12, 3)).astype(np.uint8)
    view = np.rot90(img)  # a strided view, as orient() returns
    back, _ = read_png(write_atomic(tmp_path / "r.png", encode_png(view)))
    assert np.array_equal(back, view)


def test_write_atomic_refuses_existing(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")
    with pytest.raises(OutputError, match="already exists"):
        write_atomic(target, b"new")
    assert target.read_bytes() == b"old"
    write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]


def test_write_atomic_missing_directory(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        write_atomic(tmp_path / "nope" / "out.png", b"x")


def test_write_atomic_permissions(tmp_path):
    path = write_atomic(tmp_path / "p.png", b"x")
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("error,expected", [(OSError(errno.ENOSPC, "No space left on device"), "disk full"),
                                            (OSError(errno.EIO, "Input/output error"), "Input/output error")])
def test_failed_write_leaves_nothing(tmp_path, monkeypatch, error, expected):
    def boom(fd):
        raise error

    monkeypatch.setattr(pngio.os, "fsync", boom)
    target = tmp_path / "out.png"
    with pytest.raises(OutputError, match=expected) as info:
        write_atomic(target, b"data")
    assert str(target) in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_interrupted_write_leaves_nothing_and_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"old")

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(pngio.os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, b"new", overwrite=True)
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


@pytest.mark.parametrize("overwrite", [False, True])
def test_failed_rename_leaves_nothing(tmp_path, monkeypatch, overwrite):
    def fail(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(pngio.os, "replace", fail)
    monkeypatch.setattr(pngio.os, "link", fail)
    with pytest.raises(OutputError, match="Invalid cross-device link"):
        write_atomic(tmp_path / "out.png", b"data", overwrite=overwrite)
    assert list(tmp_path.iterdir()) == []


def test_file_system_without_hard_links_still_writes(tmp_path, monkeypatch):
    def no_links(src, dst):
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(pngio.os, "link", no_links)
    assert write_atomic(tmp_path / "out.png", b"data").read_bytes() == b"data"
    with pytest.raises(OutputExistsError):
        write_atomic(tmp_path / "out.png", b"again")
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


# A process that claims an output (as a batch does before decoding), writes part of it and waits to be killed.
_HOLDER = """
import sys, time
from pathlib import Path
from darkfix.pngio import claim_output
claim = claim_output(Path(sys.argv[1]))
f = claim.open()
f.write(b"half a picture" * 1000)
f.flush()
print("holding", flush=True)
time.sleep(120)
"""


def hold_claim(path: Path) -> subprocess.Popen:
    """A live process holding `path`'s claim, with a partial part file (kill it to make it a dead one)."""
    proc = subprocess.Popen([sys.executable, "-c", _HOLDER, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "holding"
    return proc


def test_output_created_meanwhile_is_not_replaced(tmp_path):
    """Issue 23: the rename replaced whatever another process had put there since the check (ten restores to
    one name: 8-10 exited 0, one file survived). Now the output is linked into place, exclusively."""
    target = tmp_path / "out.png"
    with pytest.raises(OutputExistsError, match="already exists"):
        with atomic_output(target) as f:
            f.write(b"mine")
            target.write_bytes(b"written by another process meanwhile")
    assert target.read_bytes() == b"written by another process meanwhile"
    assert [p.name for p in tmp_path.iterdir()] == ["out.png"]


def test_a_live_writer_is_refused_a_dead_one_cleaned(tmp_path):
    """Issue 23: a kill -9 while writing left a hidden part file (up to 4.9 MB) that no run removed."""
    target = tmp_path / "x.png"
    holder = hold_claim(target)
    try:
        part = tmp_path / ".x.png.part"
        assert part.stat().st_size == 14000
        with pytest.raises(OutputBusyError, match="another darkfix process is writing it"):
            write_atomic(target, b"second")
        assert pngio.remove_stale_parts(tmp_path) == 0 and part.exists()  # a live writer's part stays
    finally:
        holder.kill()
        holder.wait()
    assert part.exists() and not target.exists()  # what kill -9 leaves
    # old-style leftovers (darkfix before issue 23) go too; other programs' part files stay
    (tmp_path / ".y.tif.k2j4h1x9.part").write_bytes(b"x" * 100)
    (tmp_path / ".w.safetensors.part").write_bytes(b"weights being saved")
    # the next run (process) that writes there cleans up
    next_run = ("import sys; from pathlib import Path; from darkfix.pngio import write_atomic; "
                "write_atomic(Path(sys.argv[1]), b'whole')")
    subprocess.run([sys.executable, "-c", next_run, str(target)], check=True)
    assert target.read_bytes() == b"whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".w.safetensors.part", "x.png"]


def test_claim_is_refused_while_held_and_free_once_released(tmp_path):
    target = tmp_path / "c.png"
    claim = pngio.claim_output(target)
    with pytest.raises(OutputBusyError):
        pngio.OutputClaim(target)
    with atomic_output(target) as f:  # this process's own claim is written through
        f.write(b"claimed")
    with pytest.raises(OutputExistsError):
        pngio.OutputClaim(target)  # once written, the output exists
    claim.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.png"]
    assert (tmp_path / "c.png").read_bytes() == b"claimed"
