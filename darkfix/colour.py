"""Colour rendering in the SID convention: white balance, camera -> sRGB matrix, clip, BT.709 curve."""

from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .rawio import XYZ_FROM_SRGB

if TYPE_CHECKING:  # the numpy parts (and engines other than torch) do without torch
    import torch

def rgb_cam_from_xyz_cam(cam_xyz: np.ndarray) -> np.ndarray:
    """LibRaw's camera -> sRGB matrix from a ColorMatrix (XYZ -> camera): rows normalised so white stays white."""
    cam_rgb = np.asarray(cam_xyz, dtype=np.float64) @ XYZ_FROM_SRGB
    cam_rgb = cam_rgb / cam_rgb.sum(axis=1, keepdims=True)
    return np.linalg.inv(cam_rgb)


def bt709(x: torch.Tensor) -> torch.Tensor:
    """The BT.709 transfer curve that LibRaw's default output uses (x in [0, 1])."""
    import torch

    return torch.where(x < 0.018, 4.5 * x, 1.099 * x.clamp_min(0.018) ** 0.45 - 0.099)


def render(camera_rgb: torch.Tensor, wb: torch.Tensor, rgb_cam: torch.Tensor) -> torch.Tensor:
    """Linear camera RGB (N, 3, H, W) -> display sRGB in [0, 1].

    `wb` is (N, 3) or (3,) multipliers, `rgb_cam` (N, 3, 3) or (3, 3); differentiable for training.
    """
    import torch

    n = camera_rgb.shape[0]
    wb = wb.to(camera_rgb).reshape(-1, 3).expand(n, 3)
    m = rgb_cam.to(camera_rgb).reshape(-1, 3, 3).expand(n, 3, 3)
    balanced = (camera_rgb * wb[:, :, None, None]).clamp(0.0, 1.0)
    srgb = torch.einsum("nij,njhw->nihw", m, balanced)
    return bt709(srgb.clamp(0.0, 1.0))


# Linear values per lookup-table step of the display curve: for 8 bits fine enough that an entry is the
# exactly rounded code but for values within ~0.01 code of a rounding edge near black, where BT.709 is
# steepest; for 16 bits within 0.3 code everywhere (the torch engine computes 16-bit codes exactly).
CURVE_STEPS = {8: 1 << 16, 16: 1 << 20}


@lru_cache(maxsize=2)
def curve_codes(bit_depth: int) -> np.ndarray:
    """Display codes (uint8 or uint16) of the BT.709 curve, rounded, at CURVE_STEPS[bit_depth] evenly spaced
    linear values in [0, 1]: the lookup table a display rendering indexes with round(linear * (steps - 1))."""
    steps = CURVE_STEPS[bit_depth]
    x = np.arange(steps, dtype=np.float64) / (steps - 1)
    curve = np.where(x < 0.018, 4.5 * x, 1.099 * np.maximum(x, 0.018) ** 0.45 - 0.099)
    top = 255 if bit_depth == 8 else 65535
    return np.floor(curve * top + 0.5).astype(np.uint8 if bit_depth == 8 else np.uint16)


@lru_cache(maxsize=2)
def _curve_table(device: torch.device) -> torch.Tensor:
    import torch

    return torch.from_numpy(curve_codes(8)).to(device)


def display_terms(wb: np.ndarray, rgb_cam: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The rendering of `to_display` as a (3, 3) float32 matrix with the white balance folded in and the
    (3,) float32 levels at which each channel is white after balance (1 / wb)."""
    wb = np.asarray(wb, np.float64).reshape(3)
    return ((np.asarray(rgb_cam, np.float64).reshape(3, 3) * wb[None, :]).astype(np.float32),
            (1.0 / wb).astype(np.float32))


def to_display(camera_rgb: torch.Tensor, wb: torch.Tensor, rgb_cam: torch.Tensor, bit_depth: int) -> np.ndarray:
    """`render` of one (1, 3, H, W) image, quantised: an (H, W, 3) uint8 or uint16 array. (Where the sensor
    clipped, pipeline.render_bands sets the codes to white afterwards, whichever engine rendered them.)

    The same function in fewer passes over memory: white balance folded into the matrix (clipping at
    1 / wb instead of 1), the network's channels-last layout kept so that the (H, W, 3) result needs no
    copy, and for 8 bits the curve and rounding taken from a lookup table. Agrees with `render` and
    rounding to within one code.
    """
    import torch
    import torch.nn.functional as F

    x = camera_rgb[:1]
    wb = wb.to(x).reshape(1, 3, 1, 1)
    m = rgb_cam.to(x).reshape(3, 3) * wb.reshape(1, 3)  # display_terms, on the tensors' device
    full = 1.0 / wb  # 1 after white balance
    # a 1x1 convolution applies the matrix several times faster than a matmul on the (H, W, 3) view
    linear = F.conv2d(torch.minimum(x, full).clamp_min_(0.0), m[:, :, None, None])
    linear = linear.permute(0, 2, 3, 1)[0]  # (H, W, 3): contiguous when the input is channels-last
    if bit_depth == 8:
        steps = CURVE_STEPS[8] - 1
        index = linear.mul_(steps).clamp_(0.0, steps).add_(0.5).to(torch.int32)
        return _curve_table(x.device)[index].cpu().numpy()
    codes = bt709(linear.clamp_(0.0, 1.0)).mul_(65535.0).add_(0.5).to(torch.int32)
    return codes.cpu().numpy().astype(np.uint16)


def display_tiles(engine: Callable[..., None], packed: Any, wb: np.ndarray, rgb_cam: np.ndarray, bit_depth: int,
                  sink: Callable[[np.ndarray, Any], None], **walk: Any) -> None:
    """Run a torch engine (`engine(packed, sink, **walk)` gives its tiles' output tensors) with `sink(codes,
    tile)` getting each tile's display codes, `to_display` on the tiles' device: the engines' `display`."""
    import torch

    wb_t = torch.from_numpy(np.asarray(wb, np.float32))
    rgb_t = torch.from_numpy(np.asarray(rgb_cam, np.float32))
    engine(packed, lambda out, t: sink(to_display(out, wb_t, rgb_t, bit_depth), t), **walk)


def orient(image: np.ndarray, flip: int) -> np.ndarray:
    """Apply LibRaw's `flip` to an (H, W, C) image so that it comes out upright.

    `flip` is LibRaw's bit field (as in its own output): 2 = upside down, 1 = mirrored left-right,
    4 = transposed, applied in that order; 3, 5 and 6 are the plain 180/90-degree turns.
    """
    if flip & 2:
        image = image[::-1]
    if flip & 1:
        image = image[:, ::-1]
    if flip & 4:
        image = image.transpose(1, 0, 2)
    return image
