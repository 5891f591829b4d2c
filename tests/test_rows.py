"""Row noise and black level from a raw's masked margins (darkfix.rows): measured where the margin is
masked, left where it is not, and what `darkfix restore` makes of it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from click.testing import CliRunner

from darkfix import rows
from darkfix.cli import main
from darkfix.dng import DngSpec, write_dng
from darkfix.profile import read_frame
from darkfix.rawio import read_raw

from _util import assert_library_twin, read_png

H, W, LEFT = 512, 768, 32
BLACK = 512.0


def frame_dn(rng: np.random.Generator, row_sigma: float, scene: np.ndarray | None = None,
             margin_scene: np.ndarray | None = None, cell: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mosaic with LEFT margin columns first, the rows' true offsets): Poisson light over read noise of
    2 DN and row noise shared by the margin and the picture."""
    yy, xx = np.mgrid[0:H, 0 : W - LEFT]
    scene = 6.0 + 4.0 * (xx > (W - LEFT) // 2) if scene is None else scene
    offsets = rng.normal(0.0, row_sigma, H)
    picture = rng.poisson(scene) + rng.normal(0.0, 2.0, scene.shape)
    margin = rng.normal(0.0, 2.0, (H, LEFT)) + (0.0 if margin_scene is None else rng.poisson(margin_scene))
    full = np.concatenate([margin, picture], axis=1) + offsets[:, None] + BLACK
    if cell is not None:  # a black level of each CFA position's own
        full += np.tile(cell, (H // 2, W // 2))
    return np.clip(np.round(full), 0, 16383).astype(np.uint16), offsets


def test_a_masked_margin_measures_the_rows_and_the_black(tmp_path):
    rng = np.random.default_rng(3)
    mosaic, offsets = frame_dn(rng, 1.5)
    write_dng(tmp_path / "m.dng", mosaic, DngSpec(margin_left=LEFT))
    raw = read_raw(tmp_path / "m.dng")
    assert raw.mosaic.shape == (H, W - LEFT) and [m.shape for m in raw.margins] == [(H, LEFT)]
    # LibRaw measures the black in the masked area itself, in whole DN
    assert np.all(raw.black == np.round(raw.black)) and np.abs(raw.black - BLACK).max() <= 1.0
    frame = read_frame(tmp_path / "m.dng")
    fix = frame.rows
    assert fix is not None and fix.columns == LEFT and fix.correlation > 0.9 and 0.85 < fix.gain <= 1.0
    taken = (raw.mosaic.astype(np.float32) - frame.mosaic)[:, 1]
    left = offsets - taken
    # what stays is the margin's own noise (2 DN / sqrt(32) a row), against 1.5 DN before
    assert (left - left.mean()).std() < 0.45 < 1.4 < offsets.std()
    # the black level to a tenth of a DN (the rounding of codes: 0.5 down from the +0.5 of round())
    assert np.abs(frame.black - (BLACK + offsets.mean())).max() < 0.15
    assert fix.black_shift is not None and fix.used == LEFT and "taken out" in fix.describe()
    # with a sensor profile applied, not the margins: its dark frames measured the black, and its master dark
    # took the picture's fixed row pattern but not the margin's; the picture's own estimate still applies
    profiled = replace(raw, black_measured=True)
    assert rows.correct(profiled, picture=False) is profiled
    alone = rows.correct(profiled)
    assert alone.rows is not None and alone.rows.columns == 0 and np.array_equal(alone.black, raw.black)
    assert alone.rows.describe().startswith("row noise from the picture's greens")


@pytest.mark.parametrize("case", ["no row noise", "margin of picture", "margin unrelated"])
def test_a_margin_that_does_not_follow_the_rows_is_left(tmp_path, case):
    """No row noise to take out: the mosaic stays LibRaw's. The black level is refined only where the
    stated one could be LibRaw's rounding of the margin's means (the DNG declares it masked, or the margin
    sits at the black level: a move of hundredths of a DN); a margin of picture leaves it."""
    rng = np.random.default_rng(4)
    if case == "no row noise":
        mosaic, _ = frame_dn(rng, 0.0)
    elif case == "margin of picture":
        # horizontal stripes of light over the margin and the left half only: the scene, not row noise
        stripes = 20.0 * ((np.arange(H) // 24) % 2)[:, None]
        scene = np.zeros((H, W - LEFT)) + 6.0
        scene[:, : (W - LEFT) // 2] += stripes
        mosaic, _ = frame_dn(rng, 0.0, scene, margin_scene=np.broadcast_to(stripes, (H, LEFT)))
    else:
        mosaic, _ = frame_dn(rng, 1.5)
        mosaic[:, :LEFT] = rng.normal(BLACK, 3.0, (H, LEFT)).round().astype(np.uint16)
    masked = case == "no row noise"
    write_dng(tmp_path / "m.dng", mosaic, DngSpec(margin_left=LEFT, margin_masked=masked))
    raw, frame = read_raw(tmp_path / "m.dng"), read_frame(tmp_path / "m.dng", picture_rows=False)
    assert frame.rows is not None and frame.rows.gain == 0.0 and frame.rows.correlation < rows.MIN_CORRELATION
    assert frame.mosaic.dtype == np.uint16 and np.array_equal(frame.mosaic, raw.mosaic)
    assert "row noise left" in frame.rows.describe()
    if masked:
        assert np.all(raw.black == np.round(raw.black)) and np.abs(frame.black - BLACK).max() < 0.1
        assert frame.rows.black_shift is not None and "black level from 32 masked" in frame.rows.describe()
    elif case == "margin unrelated":
        assert np.all(raw.black == BLACK) and np.abs(frame.black - BLACK).max() < 0.1
    else:
        assert np.array_equal(frame.black, raw.black) and np.all(raw.black == BLACK) and frame.rows.black_shift is None


def test_narrow_or_no_margins_change_nothing(tmp_path):
    """(Here the picture's own estimate is off; with it, the frame's rows come from it alone.)"""
    rng = np.random.default_rng(5)
    mosaic, _ = frame_dn(rng, 1.5)
    write_dng(tmp_path / "plain.dng", np.ascontiguousarray(mosaic[:, LEFT:]), DngSpec())
    write_dng(tmp_path / "narrow.dng", np.ascontiguousarray(mosaic[:, LEFT - 6 :]), DngSpec(margin_left=6))
    for name in ("plain.dng", "narrow.dng"):
        frame = read_frame(tmp_path / name, picture_rows=False)
        assert frame.margins == () and frame.rows is None and frame.mosaic.dtype == np.uint16
        frame = read_frame(tmp_path / name)
        assert frame.rows.columns == 0 and frame.rows.picture_sigma > 1.0


def test_the_black_of_each_cfa_position(tmp_path):
    """Each CFA position's black comes from the margin's photosites of that position (LibRaw states whole
    DN), though the four differ by fractions of a DN."""
    rng = np.random.default_rng(6)
    cell = np.array([[0.0, 0.6], [0.3, 0.9]])
    mosaic, offsets = frame_dn(rng, 1.5, cell=cell)
    write_dng(tmp_path / "cell.dng", mosaic, DngSpec(margin_left=LEFT))
    frame = read_frame(tmp_path / "cell.dng")
    assert frame.rows is not None and frame.rows.gain > 0.8 and frame.rows.black_shift is not None
    assert np.abs(frame.black - (BLACK + offsets.mean() + cell)).max() < 0.1, frame.black


def test_a_junk_margin_beside_a_masked_one_does_not_dilute_it(tmp_path):
    """Each side on its own: a right margin of zeros, or of picture, leaves the left one's measure whole."""
    rng = np.random.default_rng(8)
    mosaic, offsets = frame_dn(rng, 1.5)
    residual = {}
    for junk in ("none", "zeros", "picture"):
        right = {"none": np.zeros((H, 0)), "zeros": np.zeros((H, 16)),
                 "picture": rng.poisson(30.0, (H, 16)) + BLACK + rng.normal(0, 2, (H, 16))}[junk]
        full = np.concatenate([mosaic, np.round(right)], axis=1).astype(np.uint16)
        write_dng(tmp_path / f"{junk}.dng", full, DngSpec(margin_left=LEFT, margin_right=right.shape[1]))
        raw, frame = read_raw(tmp_path / f"{junk}.dng"), read_frame(tmp_path / f"{junk}.dng")
        assert len(raw.margins) == (1 if junk == "none" else 2) and frame.rows.used == LEFT
        left = offsets - (raw.mosaic.astype(np.float32) - frame.mosaic)[:, 1]
        residual[junk] = (left - left.mean()).std()
    assert max(residual.values()) < 1.02 * residual["none"] < 0.45, residual


def test_picture_columns_in_a_margin_are_left_out(tmp_path):
    """Two columns of the margin see light that changes from row to row (LibRaw's margin may take a
    column or two of picture): left out, they add no banding; the row noise still comes out."""
    rng = np.random.default_rng(9)
    mosaic, offsets = frame_dn(rng, 1.5)
    light = 40.0 * (1 + np.sin(np.arange(H) / 3.0))
    mosaic[:, LEFT - 2 : LEFT] = np.round(mosaic[:, LEFT - 2 : LEFT] + rng.poisson(light[:, None], (H, 2)))
    write_dng(tmp_path / "leak.dng", mosaic, DngSpec(margin_left=LEFT, margin_masked=False))
    raw, frame = read_raw(tmp_path / "leak.dng"), read_frame(tmp_path / "leak.dng")
    assert frame.rows is not None and frame.rows.gain > 0.8 and frame.rows.used == LEFT - 2
    left = offsets - (raw.mosaic.astype(np.float32) - frame.mosaic)[:, 1]
    assert (left - left.mean()).std() < 0.45 < 1.4 < offsets.std()


def test_nothing_goes_past_white(tmp_path):
    rng = np.random.default_rng(10)
    mosaic, _ = frame_dn(rng, 1.5)
    mosaic[::7, LEFT + 5 :: 9] = 16382  # near white: a negative offset must not lift it past white
    mosaic[3::11, LEFT + 2 :: 13] = 16383
    write_dng(tmp_path / "white.dng", mosaic, DngSpec(margin_left=LEFT))
    raw, frame = read_raw(tmp_path / "white.dng"), read_frame(tmp_path / "white.dng")
    assert frame.rows.gain > 0.8 and frame.mosaic.max() <= raw.white
    assert np.all(frame.mosaic[raw.mosaic >= raw.white] == raw.white)


def test_synth_masked_columns_are_in_the_pictures_cfa_phase(tmp_path):
    """`darkfix synth --masked-columns`: the pictures are those of the benchmark without them, and each
    CFA position of the margin carries that position's black-level error (every CFA phase)."""
    from darkfix.lab.benchset import make_benchmark

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(4):
        img = np.clip(rng_img(i), 0, 255).astype(np.uint8)
        from PIL import Image

        Image.fromarray(img).save(photos / f"p{i}.png")
    plain = make_benchmark(photos, tmp_path / "plain", ratios=(100,), seed=3)
    masked = make_benchmark(photos, tmp_path / "masked", ratios=(100,), seed=3, masked=32)
    channel = {"R": 0, "B": 3}
    phases, right, swapped = set(), [], []
    for a, b in zip(plain["pairs"], masked["pairs"]):
        pa, pb = read_raw(tmp_path / "plain" / a["raw"]), read_raw(tmp_path / "masked" / b["raw"])
        assert np.array_equal(pa.mosaic, pb.mosaic) and [m.shape[1] for m in pb.margins] == [32]
        cfa, bias = b["cfa"], b["noise"]["black_bias"]
        phases.add(cfa)
        # packed channels R, G1 (the red row's green), G2, B
        red_row = cfa.index("R") // 2
        expected = np.array([[bias[channel.get(cfa[2 * i + j], 1 if i == red_row else 2)] for j in (0, 1)]
                             for i in (0, 1)]) + b["black"]
        margin = pb.margins[0].astype(np.float64)
        measured = np.array([[margin[i::2, j::2].mean() for j in (0, 1)] for i in (0, 1)])
        right.append(np.abs(measured - expected).max())
        swapped.append(np.abs(measured[:, ::-1] - expected).max())
    assert len(phases) >= 2 and max(right) < 0.2 and np.mean(right) < 0.5 * np.mean(swapped), (right, swapped)


def rng_img(i: int) -> np.ndarray:
    yy, xx = np.mgrid[0:320, 0:400]
    return np.stack([(xx * (i + 1)) % 256, (yy * 2) % 256, (xx + yy) % 256], -1).astype(np.float64)


@pytest.mark.parametrize("stray", [(41, 26), (26, 41)])
def test_a_margin_of_one_code_gives_the_black(tmp_path, stray):
    """An 8-bit sensor of little read noise: the margin is one code with stray codes either side, so that
    LibRaw's rounding down states the black 1 DN low or right; darkfix's is right either way."""
    rng = np.random.default_rng(11)
    mosaic = np.full((H, W), 9, np.uint16)
    mosaic[:, LEFT:] += rng.poisson(3.0, (H, W - LEFT)).astype(np.uint16)
    flat = mosaic[:, :LEFT].reshape(-1)
    spots = rng.choice(flat.size, sum(stray), replace=False)
    flat[spots[: stray[0]]] = 8
    flat[spots[stray[0] :]] = 10
    write_dng(tmp_path / "b8.dng", mosaic, DngSpec(black=9.0, white=255, margin_left=LEFT))
    raw, frame = read_raw(tmp_path / "b8.dng"), read_frame(tmp_path / "b8.dng")
    assert np.abs(frame.black - 9.0).max() < 0.01, (raw.black, frame.black)


def test_a_margin_clipped_at_zero_is_left(tmp_path):
    """A black level of 0: the sensor clips the margin's noise at 0, so its means sit above the black."""
    rng = np.random.default_rng(12)
    mosaic, _ = frame_dn(rng, 1.5)
    mosaic = np.clip(mosaic.astype(np.int32) - int(BLACK), 0, None).astype(np.uint16)
    write_dng(tmp_path / "b0.dng", mosaic, DngSpec(black=0.0, white=4095, margin_left=LEFT, margin_masked=False))
    raw, frame = read_raw(tmp_path / "b0.dng"), read_frame(tmp_path / "b0.dng", picture_rows=False)
    assert frame.rows.used == 0 and frame.rows.gain == 0.0 and frame.rows.black_shift is None
    assert np.array_equal(frame.mosaic, raw.mosaic) and np.all(frame.black == 0.0)


def test_restore_takes_the_row_noise_out(tmp_path):
    """The picture's banding (the spread of row means over a flat area) falls by more than half with the
    margin, the exposure stays, and -v says what was done; the same frame without its margin keeps it."""
    rng = np.random.default_rng(7)
    mosaic, offsets = frame_dn(rng, 1.5)
    clean = (mosaic.astype(np.float64) - offsets[:, None]).round().astype(np.uint16)
    write_dng(tmp_path / "masked.dng", mosaic, DngSpec(margin_left=LEFT))
    write_dng(tmp_path / "plain.dng", np.ascontiguousarray(mosaic[:, LEFT:]), DngSpec())
    write_dng(tmp_path / "clean.dng", np.ascontiguousarray(clean[:, LEFT:]), DngSpec())
    banding, level = {}, {}
    for name, extra in (("masked", []), ("plain", []), ("clean", []), ("off", ["--no-masked-margin"])):
        source = tmp_path / f"{'masked' if name == 'off' else name}.dng"
        r = CliRunner().invoke(main, ["restore", str(source), "-o", str(tmp_path / f"{name}.png"), "--ratio", "100",
                                      "-v", "--engine", "torch", "--precision", "fp32", *extra])
        assert r.exit_code == 0, r.output
        assert ("row noise:" in r.output) == (name == "masked"), r.output
        img = read_png(tmp_path / f"{name}.png")[0].astype(np.float64)
        banding[name] = img[:, : (W - LEFT) // 2 - 16].mean(axis=(1, 2)).std()
        level[name] = img.mean()
    assert banding["clean"] < banding["masked"] < 0.6 * min(banding["plain"], banding["off"]), banding
    assert abs(level["masked"] - level["clean"]) < 0.5, level
    assert_library_twin(tmp_path / "masked.dng", "masked_margin",
                        {True: tmp_path / "masked.png", False: tmp_path / "off.png"})
