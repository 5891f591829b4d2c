"""Running the network: device and precision choice, folded weights, and overlapping tiles that keep
memory bounded at any frame size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch

from .model import LambaNet, fold_weight_norm
from .packing import pad_to_multiple

ALIGN = 16  # packed pixels per cell of the network's 1/32 branch
# Each tile reads this much context beyond the part it keeps; the tiled result then matches the
# whole frame to ~70 dB (the 1/32 branch's reach is far, but its influence decays fast).
DEFAULT_MARGIN = 64
# Packed pixels per tile side on CPU: about 0.25 GB of activations at fp32, 4 MP of mosaic.
DEFAULT_CPU_TILE = 1024
DEFAULT_CUDA_TILE = 2048

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA requested but not available (torch reports no CUDA device)")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"unknown device {name!r} (expected auto, cpu or cuda)")
    return torch.device(name)


def pick_precision(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> fp16 on CUDA, fp32 on CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (expected fp32, fp16 or bf16)")
    if name == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for CUDA; on CPU use fp32 or bf16")
    return PRECISIONS[name]


@dataclass(frozen=True)
class Tile:
    """A region of the packed frame: [y0, y1) x [x0, x1) is kept, read with context around it."""

    y0: int
    y1: int
    x0: int
    x1: int


def tiles(h: int, w: int, size: int, margin: int) -> Iterator[Tile]:
    """Cover an (h, w) packed frame with kept regions of at most `size` (multiples of ALIGN)."""
    ny, nx = math.ceil(h / size), math.ceil(w / size)
    # equal-sized tiles, aligned to the network's coarsest grid so every tile sees the same cells
    ty = math.ceil(h / ny / ALIGN) * ALIGN
    tx = math.ceil(w / nx / ALIGN) * ALIGN
    for y0 in range(0, h, ty):
        for x0 in range(0, w, tx):
            yield Tile(y0, min(y0 + ty, h), x0, min(x0 + tx, w))


class Restorer:
    """The folded network on a device, applied whole or in tiles to packed, amplified frames."""

    def __init__(self, model: LambaNet, device: str = "auto", precision: str = "auto",
                 tile: int | None = None, margin: int = DEFAULT_MARGIN) -> None:
        self.device = pick_device(device)
        self.dtype = pick_precision(precision, self.device)
        self.net = fold_weight_norm(model.eval()).to(self.device, self.dtype)
        for p in self.net.parameters():
            p.requires_grad_(False)
        default = DEFAULT_CUDA_TILE if self.device.type == "cuda" else DEFAULT_CPU_TILE
        self.tile = max(ALIGN, (tile or default) // ALIGN * ALIGN)
        self.margin = math.ceil(margin / ALIGN) * ALIGN

    @torch.inference_mode()
    def run_tile(self, packed: torch.Tensor) -> torch.Tensor:
        """Network on one (1, 4, h, w) tensor of any size -> (1, 3, 2h, 2w) float32 on the device."""
        x, (h, w) = pad_to_multiple(packed.to(self.device, self.dtype), ALIGN)
        return self.net(x)[..., : 2 * h, : 2 * w].float()

    def __call__(self, packed: np.ndarray, sink: Callable[[torch.Tensor, Tile], None]) -> None:
        """Run on a (4, h, w) packed frame, passing each finished tile's output to `sink`.

        `sink(out, tile)` gets (1, 3, 2 (y1 - y0), 2 (x1 - x0)) for the kept region of `tile`.
        """
        _, h, w = packed.shape
        src = torch.from_numpy(packed)[None]
        for t in tiles(h, w, self.tile, self.margin):
            self._run_region(src, t, sink)

    def _run_region(self, src: torch.Tensor, t: Tile, sink: Callable[[torch.Tensor, Tile], None]) -> None:
        _, _, h, w = src.shape
        cy0, cx0 = max(0, t.y0 - self.margin), max(0, t.x0 - self.margin)
        cy1, cx1 = min(h, t.y1 + self.margin), min(w, t.x1 + self.margin)
        try:
            out = self.run_tile(src[..., cy0:cy1, cx0:cx1])
        except torch.OutOfMemoryError:
            side = max(t.y1 - t.y0, t.x1 - t.x0)
            if self.device.type != "cuda" or side <= 4 * ALIGN:
                raise
            # CUDA ran out: split this region, and start later frames with smaller tiles too
            torch.cuda.empty_cache()
            self.tile = max(4 * ALIGN, min(self.tile, side) // 2 // ALIGN * ALIGN)
            for sub in tiles(t.y1 - t.y0, t.x1 - t.x0, self.tile, 0):
                self._run_region(src, Tile(t.y0 + sub.y0, t.y0 + sub.y1, t.x0 + sub.x0, t.x0 + sub.x1), sink)
            return
        sink(out[..., 2 * (t.y0 - cy0) : 2 * (t.y1 - cy0), 2 * (t.x0 - cx0) : 2 * (t.x1 - cx0)], t)
