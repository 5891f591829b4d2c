"""The colour guide's wide pass (darkfix.wideguide): the same picture as the guide applied once more to the
whole frame whatever the tiles and the walk, when it runs, and `--trust-black` on the command line and in
the library. (What it does to dark colour: test_quality.py.)"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from _util import read_png
from darkfix import api
from darkfix.cli import main
from darkfix.colour import orient, to_display
from darkfix.inference import Restorer
from darkfix.model import guide_gain
from darkfix.options import RestoreOptions
from darkfix.packing import crop, prepare_frame
from darkfix.pipeline import camera_image, infer_and_render, wide_guide
from darkfix.rawio import read_raw
from darkfix.tiling import TRANSPOSED_PLANES
from darkfix.weights import load_weights
from darkfix.wideguide import WIDE_RADIUS


@pytest.fixture(scope="module")
def shipped():
    torch.set_num_threads(2)
    model, info = load_weights()
    assert info.guide_radius > 0 and info.output == "camera"
    return model, info


@pytest.fixture
def frame(make_dng):
    """A dark 14-bit frame of 128 x 160 packed pixels (whole cells of the guide: no edge padding)."""
    return read_raw(make_dng(size=(256, 320), level=6.0, seed=5))


def whole_frame_pass(model, prep, ensemble: bool = False) -> torch.Tensor:
    """The network run once on the whole frame (with `ensemble`, averaged with its run on the transposed
    frame, transposed back), then the guide over WIDE_RADIUS on its output: (1, 3, H, W)."""
    packed = torch.from_numpy(np.asarray(prep.packed))[None]
    with torch.inference_mode():
        engine = Restorer(model, "cpu", "fp32", tile=4096)
        out = engine.run_tile(packed).float()
        if ensemble:
            twin = packed[:, list(TRANSPOSED_PLANES[: packed.shape[1]])].transpose(2, 3)
            out = (out + engine.run_tile(twin).float().transpose(2, 3)) / 2
        gain = guide_gain(F.avg_pool2d(out, 2), packed[:, :4], WIDE_RADIUS)
        return (out * gain.repeat_interleave(2, 2).repeat_interleave(2, 3)).clamp(0.0, 1.0)


def test_tiles_and_walks_give_the_whole_frame_pass(shipped, frame):
    """Tiles of 32 packed pixels, walked by rows or columns, forwards or backwards (every orientation),
    give what one pass over the whole frame gives: the linear camera RGB to float rounding, the codes to
    one; and they differ from the picture without the pass."""
    model, info = shipped
    restorer = Restorer(model, "cpu", "fp32", tile=32)
    opts = RestoreOptions(trust_black=True)
    prep = prepare_frame(frame, opts, info.input)
    expected = whole_frame_pass(model, prep)
    rel = prep.wb / prep.wb[1]
    got = camera_image(frame, prep, restorer, info, trust_black=True) * rel
    assert np.abs(got.transpose(2, 0, 1) - expected[0].numpy()).max() < 1e-5
    plain = camera_image(frame, prep, restorer, info, trust_black=False) * rel
    assert np.abs(plain - got).max() > 0.01  # the pass does something here

    wb = torch.from_numpy(np.full(3, prep.wb[1], np.float32))
    codes = crop(to_display(expected, wb, torch.from_numpy(frame.rgb_cam), 8).transpose(2, 0, 1), prep.layout)
    for flip in (0, 3, 5, 6):  # rows; rows backwards; columns; columns backwards
        turned = replace(frame, flip=flip)
        image = infer_and_render(turned, prep, restorer, info, opts)
        want = orient(codes.transpose(1, 2, 0), flip)
        assert image.shape == want.shape and np.abs(image.astype(int) - want.astype(int)).max() <= 1, flip


def test_the_wide_pass_follows_the_ensembles_output(shipped, frame):
    """With `ensemble` the wide pass works on the averaged output of both views, in tiles as whole."""
    model, info = shipped
    prep = prepare_frame(frame, RestoreOptions(trust_black=True), info.input)
    expected = whole_frame_pass(model, prep, ensemble=True)[0].numpy()
    rel = prep.wb / prep.wb[1]
    got = camera_image(frame, prep, Restorer(model, "cpu", "fp32", tile=32), info, True, ensemble=True) * rel
    assert np.abs(got.transpose(2, 0, 1) - expected).max() < 1e-4
    assert np.abs(expected - whole_frame_pass(model, prep)[0].numpy()).mean() > 1e-3


def test_when_it_runs(shipped, frame, weights_file):
    """With the colour guide's weights: where `trust_black` says so, or (None) where a profile measured the
    black level; never for weights without the guide (the authors', darkfix's raw-input ones)."""
    _, info = shipped
    measured = replace(frame, black_measured=True)
    assert not wide_guide(frame, info) and wide_guide(measured, info)
    assert wide_guide(frame, info, True) and not wide_guide(measured, info, False)
    _, unguided = load_weights(weights_file)
    assert unguided.guide_radius == 0 and not wide_guide(measured, unguided, True)


def test_trust_black_on_the_command_line_and_in_the_library(make_dng, tmp_path):
    """`restore --trust-black -v` says so and gives the library's `trust_black=True` picture, which differs
    from the default's; `--no-trust-black` is the default's; a non-bool `trust_black` is refused."""
    src = make_dng(size=(256, 320), level=6.0, seed=5)
    runner = CliRunner()
    pictures = {}
    for flag in ("--trust-black", "--no-trust-black", None):
        out = tmp_path / f"{flag}.png"
        r = runner.invoke(main, ["restore", str(src), "-o", str(out), "--device", "cpu", "-v",
                                 *([flag] if flag else [])])
        assert r.exit_code == 0, r.output
        assert ("dark colour from wide local means (black level exact: --trust-black)" in r.stdout) == \
            (flag == "--trust-black"), r.stdout
        pictures[flag] = read_png(out)[0]
    assert np.array_equal(pictures["--no-trust-black"], pictures[None])
    assert np.abs(pictures["--trust-black"].astype(int) - pictures[None].astype(int)).max() >= 3
    model = api.load(device="cpu")
    assert np.array_equal(model.restore(src, trust_black=True), pictures["--trust-black"])
    with pytest.raises(ValueError, match="trust_black must be True, False or None"):
        model.restore(src, trust_black="yes")
