"""Packing a mosaic of any CFA phase and size into R, G1, G2, B planes, and back."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from _util import CFA_PHASES
from darkfix.packing import BALANCED_CEILING, Layout, channel_black, crop, pack, pad_to_multiple, prepare, unpack

SETTINGS = settings(max_examples=80, deadline=None)
sizes = st.integers(2, 41)
phases = st.sampled_from(CFA_PHASES)

# G1 is the green on red's row, G2 the green on blue's row
VALUES = {"R": 11, "G1": 22, "G2": 33, "B": 44}


def labelled(cfa: str, h: int, w: int) -> np.ndarray:
    """A mosaic holding VALUES[colour] at each pixel, with the two greens told apart."""
    red_row = cfa.index("R") // 2
    m = np.zeros((h, w), np.uint16)
    for i in range(2):
        for j in range(2):
            c = cfa[2 * i + j]
            name = c if c != "G" else ("G1" if i == red_row else "G2")
            m[i::2, j::2] = VALUES[name]
    return m


@SETTINGS
@given(phases, sizes, sizes, st.integers(0, 2**32 - 1))
def test_pack_unpack_round_trip(cfa, h, w, seed):
    x = np.random.default_rng(seed).integers(0, 65536, (h, w)).astype(np.uint16)
    packed, layout = pack(x, cfa)
    assert packed.shape[0] == 4
    assert layout == Layout(layout.top, layout.left, h, w)
    back = unpack(packed, layout)
    assert back.shape == (h, w)
    assert np.array_equal(back, x)


@SETTINGS
@given(phases, sizes, sizes)
def test_planes_hold_one_colour_each(cfa, h, w):
    packed, layout = pack(labelled(cfa, h, w), cfa)
    assert np.all(packed[0] == VALUES["R"])
    assert np.all(packed[1] == VALUES["G1"])
    assert np.all(packed[2] == VALUES["G2"])
    assert np.all(packed[3] == VALUES["B"])
    # nothing was dropped: at most one row and one column were added, each side
    _, ph, pw = packed.shape
    assert 2 * ph - h in (0, 1, 2) and 2 * pw - w in (0, 1, 2)


@SETTINGS
@given(phases, sizes, sizes)
def test_every_original_pixel_is_in_its_colours_plane(cfa, h, w):
    """Each pixel's value appears in the packed plane of its colour (a position-unique labelling)."""
    x = np.arange(h * w, dtype=np.float32).reshape(h, w)
    packed, layout = pack(x, cfa)
    red_row = cfa.index("R") // 2
    for i in range(h):
        for j in range(w):
            c = cfa[2 * (i % 2) + (j % 2)]
            plane = {"R": 0, "B": 3}.get(c, 1 if i % 2 == red_row else 2)
            y, xx = (i + layout.top) // 2, (j + layout.left) // 2
            assert packed[plane, y, xx] == x[i, j]


@pytest.mark.parametrize("cfa", CFA_PHASES)
@pytest.mark.parametrize("shape", [(64, 96), (67, 93), (2, 2), (3, 41)])
def test_channel_black_per_phase(cfa, shape):
    # a distinct black at each position of the 2x2 cell; the packed planes must get their colour's
    black = np.array([[501.0, 502.0], [503.0, 504.0]], np.float32)
    _, layout = pack(np.zeros(shape, np.uint16), cfa)
    got = channel_black(black, layout)
    red_row = cfa.index("R") // 2
    want = {}
    for i in range(2):
        for j in range(2):
            c = cfa[2 * i + j]
            name = c if c != "G" else ("G1" if i == red_row else "G2")
            want[name] = black[i, j]
    assert got.tolist() == [want["R"], want["G1"], want["G2"], want["B"]]


@SETTINGS
@given(phases, sizes, sizes)
def test_packed_frame_zeroes_every_planes_own_black(cfa, h, w):
    black = np.array([[500, 510], [520, 530]], np.float32)
    mosaic = np.tile(black.astype(np.uint16), ((h + 1) // 2, (w + 1) // 2))[:h, :w]
    assert np.all(np.asarray(prepare(mosaic, cfa, black, 16383.0, ratio=1.0).packed) == 0.0)
    prep = prepare(mosaic + np.uint16(100), cfa, black, 16383.0, ratio=3.0)
    bright = np.asarray(prep.packed)
    for c, b in enumerate(channel_black(black, prep.layout)):
        assert np.allclose(bright[c], 3.0 * 100.0 / (16383.0 - b), rtol=1e-6)


def test_packed_frame_clips_at_white_then_amplifies():
    """Below black stays negative (the colour guide needs unbiased local means), down to -1 amplified."""
    mosaic = np.array([[0, 512, 1000, 16383, 65535, 700]], np.uint16).repeat(2, axis=0)
    x = np.asarray(prepare(mosaic, "RGGB", np.full((2, 2), 512.0), 16383.0, ratio=2.0).packed)
    assert x.dtype == np.float32
    assert np.allclose(x[0, 0], 2.0 * np.array([-512 / 15871, 488 / 15871, 1.0]))  # R: 0, 1000, 65535
    assert np.allclose(x[1, 0], 2.0 * np.array([0.0, 1.0, 188 / 15871]))  # G1: 512, 16383, 700
    x = np.asarray(prepare(mosaic, "RGGB", np.full((2, 2), 512.0), 16383.0, ratio=100.0).packed)
    assert x[0, 0, 0] == -1.0 and np.isclose(x[0, 0, 1], 100 * 488 / 15871)


@pytest.mark.parametrize("cfa", ["RGGB", "GRBG", "GBRG", "BGGR"])
def test_balanced_frame_white_balances_each_plane_then_clips_at_the_ceiling(cfa):
    mosaic = np.full((4, 6), 612, np.uint16)
    wb = np.array([2.0, 1.0, 1.5], np.float32)
    prep = prepare(mosaic, cfa, np.full((2, 2), 512.0), 16383.0, ratio=50.0, wb=wb, balanced=True)
    x = np.asarray(prep.packed)
    level = 50.0 * 100 / 15871
    assert np.allclose(x[:, 0, 0], level * np.array([2.0, 1.0, 1.0, 1.5]), rtol=1e-6)  # R, G1, G2, B
    hot = np.array([4.0, 1.0, 1.5], np.float32)  # red past the ceiling, green below OVER_WHITE
    prep = prepare(mosaic, cfa, np.full((2, 2), 512.0), 16383.0, ratio=175.0, wb=hot, balanced=True)
    x = np.asarray(prep.packed)
    assert x.max() == BALANCED_CEILING and prep.balanced and prep.source == "ratio"
    assert np.allclose(x[1, 0, 0], 175.0 * 100 / 15871) and x[0, 0, 0] == BALANCED_CEILING  # red clips, green not
    assert prep.packed.saturated(0, 2, 0, 3) is None  # one plane past white: its colour is still known
    # every plane past OVER_WHITE everywhere: no colour around to take, plain white in, rendered white out
    prep = prepare(mosaic, cfa, np.full((2, 2), 512.0), 16383.0, ratio=500.0, wb=wb, balanced=True)
    assert np.all(np.asarray(prep.packed) == 1.0) and prep.packed.saturated(0, 2, 0, 3).all()
    raw = prepare(mosaic, cfa, np.full((2, 2), 512.0), 16383.0, ratio=1000.0, wb=wb)
    assert np.allclose(np.asarray(raw.packed), 1000.0 * 100 / 15871)  # raw input: neither balanced nor clipped


@pytest.mark.parametrize("cfa", ["RGGB", "BGGR"])
def test_over_white_takes_the_colour_around_it(cfa):
    """A window past white in every plane goes to the network in the colour of the room around it (white,
    or any colour it has there, would spread into the room as a halo) and renders white; every region of
    the frame reads the same values as the whole, and a room whose colour changes is filled smoothly."""
    h, w = 96, 160
    cols = np.arange(w)[None, :] / w
    mosaic = (612 + 150 * cols + np.zeros((h, 1))).astype(np.uint16)  # a room brightening to the right
    mosaic[::2, ::2] += 60  # and a colour (different per CFA phase)
    win = (slice(32, 64), slice(48, 112))
    mosaic[win] = 16383
    wb = np.array([2.0, 1.0, 1.5], np.float32)
    prep = prepare(mosaic, cfa, np.full((2, 2), 512.0), 16383.0, ratio=20.0, wb=wb, balanced=True)
    whole = np.asarray(prep.packed)
    inside = (slice(None), slice(17, 31), slice(25, 55))  # the window, packed (either CFA phase)
    assert prep.packed.saturated(17, 31, 25, 55).all() and prep.packed.saturated(0, 15, 0, 80) is None
    room = np.concatenate([whole[:, :15], whole[:, 34:]], axis=1)
    assert whole[inside].max() < room.max() + 1e-6 and whole[inside].min() > room.min() - 1e-6
    # each plane keeps the room's colour inside the window: the same plane ratios as the room beside it
    beside = whole[:, 11:15, 25:55].mean(axis=(1, 2))
    assert np.allclose(whole[inside].mean(axis=(1, 2)) / beside, 1.0, atol=0.02)
    # brighter to the right inside the window as in the room, in steps between neighbours at most twice
    # the room's own
    assert whole[:, 24, 54].mean() > 1.2 * whole[:, 24, 26].mean()
    assert np.abs(np.diff(whole[:, 24, 25:55], axis=-1)).max() <= 2 * np.abs(np.diff(whole[:, 8], axis=-1)).max()
    for y0, y1, x0, x1 in ((0, 48, 0, 80), (20, 30, 30, 40), (10, 40, 50, 70), (31, 33, 0, 80)):
        assert np.array_equal(prep.packed[:, y0:y1, x0:x1], whole[:, y0:y1, x0:x1])


@pytest.mark.parametrize("cfa", ["RGGB", "GRBG", "GBRG", "BGGR"])
@pytest.mark.parametrize("shape", [(47, 63), (94, 131), (21, 200)])
def test_over_white_fill_is_the_same_in_every_region(cfa, shape):
    """Frames of odd sizes (partial fill cells at the bottom and right) with windows past white inside and
    at a corner: every region reads what the whole frame holds, and every value is finite and in range."""
    h, w = shape
    rng = np.random.default_rng(h + w)
    mosaic = rng.integers(600, 1200, shape).astype(np.uint16)
    mosaic[h // 4 : h // 2, w // 5 : w // 2] = 16383
    mosaic[-7:, -9:] = 16383
    prep = prepare(mosaic, cfa, np.full((2, 2), 512.0), 16383.0, ratio=20.0, wb=np.array([2.0, 1.0, 1.5]),
                   balanced=True)
    whole = np.asarray(prep.packed)
    _, ph, pw = whole.shape
    assert np.isfinite(whole).all() and whole.min() >= -1.0 and whole.max() <= BALANCED_CEILING
    over = np.zeros((ph, pw), bool)
    for y0, y1, x0, x1 in ((0, ph, 0, pw), (ph // 3, ph, pw // 4, pw - 1), (ph - 3, ph, pw - 5, pw), (1, 4, 2, 9)):
        assert np.array_equal(prep.packed[:, y0:y1, x0:x1], whole[:, y0:y1, x0:x1])
        sat = prep.packed.saturated(y0, y1, x0, x1)
        if sat is not None:
            over[y0:y1, x0:x1] |= sat
    assert over.any()  # the windows are there and render white


@SETTINGS
@given(phases, sizes, sizes, st.data())
def test_packed_frame_regions_equal_the_whole(cfa, h, w, data):
    """Every region the network may ask for equals that part of the whole frame, and the whole frame is
    the packed mosaic, normalised per plane and amplified (negative below black, down to -1)."""
    mosaic = np.random.default_rng(h * 100 + w).integers(0, 16384, (h, w)).astype(np.uint16)
    black = np.array([[500, 510], [520, 530]], np.float32)
    prep = prepare(mosaic, cfa, black, 16383.0, ratio=5.0)
    whole = np.asarray(prep.packed)
    planes, layout = pack(mosaic, cfa)
    b = channel_black(black, layout).reshape(4, 1, 1)
    assert layout == prep.layout and whole.shape == planes.shape == prep.packed.shape
    assert np.allclose(whole, np.clip((planes - b) / (16383.0 - b) * 5.0, -1, 5), rtol=1e-6, atol=1e-6)
    _, ph, pw = whole.shape
    y0 = data.draw(st.integers(0, ph - 1))
    y1 = data.draw(st.integers(y0 + 1, ph))
    x0 = data.draw(st.integers(0, pw - 1))
    x1 = data.draw(st.integers(x0 + 1, pw))
    assert np.array_equal(prep.packed[:, y0:y1, x0:x1], whole[:, y0:y1, x0:x1])


@SETTINGS
@given(st.integers(1, 70), st.integers(1, 70), st.sampled_from([1, 16, 32]))
def test_pad_to_multiple_then_crop(h, w, multiple):
    t = torch.rand(1, 4, h, w)
    padded, (hh, ww) = pad_to_multiple(t, multiple)
    assert (hh, ww) == (h, w)
    assert padded.shape[-2] % multiple == 0 and padded.shape[-1] % multiple == 0
    assert padded.shape[-2] - h < multiple and padded.shape[-1] - w < multiple
    assert torch.equal(padded[..., :h, :w], t)
    # through an upsampled result, `crop` with the layout restores the size too
    layout = Layout(0, 0, 2 * h, 2 * w)
    up = torch.nn.functional.interpolate(padded, scale_factor=2, mode="nearest")
    assert crop(up, layout).shape[-2:] == (2 * h, 2 * w)


def test_pad_reflects_when_possible():
    t = torch.arange(30.0).view(1, 1, 6, 5)
    padded, _ = pad_to_multiple(t, 8)
    assert torch.equal(padded[0, 0, :6, 5], t[0, 0, :, 3])  # reflect: column 5 mirrors column 3
    assert torch.equal(padded[0, 0, 7, :5], t[0, 0, 3])  # row 7 mirrors row 3
    tiny = torch.arange(2.0).view(1, 1, 1, 2)
    padded, _ = pad_to_multiple(tiny, 16)
    assert padded.shape[-2:] == (16, 16)
    assert torch.equal(padded[0, 0, 15], torch.tensor([0.0, 1.0] + [1.0] * 14))  # replicate


def test_noise_aware_frame_gives_its_planes_alone():
    """`[:4, ...]` of a noise-aware frame (what the colour guide's wide pass reads) is the first four planes
    of `[:, ...]`, without the noise map; other channel selections are refused."""
    from darkfix.noise import NoiseLevel

    mosaic = np.random.default_rng(3).integers(400, 3000, (38, 52)).astype(np.uint16)
    prep = prepare(mosaic, "GRBG", np.full((2, 2), 512.0, np.float32), 16383.0, ratio=50.0,
                   wb=np.array([2.0, 1.0, 1.5]), balanced=True, noise_aware=True,
                   noise=NoiseLevel((1e-4,) * 4, (2e-4,) * 4))
    assert prep.packed.shape[0] == 8
    whole = prep.packed[:, 2:15, 3:20]
    assert whole.shape == (8, 13, 17) and np.array_equal(prep.packed[:4, 2:15, 3:20], whole[:4])
    with pytest.raises(IndexError):
        prep.packed[4:, 2:15, 3:20]
