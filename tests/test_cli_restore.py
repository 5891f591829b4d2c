"""`darkfix restore` end to end through click's CliRunner, on tiny DNGs written by the tests."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rawpy
from click.testing import CliRunner
from PIL import Image

from _util import CFA_PHASES, SONY_XYZ, read_png, set_orientation, write_cfa_dng, write_linear_dng
from darkfix.amplify import estimate_exposure, estimate_from_raw
from darkfix.colour import orient
from darkfix.cli import main
from darkfix.rawio import read_raw
from darkfix.weights import default_weights_path

ROOT = Path(__file__).resolve().parents[1]


def restore(weights, *args):
    return CliRunner().invoke(main, ["restore", *map(str, args), "--weights", str(weights), "--device", "cpu"])


def files_under(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def assert_refused(r, path, *fragments):
    """Exit code 2, one line on stderr naming the file, nothing on stdout, no traceback."""
    assert r.exit_code == 2, (r.exit_code, r.output, r.exception)
    assert isinstance(r.exception, SystemExit), r.exception
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("darkfix: error: ")
    assert str(path) in lines[0], lines[0]
    assert "Traceback" not in r.output
    for f in fragments:
        assert f in lines[0], lines[0]


# --- sizes, phases, orientation ----------------------------------------------------------------


SIZES = [(67, 93), (50, 78), (23, 41)]  # odd, even but not a multiple of 32, near LibRaw's minimum


def test_output_has_the_input_size(make_dng, weights_file, tmp_path):
    """Every CFA phase at odd and not-multiple-of-32 sizes (one run: the network loads once)."""
    srcs = {(cfa, size): make_dng(f"{cfa}_{size[0]}x{size[1]}.dng", size=size, cfa=cfa,
                                  black=(510, 512, 514, 516), seed=len(cfa) + size[0])
            for cfa in CFA_PHASES for size in SIZES}
    out = tmp_path / "out"
    out.mkdir()
    r = restore(weights_file, *srcs.values(), "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == [str(out / p.with_suffix(".png").name) for p in srcs.values()]
    for (cfa, size), src in srcs.items():
        img, depth = read_png(out / src.with_suffix(".png").name)
        assert depth == 8
        assert img.shape == (*size, 3), (cfa, size, img.shape)
        assert img.std() > 0  # not a blank image


def test_portrait_comes_out_upright(make_dng, weights_file, tmp_path):
    cases = {(6, "GRBG"): (71, 45), (8, "BGGR"): (71, 45), (3, "GBRG"): (45, 71), (1, "RGGB"): (45, 71)}
    srcs = {k: make_dng(f"o{k[0]}.dng", size=(45, 71), cfa=k[1], orientation=k[0]) for k in cases}
    r = restore(weights_file, *srcs.values(), "-o", tmp_path)
    assert r.exit_code == 0, r.output
    for k, src in srcs.items():
        img, _ = read_png(src.with_suffix(".png"))
        assert img.shape[:2] == cases[k], k


def test_tiled_restore_matches_untiled(make_dng, weights_file, tmp_path):
    """A frame larger than --tile runs in tiles; size and content agree with one whole-frame run."""
    src = make_dng(size=(150, 270), cfa="GBRG")
    a, b = tmp_path / "tiled.png", tmp_path / "whole.png"
    assert restore(weights_file, src, "-o", a, "--tile", "64", "--bit-depth", "16").exit_code == 0
    assert restore(weights_file, src, "-o", b, "--bit-depth", "16").exit_code == 0
    ta, _ = read_png(a)
    tb, _ = read_png(b)
    assert ta.shape == tb.shape == (150, 270, 3)
    diff = np.abs(ta.astype(np.int64) - tb.astype(np.int64))
    assert diff.max() <= 1, diff.max()  # equal to float rounding (measured: identical), not within 2 %


def test_every_orientation_streams_band_by_band(make_dng, weights_file, tmp_path):
    """Small tiles make many bands; each of the 8 EXIF orientations walks them in its own order (columns
    for the 90-degree turns, backwards for flips) and must give the upright whole-frame image."""
    src = make_dng("up.dng", size=(300, 410), cfa="GRBG", seed=3)
    whole = tmp_path / "whole.png"
    assert restore(weights_file, src, "-o", whole).exit_code == 0
    upright, _ = read_png(whole)
    for orientation in range(1, 9):
        turned = tmp_path / f"o{orientation}.dng"
        turned.write_bytes(src.read_bytes())
        set_orientation(turned, orientation)
        r = restore(weights_file, turned, "--tile", "64")
        assert r.exit_code == 0, r.output
        img, _ = read_png(turned.with_suffix(".png"))
        expected = orient(upright, read_raw(turned).flip)
        assert img.shape == expected.shape, orientation
        assert np.abs(img.astype(int) - expected.astype(int)).max() <= 1, orientation


def test_saturated_photosites_come_out_white(make_dng, weights_file, tmp_path):
    """A lamp that clipped the sensor has no known colour: like LibRaw (and so the SID ground truth),
    darkfix renders it white, whatever the network made of it."""
    rng = np.random.default_rng(0)
    m = (512 + rng.poisson(40, (96, 128))).astype(np.uint16)
    lamp = m.copy()
    lamp[30:60, 41:81] = 16383  # every photosite of a 30 x 40 patch at the white level
    plain, lit = make_dng("plain.dng", mosaic=m), make_dng("lamp.dng", mosaic=lamp)
    assert restore(weights_file, plain, lit, "--ratio", "50").exit_code == 0
    a, _ = read_png(plain.with_suffix(".png"))
    b, _ = read_png(lit.with_suffix(".png"))
    assert (a[30:60, 41:81] < 250).any()  # the network alone does not make it white
    assert (b[30:60, 41:81] == 255).all()
    assert (b[:30] < 255).any(axis=-1).mean() > 0.9  # only the patch: the dark rest stays dark


# --- colour, black levels, phases and orientation against LibRaw --------------------------------

# linear camera RGB after amplification, per quadrant (top-left, top-right, bottom-left, bottom-right)
QUADRANTS = {(0, 0): (0.30, 0.25, 0.10), (0, 1): (0.08, 0.20, 0.30), (1, 0): (0.15, 0.15, 0.15),
             (1, 1): (0.25, 0.05, 0.20)}
CHANNEL = {"R": 0, "G": 1, "B": 2}


def quadrant_mosaics(cfa, size, black, ratio, white=16383):
    """(dark, bright): bright - black == ratio * (dark - black) exactly."""
    h, w = size
    b = np.asarray(black, np.float64).reshape(2, 2)
    dark = np.zeros(size, np.int64)
    bl = np.zeros(size, np.int64)
    for i in range(h):
        for j in range(w):
            c = cfa[2 * (i % 2) + (j % 2)]
            v = QUADRANTS[(int(i >= h // 2), int(j >= w // 2))][CHANNEL[c]]
            bl[i, j] = b[i % 2, j % 2]
            # the same DN above black for both greens, so LibRaw sees no green imbalance
            dark[i, j] = round(v * (white - b.max()) / ratio)
    return (bl + dark).astype(np.uint16), (bl + ratio * dark).astype(np.uint16)


def libraw_upright(path):
    with rawpy.imread(str(path)) as raw:
        return raw.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16).astype(np.float64) / 65535


@pytest.mark.parametrize("cfa,orientation,size", [("RGGB", 1, (67, 93)), ("GRBG", 6, (67, 93)),
                                                  ("GBRG", 3, (58, 78)), ("BGGR", 8, (67, 93))])
def test_pipeline_matches_libraw(make_dng, passthrough_weights, tmp_path, cfa, orientation, size):
    """With a pass-through network, darkfix's output is LibRaw's rendering of the amplified raw.

    This checks, end to end, the CFA phase handling, per-position black levels, the amplification,
    white balance, colour matrix, the BT.709 curve, orientation and cropping.
    """
    ratio, black = 40, (508, 512, 516, 520)
    dark, bright = quadrant_mosaics(cfa, size, black, ratio)
    common = dict(cfa=cfa, black=black, orientation=orientation, color_matrix=SONY_XYZ,
                  as_shot_neutral=(0.48, 1.0, 0.66))
    src = make_dng("dark.dng", mosaic=dark, **common)
    ref = libraw_upright(make_dng("bright.dng", mosaic=bright, directory=tmp_path / "ref", **common))
    out = tmp_path / "out.png"
    # fp32: the bf16 network of a CPU that runs it natively adds its own rounding (worst 1.5e-3; fp32: 7.3e-4)
    r = restore(passthrough_weights, src, "-o", out, "--ratio", ratio, "--bit-depth", "16", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    img, depth = read_png(out)
    assert depth == 16
    assert img.shape == ref.shape
    img = img.astype(np.float64) / 65535
    H, W = img.shape[:2]
    centres = []
    for cy in (H // 4, 3 * H // 4):
        for cx in (W // 4, 3 * W // 4):
            win = (slice(cy - 3, cy + 4), slice(cx - 3, cx + 4))
            err = np.abs(img[win] - ref[win]).max()
            assert err < 1e-3, (cy, cx, err, img[cy, cx], ref[cy, cx])
            centres.append(tuple(np.round(ref[cy, cx], 3)))
    assert len(set(centres)) == 4  # four different colours: a rotation or swap could not pass


def test_pixel_alignment_every_phase(make_dng, passthrough_weights, tmp_path):
    """Each red (blue) pixel's own value comes out in the red (blue) channel at its own position.

    With the pass-through network, rgb_cam = identity (ColorMatrix1 = sRGB -> XYZ inverted) and
    unit white balance, output R at a red pixel is bt709(ratio * normalised raw): a one-pixel shift
    in packing, padding or cropping, or a swapped plane, shows on random data.
    """
    from darkfix.colour import XYZ_FROM_SRGB

    ratio, white = 30.0, 16383
    black = (505, 510, 515, 520)
    bl = np.array(black, np.float64).reshape(2, 2)
    size = (45, 67)
    srcs = {}
    for k, cfa in enumerate(CFA_PHASES):
        rng = np.random.default_rng(k)
        grid = np.tile(bl, (23, 34))[: size[0], : size[1]]
        mosaic = (grid + rng.integers(0, 400, size)).astype(np.uint16)
        srcs[cfa] = (make_dng(f"{cfa}.dng", cfa=cfa, black=black, mosaic=mosaic, as_shot_neutral=(1.0, 1.0, 1.0),
                              color_matrix=np.linalg.inv(XYZ_FROM_SRGB)), mosaic, grid)
    out = tmp_path / "out"
    out.mkdir()
    r = restore(passthrough_weights, *(v[0] for v in srcs.values()), "-o", out, "--ratio", ratio,
                "--bit-depth", "16", "--precision", "fp32")
    assert r.exit_code == 0, r.output
    for cfa, (src, mosaic, grid) in srcs.items():
        img = read_png(out / src.with_suffix(".png").name)[0].astype(np.float64) / 65535
        expected = np.clip(ratio * (mosaic - grid) / (white - grid), 0, 1)
        expected = np.where(expected < 0.018, 4.5 * expected, 1.099 * np.maximum(expected, 0.018) ** 0.45 - 0.099)
        colours = np.array([[cfa[2 * (i % 2) + (j % 2)] for j in range(size[1])] for i in range(size[0])])
        for letter, ch in (("R", 0), ("B", 2)):
            where = colours == letter
            err = np.abs(img[..., ch][where] - expected[where]).max()
            assert err < 3e-4, (cfa, letter, err)


def test_brightness_factor_is_a_multiplier(make_dng, passthrough_weights, tmp_path):
    src = make_dng(size=(40, 58), cfa="GRBG")
    a, b = tmp_path / "a.png", tmp_path / "b.png"
    assert restore(passthrough_weights, src, "-o", a, "--ratio", "20", "-m", "2").exit_code == 0
    assert restore(passthrough_weights, src, "-o", b, "--ratio", "40").exit_code == 0
    assert a.read_bytes() == b.read_bytes()
    c = tmp_path / "c.png"
    assert restore(passthrough_weights, src, "-o", c, "--ratio", "80", "-m", "-1EV").exit_code == 0
    assert c.read_bytes() == b.read_bytes()  # stops: -1ev halves


@pytest.mark.parametrize("value", ["bright", "0", "+7ev", "200", "ev"])
def test_bad_brightness_is_refused(make_dng, passthrough_weights, tmp_path, value):
    src = make_dng()
    r = restore(passthrough_weights, src, "-o", tmp_path / "x.png", "-m", value)
    assert r.exit_code == 2 and "brightness" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "x.png").exists()


def test_ratio_changes_brightness_monotonically(make_dng, passthrough_weights, tmp_path):
    src = make_dng(size=(40, 58), level=30)
    means = []
    for ratio in (2, 8, 30, 100):
        out = tmp_path / f"r{ratio}.png"
        r = restore(passthrough_weights, src, "-o", out, "--ratio", ratio)
        assert r.exit_code == 0, r.output
        means.append(read_png(out)[0].astype(np.float64).mean())
    assert all(b > a + 1 for a, b in zip(means, means[1:])), means


def test_ratio_changes_brightness_random_weights(make_dng, weights_file, tmp_path):
    """Even a random network's output changes with --ratio (the option reaches the network)."""
    src = make_dng(size=(40, 58))
    outs = []
    for ratio in (5, 50):
        out = tmp_path / f"r{ratio}.png"
        assert restore(weights_file, src, "-o", out, "--ratio", ratio).exit_code == 0
        outs.append(read_png(out)[0])
    assert not np.array_equal(*outs)


def test_wb_option(make_dng, passthrough_weights, tmp_path):
    src = make_dng(size=(40, 58), level=200, as_shot_neutral=(0.4, 1.0, 0.8))
    a, b = tmp_path / "cam.png", tmp_path / "day.png"
    assert restore(passthrough_weights, src, "-o", a, "--ratio", "10").exit_code == 0
    assert restore(passthrough_weights, src, "-o", b, "--ratio", "10", "--wb", "daylight").exit_code == 0
    ca, cb = read_png(a)[0].reshape(-1, 3).mean(0), read_png(b)[0].reshape(-1, 3).mean(0)
    # as shot, red is multiplied by 2.5 (1/0.4): clearly redder than under the daylight multipliers
    assert ca[0] / ca[1] > 1.2 * cb[0] / cb[1], (ca, cb)


# --- bit depth, output naming, overwrite, verbose ---------------------------------------------------


def test_bit_depth_16(make_dng, weights_file, tmp_path):
    src = make_dng(size=(48, 64), level=80)
    a, b = tmp_path / "a16.png", tmp_path / "a8.png"
    assert restore(weights_file, src, "-o", a, "--bit-depth", "16").exit_code == 0
    assert restore(weights_file, src, "-o", b).exit_code == 0
    img16, d16 = read_png(a)
    img8, d8 = read_png(b)
    assert (d16, d8) == (16, 8)
    assert img16.dtype == np.uint16
    # real 16-bit data, not 8 bits scaled up (v * 257 has equal high and low bytes)
    assert np.any((img16 >> 8) != (img16 & 0xFF))
    assert len(np.unique(img16)) > len(np.unique(img8))
    assert np.abs(img16.astype(np.float64) / 257 - img8).max() <= 0.51


def test_output_file_option(make_dng, weights_file, tmp_path):
    src = make_dng()
    out = tmp_path / "sub" / "result.png"
    out.parent.mkdir()
    r = restore(weights_file, src, "-o", out)
    assert r.exit_code == 0, r.output
    assert r.stdout.strip() == str(out)
    assert read_png(out)[0].shape == (64, 96, 3)
    assert not src.with_suffix(".png").exists()


def test_output_directory_for_several_inputs(make_dng, weights_file, tmp_path):
    srcs = [make_dng(f"f{i}.dng", cfa=c, size=(40 + i, 58), seed=i) for i, c in enumerate(("RGGB", "BGGR", "GRBG"))]
    outdir = tmp_path / "out"
    outdir.mkdir()
    r = restore(weights_file, *srcs, "-o", outdir)
    assert r.exit_code == 0, r.output
    assert r.stdout.split() == [str(outdir / f"f{i}.png") for i in range(3)]
    for i in range(3):
        assert read_png(outdir / f"f{i}.png")[0].shape == (40 + i, 58, 3)
    assert sorted(p.name for p in outdir.iterdir()) == ["f0.png", "f1.png", "f2.png"]


def test_single_input_into_existing_directory(make_dng, weights_file, tmp_path):
    src = make_dng()
    outdir = tmp_path / "o"
    outdir.mkdir()
    assert restore(weights_file, src, "-o", outdir).exit_code == 0
    assert (outdir / "frame.png").is_file()


def test_default_output_beside_input(make_dng, weights_file, tmp_path, monkeypatch):
    src = make_dng("shot.dng", directory=tmp_path / "pics")
    monkeypatch.chdir(tmp_path)  # not the input's folder
    r = restore(weights_file, src)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "pics" / "shot.png").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pics"]


def test_several_inputs_with_one_bad(make_dng, weights_file, tmp_path):
    good = make_dng("good.dng")
    bad = tmp_path / "bad.dng"
    bad.write_bytes(b"not a raw file at all" * 10)
    r = restore(weights_file, good, bad, "-o", tmp_path)
    assert r.exit_code == 1
    assert (tmp_path / "good.png").is_file() and not (tmp_path / "bad.png").exists()
    assert str(bad) in r.stderr and "Traceback" not in r.output


def test_several_inputs_output_must_be_directory(make_dng, weights_file, tmp_path):
    a, b = make_dng("a.dng"), make_dng("b.dng")
    target = tmp_path / "exists.png"
    target.write_bytes(b"x")
    r = restore(weights_file, a, b, "-o", target)
    assert_refused(r, target, "directory")
    assert not (tmp_path / "a.png").exists() and target.read_bytes() == b"x"


def test_existing_output_refused_then_overwritten(make_dng, weights_file):
    src = make_dng()
    out = src.with_suffix(".png")
    out.write_bytes(b"precious")
    r = restore(weights_file, src)
    assert_refused(r, out, "already exists", "--overwrite")
    assert out.read_bytes() == b"precious"
    r = restore(weights_file, src, "--overwrite")
    assert r.exit_code == 0, r.output
    assert read_png(out)[0].shape == (64, 96, 3)
    assert not list(out.parent.glob(".*.part"))


def test_verbose_prints_the_amplification(make_dng, weights_file):
    src = make_dng(level=25)
    frame = read_raw(src)
    paper = estimate_from_raw(frame.mosaic, frame.black, frame.white)
    wb = frame.wb_camera / frame.wb_camera[1]
    auto = estimate_exposure(frame.mosaic, frame.black, frame.white, np.array([[wb[0], 1], [1, wb[2]]]))
    assert 5 < paper < auto < 300  # a dark frame: neither estimate is clipped or trivial
    r = restore(weights_file, src, "-v")
    assert r.exit_code == 0, r.output
    assert f"amplification {auto:.2f} (automatic exposure {auto:.2f} x brightness 1)" in r.stdout
    r = restore(weights_file, src, "-v", "--overwrite", "--exposure", "paper", "-m", "+1ev")
    assert r.exit_code == 0, r.output
    assert f"amplification {2 * paper:.2f} (paper's estimate {paper:.2f} x brightness 2)" in r.stdout
    r = restore(weights_file, src, "-v", "--overwrite", "--ratio", "50", "-m", "2")
    assert r.exit_code == 0, r.output
    assert "amplification 100.00 (ratio 50.00 x brightness 2)" in r.stdout
    h, w = frame.mosaic.shape
    assert re.search(rf"; {w}x{h} in \d+\.\d\d s", r.stdout), r.stdout  # and how long it took


# --- refusals -----------------------------------------------------------------------------------------


def _jpeg_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buf, "JPEG")
    return buf.getvalue()


def _png_bytes():
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (120, 30, 200)).save(buf, "PNG")
    return buf.getvalue()


def bad_input(kind: str, d: Path, make_dng) -> tuple[Path, tuple[str, ...]]:
    """Write one kind of file darkfix must refuse; returns its path and words its message must hold."""
    rng = np.random.default_rng(0)
    if kind == "missing":
        return d / "absent.ARW", ("no such file",)
    if kind == "empty":
        (p := d / "empty.ARW").write_bytes(b"")
        return p, ("empty",)
    if kind == "random":
        (p := d / "noise.ARW").write_bytes(rng.bytes(20_000))
        return p, ()
    if kind == "jpeg":
        (p := d / "photo.ARW").write_bytes(_jpeg_bytes())
        return p, ()
    if kind == "png":
        (p := d / "image.DNG").write_bytes(_png_bytes())
        return p, ()
    if kind.startswith("truncated"):
        src = make_dng("full.dng", directory=d / "src")
        data = src.read_bytes()
        n = {"truncated-10": 10, "truncated-300": 300, "truncated-half": len(data) // 2,
             "truncated-minus1": len(data) - 1}[kind]
        (p := d / "cut.dng").write_bytes(data[:n])
        return p, ()
    if kind == "directory":
        (p := d / "x.ARW").mkdir()
        return p, ("directory",)
    if kind == "linear":
        return write_linear_dng(d / "linear.dng", rng.integers(600, 900, (32, 48, 3)).astype(np.uint16)), \
            ("demosaiced",)
    if kind == "mono-linear":
        return write_linear_dng(d / "mono.dng", rng.integers(600, 900, (32, 48)).astype(np.uint16)), \
            ("monochrome",)
    if kind == "xtrans":
        pattern = "GGRGGB" "GGBGGR" "BBGRRG" "GGBGGR" "GGRGGB" "RRGBBG"
        return write_cfa_dng(d / "xtrans.dng", rng.integers(600, 900, (36, 48)).astype(np.uint16), pattern,
                             (6, 6)), ("non-Bayer",)
    if kind == "one-colour-cfa":
        return write_cfa_dng(d / "green.dng", rng.integers(600, 900, (32, 48)).astype(np.uint16), "GGGG"), \
            ("monochrome",)
    if kind == "red-only-cfa":
        return write_cfa_dng(d / "red.dng", rng.integers(600, 900, (32, 48)).astype(np.uint16), "RRRR"), \
            ("monochrome",)
    if kind == "rgbg-cfa":  # R, G, B, G in a 2x2 cell but the greens are not on a diagonal: not Bayer
        return write_cfa_dng(d / "rgbg.dng", rng.integers(600, 900, (32, 48)).astype(np.uint16), "RGBG"), \
            ("unsupported CFA",)
    if kind == "tiny":
        return make_dng("tiny.dng", size=(16, 16), directory=d), ()
    raise AssertionError(kind)


BAD_KINDS = ["missing", "empty", "random", "jpeg", "png", "truncated-10", "truncated-300", "truncated-half",
             "truncated-minus1", "directory", "linear", "mono-linear", "xtrans", "one-colour-cfa",
             "red-only-cfa", "rgbg-cfa", "tiny"]


@pytest.mark.parametrize("kind", BAD_KINDS)
def test_refusals(make_dng, weights_file, tmp_path, kind):
    d = tmp_path / "in"
    d.mkdir()
    path, words = bad_input(kind, d, make_dng)
    before = files_under(tmp_path)
    r = restore(weights_file, path)
    assert_refused(r, path, *words)
    assert files_under(tmp_path) == before  # nothing written, no temporary files left


def test_rawpy_view_of_odd_files(make_dng, tmp_path):
    """What LibRaw reports for the non-Bayer files (kept as a record for darkfix.rawio's checks)."""
    seen = {}
    for kind in ("linear", "mono-linear", "xtrans", "one-colour-cfa", "red-only-cfa", "rgbg-cfa"):
        path, _ = bad_input(kind, tmp_path, make_dng)
        with rawpy.imread(str(path)) as raw:
            pattern = None if raw.raw_pattern is None else np.asarray(raw.raw_pattern).tolist()
            seen[kind] = (raw.raw_type.name, pattern, raw.num_colors)
    assert seen["linear"][0] == "Stack"
    assert seen["xtrans"][1] is not None and np.shape(seen["xtrans"][1]) == (6, 6)
    assert seen["mono-linear"][2] == 1 and seen["red-only-cfa"][2] == 1
    assert seen["one-colour-cfa"][1] == [[1, 1], [1, 1]]


def test_output_equal_to_input_refused(make_dng, weights_file):
    src = make_dng()
    data = src.read_bytes()
    r = restore(weights_file, src, "-o", src)
    assert_refused(r, src)
    assert src.read_bytes() == data


def test_input_named_png_is_not_overwritten(make_dng, weights_file, tmp_path):
    dng = make_dng()
    src = tmp_path / "raw.png"  # a DNG under a .png name: its default output is itself
    os.rename(dng, src)
    data = src.read_bytes()
    r = restore(weights_file, src, "--overwrite")
    assert_refused(r, src, "input")
    assert src.read_bytes() == data


def test_output_with_raw_suffix_refused(make_dng, weights_file, tmp_path):
    src = make_dng()
    out = tmp_path / "result.ARW"
    r = restore(weights_file, src, "-o", out)
    assert_refused(r, out)
    assert not out.exists()


def test_output_directory_missing(make_dng, weights_file, tmp_path):
    src = make_dng()
    out = tmp_path / "nowhere" / "x.png"
    assert_refused(restore(weights_file, src, "-o", out), out, "does not exist")


def test_fp16_on_cpu_refused_by_cli(make_dng, weights_file):
    src = make_dng()
    r = restore(weights_file, src, "--precision", "fp16")
    assert r.exit_code == 2
    assert "fp16" in r.stderr and "Traceback" not in r.output
    assert not src.with_suffix(".png").exists()


def test_bad_weights_refused_before_anything_is_written(make_dng, tmp_path):
    src = make_dng()
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 100)
    r = restore(bad, src)
    assert_refused(r, bad)
    assert not src.with_suffix(".png").exists()


def test_restore_without_default_weights(make_dng):
    if default_weights_path().is_file():
        pytest.skip("default weights are installed")
    src = make_dng()
    r = CliRunner().invoke(main, ["restore", str(src), "--device", "cpu"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert "no default weights installed" in r.stderr and len(r.stderr.splitlines()) == 1


def test_output_with_trailing_slash_is_a_directory(make_dng, weights_file, tmp_path):
    src = make_dng()
    r = CliRunner().invoke(main, ["restore", str(src), "-o", str(tmp_path / "newdir") + os.sep,
                                  "--weights", str(weights_file), "--device", "cpu"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "newdir").is_dir() and [p.name for p in (tmp_path / "newdir").iterdir()] == ["frame.png"]


def test_two_inputs_same_output_refused(make_dng, weights_file, tmp_path):
    a = make_dng("x.dng", directory=tmp_path / "a", level=20)
    b = make_dng("x.dng", directory=tmp_path / "b", level=200)
    out = tmp_path / "out"
    out.mkdir()
    r = restore(weights_file, a, b, "-o", out, "--overwrite")
    assert_refused(r, b, f"would write {out / 'x.png'}, as {a} does")  # refused before any work
    assert list(out.iterdir()) == []


def test_concurrent_restores_to_one_name_one_writes(make_dng, weights_file, tmp_path):
    """Issue 23: ten restores at once to one name without --overwrite: 8-10 exited 0 and printed the path,
    one file survived. Now one writes, the others are refused in one line (exit 2), nothing is left over."""
    from _util import shell_env

    src = make_dng(size=(600, 800))
    out = tmp_path / "out" / "same.png"
    out.parent.mkdir()
    cmd = [sys.executable, "-m", "darkfix", "restore", str(src), "-o", str(out), "--weights", str(weights_file),
           "--device", "cpu", "--engine", "torch", "--threads", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=shell_env())
             for _ in range(6)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2, 2, 2, 2, 2], results
    for code, stdout, stderr in results:
        if code == 0:
            assert stdout.strip() == str(out) and stderr == ""
        else:
            assert stdout == "" and len(stderr.splitlines()) == 1, stderr
            assert stderr.startswith(f"darkfix: error: {out}: ")
            assert "already exists" in stderr or "another darkfix process is writing it" in stderr
    assert [p.name for p in out.parent.iterdir()] == ["same.png"]
    assert read_png(out)[0].shape == (600, 800, 3)


# --- the real command line, in a subprocess: what a user's terminal shows ---------------------------------


@pytest.fixture(scope="module")
def truncated_run(tmp_path_factory, weights_file):
    d = tmp_path_factory.mktemp("sub")
    from darkfix.dng import DngSpec, write_dng

    full = write_dng(d / "full.dng", np.full((64, 96), 600, np.uint16), DngSpec())
    cut = d / "cut.dng"
    cut.write_bytes(full.read_bytes()[:7000])
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    r = subprocess.run([sys.executable, "-m", "darkfix", "restore", str(cut), "--weights", str(weights_file),
                        "--device", "cpu", "--threads", "1"], capture_output=True, text=True, env=env,
                       cwd=d, timeout=120)
    return r, cut


def test_subprocess_truncated_refused_without_traceback(truncated_run):
    r, cut = truncated_run
    assert r.returncode == 2
    assert r.stdout == ""
    assert "Traceback" not in r.stderr
    assert f"darkfix: error: {cut}: corrupt or truncated raw file" in r.stderr
    assert not cut.with_suffix(".png").exists()


def test_subprocess_truncated_one_line(truncated_run):
    r, _ = truncated_run
    assert len(r.stderr.splitlines()) == 1, r.stderr
