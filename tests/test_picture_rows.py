"""Row noise measured in the picture's own greens (darkfix.rows.picture_offsets): the part that alternates
between rows found on many synthetic sensors, nothing found where there is none, scenes that look like it
(edges across the frame, slanted stripes, a black or gain difference between the greens) left alone, and
what `darkfix restore` and the library make of it."""

from __future__ import annotations

import numpy as np
import pytest
from click.testing import CliRunner

from darkfix import rows
from darkfix.cli import main
from darkfix.dng import DngSpec, write_dng

from _util import CFA_PHASES, assert_library_twin, read_png

H, W = 512, 768


def scene_dn(rng: np.random.Generator, level: float, kind: str = "blobs") -> np.ndarray:
    """A scene of light in DN above black, brightest about `level`."""
    yy, xx = np.mgrid[0:H, 0:W] / np.array([H, W])[:, None, None]
    if kind == "blobs":  # smooth shading and a few soft blobs
        out = 0.3 + 0.4 * xx + 0.2 * yy
        for _ in range(6):
            cy, cx, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(0.05, 0.2)
            out += rng.uniform(0.2, 0.6) * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)
    elif kind == "border":  # a dark border above and below a bright middle: edges across the whole frame
        out = np.where((yy > 0.2) & (yy < 0.8), 1.0, 0.02)
    elif kind == "slanted stripes":  # a facade in perspective: near-vertical stripes whose slant changes
        tilt = (xx - 0.5) * (0.3 + yy)
        out = 0.5 + 0.5 * np.sin(2 * np.pi * 40 * (xx + 0.15 * tilt))
    else:
        raise ValueError(kind)
    return level * out / out.max()


def mosaic_dn(rng: np.random.Generator, scene: np.ndarray, row_sigma: float, read: float = 2.0,
              black: float = 512.0, white: int = 16383, cell: np.ndarray | None = None,
              gain: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(uint16 mosaic, the rows' true offsets): Poisson light, Gaussian read noise, one offset per row;
    `cell` a black level of each CFA position's own (added), `gain` a response of each (multiplied)."""
    light = scene * (1.0 if gain is None else np.tile(gain, (H // 2, W // 2)))
    offsets = rng.normal(0.0, row_sigma, H) if row_sigma else np.zeros(H)
    full = rng.poisson(light) + rng.normal(0.0, read, (H, W)) + offsets[:, None] + black
    if cell is not None:
        full += np.tile(cell, (H // 2, W // 2))
    return np.clip(np.round(full), 0, white).astype(np.uint16), offsets


def alternating(offsets: np.ndarray) -> np.ndarray:
    """Each row's offset less the mean of its two neighbours': the part the picture shows."""
    return offsets[1:-1] - 0.5 * (offsets[:-2] + offsets[2:])


@pytest.mark.parametrize("cfa", CFA_PHASES)
@pytest.mark.parametrize("bits, row_sigma, read, light", [(12, 0.5, 1.0, 40), (14, 1.5, 4.0, 160), (16, 3.0, 8.0, 650),
                                                          (14, 0.3, 2.0, 30), (14, 0.3, 2.0, 160)])
def test_the_picture_measures_the_rows_that_alternate(cfa, bits, row_sigma, read, light):
    """Its size within 30 % (the estimate errs low: the least of three bands), and at least 45 % of the
    alternating part's power taken out, on every CFA phase, bit depth and noise level tried; where the
    scene's shot noise is far larger than the row noise (0.3 DN under up to 160 DN of light, 384 greens a
    row), less or none, but never more noise than before."""
    rng = np.random.default_rng(bits * 10 + CFA_PHASES.index(cfa))
    white = 2**bits - 1
    black = white / 32
    mosaic, offsets = mosaic_dn(rng, scene_dn(rng, light), row_sigma, read, black, white)
    found = rows.picture_offsets(mosaic, cfa, np.full((2, 2), black, np.float32))
    hard = light / row_sigma > 200
    if hard and found is None:
        return
    assert found is not None
    taken, sigma = found
    assert hard or abs(sigma / row_sigma - 1) < 0.3, sigma
    before, after = alternating(offsets), alternating(offsets - taken)
    limit = 1.0 if hard else 0.55
    assert (after**2).mean() < limit * (before**2).mean(), ((after**2).mean(), (before**2).mean())
    # nothing slower goes wrong either: the error left is smaller than the offsets, at every frequency together
    assert (offsets - taken).std() < offsets.std()
    # and what is taken out is row offsets, in place in the mosaic's rows
    fixed = rows.subtract_rows(mosaic, taken, white)
    assert np.allclose(mosaic.astype(np.float32) - fixed, taken[:, None], atol=1e-3)


@pytest.mark.parametrize("kind", ["blobs", "border", "slanted stripes"])
@pytest.mark.parametrize("cell", [None, "black", "gain"])
def test_no_row_noise_takes_nothing(kind, cell):
    """Without row noise, scenes with edges across the frame, a facade's slanted stripes, or greens that
    differ (in black level, or in response: Gr/Gb imbalance) are not taken for it."""
    rng = np.random.default_rng(["blobs", "border", "slanted stripes"].index(kind))
    black = np.array([[0.0, 1.5], [-1.0, 0.0]]) if cell == "black" else None
    gain = np.array([[1.0, 1.03], [0.97, 1.0]]) if cell == "gain" else None
    mosaic, _ = mosaic_dn(rng, scene_dn(rng, 150.0, kind), 0.0, cell=black, gain=gain)
    found = rows.picture_offsets(mosaic, "RGGB", np.full((2, 2), 512.0, np.float32))
    assert found is None or float(found[0].std()) < 0.1, found and (found[1], found[0].std())


@pytest.mark.parametrize("kind", ["border", "slanted stripes"])
def test_row_noise_under_a_scene_that_looks_like_it(kind):
    """Where such a scene lies over real row noise, its size is still measured within 35 %."""
    rng = np.random.default_rng(11)
    mosaic, offsets = mosaic_dn(rng, scene_dn(rng, 150.0, kind), 0.5)
    taken, sigma = rows.picture_offsets(mosaic, "RGGB", np.full((2, 2), 512.0, np.float32))
    assert abs(sigma / 0.5 - 1) < 0.35, sigma
    assert (alternating(offsets - taken) ** 2).mean() < 0.7 * (alternating(offsets) ** 2).mean()


@pytest.mark.parametrize("period", [4.5, 6.0, 9.0, 14.0])
def test_stripes_of_the_scene_across_the_frame_stay(period):
    """A periodic pattern across the whole width (blinds, courses of brick), under real row noise: the row
    noise is still measured, and less than 3 % of the stripes is taken for it."""
    rng = np.random.default_rng(int(period * 10))
    stripes = 10.0 * np.sin(2 * np.pi * np.arange(H) / period)
    mosaic, offsets = mosaic_dn(rng, 30.0 + np.broadcast_to(stripes[:, None], (H, W)), 0.5)
    taken, sigma = rows.picture_offsets(mosaic, "RGGB", np.full((2, 2), 512.0, np.float32))
    assert abs(sigma / 0.5 - 1) < 0.3, sigma
    assert abs(float(taken @ stripes) / float(stripes @ stripes)) < 0.03
    assert (alternating(offsets - taken) ** 2).mean() < 0.7 * (alternating(offsets) ** 2).mean()


@pytest.mark.parametrize("cfa", CFA_PHASES)
@pytest.mark.parametrize("h, w", [(517, 301), (600, 640)])
def test_each_green_against_its_diagonal_neighbours(cfa, h, w):
    """_green_rows equals a plain loop over every green and its four diagonal neighbours (odd sizes, more
    than one band of rows), with a black level that differs between the greens."""
    rng = np.random.default_rng(h + w)
    mosaic = rng.integers(500, 540, (h, w)).astype(np.uint16)  # uniform codes: no difference reaches the clip
    black = np.array([[512.0, 513.0], [511.0, 512.0]], np.float32)
    got, level = rows._green_rows(mosaic, cfa, black)
    he, we = h // 2 * 2, w // 2 * 2
    n = we // 2
    for k in (1, 2, 255, 256, 257, he - 2):
        cols = [x for x in range(we) if cfa[2 * (k % 2) + x % 2] == "G"][1:-1]  # as the planes' 1 .. n - 2
        d = [float(mosaic[k, x]) - black[k % 2, x % 2]
             - 0.25 * sum(float(mosaic[k + dy, x + dx]) - black[(k + dy) % 2, (x + dx) % 2]
                          for dy in (-1, 1) for dx in (-1, 1)) for x in cols]
        centre = [float(mosaic[k, x]) - black[k % 2, x % 2] for x in cols]
        bound = n // 2 - 1
        for i, part in ((0, slice(0, bound)), (1, slice(bound, None))):
            assert got[i, k - 1] == pytest.approx(np.mean(np.clip(d[part], -100, 100)), abs=1e-4)
            assert level[i, k - 1] == pytest.approx(np.mean(centre[part]), abs=1e-4)


def test_frames_it_cannot_measure():
    rng = np.random.default_rng(2)
    mosaic, _ = mosaic_dn(rng, scene_dn(rng, 100.0), 1.0)
    black = np.full((2, 2), 512.0, np.float32)
    assert rows.picture_offsets(mosaic[:32], "RGGB", black) is None  # too few rows
    assert rows.picture_offsets(mosaic[:, :100], "RGGB", black) is None  # too few columns
    assert rows.picture_offsets(mosaic, "GGRB", black) is None  # greens on one row: not a Bayer phase


def test_restore_takes_the_alternating_rows_out(tmp_path):
    """On a flat grey frame with 1.5 DN of row noise and no margin, the restored picture's alternating
    banding falls by more than a third with the picture's estimate (the default), -v says what was done,
    and the exposure stays; the library is the command's twin."""
    rng = np.random.default_rng(5)
    mosaic, _ = mosaic_dn(rng, np.full((H, W), 8.0), 1.5)
    write_dng(tmp_path / "f.dng", mosaic, DngSpec())
    banding, level = {}, {}
    for name, extra in (("on", []), ("off", ["--no-picture-rows"])):
        r = CliRunner().invoke(main, ["restore", str(tmp_path / "f.dng"), "-o", str(tmp_path / f"{name}.png"),
                                      "--ratio", "100", "-v", "--engine", "torch", "--precision", "fp32", *extra])
        assert r.exit_code == 0, r.output
        assert ("row noise from the picture's greens" in r.output) == (name == "on"), r.output
        img = read_png(tmp_path / f"{name}.png")[0].astype(np.float64)
        banding[name] = alternating(img[8:-8, 8:-8].mean(axis=(1, 2))).std()
        level[name] = img.mean()
    assert banding["on"] < 0.67 * banding["off"], banding
    assert abs(level["on"] - level["off"]) < 0.5, level
    assert_library_twin(tmp_path / "f.dng", "picture_rows", {True: tmp_path / "on.png", False: tmp_path / "off.png"})
