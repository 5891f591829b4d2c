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
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
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


class _StridedRefine(nn.Module):
    """A folded noise-aware network's `refine` (its finest-scale path) in a form OpenVINO runs faster, the
    same function to float rounding: the 2 x 2 unshuffle and the 3 x 3 convolution after it as one 6 x 6
    convolution of stride 2, and the 1 x 1 convolution and the shuffle after it as one 2 x 2 transposed
    convolution of stride 2. Reordering tensors, not arithmetic, is most of a fine window's time
    (benchmarks/RESULTS.md)."""

    def __init__(self, net: LambaNet) -> None:
        super().__init__()
        full, half = net.fine_widths
        down, mid, up = net.fine_down[0], net.fine_mid[0], net.fine_up[0]
        self.fine_in, self.fine_out = net.fine_in, net.fine_out
        # unshuffled input channel c * 4 + 2 dy + dx at kernel (ky, kx) reads pixel (2 ky + dy, 2 kx + dx)
        self.down = nn.Conv2d(full, half, 6, stride=2, padding=2)
        self.down.weight.data.copy_(down.weight.data.view(half, full, 2, 2, 3, 3).permute(0, 1, 4, 2, 5, 3)
                                    .reshape(half, full, 6, 6))
        self.down.bias.data.copy_(down.bias.data)
        # one more channel, constant 1 after the activation: it carries the 1 x 1 convolution's bias, which
        # differs between the four positions of a 2 x 2 cell and so cannot be the transposed one's bias
        self.mid = nn.Conv2d(half, half + 1, 3, padding=1)
        self.mid.weight.data.copy_(torch.cat([mid.weight.data, mid.weight.data.new_zeros(1, half, 3, 3)]))
        self.mid.bias.data.copy_(torch.cat([mid.bias.data, mid.bias.data.new_ones(1)]))
        self.up = nn.ConvTranspose2d(half + 1, full, 2, stride=2, bias=False)
        self.up.weight.data.copy_(torch.cat([up.weight.data.view(full, 2, 2, half).permute(3, 0, 1, 2),
                                             up.bias.data.view(1, full, 2, 2)]))

    def forward(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        f = self.fine_in(torch.cat([out, x, sigma], dim=1))
        u = F.leaky_relu(self.down(f), 0.2)
        u = F.leaky_relu(self.up(F.leaky_relu(self.mid(u), 0.2)), 0.2)
        return out + self.fine_out(torch.cat([f, u], dim=1))


def strided(net: LambaNet) -> LambaNet:
    """`net` (folded, see fold_weight_norm) with its finest-scale path computed as `_StridedRefine` does."""
    if net.noise_aware:
        if not isinstance(net.fine_down[0], nn.Conv2d):
            raise TypeError("strided() takes a folded network (fold_weight_norm)")
        net.strided_refine = _StridedRefine(net)
        net.refine = net.strided_refine.forward  # type: ignore[method-assign]
    return net


def _exported(module: nn.Module, *example: torch.Tensor) -> Any:
    """`module` through `torch.export` (what OpenVINO's converter reads; `torch.jit.trace` is deprecated and
    said so 156 times a conversion), every input's height and width dynamic."""
    from torch.export import Dim, export

    shapes = tuple({2: Dim.AUTO, 3: Dim.AUTO} if t.dim() == 4 else None for t in example)
    # _Part.forward takes its inputs as *inputs: one argument, a tuple
    return export(module, example, dynamic_shapes=(shapes,) if isinstance(module, _Part) else shapes)


def convert(model: LambaNet) -> dict:
    """OpenVINO models (`openvino.Model`) `stem`, `coarse`, `fine`, `fine_clipped`, `colour8` and `colour16`
    for `model`, shapes dynamic."""
    from .ovengine import converter

    convert_model = converter()
    net = strided(fold_weight_norm(copy.deepcopy(model).float().eval()))
    channels = net.in_channels  # 8 for noise-aware weights: the planes, then their noise map
    x = torch.zeros(1, channels, 64, 64)
    with torch.no_grad(), warnings.catch_warnings():
        # copying an ExportedProgram (OpenVINO's converter does) touches torch's deprecated pytree LeafSpec,
        # which warns once a graph (torch 2.13): nothing darkfix can change
        warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\)")
        a = net.stem(x)
        b = net.coarse(a)
        rgb = net.fine(x, b)

        def part(name: str, *example: torch.Tensor, shapes: list) -> Any:
            return convert_model(_exported(_Part(net, name), *example), input=shapes)

        def fine(clipped: bool):
            net.guide_clipped = clipped
            return part("fine", x, b, shapes=[(1, channels, -1, -1), (1, 64, -1, -1)])

        plain = fine(False)
        # without the guide there is no clipped-white handling: one graph serves both
        clipped = fine(True) if net.guide_radius else plain
        return {
            "stem": part("stem", x, shapes=[(1, channels, -1, -1)]),
            "coarse": part("coarse", a, shapes=[(1, 64, -1, -1)]),
            "fine": plain,
            "fine_clipped": clipped,
            **{f"colour{bits}": convert_model(_exported(_Colour(bits), rgb, torch.eye(3), torch.ones(3)),
                                              input=[(1, 3, -1, -1), (3, 3), (3,)]) for bits in (8, 16)},
        }
