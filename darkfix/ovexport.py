"""Converting darkfix's network to OpenVINO models (needs torch, once per weights file).

The network is cut where the tiling cuts it (darkfix.tiling): `stem` and `coarse` make the 1/32 branch,
`fine` the rest, in two graphs: `fine_clipped` for tiles whose input holds pixels clipped white (the
colour guide then leaves them out of its statistics, model.guide_gain), `fine` for the others, cheaper.
`colour8` and `colour16` are the display rendering of one tile (white balance folded into the camera ->
sRGB matrix, clip, BT.709 curve and rounding from a lookup table), kept apart so that they always run in
f32.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from .colour import CURVE_STEPS, curve_codes
from .model import LambaNet, fold_weight_norm


class _Part(nn.Module):
    """One of LambaNet's three parts (`stem`, `coarse`, `fine`) as a module of its own, for conversion."""

    def __init__(self, net: LambaNet, part: str) -> None:
        super().__init__()
        self.net, self.part = net, part

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        return getattr(self.net, self.part)(*inputs)


class _Colour(nn.Module):
    """(1, 3, H, W) camera RGB, the (3, 3) matrix with the white balance folded in and the (3,) clip levels
    (1 / wb) of colour.display_terms -> (1, H, W, 3) display codes, through the curve's lookup table
    (colour.curve_codes; a constant of the graph). As colour.to_display renders, in a few passes."""

    def __init__(self, bit_depth: int) -> None:
        super().__init__()
        codes = curve_codes(bit_depth)
        # uint16 does not convert: 16-bit codes go through int32
        self.register_buffer("table", torch.from_numpy(codes if bit_depth == 8 else codes.astype(np.int32)))
        self.steps = float(CURVE_STEPS[bit_depth] - 1)

    def forward(self, rgb: torch.Tensor, matrix: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
        x = torch.minimum(rgb, full.view(1, 3, 1, 1)).clamp_min(0.0).permute(0, 2, 3, 1)
        linear = torch.matmul(x, matrix.transpose(0, 1))
        index = (linear * self.steps + 0.5).clamp(0.0, self.steps).to(torch.int32)
        return self.table[index]


def convert(model: LambaNet) -> dict:
    """OpenVINO models (`openvino.Model`) `stem`, `coarse`, `fine`, `fine_clipped`, `colour8` and `colour16`
    for `model`, shapes dynamic."""
    from .ovengine import converter

    convert_model = converter()
    net = fold_weight_norm(copy.deepcopy(model).float().eval())
    channels = net.in_channels  # 8 for noise-aware weights: the planes, then their noise map
    x = torch.zeros(1, channels, 64, 64)
    with torch.no_grad():
        a = net.stem(x)
        b = net.coarse(a)
        rgb = net.fine(x, b)

        def fine(clipped: bool):
            net.guide_clipped = clipped
            return convert_model(_Part(net, "fine"), example_input=(x, b),
                                 input=[(1, channels, -1, -1), (1, 64, -1, -1)])

        plain = fine(False)
        # without the guide there is no clipped-white handling: one graph serves both
        clipped = fine(True) if net.guide_radius else plain
        return {
            "stem": convert_model(_Part(net, "stem"), example_input=x, input=[(1, channels, -1, -1)]),
            "coarse": convert_model(_Part(net, "coarse"), example_input=a, input=[(1, 64, -1, -1)]),
            "fine": plain,
            "fine_clipped": clipped,
            **{f"colour{bits}": convert_model(_Colour(bits), example_input=(rgb, torch.eye(3), torch.ones(3)),
                                                 input=[(1, 3, -1, -1), (3, 3), (3,)]) for bits in (8, 16)},
        }
