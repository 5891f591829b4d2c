"""Running the network: device and precision choice, folded weights, and tiles that keep memory bounded
at any frame size.

The network runs in two passes, so that tiles need little overlap and still match the whole frame:

1. the 1/32 branch (`b` in DESIGN.md: two convolutions, three residual dense blocks) sees about 250
   packed pixels far but costs little and is 1/16 the size of the input, so it is computed once for
   the whole frame, in blocks that read exactly the context they need;
2. everything else reaches only 20 packed pixels: it runs tile by tile, each tile reading a margin of
   context (32 by default) and the part of `b` under it. With a margin of at least 20 the tiles agree
   with one pass over the whole frame to float rounding; smaller margins leave seams.
"""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import functools
import math
from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .model import LambaNet, fold_weight_norm
from .packing import pad_to_multiple

ALIGN = 16  # packed pixels per cell of the network's 1/32 branch
FINE_REACH = 20  # packed pixels of context the full-resolution part of the network reads on each side
# Each tile reads this much context beyond the part it keeps: FINE_REACH rounded up to ALIGN.
DEFAULT_MARGIN = 32
COARSE_REACH = 14  # 1/32 cells the residual dense blocks read on each side (4 + 5 + 5 convolutions 3x3)
STEM_REACH = 2  # 1/32 cells the two convolutions before them read on each side
COARSE_BLOCK = 160  # 1/32 cells per side of a block of the first pass (a 12 MP frame is one block)
STEM_ROWS = 16  # 1/32 cell rows per strip of the first convolution (bounds its 1024-channel input)
# Packed pixels per tile side (mosaic / 2). On CPU, measured on a 2-core AMD EPYC (benchmarks/RESULTS.md):
# tiles of 512 are as fast as 768 or 1024 (whole frames are slower: cache) and keep `darkfix restore` of a
# 12 MP raw at 480-535 MB peak; 768 and 1024 reach 590-600 MB.
DEFAULT_CPU_TILE = 512
# Above this many packed pixels (30 MP mosaics) the CPU default is LARGE_FRAME_CPU_TILE instead: a quarter
# of the working set and half the height of the image bands in flight, so that memory stays near 0.6 GB
# up to 100 MP, for 11-20% more time (benchmarks/RESULTS.md, section 4).
LARGE_FRAME = 30_000_000 // 4
LARGE_FRAME_CPU_TILE = 256
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


@dataclass(frozen=True)
class Tile:
    """A region of the packed frame: [y0, y1) x [x0, x1) is kept, read with context around it."""

    y0: int
    y1: int
    x0: int
    x1: int


def _steps(h: int, w: int, size: int) -> tuple[int, int]:
    ny, nx = math.ceil(h / size), math.ceil(w / size)
    # equal-sized tiles, aligned to the network's coarsest grid so every tile sees the same cells
    return math.ceil(h / ny / ALIGN) * ALIGN, math.ceil(w / nx / ALIGN) * ALIGN


def bands(h: int, w: int, size: int, by_columns: bool = False, reverse: bool = False) -> list[list[Tile]]:
    """Cover an (h, w) packed frame with kept regions of at most `size` (multiples of ALIGN), grouped in
    bands: rows of tiles top to bottom, or with `by_columns` columns of tiles left to right; `reverse`
    walks the bands the other way. A band is complete before the next one starts."""
    ty, tx = _steps(h, w, size)
    ys = [(y0, min(y0 + ty, h)) for y0 in range(0, h, ty)]
    xs = [(x0, min(x0 + tx, w)) for x0 in range(0, w, tx)]
    if by_columns:
        out = [[Tile(y0, y1, x0, x1) for y0, y1 in ys] for x0, x1 in xs]
    else:
        out = [[Tile(y0, y1, x0, x1) for x0, x1 in xs] for y0, y1 in ys]
    return out[::-1] if reverse else out


def tiles(h: int, w: int, size: int) -> Iterator[Tile]:
    """The tiles of `bands` row by row."""
    for band in bands(h, w, size):
        yield from band


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


def release_memory() -> None:
    """Hand memory freed by the network back to the OS.

    glibc's malloc keeps freed blocks of the size that tiles use (up to 32 MB) for reuse, which roughly
    doubles the resident size of the network's working set; trimming after each pass returns it at the
    cost of a few milliseconds. (Making every large block an mmap instead costs ~50% more CPU time in
    page faults, measured.) A no-op where malloc_trim does not exist.
    """
    trim = _libc_function("malloc_trim")
    if trim is not None:
        trim(0)


def limit_malloc_arenas(arenas: int = 1) -> None:
    """Let glibc's malloc keep at most `arenas` heaps for all threads (M_ARENA_MAX).

    Each thread that allocates (the PNG writer, the deflate pool, the network's) otherwise gets a heap of
    its own that keeps freed memory: 25-30 MB more resident at 100 MP, measured. A process-wide setting
    for the command line to make before those threads start; a no-op without glibc.
    """
    mallopt = _libc_function("mallopt")
    if mallopt is not None:
        mallopt(-8, arenas)  # M_ARENA_MAX


@functools.lru_cache(maxsize=None)
def _libc_function(name: str):
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6"), name)
    except (OSError, AttributeError, TypeError):
        return None


class InferenceNet(nn.Module):
    """LambaNet with folded weights, arranged for inference; the same function, in two parts.

    `stem` + `coarse` make the 1/32 branch's result `b` from a packed region; `fine` makes the output
    from a packed region and the `b` under it. `forward` runs both on one (N, 4, h, w) tensor with h
    and w multiples of ALIGN.

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
        for m in (self.conv_rdb8x, self.res1, self.res2, self.fuse1, self.fuse2, self.conv2x, self.final):
            m.to(memory_format=self.memory_format)

    def stem_forward(self, packed: torch.Tensor) -> torch.Tensor:
        """(N, 4, h, w) -> `a`, 64 channels at 1/16 of h and w (exact where 2 cells from the border)."""
        return self.stem(F.pixel_unshuffle(packed, 16))

    def coarse(self, a: torch.Tensor) -> torch.Tensor:
        """`a` -> `b` (exact where COARSE_REACH cells from the border of `a`)."""
        r1 = self.rdbs[0](a)
        r2 = self.rdbs[1](r1)
        r3 = self.rdbs[2](r2)
        return self.rdball(torch.cat([r1, r2, r3], dim=1)).add_(a)

    def fine(self, packed: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """(N, 4, h, w) and its `b` (N, 64, h/16, w/16) -> (N, 3, 2h, 2w) in [0, 1]."""
        n, _, h, w = packed.shape
        x = packed.contiguous(memory_format=self.memory_format)
        c = self.conv_rdb8x(F.pixel_shuffle(b, 4).contiguous(memory_format=self.memory_format))
        u = F.pixel_unshuffle(x, 4)
        d = self.res2(F.leaky_relu_(self.res1(u), 0.2)).add_(u)
        del u
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
        # pixel_shuffle(clamp(out), 2) in one pass
        image = torch.empty((n, 3, 2 * h, 2 * w), dtype=x.dtype, device=x.device, memory_format=self.memory_format)
        dst, src = _shuffled_view(image, out[:, :12], 2)
        torch.clamp(src, 0.0, 1.0, out=dst)
        return image

    def forward(self, packed: torch.Tensor) -> torch.Tensor:
        return self.fine(packed, self.coarse(self.stem_forward(packed)))


class Restorer:
    """The folded network on a device, applied whole or in tiles to packed, amplified frames."""

    def __init__(self, model: LambaNet, device: str = "auto", precision: str = "auto",
                 tile: int | None = None, margin: int = DEFAULT_MARGIN) -> None:
        self.device = pick_device(device)
        self.dtype = pick_precision(precision, self.device)
        self.precision_reason = precision_reason(precision, self.device)
        # CUDA memory runs out per tile and is returned at once: retry smaller; on CPU, fail
        self.split_on_oom = self.device.type == "cuda"
        self.net = InferenceNet(model).to(self.device, self.dtype).eval()
        for p in self.net.parameters():
            p.requires_grad_(False)
        default = DEFAULT_CUDA_TILE if self.device.type == "cuda" else DEFAULT_CPU_TILE
        self.tile = max(ALIGN, (tile or default) // ALIGN * ALIGN)
        self.large_frame_tile = LARGE_FRAME_CPU_TILE if tile is None and self.device.type == "cpu" else None
        self.margin = math.ceil(margin / ALIGN) * ALIGN

    @torch.inference_mode()
    def run_tile(self, packed: torch.Tensor) -> torch.Tensor:
        """Network on one (1, 4, h, w) tensor of any size -> (1, 3, 2h, 2w) float32 on the device."""
        x, (h, w) = pad_to_multiple(packed.to(self.device, self.dtype), ALIGN)
        return self.net(x)[..., : 2 * h, : 2 * w].float()

    @torch.inference_mode()
    def __call__(self, packed: np.ndarray, sink: Callable[[torch.Tensor, Tile], None], by_columns: bool = False,
                 reverse: bool = False, band_start: Callable[[Tile], None] | None = None,
                 band_done: Callable[[Tile], None] | None = None) -> None:
        """Run on a (4, h, w) packed frame, passing each finished tile's output to `sink`.

        `packed` may also be a lazy view whose slices `[:, y0:y1, x0:x1]` give arrays (e.g. PackedFrame).

        `sink(out, tile)` gets (1, 3, 2 (y1 - y0), 2 (x1 - x0)) for the kept region of `tile`, band by band
        (see `bands` for the order); `band_start(band)` and `band_done(band)` get the region a band covers
        before its first tile and after its last. The result is the same as one pass over the whole frame
        padded to a multiple of ALIGN (as `run_tile` pads it) whenever the margin is at least FINE_REACH.
        """
        frame = _Frame(packed, self.device, self.dtype)
        b = self._coarse(frame)
        if self.device.type == "cpu":
            release_memory()
        # every tile reads a window of the same size (edge tiles read more context inward), so that the
        # allocator and oneDNN see one shape: less memory held, fewer kernels made
        tile = self.tile_for(frame.h, frame.w)
        ty, tx = _steps(frame.h, frame.w, tile)
        span = (ty + 2 * self.margin, tx + 2 * self.margin)
        for band in bands(frame.h, frame.w, tile, by_columns, reverse):
            region = Tile(band[0].y0, band[-1].y1, band[0].x0, band[-1].x1)
            if band_start is not None:
                band_start(region)
            for t in band:
                self._run_region(frame, b, t, sink, span)
            if band_done is not None:
                band_done(region)
            if self.device.type == "cpu":
                release_memory()

    def tile_for(self, h: int, w: int) -> int:
        """Tile side for an (h, w) packed frame: the chosen one, or on CPU by default a smaller one for
        large frames (see LARGE_FRAME)."""
        if self.large_frame_tile is not None and h * w > LARGE_FRAME:
            return min(self.tile, self.large_frame_tile)
        return self.tile

    def _coarse(self, frame: _Frame) -> torch.Tensor:
        """The 1/32 branch for the whole (padded) frame, in blocks that read all the context they need."""
        hc, wc = frame.hp // ALIGN, frame.wp // ALIGN
        b = None
        for blk in tiles(hc, wc, COARSE_BLOCK):
            ry0, ry1 = max(0, blk.y0 - COARSE_REACH), min(hc, blk.y1 + COARSE_REACH)
            rx0, rx1 = max(0, blk.x0 - COARSE_REACH), min(wc, blk.x1 + COARSE_REACH)
            ix0, ix1 = max(0, rx0 - STEM_REACH), min(wc, rx1 + STEM_REACH)
            strips = []
            for s0 in range(ry0, ry1, STEM_ROWS):
                s1 = min(ry1, s0 + STEM_ROWS)
                iy0, iy1 = max(0, s0 - STEM_REACH), min(hc, s1 + STEM_REACH)
                x = frame.region(ALIGN * iy0, ALIGN * iy1, ALIGN * ix0, ALIGN * ix1)
                strips.append(self.net.stem_forward(x)[..., s0 - iy0 : s1 - iy0, rx0 - ix0 : rx1 - ix0])
            a = torch.cat(strips, dim=2)
            del strips
            out = self.net.coarse(a)[..., blk.y0 - ry0 : blk.y1 - ry0, blk.x0 - rx0 : blk.x1 - rx0]
            if b is None:
                b = out.new_empty((1, out.shape[1], hc, wc))
            b[..., blk.y0 : blk.y1, blk.x0 : blk.x1] = out
            del a, out
            if self.device.type == "cpu":
                release_memory()
        return b

    def _window(self, start: int, stop: int, n: int, padded: int, span: int | None) -> tuple[int, int]:
        """Rows (or columns) to read for the kept range [start, stop): `margin` beyond it, up to a multiple
        of ALIGN past the frame's end (the padded frame), or `span` of them, shifted inward at the edges."""
        lo = max(0, start - self.margin)
        if span is not None:
            span = min(span, padded)
            lo = min(lo, padded - span)
            return lo, lo + span
        return lo, min(padded, math.ceil(min(n, stop + self.margin) / ALIGN) * ALIGN)

    def _run_region(self, frame: _Frame, b: torch.Tensor, t: Tile, sink: Callable[[torch.Tensor, Tile], None],
                    span: tuple[int, int] | None = None) -> None:
        cy0, cy1 = self._window(t.y0, t.y1, frame.h, frame.hp, span[0] if span else None)
        cx0, cx1 = self._window(t.x0, t.x1, frame.w, frame.wp, span[1] if span else None)
        try:
            x = frame.region(cy0, cy1, cx0, cx1)
            out = self.net.fine(x, b[..., cy0 // ALIGN : cy1 // ALIGN, cx0 // ALIGN : cx1 // ALIGN]).float()
        except torch.OutOfMemoryError:
            side = max(t.y1 - t.y0, t.x1 - t.x0)
            if not self.split_on_oom or side <= 4 * ALIGN:
                raise
            # CUDA ran out: split this region, and start later frames with smaller tiles too
            if torch.cuda.is_initialized():
                torch.cuda.empty_cache()
            self.tile = max(4 * ALIGN, min(self.tile, side) // 2 // ALIGN * ALIGN)
            for sub in tiles(t.y1 - t.y0, t.x1 - t.x0, self.tile):
                sub_t = Tile(t.y0 + sub.y0, t.y0 + sub.y1, t.x0 + sub.x0, t.x0 + sub.x1)
                self._run_region(frame, b, sub_t, sink)
            return
        sink(out[..., 2 * (t.y0 - cy0) : 2 * (t.y1 - cy0), 2 * (t.x0 - cx0) : 2 * (t.x1 - cx0)], t)


class _Frame:
    """A packed (4, h, w) frame seen as padded at the bottom and right to multiples of ALIGN, the way
    `pad_to_multiple` pads a whole frame (reflect, or replicate for tiny frames), without copying it.

    `src` is a numpy array or tensor, or any object with `.shape` whose `[:, y0:y1, x0:x1]` gives one:
    a caller can then normalise and amplify region by region instead of holding the whole float frame.
    """

    def __init__(self, src, device: torch.device, dtype: torch.dtype) -> None:
        self.src = src
        self.device, self.dtype = device, dtype
        _, self.h, self.w = src.shape
        self.hp, self.wp = math.ceil(self.h / ALIGN) * ALIGN, math.ceil(self.w / ALIGN) * ALIGN
        self.reflect = self.hp - self.h < self.h and self.wp - self.w < self.w

    def _index(self, i0: int, i1: int, n: int) -> tuple[int, int, torch.Tensor | None]:
        """Source range to read for padded indices [i0, i1), and the gather within it (None: all of it)."""
        if i1 <= n:
            return i0, i1, None
        idx = torch.arange(i0, i1)
        idx = torch.where(idx < n, idx, 2 * (n - 1) - idx) if self.reflect else idx.clamp(max=n - 1)
        lo, hi = int(idx.min()), int(idx.max()) + 1
        return lo, hi, idx - lo

    def region(self, y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        """Rows [y0, y1) and columns [x0, x1) of the padded frame as a (1, 4, ., .) tensor on the device."""
        ry0, ry1, rows = self._index(y0, y1, self.h)
        rx0, rx1, cols = self._index(x0, x1, self.w)
        part = self.src[:, ry0:ry1, rx0:rx1]
        part = part if isinstance(part, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(part))
        if rows is not None:
            part = part.index_select(1, rows)
        if cols is not None:
            part = part.index_select(2, cols)
        return part[None].to(self.device, self.dtype, non_blocking=True).contiguous()
