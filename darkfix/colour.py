"""Colour rendering in the SID convention: white balance, camera -> sRGB matrix, clip, BT.709 curve."""

from __future__ import annotations

import numpy as np
import torch

# LibRaw's xyz_rgb (linear sRGB -> XYZ, D65)
XYZ_FROM_SRGB = np.array(
    [[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]]
)


def rgb_cam_from_xyz_cam(cam_xyz: np.ndarray) -> np.ndarray:
    """LibRaw's camera -> sRGB matrix from a ColorMatrix (XYZ -> camera): rows normalised so white stays white."""
    cam_rgb = np.asarray(cam_xyz, dtype=np.float64) @ XYZ_FROM_SRGB
    cam_rgb = cam_rgb / cam_rgb.sum(axis=1, keepdims=True)
    return np.linalg.inv(cam_rgb)


def bt709(x: torch.Tensor) -> torch.Tensor:
    """The BT.709 transfer curve that LibRaw's default output uses (x in [0, 1])."""
    return torch.where(x < 0.018, 4.5 * x, 1.099 * x.clamp_min(0.018) ** 0.45 - 0.099)


def render(camera_rgb: torch.Tensor, wb: torch.Tensor, rgb_cam: torch.Tensor) -> torch.Tensor:
    """Linear camera RGB (N, 3, H, W) -> display sRGB in [0, 1].

    `wb` is (N, 3) or (3,) multipliers, `rgb_cam` (N, 3, 3) or (3, 3); differentiable for training.
    """
    n = camera_rgb.shape[0]
    wb = wb.to(camera_rgb).reshape(-1, 3).expand(n, 3)
    m = rgb_cam.to(camera_rgb).reshape(-1, 3, 3).expand(n, 3, 3)
    balanced = (camera_rgb * wb[:, :, None, None]).clamp(0.0, 1.0)
    srgb = torch.einsum("nij,njhw->nihw", m, balanced)
    return bt709(srgb.clamp(0.0, 1.0))


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
