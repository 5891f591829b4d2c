"""Pipeline pieces below the CLI: quantisation, output naming, output checks, prepare()."""

from __future__ import annotations

import numpy as np
import pytest
import rawpy
import tifffile
import torch

import darkfix.pngio as pngio
from _util import CODES, dng_tags, read_png
from darkfix.errors import OutputError
from darkfix.inference import ALIGN, STEM_REACH, STEM_ROWS, Restorer
from darkfix.pipeline import (RestoreOptions, check_output, default_output, infer_and_render, prepare_frame, quantise,
                              restore_frame)
from darkfix.rawio import read_raw
from darkfix.weights import load_weights


def test_quantise_rounds_and_clips():
    v = torch.tensor([0.0, 0.49 / 255, 0.51 / 255, 0.5, 1.0, 1.5, -0.2]).view(1, 1, 1, 7).expand(1, 3, 1, 7).numpy()
    assert quantise(v, 8)[0, :, 0].tolist() == [0, 0, 1, 128, 255, 255, 0]
    q16 = quantise(v, 16)
    assert q16.dtype == np.uint16
    assert q16[0, :, 0].tolist() == [0, 126, 131, 32768, 65535, 65535, 0]
    assert quantise(np.random.default_rng(0).random((1, 3, 5, 7), np.float32), 8).shape == (5, 7, 3)


def test_default_output(tmp_path):
    src = tmp_path / "a" / "shot.ARW"
    assert default_output(src, None, False) == tmp_path / "a" / "shot.png"
    assert default_output(src, tmp_path / "x.png", False) == tmp_path / "x.png"
    assert default_output(src, tmp_path, True) == tmp_path / "shot.png"  # a directory
    assert default_output(src, tmp_path / "new", True) == tmp_path / "new" / "shot.png"


def test_check_output(tmp_path):
    src = tmp_path / "in.dng"
    src.write_bytes(b"raw")
    check_output(src, tmp_path / "out.png", overwrite=False)  # fine
    with pytest.raises(OutputError, match="overwrite its input"):
        check_output(src, src, overwrite=True)
    with pytest.raises(OutputError, match="raw file"):
        check_output(src, tmp_path / "out.NEF", overwrite=True)
    with pytest.raises(OutputError, match="is a directory"):
        check_output(src, tmp_path, overwrite=True)
    (tmp_path / "out.png").write_bytes(b"x")
    with pytest.raises(OutputError, match="already exists"):
        check_output(src, tmp_path / "out.png", overwrite=False)
    check_output(src, tmp_path / "out.png", overwrite=True)
    with pytest.raises(OutputError, match="does not exist"):
        check_output(src, tmp_path / "no" / "out.png", overwrite=False)


@pytest.mark.parametrize("cfa", ["RGGB", "GRBG", "GBRG", "BGGR"])
def test_prepare_normalises_with_each_planes_black(make_dng, cfa):
    black = (500, 510, 520, 530)
    bl = np.array(black).reshape(2, 2)
    m = np.tile(bl, (20, 29)).astype(np.uint16) + 100  # every pixel 100 DN above its own black
    frame = read_raw(make_dng(cfa=cfa, black=black, mosaic=m))
    prep = prepare_frame(frame, RestoreOptions(ratio=10.0, brightness=2.0))
    assert prep.amplification == 10.0
    packed = np.asarray(prep.packed)
    assert packed.dtype == np.float32 and packed.shape == prep.packed.shape
    # plane c holds 20 * 100 / (white - black of that colour)
    for c, letter in enumerate("R??B"):
        if letter == "?":
            continue
        pos = cfa.index(letter)
        expected = 20 * 100 / (16383 - bl[pos // 2, pos % 2])
        assert np.allclose(packed[c], expected, rtol=1e-6), (cfa, letter)
    greens = [i for i, ch in enumerate(cfa) if ch == "G"]
    assert sorted(packed[1:3, 0, 0].tolist()) == pytest.approx(
        sorted(20 * 100 / (16383 - bl[g // 2, g % 2]) for g in greens), rel=1e-6)


@pytest.mark.parametrize("area", [(3, 1, 41, 60), (2, 3, 40, 59), (0, 0, 41, 60)])
def test_cfa_of_the_visible_area(tmp_path, area):
    """With an ActiveArea margin the visible mosaic starts elsewhere in the pattern: the CFA darkfix
    reads (from four positions) is the one LibRaw gives for the whole visible area."""
    m = np.random.default_rng(0).integers(600, 4000, (41, 60)).astype(np.uint16)
    extra = dng_tags() + [(33421, "H", 2, (2, 2), True), (33422, "B", 4, tuple(CODES[c] for c in "RGGB"), True),
                          (50710, "B", 3, (0, 1, 2), True), (50711, "H", 1, 1, True), (50829, "I", 4, area, True)]
    path = tmp_path / "area.dng"
    tifffile.imwrite(path, m, photometric=32803, compression=None, subfiletype=0, extratags=extra, metadata=None)
    with rawpy.imread(str(path)) as raw:
        colours = np.asarray(raw.raw_colors_visible)
        shape = raw.raw_image_visible.shape
    frame = read_raw(path)
    assert frame.mosaic.shape == shape
    assert frame.cfa == "".join("RGBG"[c] for c in colours[:2, :2].ravel())


def test_restore_holds_tiles_and_bands_never_the_whole_frame(make_dng, weights_file, tmp_path):
    """The memory bound, structurally: the network reads the normalised frame only in windows of a tile
    plus its margins (or the first pass's strips), and the PNG writer gets bands of one tile row, so no
    float frame and no whole image exist; the PNG is still the whole, correct image."""
    src = make_dng(size=(1200, 640), cfa="GBRG", seed=5)
    model, info = load_weights(weights_file)
    restorer = Restorer(model, "cpu", tile=64)
    frame = read_raw(src)
    opts = RestoreOptions()
    prep = prepare_frame(frame, opts)
    packed = prep.packed
    _, h, w = packed.shape
    regions = []

    class Recorder:
        shape = packed.shape

        def __getitem__(self, key):
            out = packed[key]
            regions.append(out.shape[1:])
            return out

        def __array__(self, *args, **kw):
            raise AssertionError("the whole normalised frame was requested")

        def saturated(self, *region):
            return packed.saturated(*region)

    whole = infer_and_render(frame, prep, restorer, info, opts)
    prep.packed = Recorder()
    bands = []
    write = pngio.PngStream.write

    def spy(self, rows):
        bands.append(rows.shape[0])
        write(self, rows)

    pngio.PngStream.write = spy
    try:
        restore_frame(src, frame, prep, tmp_path / "out.png", restorer, info, opts)
    finally:
        pngio.PngStream.write = write
    strip_rows = ALIGN * (STEM_ROWS + 2 * STEM_REACH)  # the first pass reads the frame in strips
    assert all(rh * rw <= (64 + 2 * 32) ** 2 or rh <= strip_rows for rh, rw in regions)
    assert max(rh * rw for rh, rw in regions) <= strip_rows * w < h * w
    assert max(bands) <= 2 * 64 and sum(bands) == 1200
    img, _ = read_png(tmp_path / "out.png")
    assert np.array_equal(img, whole)


@pytest.mark.parametrize("cfa", ["GBRG", "GRBG"])  # red one row down / one column right: mirrored edges
def test_streamed_bands_match_an_independent_whole_frame_for_every_flip(make_dng, weights_file, cfa):
    """Band walking, cropping and orientation against the network run once on the whole frame, then
    rendered, cropped and turned as one image (odd sizes, every LibRaw flip, many bands)."""
    from dataclasses import replace

    from darkfix.colour import orient, to_display
    from darkfix.packing import crop

    frame = read_raw(make_dng(size=(131, 171), cfa=cfa, seed=11))
    model, info = load_weights(weights_file)
    restorer = Restorer(model, "cpu", tile=32)
    opts = RestoreOptions()
    prep = prepare_frame(frame, opts)
    out = restorer.run_tile(torch.from_numpy(np.asarray(prep.packed))[None])
    wb, m = torch.from_numpy(frame.wb_camera), torch.from_numpy(frame.rgb_cam)
    upright = crop(to_display(out, wb, m, 8).transpose(2, 0, 1), prep.layout).transpose(1, 2, 0)
    for flip in range(8):
        turned = replace(frame, flip=flip)
        got = infer_and_render(turned, prep, restorer, info, opts)
        expected = orient(upright, flip)
        assert got.shape == expected.shape, flip
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1, flip


@pytest.mark.parametrize("engine", ["torch", "openvino"])
@pytest.mark.parametrize("bit_depth, top", [(8, 255), (16, 65535)])
def test_clipped_photosites_render_white_and_only_them(make_dng, weights_file, monkeypatch, engine, bit_depth, top):
    """Where the sensor clipped, the picture is white whatever colour the network gave it (as in the SID
    ground truth: LibRaw clips after white balance), and nowhere else does that change a code; either engine."""
    import darkfix.pipeline as pipeline
    from darkfix import engine as engines, ovengine

    if engine == "openvino" and not ovengine.available():
        pytest.skip("OpenVINO is not installed")
    mosaic = (512 + np.random.default_rng(1).integers(0, 300, (64, 96))).astype(np.uint16)
    mosaic[20:30, 40:60] = 16383
    src = make_dng("clip.dng", mosaic=mosaic)
    restorer, info = engines.load(weights_file, engine=engine, device="cpu", precision="fp32")
    frame = read_raw(src)
    opts = RestoreOptions(bit_depth=bit_depth, ratio=20)
    prep = prepare_frame(frame, opts, info.input)
    marked = infer_and_render(frame, prep, restorer, info, opts)
    monkeypatch.setattr(pipeline, "saturated_pixels", lambda *args: None)
    plain = infer_and_render(frame, prep, restorer, info, opts)
    clipped = np.zeros(mosaic.shape, bool)
    clipped[20:30, 40:60] = True
    assert marked.shape[:2] == mosaic.shape
    assert (marked[clipped] == top).all() and not (plain[clipped] == top).all()
    assert np.array_equal(marked[~clipped], plain[~clipped])
