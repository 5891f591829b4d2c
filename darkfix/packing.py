"""Mosaic <-> packed RGGB tensor: CFA alignment, packing, padding for the network and cropping back."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .amplify import estimate_exposure, estimate_from_raw
from .weights import INPUT_NOISE
from .noise import NoiseLevel, amplified_terms, estimate as estimate_noise, sigma_planes_into

if TYPE_CHECKING:  # torch is imported lazily: batch's decode workers run this module without it
    import torch

    from .options import RestoreOptions
    from .rawio import RawFrame


# Where the white-balanced input of `balanced` weights is clipped (darkfix.lab.synth trains with the same)
BALANCED_CEILING = 4.0
# A packed pixel whose four white-balanced planes are all amplified past this is past white in every
# channel: its colour is unknown (it renders white). The network gets the colour of its surroundings
# there instead (FILL_CELL): over-range light leaks into the neighbourhood as a coloured fringe, and
# even plain white leaks as a grey, brighter halo that mutes the colour next to a window. The margin
# above 1 keeps the noise of what is just below white from passing it in all four planes at once.
OVER_WHITE = 1.25
# Over-white pixels take the mean of the pixels in their cell of FILL_CELL x FILL_CELL packed pixels
# with no plane past OVER_WHITE (bilinear between cells); cells with none take their neighbours' means.
FILL_CELL = 8


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
    layout = cfa_layout(cfa, x.shape)
    top, left = layout.top, layout.left
    h, w = x.shape
    bottom = (top + h) % 2
    right = (left + w) % 2
    if top or left or bottom or right:
        x = np.pad(x, ((top, bottom), (left, right)), mode="reflect" if min(h, w) > 1 else "edge")
    hh, ww = x.shape
    packed = x.reshape(hh // 2, 2, ww // 2, 2).transpose(1, 3, 0, 2).reshape(4, hh // 2, ww // 2)
    return np.ascontiguousarray(packed), layout


def channel_black(black: np.ndarray, layout: Layout) -> np.ndarray:
    """Black level per packed plane (R, G1, G2, B) from the (2, 2) black of the original CFA cell."""
    return np.array([black[(i + layout.top) % 2, (j + layout.left) % 2] for i in (0, 1) for j in (0, 1)],
                    dtype=np.float32)


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


def _source_index(a0: int, a1: int, offset: int, n: int, reflect: bool) -> slice | np.ndarray:
    """Original rows (or columns) behind aligned ones [a0, a1), mirrored by one as `pack` pads."""
    lo, hi = a0 - offset, a1 - offset
    if lo >= 0 and hi <= n:
        return slice(lo, hi)
    idx = np.arange(lo, hi)
    if reflect:
        return np.where(idx < 0, -idx, np.where(idx >= n, 2 * (n - 1) - idx, idx))
    return np.clip(idx, 0, n - 1)


def _between_cells(pos: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For packed coordinates `pos`, the two FILL_CELL cells (of `n`) around each pixel centre and the
    weight of the second, as bilinear interpolation between cell centres reads them (edges held)."""
    u = np.clip((pos + 0.5) / FILL_CELL - 0.5, 0.0, n - 1)
    lo = u.astype(np.int64)
    return lo, np.minimum(lo + 1, n - 1), (u - lo).astype(np.float32)


def _ring_sums(x: np.ndarray) -> np.ndarray:
    """Sums over each element's 3 x 3 neighbourhood of a (c, h, w) array (zero outside)."""
    p = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    h, w = x.shape[1:]
    return sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3))


class PackedFrame:
    """The packed, normalised and amplified frame as a lazy (4, h, w) float32 array.

    Slicing `[:, y0:y1, x0:x1]` computes that region from the uint16 mosaic, so a tiled network never
    holds the whole float frame (8 bytes per mosaic pixel, 0.8 GB at 100 MP). `np.asarray(frame)`
    gives the whole frame: `pack`'s planes, (raw - black) / (white - black) clipped at 1, times the gain
    (to float rounding). Noise below black stays negative, down to -1 (what it is worth after the gain):
    the network reads its input clipped at 0, but its colour guide (model.guide_gain) needs local means
    that no clip has biased. With `wb` (4 multipliers, for the R, G1, G2, B planes) each plane is also
    white-balanced and the result clipped at BALANCED_CEILING instead, and pixels past OVER_WHITE in all
    four planes take the colour around them (FILL_CELL; they render white: `saturated`). With `noise`
    (noise-aware weights) four more planes follow: each plane's predicted standard deviation
    (`darkfix.noise.sigma_planes`), so regions are (8, h, w); `[:4, ...]` gives the planes alone.
    """

    dtype = np.dtype(np.float32)

    def __init__(self, mosaic: np.ndarray, layout: Layout, black: np.ndarray, white: float, gain: float,
                 wb: np.ndarray | None = None, noise: NoiseLevel | None = None) -> None:
        self.mosaic, self.layout = mosaic, layout
        h, w = mosaic.shape
        self.shape = (4 if noise is None else 8, (layout.top + h + 1) // 2, (layout.left + w + 1) // 2)
        self.reflect = min(h, w) > 1
        b = np.asarray(black, dtype=np.float32).reshape(4, 1, 1)
        self.black = b
        # normalise then amplify as one multiply; clipping at the gain is clipping the normalised value at 1
        self.scale = np.float32(gain) / (np.float32(white) - b)
        self.gain = np.float32(gain)
        if wb is not None:
            # white-balanced input (weights trained so): each plane times its multiplier, clipped at
            # BALANCED_CEILING, far enough above white that the noise of what is just below white keeps
            # its shape (a clip at 1 biases bright, noisy colours: red lost first, as its gain is highest)
            self.scale = self.scale * np.asarray(wb, np.float32).reshape(4, 1, 1)
            self.gain = np.float32(BALANCED_CEILING)
        # a little under the white level: sensors clip at slightly different codes per photosite
        self.clip = b + np.float32(0.99) * (np.float32(white) - b)
        # the raw code at which each plane passes OVER_WHITE (never, for input that is not balanced)
        self.over = b + np.float32(OVER_WHITE) / self.scale if wb is not None else None
        self._any_saturated: bool | None = None
        self._fill: np.ndarray | None = None
        self.noise = noise
        # how noisy the frame is at the brightness it is restored to (None without a noise level)
        self.relative_noise = None if noise is None else noise.relative(float(gain))
        if noise is not None:  # var = a y + b of each amplified (and balanced) plane y
            a, b = amplified_terms(noise, np.float32(gain) * (np.ones(4) if wb is None else np.asarray(wb)))
            self._noise_terms = (a.astype(np.float32).reshape(4, 1, 1), b.astype(np.float32).reshape(4, 1, 1))

    def __getitem__(self, key: tuple) -> np.ndarray:
        if not (isinstance(key, tuple) and len(key) == 3 and key[0] in (slice(None), slice(None, 4))
                and all(isinstance(k, slice) and k.step in (None, 1) for k in key[1:])):
            raise IndexError("PackedFrame supports [:, y0:y1, x0:x1] and [:4, y0:y1, x0:x1] only; use np.asarray "
                             "for the rest")
        _, h, w = self.shape
        y0, y1, _ = key[1].indices(h)
        x0, x1, _ = key[2].indices(w)
        raw = self._raw(y0, max(y0, y1), x0, max(x0, x1))
        # noise-aware: the planes and their noise map in one array, filled in place (a concatenation and
        # the map's temporaries cost as much as the planes themselves); [:4] leaves the map out
        planes_only = self.noise is None or key[0] == slice(None, 4)
        full = None if planes_only else np.empty((8, *raw.shape[1:]), np.float32)
        out = self._scaled(raw, None if full is None else full[:4])
        if self.over is not None and self._any_bright():
            ys, xs = np.nonzero((raw >= self.over).all(axis=0))
            if ys.size:
                out[:, ys, xs] = self._fill_at(ys + y0, xs + x0)
        if full is None:
            return out
        sigma_planes_into(out, *self._noise_terms, out=full[4:])
        return full

    def _scaled(self, raw: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """(4, h, w) raw planes normalised, amplified (and balanced) and clipped (into `out` if given)."""
        out = np.subtract(raw, self.black, dtype=np.float32, out=out)
        out *= self.scale
        return np.clip(out, -1.0, self.gain, out=out)

    def _fill_at(self, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
        """(4, n) fill values for over-white packed pixels at (ys, xs): the cell map, bilinear."""
        if self._fill is None:
            self._fill = self._fill_map()
        m = self._fill
        (y0, y1, fy), (x0, x1, fx) = (_between_cells(pos, n) for pos, n in ((ys, m.shape[1]), (xs, m.shape[2])))
        return ((1 - fy) * ((1 - fx) * m[:, y0, x0] + fx * m[:, y0, x1])
                + fy * ((1 - fx) * m[:, y1, x0] + fx * m[:, y1, x1]))

    def _fill_map(self) -> np.ndarray:
        """(4, ch, cw): per cell of FILL_CELL packed pixels, the mean of its pixels with no plane over white;
        cells without any take the mean of their filled neighbours, ring by ring (1 where nothing is)."""
        _, h, w = self.shape
        ch, cw = -(-h // FILL_CELL), -(-w // FILL_CELL)
        sums = np.zeros((4, ch, cw), np.float64)
        counts = np.zeros((ch, cw), np.float64)
        starts = np.arange(0, w, FILL_CELL)
        for cy, y0 in enumerate(range(0, h, FILL_CELL)):
            raw = self._raw(y0, min(h, y0 + FILL_CELL), 0, w)
            # only pixels with every plane under OVER_WHITE: the partly clipped ones at a window's edge
            # are bright in one colour
            keep = (raw < self.over).all(axis=0)
            sums[:, cy] = np.add.reduceat((self._scaled(raw) * keep).sum(axis=1), starts, axis=1)
            counts[cy] = np.add.reduceat(keep.sum(axis=0), starts)
        filled = counts > 0
        means = np.ones((4, ch, cw), np.float32)
        means[:, filled] = sums[:, filled] / counts[filled]
        while not filled.all():
            ring = _ring_sums(np.concatenate([means * filled, filled[None]]))
            new = ~filled & (ring[4] > 0)
            if not new.any():  # nothing anywhere is under white: plain white
                break
            means[:, new] = ring[:4, new] / ring[4, new]
            filled |= new
        return means

    def _any_bright(self) -> bool:
        """Whether any photosite of the frame reaches the sensor's clip or an OVER_WHITE level (checked once)."""
        if self._any_saturated is None:
            low = self.clip.min() if self.over is None else min(self.clip.min(), self.over.min())
            self._any_saturated = bool(self.mosaic.max() >= low)
        return self._any_saturated

    def saturated(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray | None:
        """(y1 - y0, x1 - x0) bool: packed pixels whose light's colour is unknown, so that they render white
        as LibRaw's default clipping does: where a photosite reached the sensor's white level, or (balanced
        input) where all four planes are amplified past OVER_WHITE. None where there is none in the region
        (and, checked once, for frames without any)."""
        if not self._any_bright():
            return None
        raw = self._raw(y0, y1, x0, x1)
        mask = (raw >= self.clip).any(axis=0)
        if self.over is not None:
            mask |= (raw >= self.over).all(axis=0)
        return mask if mask.any() else None

    def _raw(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The (4, y1 - y0, x1 - x0) uint16 planes of a region (0 <= y0 <= y1 <= h, same for x)."""
        rows = _source_index(2 * y0, 2 * y1, self.layout.top, self.layout.height, self.reflect)
        cols = _source_index(2 * x0, 2 * x1, self.layout.left, self.layout.width, self.reflect)
        block = self.mosaic[rows][:, cols]
        return block.reshape(y1 - y0, 2, x1 - x0, 2).transpose(1, 3, 0, 2).reshape(4, y1 - y0, x1 - x0)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        whole = self[:, :, :]
        return whole if dtype is None else whole.astype(dtype, copy=False)


@dataclass
class Prepared:
    """A frame ready for the network: packed, normalised and amplified on demand (see `PackedFrame`)."""

    packed: PackedFrame
    layout: Layout
    amplification: float  # the estimate or the given ratio, before the brightness factor
    source: str  # what the amplification came from: "ratio", "auto" or "paper"
    wb: np.ndarray  # (3,) the white balance the frame is rendered with
    balanced: bool  # whether `packed` is white-balanced (then the network's output is too)
    noise: NoiseLevel | None = None  # the noise level given to noise-aware weights (`packed` has 8 planes)


EXPOSURES = ("auto", "paper")


def prepare(mosaic: np.ndarray, cfa: str, black: np.ndarray, white: float, ratio: float | None = None,
            brightness: float = 1.0, *, exposure: str = "auto", wb: np.ndarray | None = None,
            balanced: bool = False, noise_aware: bool = False, noise: NoiseLevel | None = None) -> Prepared:
    """Align the CFA, choose the amplification and wrap the mosaic as a lazy packed frame.

    The amplification is `ratio` when given, else darkfix's automatic exposure (`exposure="auto"`,
    which needs the frame's white balance `wb`, R, G, B) or the paper's estimate ("paper"); the
    brightness factor multiplies it. `balanced` white-balances the packed planes (by `wb / wb[G]`).
    `noise_aware` adds the noise map noise-aware weights read: from `noise` (a sensor profile, the DNG's
    NoiseProfile), else estimated from the frame.
    """
    if exposure not in EXPOSURES:
        raise ValueError(f"unknown exposure {exposure!r} (expected one of {', '.join(EXPOSURES)})")
    wb3 = np.ones(3, np.float32) if wb is None else np.asarray(wb, np.float32).reshape(3)
    rel = wb3 / wb3[1]
    cell = np.array([rel["RGB".index(c)] for c in cfa], np.float32).reshape(2, 2)
    if ratio is not None:
        amp, source = float(ratio), "ratio"
    elif exposure == "auto":
        amp, source = estimate_exposure(mosaic, black, white, cell), "auto"
    else:
        amp, source = estimate_from_raw(mosaic, black, white), "paper"
    layout = cfa_layout(cfa, mosaic.shape)
    planes = rel[[0, 1, 1, 2]] if balanced else None
    noise = (noise or estimate_frame_noise(mosaic, cfa, black, white)) if noise_aware else None
    packed = PackedFrame(mosaic, layout, channel_black(black, layout), white, amp * brightness, wb=planes,
                         noise=noise)
    return Prepared(packed, layout, amp, source, wb3, balanced, noise)


def cfa_layout(cfa: str, shape: tuple[int, ...]) -> Layout:
    """Where an (H, W) mosaic of this CFA phase sits once aligned so that red is at (0, 0)."""
    red = cfa.index("R")
    return Layout(red // 2, red % 2, shape[0], shape[1])


def estimate_frame_noise(mosaic: np.ndarray, cfa: str, black: np.ndarray, white: float) -> NoiseLevel:
    """`darkfix.noise.estimate` on a mosaic of any CFA phase, with its (2, 2) black levels."""
    layout = cfa_layout(cfa, mosaic.shape)
    return estimate_noise(aligned_planes(mosaic, layout), channel_black(black, layout), white)


def aligned_planes(mosaic: np.ndarray, layout: Layout) -> list[np.ndarray]:
    """The mosaic's four colour planes as views, in packed order (R, G1, G2, B)."""
    return [mosaic[(i + layout.top) % 2 :: 2, (j + layout.left) % 2 :: 2] for i in (0, 1) for j in (0, 1)]


def prepare_frame(frame: "RawFrame", opts: "RestoreOptions", convention: str = "raw") -> Prepared:
    """`prepare` for a decoded frame with the user's options (its white balance as `opts.wb` says), for
    weights of this input `convention` (WeightsInfo.input: "raw", "balanced" or "balanced+noise")."""
    wb = frame.wb_camera if opts.wb == "camera" else frame.wb_daylight
    return prepare(frame.mosaic, frame.cfa, frame.black, frame.white, opts.ratio, opts.brightness,
                   exposure=opts.exposure, wb=wb, balanced=convention != "raw",
                   noise_aware=convention == INPUT_NOISE, noise=frame.noise)
