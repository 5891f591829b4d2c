"""Helpers shared by the tests: odd raw files, a pass-through network, PNG reading, PSNR."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import png
import tifffile
import torch

from darkfix.dng import _srational
from darkfix.model import LambaNet

CFA_PHASES = ("RGGB", "GRBG", "GBRG", "BGGR")
CODES = {"R": 0, "G": 1, "B": 2}
# the Sony A7S II XYZ -> camera matrix (DNG ColorMatrix1), as in darkfix.lab.synth
SONY_XYZ = np.array([[0.5838, -0.1430, -0.0246], [-0.3497, 1.1477, 0.2297], [-0.0748, 0.1885, 0.5778]])


def _set_wn(conv, weight: torch.Tensor) -> None:
    """Give a WNConv2d exactly `weight` (g = ||v|| per output channel) and a zero bias."""
    conv.weight_v.copy_(weight)
    conv.weight_g.copy_(weight.flatten(1).norm(dim=1).view(-1, 1, 1, 1))
    if conv.bias is not None:
        conv.bias.zero_()


def passthrough_model() -> LambaNet:
    """A LambaNet whose output is the packed input itself, upsampled by 2: R = plane 0, G = mean of
    planes 1 and 2, B = plane 3, each copied to the four pixels of its 2x2 cell (then clamped to [0, 1]).

    Every other branch is cut off by zero weights in the last convolution, so the whole pipeline
    (CFA alignment, black levels, amplification, colour, orientation, cropping) can be checked
    against LibRaw pixel for pixel on flat regions.
    """
    torch.manual_seed(0)
    net = LambaNet()
    with torch.no_grad():
        w2 = torch.zeros(12, 4, 5, 5)
        for k in range(4):  # pixel_shuffle(2): channel c * 4 + k is colour c at sub-position k
            w2[0 * 4 + k, 0, 2, 2] = 1.0
            w2[1 * 4 + k, 1, 2, 2] = 0.5
            w2[1 * 4 + k, 2, 2, 2] = 0.5
            w2[2 * 4 + k, 3, 2, 2] = 1.0
        _set_wn(net.conv2x[0], w2)
        w3 = torch.zeros(12, 24, 5, 5)
        for c in range(12):
            w3[c, c, 2, 2] = 1.0
        _set_wn(net.conv_2_8_32[0], w3)
    return net.eval()


def dng_tags(black: float = 512.0, white: int = 16383) -> list[tuple]:
    """DNG tags shared by the hand-made (non-Bayer, linear, monochrome) files."""
    return [
        (50706, "B", 4, (1, 4, 0, 0), True),  # DNGVersion
        (50707, "B", 4, (1, 1, 0, 0), True),  # DNGBackwardVersion
        (50708, "s", 0, "darkfix test", True),  # UniqueCameraModel
        (50714, "2I", 1, _srational(np.array([black])), True),  # BlackLevel
        (50717, "I", 1, int(white), True),  # WhiteLevel
        (50721, "2i", 9, _srational(np.eye(3)), True),  # ColorMatrix1
        (50778, "H", 1, 21, True),  # CalibrationIlluminant1
        (50728, "2I", 3, _srational(np.array([0.5, 1.0, 0.6])), True),  # AsShotNeutral
        (271, "s", 0, "darkfix", True),
        (272, "s", 0, "test", True),
    ]


def write_cfa_dng(path: Path, mosaic: np.ndarray, pattern: str, dim: tuple[int, int] = (2, 2),
                  plane_colors: tuple[int, ...] = (0, 1, 2)) -> Path:
    """A CFA DNG with any repeat pattern (e.g. 6x6 X-Trans-like, or one colour only)."""
    extra = dng_tags() + [
        (33421, "H", 2, dim, True),  # CFARepeatPatternDim
        (33422, "B", len(pattern), tuple(CODES[c] for c in pattern), True),  # CFAPattern
        (50710, "B", len(plane_colors), plane_colors, True),  # CFAPlaneColor
        (50711, "H", 1, 1, True),  # CFALayout
    ]
    tifffile.imwrite(path, mosaic, photometric=32803, compression=None, subfiletype=0, extratags=extra,
                     metadata=None)
    return Path(path)


def write_linear_dng(path: Path, image: np.ndarray) -> Path:
    """A LinearRaw DNG (PhotometricInterpretation 34892): (H, W, 3) demosaiced, or (H, W) monochrome."""
    if image.ndim == 3:
        tifffile.imwrite(path, image, photometric=34892, planarconfig=1, compression=None, subfiletype=0,
                         extratags=dng_tags(), metadata=None)
    else:  # tifffile refuses LinearRaw with one sample: write grey, then patch the tag in place
        tifffile.imwrite(path, image, photometric=1, compression=None, subfiletype=0, extratags=dng_tags(),
                         metadata=None)
        with tifffile.TiffFile(path, mode="r+b") as t:
            t.pages[0].tags[262].overwrite(34892)
    return Path(path)


def set_orientation(path: Path, orientation: int) -> None:
    """Patch the EXIF orientation of a DNG in place (write_dng only accepts 1, 3, 6 and 8)."""
    with tifffile.TiffFile(path, mode="r+b") as t:
        t.pages[0].tags[274].overwrite(orientation)


def read_png(path: Path) -> tuple[np.ndarray, int]:
    """(H, W, 3) array and bit depth, decoded by pypng (independent of darkfix's encoder)."""
    w, h, rows, info = png.Reader(filename=str(path)).read()
    assert info["planes"] == 3 and not info.get("alpha") and not info.get("greyscale")
    dtype = np.uint16 if info["bitdepth"] == 16 else np.uint8
    arr = np.vstack([np.asarray(r, dtype=dtype) for r in rows]).reshape(h, w, 3)
    return arr, info["bitdepth"]


def assert_library_twin(source: Path, option: str, outputs: dict[bool, Path], ratio: float = 100) -> None:
    """The library restores `source` with `option` on and off as the CLI wrote `outputs[True]` and
    `outputs[False]` (torch, fp32), and refuses a value of it that is not a bool."""
    import pytest

    import darkfix

    lib = darkfix.load(engine="torch", precision="fp32")
    for on in (True, False):
        img = lib.restore(source, ratio=ratio, **{option: on})
        assert np.array_equal(img, read_png(outputs[on])[0]), (option, on)
    with pytest.raises(ValueError, match=f"{option} must be True or False"):
        lib.restore(source, **{option: 1})


def psnr(a: np.ndarray | torch.Tensor, b: np.ndarray | torch.Tensor, peak: float = 1.0) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    mse = float(np.mean((a - b) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(peak**2 / mse)


def default_signals() -> None:
    """preexec_fn: SIGINT as an interactive shell leaves it. Earlier tests leave it ignored in the test
    process, children inherit that, and Python keeps an inherited ignored SIGINT ignored."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def shell_env() -> dict:
    """A child's environment as a shell would give it: earlier tests in the same run leave variables
    behind that made SIGTERM go unheeded in darkfix subprocesses in full runs."""
    import os

    keep = ("PATH", "HOME", "TMPDIR", "DARKFIX_CACHE", "VIRTUAL_ENV", "LANG")
    return {k: v for k, v in os.environ.items() if k in keep}


def packed_frame(channels: int, shape: tuple[int, int] = (1424, 2128)) -> np.ndarray:
    """A packed frame (12 MP by default) as weights of `channels` inputs read it: four planes of dark
    signal, then (noise-aware weights) their noise map."""
    from darkfix.noise import sigma_planes

    if channels not in (4, 8):
        raise ValueError(f"weights read 4 or 8 channels, not {channels}")
    rng = np.random.default_rng(0)
    planes = (rng.gamma(2.0, 0.1, (4, *shape)) * 2).astype(np.float32)
    if channels == 8:
        planes = np.concatenate([planes, sigma_planes(planes, np.float32(0.02), np.float32(0.003))])
    return planes.astype(np.float32)


def run_restorer(restorer, packed: np.ndarray, **walk) -> np.ndarray:
    """The engine's output for a whole packed frame, (3, 2h, 2w) float32, assembled from its tiles (torch
    tensors on any device, or numpy arrays from OpenVINO); `walk` as the engine's call takes it."""
    out = np.zeros((3, 2 * packed.shape[1], 2 * packed.shape[2]), np.float32)

    def sink(tile_out, t) -> None:
        tile = tile_out[0] if isinstance(tile_out, np.ndarray) else tile_out[0].float().cpu().numpy()
        out[:, 2 * t.y0 : 2 * t.y1, 2 * t.x0 : 2 * t.x1] = tile

    restorer(packed, sink, **walk)
    return out
