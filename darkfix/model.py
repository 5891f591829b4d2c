"""The network of Lamba & Mitra, "Restoring Extremely Dark Images In Real Time" (CVPR 2021).

Module and parameter names follow the authors' checkpoint so that it loads unchanged. Every
convolution is weight-normalised for training; `fold_weight_norm` turns the model into plain
convolutions once for inference.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .weights import (ARCHITECTURE, ARCHITECTURE_NA, ARCHITECTURE_PLUS, FINE_WIDTHS, GUIDE_CELL,  # noqa: F401
                      GUIDE_CLIPPED, GUIDE_EPS, GUIDE_MAX_GAIN, GUIDE_RADIUS, GUIDE_WIENER)


class WNConv2d(nn.Module):
    """Weight-normalised convolution: weight = g * v / ||v||, the norm over all but the output dim."""

    def __init__(self, cin: int, cout: int, k: int, bias: bool = True, groups: int = 1) -> None:
        super().__init__()
        v = torch.empty(cout, cin // groups, k, k)
        nn.init.kaiming_uniform_(v, a=5**0.5)
        self.weight_v = nn.Parameter(v)
        self.weight_g = nn.Parameter(v.flatten(1).norm(dim=1).view(cout, 1, 1, 1).clone())
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.groups = groups
        self.padding = k // 2

    def weight(self) -> torch.Tensor:
        v = self.weight_v
        return self.weight_g * v / v.flatten(1).norm(dim=1).view(-1, 1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding, groups=self.groups)

    def folded(self) -> nn.Conv2d:
        """A plain convolution with the normalised weight computed once."""
        w = self.weight().detach()
        conv = nn.Conv2d(w.shape[1] * self.groups, w.shape[0], w.shape[2], padding=self.padding,
                         groups=self.groups, bias=self.bias is not None)
        conv.weight.data.copy_(w)
        if self.bias is not None:
            conv.bias.data.copy_(self.bias.detach())
        return conv


def _lrelu(inplace: bool = True) -> nn.LeakyReLU:
    return nn.LeakyReLU(0.2, inplace=inplace)


class DenseLayer(nn.Module):
    """Appends conv3x3(act(x)) to x; `position` picks the activation before the conv."""

    def __init__(self, cin: int, growth: int, position: str) -> None:
        super().__init__()
        conv = WNConv2d(cin, growth, 3, bias=False)
        if position == "first":
            self.conv = nn.Sequential(conv)
        elif position == "middle":
            # not in place: x itself is concatenated after the conv
            self.conv = nn.Sequential(_lrelu(inplace=False), conv)
        else:  # the authors' last layer has an identity LeakyReLU(1.0) before its conv
            self.conv = nn.Sequential(nn.Identity(), conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(x)], dim=1)


class RDB(nn.Module):
    """Residual dense block: dense layers, then a 1x1 conv back to the input width plus the input."""

    def __init__(self, channels: int, layers: int, growth: int = 32) -> None:
        super().__init__()
        positions = ["first"] + ["middle"] * (layers - 2) + ["last"]
        self.dense_layers = nn.Sequential(
            *[DenseLayer(channels + i * growth, growth, p) for i, p in enumerate(positions)]
        )
        self.conv_1x1 = nn.Sequential(WNConv2d(channels + layers * growth, channels, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_1x1(self.dense_layers(x)) + x


class ResBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Sequential(WNConv2d(channels, channels, 3), _lrelu())
        self.conv2 = nn.Sequential(WNConv2d(channels, channels, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x)) + x


# The colour guide's constants (GUIDE_WIENER, GUIDE_EPS, GUIDE_MAX_GAIN) live in `weights`, with why.


def guide_gain(mean_out: torch.Tensor, packed: torch.Tensor, radius: int = GUIDE_RADIUS,
               clipped: bool = True) -> torch.Tensor:
    """The colour guide: per-channel gains (N, 3, h, w) that give the network's output the local means of
    its (N, 4, h, w) input where the input shows them reliably; a fixed, parameter-free last stage.
    `mean_out` is the output (in [0, 1]) averaged over each packed pixel's 2 x 2, h and w multiples of
    GUIDE_CELL.

    The network shrinks colour towards grey and darkens dim red and blue (its mean R/G, B/G come out
    5-10 % low on smooth test scenes whose input's local means are right to 0.3 %). Per channel, the
    difference d between the input's and the output's local mean is taken in proportion
    d^2 / (d^2 + GUIDE_WIENER var), var the noise variance of the input's mean (estimated from the
    residual), so noise is not brought back. `packed` must not be clipped at 0: a clip biases dark local
    means upwards. `clipped` False skips the handling of input clipped white: the same result where there
    is none (a compiled graph for such tiles is cheaper).
    """
    mean_out, packed = mean_out.float(), packed.float().clamp(-1.0, 1.0)
    inp = torch.cat([packed[:, :1], 0.5 * (packed[:, 1:2] + packed[:, 2:3]), packed[:, 3:]], dim=1)
    # input white in every channel says little of the scene's local mean: left out of the statistics.
    # (A window past white comes in with the room's colour, packing.FILL_CELL; what is left is white
    # under OVER_WHITE. Leaving out pixels with only one channel clipped too cost 0.03 dB on the photos.)
    valid = (inp.amin(1, keepdim=True) < GUIDE_CLIPPED).float() if clipped else None
    res = inp - mean_out if valid is None else (inp - mean_out) * valid
    cells = radius // GUIDE_CELL
    n = float((2 * cells + 1) ** 2 * GUIDE_CELL**2)  # samples in a box

    def box(t: torch.Tensor) -> torch.Tensor:
        t = F.avg_pool2d(t, GUIDE_CELL)
        return F.avg_pool2d(t, 2 * cells + 1, stride=1, padding=cells, count_include_pad=False)

    if valid is None:
        mean, count, masked_out = box, n, mean_out
    else:  # means over each box's valid pixels only
        share = box(valid)
        per = 1.0 / share.clamp_min(1.0 / n)

        def mean(t: torch.Tensor) -> torch.Tensor:
            return box(t) * per

        count, masked_out = (n * share).clamp_min(1.0), mean_out * valid
    d, low = mean(res), mean(masked_out)
    var = (mean(res * res) - d * d).clamp_min(0.0) / count
    # the 1e-8 leaves differences under 1e-4, far below any noise, alone: rounding then cannot flip k
    k = d * d / (d * d + GUIDE_WIENER * var + 1e-8)
    if valid is not None:
        k = k * share  # a box partly clipped trusts its difference in proportion to its valid share
    gain = ((low + k * d + GUIDE_EPS) / (low + GUIDE_EPS)).clamp(1.0 / GUIDE_MAX_GAIN, GUIDE_MAX_GAIN)
    gain = F.interpolate(gain, scale_factor=float(GUIDE_CELL), mode="bilinear", align_corners=False)
    # clipped pixels themselves keep the network's output
    return gain if valid is None else (gain - 1.0) * valid + 1.0


class LambaNet(nn.Module):
    """Packed, amplified RGGB input (N, 4, h, w), h and w multiples of 16 -> (N, 3, 2h, 2w) in [0, 1].
    The noise-aware architecture (`noise_aware`) reads (N, 8, h, w): the four planes, then the standard
    deviation of each (`darkfix.noise.sigma_planes`).

    The input may hold negative values (noise below black): the network reads it clipped at 0, as the
    paper's does, and the colour guide (`guide_gain`, with `guide_radius` > 0) reads it as it is.

    `plus` adds capacity where the paper's network has least: a second residual block in the 1/8
    branch, and a small non-linear refinement at full packed resolution (the paper's last two
    convolutions there are linear). Both start as identities (zero last weights), so a `plus` network
    initialised from paper-architecture weights computes exactly what they compute.
    """

    def __init__(self, plus: bool = False, guide_radius: int = 0, noise_aware: bool = False,
                 fine_signed: bool = False, fine_widths: tuple[int, int] = FINE_WIDTHS) -> None:
        super().__init__()
        if plus and noise_aware:
            raise ValueError("plus and noise_aware are separate architectures")
        self.plus = plus
        self.noise_aware = noise_aware
        # the finest-scale path reads the input unclipped: where the signal is a few times the noise,
        # clipping at 0 lifts the weaker colours' means (3x for red and blue in dark grass, 1.5x for
        # green) and the picture turns brown; the signed input keeps them
        self.fine_signed = fine_signed and noise_aware
        self.fine_widths = tuple(fine_widths)
        self.in_channels = 8 if noise_aware else 4
        self.guide_radius = guide_radius
        self.guide_clipped = True  # False: a fine part for input with nothing clipped white (ovexport)
        self.conv32x = nn.Sequential(
            nn.Sequential(WNConv2d(1024, 128, 3, groups=128)),
            nn.Sequential(WNConv2d(128, 64, 3)),
        )
        self.RDB1 = RDB(64, 4)
        self.RDB2 = RDB(64, 5)
        self.RDB3 = RDB(64, 5)
        self.rdball = nn.Sequential(WNConv2d(192, 64, 1, bias=False))
        self.conv_rdb8x = nn.Sequential(WNConv2d(4, 64, 3))
        self.resblock8x = ResBlock(64)
        self.conv32_8_cat = nn.Sequential(
            nn.Sequential(WNConv2d(128, 32, 3, groups=4)),
            nn.Sequential(WNConv2d(32, 192, 3), _lrelu()),
        )
        self.conv2x = nn.Sequential(WNConv2d(4, 12, 5))
        self.conv_2_8_32 = nn.Sequential(WNConv2d(24, 12, 5))
        if plus:
            self.resblock8x_2 = ResBlock(64)
            self.refine2x = nn.Sequential(nn.Sequential(WNConv2d(16, 24, 3), _lrelu()),
                                          nn.Sequential(WNConv2d(24, 12, 3)))
            for last in (self.resblock8x_2.conv2[0], self.refine2x[1][0]):
                nn.init.zeros_(last.weight_g)
        if noise_aware:
            # the finest scales' non-linear path: packed resolution and 2 x 2 packed pixels (reach 7 packed
            # pixels, periods up to ~16 px), reading the input, its noise map and the linear output;
            # `fine_widths`: its channels at packed resolution and at 2 x 2 packed pixels
            full, half = self.fine_widths
            self.fine_in = nn.Sequential(WNConv2d(20, full, 3), _lrelu())
            self.fine_down = nn.Sequential(WNConv2d(4 * full, half, 3), _lrelu())
            self.fine_mid = nn.Sequential(WNConv2d(half, half, 3), _lrelu())
            self.fine_up = nn.Sequential(WNConv2d(half, 4 * full, 1), _lrelu())
            self.fine_out = WNConv2d(2 * full, 12, 3)
            nn.init.zeros_(self.fine_out.weight_g)  # starts as the paper's network: weights load into it

    @property
    def architecture(self) -> str:
        return ARCHITECTURE_PLUS if self.plus else ARCHITECTURE_NA if self.noise_aware else ARCHITECTURE

    def stem(self, packed: torch.Tensor) -> torch.Tensor:
        """The 1/32 branch's first two convolutions: `a` in DESIGN.md."""
        return self.conv32x(F.pixel_unshuffle(packed[:, :4].clamp_min(0.0), 16))

    def refine(self, out: torch.Tensor, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        """The noise-aware architecture's finest-scale path: a residual on the linear output `out` (N, 12,
        h, w), from it, the input `x` (clipped at 0 unless `fine_signed`) and its noise map `sigma` (N, 4,
        h, w)."""
        f = self.fine_in(torch.cat([out, x, sigma], dim=1))
        u = self.fine_up(self.fine_mid(self.fine_down(F.pixel_unshuffle(f, 2))))
        return out + self.fine_out(torch.cat([f, F.pixel_shuffle(u, 2)], dim=1))

    def coarse(self, a: torch.Tensor) -> torch.Tensor:
        """The residual dense blocks: `a` -> `b`."""
        r1 = self.RDB1(a)
        r2 = self.RDB2(r1)
        r3 = self.RDB3(r2)
        return self.rdball(torch.cat([r1, r2, r3], dim=1)) + a

    def fine(self, packed: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Everything after `b`: the 1/8 and 1/2 branches, the fusion and the guide -> (N, 3, 2h, 2w) in
        [0, 1]."""
        x = packed[:, :4].clamp_min(0.0)
        c = self.conv_rdb8x(F.pixel_shuffle(b, 4))
        d = self.resblock8x(F.pixel_unshuffle(x, 4))
        if self.plus:
            d = self.resblock8x_2(d)
        n, ch, h, w = d.shape
        # channel shuffle with 2 groups: interleave d and c
        fused = torch.stack([d, c], dim=2).view(n, 2 * ch, h, w)
        e = F.pixel_shuffle(self.conv32_8_cat(fused), 4)
        out = self.conv_2_8_32(torch.cat([self.conv2x(x), e], dim=1))
        if self.plus:
            out = out + self.refine2x(torch.cat([out, x], dim=1))
        if self.noise_aware:
            out = self.refine(out, packed[:, :4] if self.fine_signed else x, packed[:, 4:])
        out = out.clamp(0.0, 1.0)
        if self.guide_radius:
            n, _, h, w = out.shape
            per_colour = out.view(n, 3, 4, h, w)  # pixel_shuffle's order: colour, then the 2 x 2 position
            gain = guide_gain(per_colour.mean(2), packed[:, :4], self.guide_radius, self.guide_clipped)
            out = (per_colour * gain[:, :, None]).clamp(0.0, 1.0).view(n, 12, h, w)
        return F.pixel_shuffle(out, 2)

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.fine(packed, self.coarse(self.stem(packed)))


def fold_weight_norm(model: nn.Module) -> nn.Module:
    """Replace every WNConv2d in place by a plain Conv2d with the same output; returns the model."""
    for name, child in model.named_children():
        if isinstance(child, WNConv2d):
            setattr(model, name, child.folded())
        else:
            fold_weight_norm(child)
    return model
