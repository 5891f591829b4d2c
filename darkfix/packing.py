"""Mosaic <-> packed RGGB tensor: CFA alignment, packing, padding for the network and cropping back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .amplify import estimate_from_raw

if TYPE_CHECKING:  # torch is imported lazily: batch's decode workers run this module without it
    import torch


@dataclass(frozen=True)
class Layout:
    """Where the original mosaic sits inside the aligned, even-sized mosaic that was packed."""

    top: int
    left: int
    height: int
    width: int


def pack(x: np.ndarray, cfa: str) -> tuple[np.ndarray, Layout]:
    """Pack a normalised (H, W) mosaic of any CFA phase into (4, h, w) R, G1, G2, B planes.

    The mosaic is first mirrored by one row and/or column where needed so that red sits at (0, 0)
    and both sizes are even; mirroring by one keeps each position's colour, so no pixel is lost.
    """
    red = cfa.index("R")
    top, left = red // 2, red % 2
    h, w = x.shape
    bottom = (top + h) % 2
    right = (left + w) % 2
    if top or left or bottom or right:
        x = np.pad(x, ((top, bottom), (left, right)), mode="reflect" if min(h, w) > 1 else "edge")
    hh, ww = x.shape
    packed = x.reshape(hh // 2, 2, ww // 2, 2).transpose(1, 3, 0, 2).reshape(4, hh // 2, ww // 2)
    return np.ascontiguousarray(packed), Layout(top, left, h, w)


def channel_black(black: np.ndarray, layout: Layout) -> np.ndarray:
    """Black level per packed plane (R, G1, G2, B) from the (2, 2) black of the original CFA cell."""
    return np.array([black[(i + layout.top) % 2, (j + layout.left) % 2] for i in (0, 1) for j in (0, 1)],
                    dtype=np.float32)


def normalise(packed_raw: np.ndarray, black: np.ndarray, white: float) -> np.ndarray:
    """Integer planes (C, h, w) -> float32 max(raw - black, 0) / (white - black), clipped to [0, 1]."""
    b = np.asarray(black, dtype=np.float32).reshape(-1, 1, 1)
    x = packed_raw.astype(np.float32)
    x -= b
    x /= np.float32(white) - b
    return np.clip(x, 0.0, 1.0, out=x)


def unpack(packed: np.ndarray, layout: Layout) -> np.ndarray:
    """Inverse of `pack`: the (H, W) mosaic in its original phase and size."""
    _, h2, w2 = packed.shape
    x = packed.reshape(2, 2, h2, w2).transpose(2, 0, 3, 1).reshape(2 * h2, 2 * w2)
    return crop(x, layout)


def crop(image: np.ndarray | "torch.Tensor", layout: Layout) -> np.ndarray | "torch.Tensor":
    """Crop a full-resolution result (..., 2h, 2w) back to the original mosaic's area."""
    return image[..., layout.top : layout.top + layout.height, layout.left : layout.left + layout.width]


def pad_to_multiple(t: torch.Tensor, multiple: int = 16) -> tuple[torch.Tensor, tuple[int, int]]:
    """Pad a packed (N, C, h, w) tensor at bottom/right to multiples of `multiple`; returns (padded, (h, w))."""
    import torch.nn.functional as F

    h, w = t.shape[-2:]
    ph, pw = -h % multiple, -w % multiple
    if ph or pw:
        # reflect needs the pad to be smaller than the size; tiny frames fall back to replicate
        mode = "reflect" if ph < h and pw < w else "replicate"
        t = F.pad(t, (0, pw, 0, ph), mode=mode)
    return t, (h, w)


@dataclass
class Prepared:
    """A frame packed, normalised and amplified for the network."""

    packed: np.ndarray  # (4, h, w) float32
    layout: Layout
    amplification: float  # the estimate or the given ratio, before the brightness factor


def prepare(mosaic: np.ndarray, cfa: str, black: np.ndarray, white: float, ratio: float | None = None,
            brightness: float = 1.0) -> Prepared:
    """Align the CFA, pack, normalise with the file's own levels and amplify (estimate unless `ratio`)."""
    amp = float(ratio) if ratio is not None else estimate_from_raw(mosaic, black, white)
    raw, layout = pack(mosaic, cfa)
    planes_black = channel_black(black, layout)
    x = normalise(raw, planes_black, white)
    x *= np.float32(amp * brightness)
    return Prepared(x, layout, amp)
