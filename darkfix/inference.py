"""The torch engine: device and precision choice, folded weights, the network arranged for inference,
run in tiles that keep memory bounded at any frame size (darkfix.tiling says how).
"""

from __future__ import annotations

import copy
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .colour import display_tiles
from .engine import check_device
from .model import LambaNet, fold_weight_norm, guide_gain
from .packing import pad_to_multiple
from .tiling import (ALIGN, COARSE_BLOCK, COARSE_REACH, DEFAULT_CPU_TILE, DEFAULT_CUDA_TILE,  # noqa: F401
                     DEFAULT_MARGIN, FINE_REACH, LARGE_FRAME, LARGE_FRAME_CPU_TILE, STEM_REACH, STEM_ROWS,
                     PaddedFrame, TiledEngine, Tile, TransposedFrame, average_transposed, bands, fine_reach,
                     limit_malloc_arenas, margin_for, release_memory, tiles)

PRECISIONS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(name: str = "auto") -> torch.device:
    """'auto' -> CUDA when available, else CPU."""
    check_device(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("CUDA requested but not available (torch reports no CUDA device)")
    return torch.device(name)


def native_bf16() -> tuple[bool, str]:
    """Whether this CPU runs bf16 convolutions natively, and what says so: oneDNN's own bf16 check and
    the AMX or AVX512-BF16 units torch reports (emulated bf16 is many times slower than fp32)."""
    cpu = getattr(torch, "cpu", None)
    units = [name for name, probe in (("AMX", "_is_amx_tile_supported"), ("AVX512-BF16", "_is_avx512_bf16_supported"))
             if cpu is not None and hasattr(cpu, probe) and getattr(cpu, probe)()]
    onednn = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if units and onednn is not None and onednn():
        return True, f"{' and '.join(units)} reported by torch, oneDNN bf16 supported"
    return False, "no AMX or AVX512-BF16 reported by torch" if not units else "oneDNN reports no bf16 support"


def pick_precision(name: str, device: torch.device) -> torch.dtype:
    """'auto' -> fp16 on CUDA; on CPU bf16 where the CPU runs it natively (`native_bf16`), else fp32."""
    if name == "auto":
        if device.type == "cuda":
            return torch.float16
        return torch.bfloat16 if native_bf16()[0] else torch.float32
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r} (expected fp32, fp16 or bf16)")
    if name == "fp16" and device.type == "cpu":
        raise ValueError("fp16 is for CUDA; on CPU use fp32 or bf16")
    return PRECISIONS[name]


def precision_reason(name: str, device: torch.device) -> str:
    """Why `pick_precision` chose what it did, for `darkfix bench`."""
    if name != "auto":
        return "as requested"
    if device.type == "cuda":
        return "auto: fp16 on CUDA"
    native, why = native_bf16()
    return f"auto: {'bf16' if native else 'fp32'} ({why})"


def _rebuilt(conv: nn.Conv2d, in_order: list[int] | None = None, out_order: list[int] | None = None,
             out_pad: int = 0) -> nn.Conv2d:
    """A copy of a plain convolution with its input channels (within each group) and output channels
    reordered (new channel i = old channel order[i]) and `out_pad` zero output channels appended."""
    w = conv.weight.detach()
    b = conv.bias.detach() if conv.bias is not None else None
    if in_order is not None:
        w = w[:, in_order]
    if out_order is not None:
        w = w[out_order]
        b = b[out_order] if b is not None else None
    if out_pad:
        w = torch.cat([w, w.new_zeros(out_pad, *w.shape[1:])])
        b = torch.cat([b, b.new_zeros(out_pad)]) if b is not None else None
    new = nn.Conv2d(w.shape[1] * conv.groups, w.shape[0], w.shape[2:], padding=conv.padding, groups=conv.groups,
                    bias=b is not None)
    new.weight.data.copy_(w)
    if b is not None:
        new.bias.data.copy_(b)
    return new


def _shuffle_order(channels: int, r: int) -> list[int]:
    """Output-channel order that puts a pixel_shuffle's input channels c*r*r + i*r + j in (i, j, c) order,
    so that in channels-last memory each output row is a run of whole pixels of the input."""
    return [c * r * r + i * r + j for i in range(r) for j in range(r) for c in range(channels)]


def _shuffled_view(dst: torch.Tensor, src: torch.Tensor, r: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of `dst` (n, c, h*r, w*r) and of `src` (n, r*r*c, h, w) in (i, j, c) channel order (see
    `_shuffle_order`) with matching (n, c, h, i, w, j) shapes: a pixel shuffle is then one elementwise op."""
    n, c, h, w = dst.shape
    d = dst.unflatten(3, (w // r, r)).unflatten(2, (h // r, r))
    s = src.unflatten(1, (r, r, c)).permute(0, 3, 4, 1, 5, 2)
    return d, s


class InferenceNet(nn.Module):
    """LambaNet with folded weights, arranged for inference; the same function, in two parts.

    `stem` + `coarse` make the 1/32 branch's result `b` from a packed region; `fine` makes the output
    from a packed region and the `b` under it. `forward` runs both on one (N, 4, h, w) tensor with h
    and w multiples of ALIGN (8 channels for noise-aware weights).

    Layout: the full-resolution part runs channels-last (NHWC), which oneDNN's convolutions with few
    channels prefer, and its two 12-channel 5x5 convolutions get 4 zero output channels so that
    their output width is a whole number of AVX2 vectors.
    """

    def __init__(self, model: LambaNet, channels_last: bool = True, pad_outputs: bool = True) -> None:
        super().__init__()
        net = fold_weight_norm(copy.deepcopy(model).eval())
        self.stem = net.conv32x
        self.rdbs = nn.ModuleList([net.RDB1, net.RDB2, net.RDB3])
        self.rdball = net.rdball
        self.conv_rdb8x = net.conv_rdb8x[0]
        self.res1 = net.resblock8x.conv1[0]
        self.res2 = net.resblock8x.conv2[0]
        self.plus = net.plus
        self.guide_radius, self.guide_clipped = net.guide_radius, net.guide_clipped
        extra = []
        if net.plus:
            self.res3, self.res4 = net.resblock8x_2.conv1[0], net.resblock8x_2.conv2[0]
            # the refinement reads the last convolution's 12 channels in the (i, j, c) order it now emits
            order = _shuffle_order(3, 2)
            self.refine1 = _rebuilt(net.refine2x[0][0], in_order=order + list(range(12, 16)))
            self.refine2 = _rebuilt(net.refine2x[1][0], out_order=order)
            extra = [self.res3, self.res4, self.refine1, self.refine2]
        self.noise_aware, self.fine_signed = net.noise_aware, net.fine_signed
        if net.noise_aware:
            # the finest-scale path reads and writes the last convolution's 12 channels in (i, j, c) order
            order = _shuffle_order(3, 2)
            self.fine_in = _rebuilt(net.fine_in[0], in_order=order + list(range(12, 20)))
            self.fine_down, self.fine_mid, self.fine_up = net.fine_down[0], net.fine_mid[0], net.fine_up[0]
            self.fine_out = _rebuilt(net.fine_out, out_order=order)
            extra = [self.fine_in, self.fine_down, self.fine_mid, self.fine_up, self.fine_out]
        # The fusion conv (groups 4) reads d and c interleaved (channel shuffle); instead its weights are
        # reordered so that each group reads 16 channels of d, then the same 16 of c: a plain concat.
        order = [2 * k for k in range(16)] + [2 * k + 1 for k in range(16)]
        self.fuse1 = _rebuilt(net.conv32_8_cat[0][0], in_order=order)
        # the two convolutions before a pixel shuffle emit their channels in (i, j, c) order (see _shuffle_order)
        self.fuse2 = _rebuilt(net.conv32_8_cat[1][0], out_order=_shuffle_order(12, 4))
        pad = 4 if pad_outputs else 0
        self.conv2x = _rebuilt(net.conv2x[0], out_pad=pad)
        self.final = _rebuilt(net.conv_2_8_32[0], out_order=_shuffle_order(3, 2), out_pad=pad)
        self.pad_outputs = pad_outputs
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        for m in (self.conv_rdb8x, self.res1, self.res2, self.fuse1, self.fuse2, self.conv2x, self.final, *extra):
            m.to(memory_format=self.memory_format)

    def stem_forward(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, 4, h, w) -> `a`, 64 channels at 1/16 of h and w (exact where 2 cells from the border)."""
        return self.stem(F.pixel_unshuffle(packed[:, :4].clamp_min(0.0), 16))

    def coarse(self, a: torch.Tensor) -> torch.Tensor:
        """`a` -> `b` (exact where COARSE_REACH cells from the border of `a`)."""
        r1 = self.rdbs[0](a)
        r2 = self.rdbs[1](r1)
        r3 = self.rdbs[2](r2)
        return self.rdball(torch.cat([r1, r2, r3], dim=1)).add_(a)

    def fine(self, packed: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, 4, h, w) and its `b` (N, 64, h/16, w/16) -> (N, 3, 2h, 2w) in [0, 1]."""
        n, _, h, w = packed.shape
        x = packed[:, :4].clamp_min(0.0).contiguous(memory_format=self.memory_format)
        c = self.conv_rdb8x(F.pixel_shuffle(b, 4).contiguous(memory_format=self.memory_format))
        u = F.pixel_unshuffle(x, 4)
        d = self.res2(F.leaky_relu_(self.res1(u), 0.2)).add_(u)
        del u
        if self.plus:
            d = self.res4(F.leaky_relu_(self.res3(d), 0.2)).add_(d)
        fused = torch.cat([t for i in range(0, 64, 16) for t in (d[:, i : i + 16], c[:, i : i + 16])], dim=1)
        del c, d
        y = self.fuse2(self.fuse1(fused))
        del fused
        # the last convolution's input, concat(conv2x(x), pixel_shuffle(lrelu(y), 4)), assembled in place
        z = torch.empty((n, 24, h, w), dtype=x.dtype, device=x.device, memory_format=self.memory_format)
        dst, src = _shuffled_view(z[:, 12:], y, 4)
        torch.ops.aten.leaky_relu.out(src, 0.2, out=dst)
        del y, dst, src
        z[:, :12] = self.conv2x(x)[:, :12]
        out = self.final(z)
        del z
        if self.plus:
            r = self.refine1(torch.cat([out[:, :12], x], dim=1))
            out = self.refine2(F.leaky_relu_(r, 0.2)).add_(out[:, :12])
            del r
        if self.noise_aware:
            sigma = packed[:, 4:].contiguous(memory_format=self.memory_format)
            seen = packed[:, :4].contiguous(memory_format=self.memory_format) if self.fine_signed else x
            f = F.leaky_relu_(self.fine_in(torch.cat([out[:, :12], seen, sigma], dim=1)), 0.2)
            u = F.leaky_relu_(self.fine_mid(F.leaky_relu_(self.fine_down(F.pixel_unshuffle(f, 2)), 0.2)), 0.2)
            u = F.pixel_shuffle(F.leaky_relu_(self.fine_up(u), 0.2), 2)
            out = self.fine_out(torch.cat([f, u], dim=1)).add_(out[:, :12])
            del f, u, sigma, seen
        out = out[:, :12].clamp_(0.0, 1.0)
        if self.guide_radius:
            per_colour = out.view(n, 4, 3, h, w)  # (i, j, c) order: the 2 x 2 position, then colour
            # the guide's statistics in float32 (bf16 sums of squares lose them)
            gain = guide_gain(per_colour.mean(1), packed[:, :4], self.guide_radius,
                              self.guide_clipped).to(out.dtype)
            out = per_colour.mul_(gain[:, None]).clamp_(0.0, 1.0).view(n, 12, h, w)
        # pixel_shuffle(out, 2) in one pass
        image = torch.empty((n, 3, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=self.memory_format)
        dst, src = _shuffled_view(image, out, 2)
        dst.copy_(src)
        return image

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.fine(packed, self.coarse(self.stem_forward(packed)))


class Restorer(TiledEngine):
    """The folded network on a torch device, applied whole or in tiles to packed, amplified frames."""

    engine = "torch"

    def __init__(self, model: LambaNet, device: str = "auto", precision: str = "auto",
                 tile: int | None = None, margin: int | None = None) -> None:
        self.device = pick_device(device)
        self.dtype = pick_precision(precision, self.device)
        self.precision = next(k for k, v in PRECISIONS.items() if v == self.dtype)
        self.precision_reason = precision_reason(precision, self.device)
        # CUDA memory runs out per tile and is returned at once: retry smaller; on CPU, fail
        self.split_on_oom = self.device.type == "cuda"
        self.whole_frames = self.device.type == "cuda"  # on CPU, tiles are faster (cache) and bound memory
        self.out_of_memory = (torch.OutOfMemoryError,)
        self.net = InferenceNet(model).to(self.device, self.dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        cpu = self.device.type == "cpu"
        if margin is None:
            margin = margin_for(fine_reach(model.plus, model.guide_radius, model.noise_aware))
        self.set_tiling(tile, DEFAULT_CPU_TILE if cpu else DEFAULT_CUDA_TILE, margin, large_frames=cpu)

    def _input(self, x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x).to(self.device, self.dtype, non_blocking=True)

    @torch.inference_mode()
    def run_tile(self, packed: torch.Tensor) -> torch.Tensor:
        """Network on one (1, 4, h, w) tensor of any size -> (1, 3, 2h, 2w) float32 on the device."""
        x, (h, w) = pad_to_multiple(packed.to(self.device, self.dtype), ALIGN)
        return self.net(x)[..., : 2 * h, : 2 * w].float()

    @torch.inference_mode()
    def __call__(self, packed: Any, sink: Callable[[torch.Tensor, Tile], None], by_columns: bool = False,
                 reverse: bool = False, band_start: Callable[[Tile], None] | None = None,
                 band_done: Callable[[Tile], None] | None = None, ensemble: bool = False) -> None:
        """`TiledEngine.__call__`, without autograd; the sink gets float32 tensors on the device. With
        `whole_frames` (CUDA), a frame that fits in one tile runs whole: one transfer, one pass (two with
        `ensemble`), the same result; if the device runs out of memory (in either pass), in tiles."""
        frame = PaddedFrame(packed)
        side = max(frame.h, frame.w)
        if self.whole_frames and side <= self.tile_for(frame.h, frame.w):
            whole, out = Tile(0, frame.h, 0, frame.w), None
            try:
                out = self._whole(frame)
                if ensemble:
                    out = average_transposed(out, self._whole(PaddedFrame(TransposedFrame(packed))))
            except self.out_of_memory:
                out = None  # also where the first view fitted and the second did not: both views, in tiles
                # tiles of half the frame from now on, as a tile that runs out is split (TiledEngine)
                self.tile = max(4 * ALIGN, min(self.tile, side) // 2 // ALIGN * ALIGN)
            if out is not None:
                if band_start is not None:
                    band_start(whole)
                sink(out, whole)
                if band_done is not None:
                    band_done(whole)
                return
            self.on_out_of_memory()  # outside the handler, whose traceback held the pass's tensors
        super().__call__(packed, sink, by_columns, reverse, band_start, band_done, ensemble)

    def _whole(self, frame: PaddedFrame) -> torch.Tensor:
        """The network on a whole (padded) frame in one pass: (1, 3, 2h, 2w) float32 on the device."""
        return self.net(self._input(frame.region(0, frame.hp, 0, frame.wp)))[..., : 2 * frame.h, : 2 * frame.w].float()

    def display(self, packed, wb: np.ndarray, rgb_cam: np.ndarray, bit_depth: int,
                sink: Callable[[np.ndarray, Tile], None], **walk) -> None:
        """Like calling the engine, but the sink gets each tile's display codes, (h, w, 3) uint8 or uint16,
        rendered with `colour.to_display` on the device."""
        display_tiles(self, packed, wb, rgb_cam, bit_depth, sink, **walk)

    def stem(self, x: np.ndarray) -> torch.Tensor:
        return self.net.stem_forward(self._input(x))

    def coarse(self, a: torch.Tensor) -> torch.Tensor:
        return self.net.coarse(a)

    def fine(self, x: np.ndarray, b: torch.Tensor) -> torch.Tensor:
        return self.net.fine(self._input(x), b).float()

    def concat(self, parts: list[torch.Tensor], axis: int) -> torch.Tensor:
        return torch.cat(parts, dim=axis)

    def new_b(self, like: torch.Tensor, h: int, w: int) -> torch.Tensor:
        return like.new_empty((1, like.shape[1], h, w))

    def release(self) -> None:
        if self.device.type == "cpu":
            release_memory()

    def on_out_of_memory(self) -> None:
        if torch.cuda.is_initialized():
            torch.cuda.empty_cache()
