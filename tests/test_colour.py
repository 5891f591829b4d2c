"""Colour in the SID convention, checked against LibRaw's own rendering, and orientation."""

from __future__ import annotations

import numpy as np
import pytest
import rawpy
import torch

from _util import CFA_PHASES, SONY_XYZ, set_orientation
from darkfix.colour import bt709, orient, render, rgb_cam_from_xyz_cam, to_display
from darkfix.pipeline import quantise
from darkfix.rawio import read_raw

WHITE = 16383
LINEAR = {"R": 0.21, "G": 0.33, "B": 0.14}  # linear camera RGB of the flat scene


def libraw_render(path, **kw) -> np.ndarray:
    with rawpy.imread(str(path)) as raw:
        out = raw.postprocess(use_camera_wb=True, no_auto_bright=True, output_bps=16, **kw)
    return out.astype(np.float64) / 65535.0


@pytest.mark.parametrize("cfa", CFA_PHASES)
@pytest.mark.parametrize("matrix,neutral", [(SONY_XYZ, (0.48, 1.0, 0.66)), (np.eye(3), (0.5, 1.0, 0.6))],
                         ids=["sony", "identity"])
def test_render_matches_libraw_on_flat_mosaic(make_dng, cfa, matrix, neutral):
    black = (508.0, 511.0, 514.0, 517.0)  # per position of the 2x2 cell
    bl = np.array(black).reshape(2, 2)
    values = {}
    m = np.zeros((40, 58), np.uint16)
    for i in range(2):
        for j in range(2):
            c = cfa[2 * i + j]
            m[i::2, j::2] = round(bl[i, j] + LINEAR[c] * (WHITE - bl[i, j]))
            values[c] = (float(m[i, j]) - bl[i, j]) / (WHITE - bl[i, j])  # the exact normalised value
    path = make_dng("flat.dng", cfa=cfa, black=black, mosaic=m, color_matrix=matrix, as_shot_neutral=neutral)
    frame = read_raw(path)
    assert frame.cfa == cfa
    assert frame.black.tolist() == bl.tolist()
    expected_wb = 1.0 / np.array(neutral)
    assert np.allclose(frame.wb_camera, expected_wb / expected_wb.min(), rtol=1e-5)

    ref = libraw_render(path, user_flip=0)[20, 29]
    cam = torch.tensor([values["R"], values["G"], values["B"]], dtype=torch.float64).view(1, 3, 1, 1)
    ours = render(cam, torch.from_numpy(frame.wb_camera).double(), torch.from_numpy(frame.rgb_cam).double())
    ours = ours.view(3).numpy()
    assert np.abs(ours - ref).max() < 1e-3, (ours, ref)
    assert np.ptp(ref) > 0.1  # the colours differ: a channel swap could not pass


def test_rgb_cam_matches_libraw_derivation(make_dng):
    frame = read_raw(make_dng(color_matrix=SONY_XYZ))
    assert np.allclose(frame.rgb_cam, rgb_cam_from_xyz_cam(SONY_XYZ), atol=1e-4)
    # white stays white: camera (1, 1, 1) maps to sRGB (1, 1, 1)
    assert np.allclose(frame.rgb_cam.sum(axis=1), 1.0, atol=1e-4)
    identity = read_raw(make_dng("id.dng"))
    assert np.allclose(identity.rgb_cam, rgb_cam_from_xyz_cam(np.eye(3)), atol=1e-4)


def test_bt709_values():
    x = torch.tensor([0.0, 0.018, 1.0, 0.009, 0.5], dtype=torch.float64)
    y = bt709(x)
    assert y[0].item() == 0.0
    # 0.018 itself is on the power branch ("4.5 x below 0.018, else ..."); the two branches meet to 3e-4
    assert y[1].item() == pytest.approx(1.099 * 0.018**0.45 - 0.099, abs=1e-12)
    assert y[1].item() == pytest.approx(4.5 * 0.018, abs=3e-4)
    assert y[2].item() == pytest.approx(1.0, abs=1e-12)
    assert y[3].item() == pytest.approx(4.5 * 0.009, abs=1e-12)
    assert y[4].item() == pytest.approx(1.099 * 0.5**0.45 - 0.099, abs=1e-12)
    # continuous at the knee and increasing
    eps = 1e-9
    lo, hi = bt709(torch.tensor([0.018 - eps, 0.018 + eps], dtype=torch.float64))
    assert abs((hi - lo).item()) < 3e-4
    ramp = bt709(torch.linspace(0, 1, 1001, dtype=torch.float64))
    assert torch.all(ramp[1:] > ramp[:-1])


def test_render_clips_and_balances():
    cam = torch.tensor([[0.9, 0.1, 0.0], [0.2, 0.2, 0.2]]).T.reshape(1, 3, 1, 2)
    out = render(cam, torch.tensor([2.0, 1.0, 1.5]), torch.eye(3))
    # red 0.9 x 2 clips to 1; grey 0.2 balanced to (0.4, 0.2, 0.3)
    assert out[0, 0, 0, 0].item() == pytest.approx(1.0)
    want = bt709(torch.tensor([0.4, 0.2, 0.3]))
    assert torch.allclose(out[0, :, 0, 1], want, atol=1e-6)
    assert out.min() >= 0 and out.max() <= 1


def test_render_batched_parameters():
    cam = torch.rand(2, 3, 4, 5) * 0.3
    wb = torch.tensor([[2.0, 1.0, 1.5], [1.0, 1.0, 1.0]])
    m = torch.stack([torch.eye(3), torch.eye(3)[[2, 1, 0]]])
    out = render(cam, wb, m)
    assert torch.allclose(out[0], render(cam[:1], wb[0], m[0])[0])
    assert torch.allclose(out[1], render(cam[1:], wb[1], m[1])[0])


@pytest.mark.parametrize("flip,k", [(0, 0), (3, 2), (5, 1), (6, -1)])
def test_orient_matches_rot90(flip, k):
    img = np.arange(5 * 7 * 3).reshape(5, 7, 3)
    assert np.array_equal(orient(img, flip), np.rot90(img, k))


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_orient_matches_libraw_rotation(make_dng, orientation):
    """darkfix's orient of the unrotated rendering equals LibRaw's own rotated rendering."""
    path = make_dng(size=(40, 58), orientation=orientation, level=3000)
    frame = read_raw(path)
    upright = libraw_render(path)
    assert np.array_equal(orient(libraw_render(path, user_flip=0), frame.flip), upright)
    if orientation in (6, 8):
        assert upright.shape[:2] == (58, 40)


@pytest.mark.parametrize("orientation", [2, 4, 5, 7])
def test_orient_mirrored_orientations(make_dng, orientation):
    path = make_dng(size=(40, 58), level=3000)
    set_orientation(path, orientation)
    frame = read_raw(path)
    assert np.array_equal(orient(libraw_render(path, user_flip=0), frame.flip), libraw_render(path))


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_to_display_agrees_with_render(bit_depth):
    """The inference path (folded white balance, lookup-table curve) against the differentiable `render`
    + rounding: within one code everywhere, including highlights clipped by the white balance."""
    g = torch.Generator().manual_seed(bit_depth)
    x = torch.rand(1, 3, 64, 96, generator=g) ** 3 * 1.3  # dense near black, some above white
    x = x.contiguous(memory_format=torch.channels_last)  # as the network emits it
    wb = torch.tensor([2.1, 1.0, 1.6])
    m = torch.from_numpy(rgb_cam_from_xyz_cam(SONY_XYZ)).float()
    fast = to_display(x, wb, m, bit_depth)
    slow = quantise(render(x, wb, m), bit_depth)
    assert fast.dtype == slow.dtype and fast.shape == (64, 96, 3)
    diff = np.abs(fast.astype(np.int64) - slow.astype(np.int64))
    assert diff.max() <= 1
    assert (diff > 0).mean() < 0.01
