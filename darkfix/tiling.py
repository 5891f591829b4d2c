"""The network's tiling, independent of the engine that runs it (no torch here).

The network runs in two passes, so that tiles need little overlap and still match the whole frame:

1. the 1/32 branch (`b` in DESIGN.md: two convolutions, three residual dense blocks) sees about 250
   packed pixels far but costs little and is 1/16 the size of the input, so it is computed once for
   the whole frame, in blocks that read exactly the context they need;
2. everything else reaches only 20 packed pixels (31 with the colour guide, 41 with the plus layers
   too: `fine_reach`): it runs tile by tile, each tile reading a margin of context (`margin_for` the
   reach: 32, or 48) and the part of `b` under it. With a margin of at least the reach the tiles agree
   with one pass over the whole frame to float rounding; smaller margins leave seams.

An engine (darkfix.inference for torch, darkfix.ovengine for OpenVINO) subclasses `TiledEngine` and says
how to run the three parts of the network on one region.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import numpy as np

from .weights import GUIDE_CELL

ALIGN = 16  # packed pixels per cell of the network's 1/32 branch
FINE_REACH = 20  # packed pixels of context the full-resolution part of the network reads on each side
PLUS_REACH = 10  # what the lamba2021-plus layers add to it (two 3x3 at 1/4, two at full packed resolution)
# what the lamba2021-na finest-scale path adds: a 3x3 at packed resolution (1), two 3x3 at 2 x 2 packed
# pixels (2 cells of 2 each, and the cell's own second pixel: 5), a 3x3 at packed resolution (1)
NA_REACH = 7
# Each tile reads this much context beyond the part it keeps: FINE_REACH rounded up to ALIGN.
DEFAULT_MARGIN = 32


def fine_reach(plus: bool = False, guide_radius: int = 0, noise_aware: bool = False) -> int:
    """Packed pixels of context a network's fine part reads on each side. The colour guide adds its box
    of cells and the neighbouring cell its gain is interpolated from (11 for the default radius)."""
    guide = (guide_radius // GUIDE_CELL + 2) * GUIDE_CELL - 1 if guide_radius else 0
    return FINE_REACH + (PLUS_REACH if plus else 0) + (NA_REACH if noise_aware else 0) + guide


def margin_for(reach: int) -> int:
    """The default margin for a network of this reach: DEFAULT_MARGIN, or more where it reads further."""
    return max(DEFAULT_MARGIN, math.ceil(reach / ALIGN) * ALIGN)
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
# On CUDA a frame that fits in one tile runs whole, in one transfer and one pass (`inference.Restorer`):
# the first GPU run (H100, 12 MP, benchmarks/RESULTS.md) timed the tiled two-pass walk at 64 ms against
# 22 ms for the whole frame in eager fp32 at any precision, its time going to host copies and transfers.
# 4096 packed pixels (up to 67 MP mosaics) need about 11 GB at fp32; less memory splits (tests/test_cuda.py).
DEFAULT_CUDA_TILE = 4096


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


def pad_index(i0: int, i1: int, n: int, reflect: bool) -> tuple[int, int, np.ndarray | None]:
    """Source range to read for indices [i0, i1) of a length-`n` axis padded at its end (reflected, or
    repeated), and the gather within that range (None: all of it, in order)."""
    if i1 <= n:
        return i0, i1, None
    idx = np.arange(i0, i1)
    idx = np.where(idx < n, idx, 2 * (n - 1) - idx) if reflect else np.minimum(idx, n - 1)
    lo, hi = int(idx.min()), int(idx.max()) + 1
    return lo, hi, idx - lo


class PaddedFrame:
    """A packed (4, h, w) frame seen as padded at the bottom and right to multiples of ALIGN (reflect, or
    replicate for tiny frames: as `packing.pad_to_multiple` pads a whole frame), without copying it.

    `src` is a numpy array, or any object with `.shape` whose `[:, y0:y1, x0:x1]` gives one (e.g.
    packing.PackedFrame, which normalises and amplifies region by region).
    """

    def __init__(self, src: Any) -> None:
        self.src = src
        _, self.h, self.w = src.shape
        self.hp, self.wp = math.ceil(self.h / ALIGN) * ALIGN, math.ceil(self.w / ALIGN) * ALIGN
        self.reflect = self.hp - self.h < self.h and self.wp - self.w < self.w

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows [y0, y1) and columns [x0, x1) of the padded frame: (1, 4, ., .) float32, contiguous."""
        ry0, ry1, rows = pad_index(y0, y1, self.h, self.reflect)
        rx0, rx1, cols = pad_index(x0, x1, self.w, self.reflect)
        part = np.asarray(self.src[:, ry0:ry1, rx0:rx1], dtype=np.float32)
        if rows is not None:
            part = part[:, rows]
        if cols is not None:
            part = part[:, :, cols]
        return np.ascontiguousarray(part[None])


# The packed planes (R, G1, G2, B, then their noise sigmas) of the transposed mosaic: a Bayer cell transposed
# keeps R and B where they were and swaps its two greens, so the transposed frame is an exact packed frame
TRANSPOSED_PLANES = (0, 2, 1, 3, 4, 6, 5, 7)


class TransposedFrame:
    """A packed (C, h, w) frame (numpy, or lazy as PaddedFrame accepts) seen as the packed frame of the
    transposed mosaic: (C, w, h), greens swapped. The ensemble's second pass reads it."""

    def __init__(self, src: Any) -> None:
        self.src = src
        c, h, w = src.shape
        self.shape = (c, w, h)

    def __getitem__(self, key: tuple) -> np.ndarray:
        _, rows, cols = key
        part = np.asarray(self.src[:, cols, rows], dtype=np.float32)
        return part[list(TRANSPOSED_PLANES[: part.shape[0]])].transpose(0, 2, 1)


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


Sink = Callable[[Any, Tile], None]


def average_transposed(out: Any, other: Any) -> Any:
    """The mean of an output and the transposed pass's output (numpy or torch, (..., h, w) and (..., w, h))."""
    return (out + other.swapaxes(-1, -2)) * 0.5


class TiledEngine:
    """The two-pass tiling over any engine. Subclasses call `set_tiling`, set `split_on_oom`, and implement
    `stem`, `coarse`, `fine` (and `concat`, `out_of_memory`, `release`);
    arrays are the engine's own (torch tensors on a device, numpy arrays)."""

    engine: str
    engine_reason: str = "as requested"
    precision: str  # "fp32", "bf16" or "fp16"
    precision_reason: str
    tile: int
    margin: int
    large_frame_tile: int | None = None
    split_on_oom: bool = False
    out_of_memory: tuple[type[BaseException], ...] = ()

    def set_tiling(self, tile: int | None, default: int, margin: int, large_frames: bool) -> None:
        """Tile side (`tile`, else `default`) and margin, both rounded to whole ALIGN cells; with
        `large_frames` and no `tile` given, large frames get LARGE_FRAME_CPU_TILE (see LARGE_FRAME)."""
        self.tile = max(ALIGN, (tile or default) // ALIGN * ALIGN)
        self.large_frame_tile = LARGE_FRAME_CPU_TILE if tile is None and large_frames else None
        self.margin = math.ceil(margin / ALIGN) * ALIGN

    def stem(self, x: np.ndarray) -> Any:
        """(1, 4, h, w) packed region -> `a` (1, 64, h/16, w/16)."""
        raise NotImplementedError

    def coarse(self, a: Any) -> Any:
        """`a` -> `b`."""
        raise NotImplementedError

    def fine(self, x: np.ndarray, b: Any) -> Any:
        """(1, 4, h, w) region and the `b` under it -> (1, 3, 2h, 2w) float32 in [0, 1]."""
        raise NotImplementedError

    def concat(self, parts: list[Any], axis: int) -> Any:
        raise NotImplementedError

    def new_b(self, like: Any, h: int, w: int) -> Any:
        """An empty (1, C, h, w) array of `like`'s kind for the whole frame's `b`."""
        raise NotImplementedError

    def release(self) -> None:
        """Hand memory back between passes (see inference.release_memory); a no-op by default."""

    def on_out_of_memory(self) -> None:
        """Before a region is retried in smaller tiles; a no-op by default."""

    def __call__(self, packed: Any, sink: Sink, by_columns: bool = False, reverse: bool = False,
                 band_start: Callable[[Tile], None] | None = None,
                 band_done: Callable[[Tile], None] | None = None, ensemble: bool = False) -> None:
        """Run on a (4, h, w) packed frame, passing each finished tile's output to `sink`.

        `packed` may also be a lazy view whose slices `[:, y0:y1, x0:x1]` give arrays (e.g. PackedFrame).

        `sink(out, tile)` gets (1, 3, 2 (y1 - y0), 2 (x1 - x0)) for the kept region of `tile`, band by band
        (see `bands` for the order); `band_start(band)` and `band_done(band)` get the region a band covers
        before its first tile and after its last. The result is the same as one pass over the whole frame
        padded to a multiple of ALIGN whenever the margin is at least FINE_REACH.

        `ensemble` (the self-ensemble, RestoreOptions.ensemble) also runs the network on the transposed
        frame (TransposedFrame), each tile on the same window of both, and averages: twice the time.
        """
        frame = PaddedFrame(packed)
        b = self._coarse(frame)
        self.release()
        twin = None
        if ensemble:
            twin_frame = PaddedFrame(TransposedFrame(packed))
            twin = (twin_frame, self._coarse(twin_frame))
            self.release()
        # every tile reads a window of the same size (edge tiles read more context inward), so that the
        # allocator and the engine see one shape: less memory held, fewer kernels made
        tile = self.tile_for(frame.h, frame.w)
        ty, tx = _steps(frame.h, frame.w, tile)
        span = (ty + 2 * self.margin, tx + 2 * self.margin)
        for band in bands(frame.h, frame.w, tile, by_columns, reverse):
            region = Tile(band[0].y0, band[-1].y1, band[0].x0, band[-1].x1)
            if band_start is not None:
                band_start(region)
            for t in band:
                self._run_region(frame, b, t, sink, span, twin)
            if band_done is not None:
                band_done(region)
            self.release()

    def tile_for(self, h: int, w: int) -> int:
        """Tile side for an (h, w) packed frame: the chosen one, or on CPU by default a smaller one for
        large frames (see LARGE_FRAME)."""
        if self.large_frame_tile is not None and h * w > LARGE_FRAME:
            return min(self.tile, self.large_frame_tile)
        return self.tile

    def _coarse(self, frame: PaddedFrame) -> Any:
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
                strips.append(self.stem(x)[..., s0 - iy0 : s1 - iy0, rx0 - ix0 : rx1 - ix0])
            a = self.concat(strips, 2)
            del strips
            out = self.coarse(a)[..., blk.y0 - ry0 : blk.y1 - ry0, blk.x0 - rx0 : blk.x1 - rx0]
            if b is None:
                b = self.new_b(out, hc, wc)
            b[..., blk.y0 : blk.y1, blk.x0 : blk.x1] = out
            del a, out
            self.release()
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

    def _run_region(self, frame: PaddedFrame, b: Any, t: Tile, sink: Sink,
                    span: tuple[int, int] | None = None, twin: tuple[PaddedFrame, Any] | None = None) -> None:
        cy0, cy1 = self._window(t.y0, t.y1, frame.h, frame.hp, span[0] if span else None)
        cx0, cx1 = self._window(t.x0, t.x1, frame.w, frame.wp, span[1] if span else None)
        try:
            out = self.fine(frame.region(cy0, cy1, cx0, cx1),
                            b[..., cy0 // ALIGN : cy1 // ALIGN, cx0 // ALIGN : cx1 // ALIGN])
            if twin is not None:  # the same window of the transposed frame, its output transposed back
                twin_frame, twin_b = twin
                other = self.fine(twin_frame.region(cx0, cx1, cy0, cy1),
                                  twin_b[..., cx0 // ALIGN : cx1 // ALIGN, cy0 // ALIGN : cy1 // ALIGN])
                out = average_transposed(out, other)
        except self.out_of_memory:
            side = max(t.y1 - t.y0, t.x1 - t.x0)
            if not self.split_on_oom or side <= 4 * ALIGN:
                raise
            # the device ran out: split this region, and start later frames with smaller tiles too
            self.on_out_of_memory()
            self.tile = max(4 * ALIGN, min(self.tile, side) // 2 // ALIGN * ALIGN)
            for sub in tiles(t.y1 - t.y0, t.x1 - t.x0, self.tile):
                sub_t = Tile(t.y0 + sub.y0, t.y0 + sub.y1, t.x0 + sub.x0, t.x0 + sub.x1)
                self._run_region(frame, b, sub_t, sink, twin=twin)
            return
        sink(out[..., 2 * (t.y0 - cy0) : 2 * (t.y1 - cy0), 2 * (t.x0 - cx0) : 2 * (t.x1 - cx0)], t)
