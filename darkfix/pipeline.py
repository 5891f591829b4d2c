"""One raw file to one PNG: decode -> pack + amplify -> network (tiled) -> colour -> encode -> atomic write.

After decoding the stages stream, tile by tile: the network reads regions of the lazily normalised
mosaic (packing.PackedFrame), colour is applied to each tile's output, and each finished band of tiles
leaves as rows straight into the PNG encoder, so that beyond the mosaic memory is bounded by the tile
and the band (benchmarks/RESULTS.md). `darkfix bench` times the same functions stage by stage.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .colour import orient
from .engine import Routed
from .errors import OutputError, OutputExistsError
from .imagefile import default_suffix, format_of, write_jpeg, write_linear_dng, write_tiff
from .metadata import exif_tiff
from .options import RestoreOptions
from .packing import Prepared, prepare_frame
from .pngio import PngStream, atomic_output, claim_output
from .profile import read_frame
from .rawio import RawFrame
from .tiling import Tile
from .weights import WeightsInfo

RAW_SUFFIXES = {".arw", ".dng", ".nef", ".nrw", ".cr2", ".cr3", ".crw", ".rw2", ".orf", ".pef", ".raf",
                ".srw", ".3fr", ".fff", ".iiq", ".erf", ".kdc", ".dcr", ".mos", ".mef", ".mrw", ".x3f",
                ".rwl", ".raw", ".sr2", ".srf", ".dcs", ".k25"}
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp"}  # pictures, not raws


class Restorer(Protocol):
    """What the pipeline needs of an engine (inference.Restorer for torch, ovengine.OpenVINORestorer)."""

    engine: str
    device: Any  # torch.device, or OpenVINO's stand-in with the same `.type`
    precision: str

    def __call__(self, packed: Any, sink: Callable[[Any, Tile], None], **walk: Any) -> None: ...

    def display(self, packed: Any, wb: np.ndarray, rgb_cam: np.ndarray, bit_depth: int,
                sink: Callable[[np.ndarray, Tile], None], **walk: Any) -> None: ...


def as_numpy(out: Any) -> np.ndarray:
    """An engine's (1, 3, H, W) output as a float32 numpy array (torch tensors copied off their device)."""
    return out if isinstance(out, np.ndarray) else out.float().cpu().numpy()


def quantise(image: Any, bit_depth: int) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] (an engine's output) -> (H, W, 3) uint8 or uint16, rounded."""
    top = 255.0 if bit_depth == 8 else 65535.0
    q = np.clip(as_numpy(image)[0], 0.0, 1.0).transpose(1, 2, 0) * top + 0.5
    return q.astype(np.uint8 if bit_depth == 8 else np.uint16)


def output_size(frame: RawFrame, prep: Prepared) -> tuple[int, int]:
    """(width, height) of the upright image."""
    h, w = prep.layout.height, prep.layout.width
    return (h, w) if frame.flip & 4 else (w, h)


def render_bands(frame: RawFrame, prep: Prepared, restorer: Restorer, info: WeightsInfo, opts: RestoreOptions,
                 emit: Callable[[np.ndarray], None]) -> None:
    """Network and colour, tile by tile; `emit` gets the upright image's rows in order, a band at a time.

    The network walks its tiles in the order the orientation reads them (columns for a 90-degree turn,
    backwards for a flip), so every band can be emitted as soon as it is done: the band being filled is
    the only part of the image held here (`emit` may keep the previous one a while, as PngStream does).
    """
    wb = prep.wb.astype(np.float32)
    if prep.balanced:  # the network's output is white-balanced already (relative to green)
        wb = np.full(3, wb[1], np.float32)
    top, left, height, width = prep.layout.top, prep.layout.left, prep.layout.height, prep.layout.width
    dtype = np.uint8 if opts.bit_depth == 8 else np.uint16
    band = np.empty((0, 0, 3), dtype)
    y0 = x0 = 0  # where the band sits in the original mosaic's coordinates

    def band_start(region: Tile) -> None:
        # the band in full-resolution coordinates, cut to the original mosaic's area
        nonlocal band, y0, x0
        y0, y1 = max(2 * region.y0 - top, 0), min(2 * region.y1 - top, height)
        x0, x1 = max(2 * region.x0 - left, 0), min(2 * region.x1 - left, width)
        band = np.empty((y1 - y0, x1 - x0, 3), dtype)  # new each time: the PNG thread may still read the last

    def place(q: np.ndarray, t: Tile) -> None:
        # the tile's part of the band (tiles on the aligned mosaic's edge reach one mirrored row past it)
        ty0, ty1 = max(2 * t.y0 - top, y0), min(2 * t.y1 - top, y0 + band.shape[0])
        tx0, tx1 = max(2 * t.x0 - left, x0), min(2 * t.x1 - left, x0 + band.shape[1])
        oy, ox = ty0 - (2 * t.y0 - top), tx0 - (2 * t.x0 - left)
        q = q[oy : oy + ty1 - ty0, ox : ox + tx1 - tx0]
        if info.output == "camera":
            # photosites the sensor clipped come out white, as in the SID ground truth (LibRaw clips after
            # white balance), whatever colour the network gave them
            sat = saturated_pixels(prep, t, oy, ox, ty1 - ty0, tx1 - tx0)
            if sat is not None:
                q[sat] = np.iinfo(dtype).max
        band[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] = q

    restorer = through_guide(restorer, frame, info, opts.trust_black)
    walk = dict(by_columns=bool(frame.flip & 4), band_start=band_start, ensemble=opts.ensemble,
                band_done=lambda _region: emit(orient(band, frame.flip)))
    walk["reverse"] = bool(frame.flip & (1 if walk["by_columns"] else 2))
    if info.output == "camera":
        restorer.display(prep.packed, wb, frame.rgb_cam, opts.bit_depth, place, **walk)
    else:
        restorer(prep.packed, lambda out, t: place(quantise(out, opts.bit_depth), t), **walk)


def wide_guide(frame: RawFrame, info: WeightsInfo, trust_black: bool | None = None) -> bool:
    """Whether the frame's dark colour comes from the colour guide's wide pass (darkfix.wideguide): where its
    black level is exact, `trust_black` True, or None and a sensor profile measured it; weights without the
    colour guide (the authors') never take it."""
    trusted = frame.black_measured if trust_black is None else trust_black
    return bool(trusted and info.guide_radius and info.output == "camera")


def through_guide(restorer: Restorer, frame: RawFrame, info: WeightsInfo, trust_black: bool | None) -> Restorer:
    """`restorer`, through the wide pass where `wide_guide` says so."""
    if not wide_guide(frame, info, trust_black):
        return restorer
    from .wideguide import WideGuide  # torch: loaded only where used

    return WideGuide(restorer)


def infer_and_render(frame: RawFrame, prep: Prepared, restorer: Restorer, info: WeightsInfo,
                     opts: RestoreOptions) -> np.ndarray:
    """The whole upright (H, W, 3) image in memory (for evaluation; `restore_frame` streams instead)."""
    w, h = output_size(frame, prep)
    image = np.empty((h, w, 3), dtype=np.uint8 if opts.bit_depth == 8 else np.uint16)
    row = 0

    def emit(rows: np.ndarray) -> None:
        nonlocal row
        image[row : row + rows.shape[0]] = rows
        row += rows.shape[0]

    render_bands(frame, prep, restorer, info, opts, emit)
    return image


@dataclass
class Result:
    source: Path
    output: Path
    amplification: float
    size: tuple[int, int]  # width, height of the PNG
    how: str  # what the amplification came from: "ratio", "auto" or "paper"
    noise: str | None = None  # the noise level noise-aware weights were given, and where it came from
    wide_guide: bool = False  # whether dark colour came from the colour guide's wide pass (`wide_guide`)
    rows: str | None = None  # what darkfix.rows did with the row noise (masked margins, the picture's greens)
    network: str | None = None  # which network ran, where the weights have a low-noise companion (engine.Routed)


def saturated_pixels(prep: Prepared, t: Tile, oy: int, ox: int, h: int, w: int) -> np.ndarray | None:
    """(h, w) bool at full resolution, from (oy, ox) in tile `t`'s output: where the sensor clipped (None
    where it did not anywhere in the tile)."""
    sat = prep.packed.saturated(t.y0, t.y1, t.x0, t.x1)
    return None if sat is None else sat.repeat(2, axis=0).repeat(2, axis=1)[oy : oy + h, ox : ox + w]


def camera_image(frame: RawFrame, prep: Prepared, restorer: Restorer, info: WeightsInfo,
                 trust_black: bool | None = None, ensemble: bool = False) -> np.ndarray:
    """The network's linear camera RGB (white balance undone), as stored (not turned upright), cropped to
    the mosaic: (H, W, 3) float32 in [0, 1]. Photosites the sensor clipped are white, as in `to_display`.
    `trust_black` as in `through_guide`; `ensemble` as the engine's call takes it (TiledEngine)."""
    top, left, height, width = prep.layout.top, prep.layout.left, prep.layout.height, prep.layout.width
    image = np.empty((height, width, 3), np.float32)
    rel = (prep.wb / prep.wb[1]) if prep.balanced else np.ones(3, np.float32)
    white = (1.0 / rel).astype(np.float32)

    def sink(out: Any, t: Tile) -> None:
        y0, y1 = max(2 * t.y0 - top, 0), min(2 * t.y1 - top, height)
        x0, x1 = max(2 * t.x0 - left, 0), min(2 * t.x1 - left, width)
        oy, ox = y0 - (2 * t.y0 - top), x0 - (2 * t.x0 - left)
        tile = as_numpy(out[..., oy : oy + y1 - y0, ox : ox + x1 - x0])[0].transpose(1, 2, 0) / rel
        sat = saturated_pixels(prep, t, oy, ox, y1 - y0, x1 - x0)
        if sat is not None:
            tile[sat] = white
        image[y0:y1, x0:x1] = tile

    through_guide(restorer, frame, info, trust_black)(prep.packed, sink, ensemble=ensemble)
    return image


def restore_frame(source: Path, frame: RawFrame, prep: Prepared, output: Path, restorer: Restorer,
                  info: WeightsInfo, opts: RestoreOptions) -> Result:
    """Network, colour and encoding of a decoded frame into `output` (atomically, in `opts.format`): a PNG
    streams band by band; TIFF, JPEG and DNG are encoded from the whole image."""
    w, h = output_size(frame, prep)
    try:
        if opts.format == "png":
            exif = exif_tiff(frame.capture)
            with atomic_output(output, opts.overwrite) as f, \
                    PngStream(f, w, h, opts.bit_depth, opts.compression, background=True, exif=exif) as png:
                render_bands(frame, prep, restorer, info, opts, png.write)
        elif opts.format == "dng":
            check_camera_output(output, info)
            camera = camera_image(frame, prep, restorer, info, opts.trust_black, opts.ensemble)
            codes = (np.clip(camera, 0.0, 1.0) * 65535.0 + 0.5).astype(np.uint16)
            with atomic_output(output, opts.overwrite) as f:
                write_linear_dng(f, codes, frame.cam_xyz, 1.0 / prep.wb, frame.flip, frame.capture)
        else:
            image = infer_and_render(frame, prep, restorer, info, opts)
            with atomic_output(output, opts.overwrite) as f:
                if opts.format == "tiff":
                    write_tiff(f, image, frame.capture)
                else:
                    write_jpeg(f, image, opts.quality, frame.capture)
    except MemoryError:
        raise _out_of_memory(source) from None
    return Result(source, output, prep.amplification, (w, h), prep.source,
                  prep.noise.describe() if prep.noise is not None else None,
                  wide_guide(frame, info, opts.trust_black), frame.rows.describe() if frame.rows else None,
                  restorer.describe(prep.packed) if isinstance(restorer, Routed) else None)


def check_camera_output(output: Path, info: WeightsInfo) -> None:
    """A linear DNG holds camera RGB: weights whose network outputs sRGB cannot make one."""
    if info.output != "camera":
        raise OutputError(f"{output}: a linear DNG needs camera-RGB output; {info.path.name} outputs sRGB "
                          "(use darkfix's own weights, or PNG/TIFF/JPEG)")


def _out_of_memory(source: Path) -> OutputError:
    return OutputError(f"{source}: out of memory while restoring; try a smaller --tile")


def restore_file(source: Path, output: Path, restorer: Restorer, info: WeightsInfo,
                 opts: RestoreOptions) -> Result:
    """Restore one raw file into `output` (written atomically); raises DarkfixError subclasses."""
    check_output(source, output, opts.overwrite, opts.format)
    if opts.format == "dng":
        check_camera_output(output, info)
    with claim_output(output, opts.overwrite):  # before decoding: a second process on this name stops now
        frame = read_frame(source, opts.profile, opts.masked_margin, opts.picture_rows)
        try:
            prep = prepare_frame(frame, opts, info.input)
        except MemoryError:
            raise _out_of_memory(source) from None
        return restore_frame(source, frame, prep, output, restorer, info, opts)


def check_target(output: Path, overwrite: bool, inputs: Sequence[Path] = (), what: str | None = "PNG") -> None:
    """Refuse before any work an output that is one of `inputs`, bears a raw file's name (unless `what` is
    None: a DNG), is a directory, exists (without `overwrite`) or cannot be written."""
    if output.exists() and any(p.exists() and os.path.samefile(p, output) for p in inputs):
        raise OutputError(f"{output}: output would overwrite its input")
    if what is not None and output.suffix.lower() in RAW_SUFFIXES:
        raise OutputError(f"{output}: refusing to write a {what} under a raw file's name")
    if output.is_dir():
        raise OutputError(f"{output}: is a directory")
    if output.exists() and not overwrite:
        raise OutputExistsError(f"{output}: already exists (use --overwrite to replace it)")
    parent = output.parent
    if not parent.is_dir():
        raise OutputError(f"{output}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise OutputError(f"{output}: output directory {parent} is not writable")


def check_output(source: Path, output: Path, overwrite: bool, fmt: str = "png") -> None:
    """`check_target` for a restored image, which also refuses a suffix that names another format."""
    if (source.suffix.lower() in IMAGE_SUFFIXES and output.exists() and source.exists()
            and os.path.samefile(source, output)):  # `darkfix restore photo.png`: the likelier mistake
        raise OutputError(f"{source}: a picture, not a raw file (its output would overwrite it)")
    check_target(output, overwrite, [source], None if fmt == "dng" else fmt.upper())
    format_of(output, fmt)


def make_output_dir(directory: Path) -> None:
    """Create an output directory (and its parents), or refuse in one line."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"{directory}: cannot create output directory ({e.strerror})") from None


def claim_outputs(jobs: list[tuple[Path, Path]]) -> dict[Path, Path]:
    """For each source whose output another, earlier source already writes (x.ARW and x.DNG side by
    side: one name for two raws), that earlier source."""
    first: dict[Path, Path] = {}
    clashes = {}
    for src, dst in jobs:
        owner = first.setdefault(dst.resolve(), src)
        if owner != src:
            clashes[src] = owner
    return clashes


def clash_message(src: Path, dst: Path, owner: Path) -> str:
    return f"{src}: would write {dst}, as {owner} does; restore it with its own -o"


def default_output(source: Path, out: Path | None, out_is_dir: bool, fmt: str = "png") -> Path:
    """`<stem>.png` (or the format's suffix; `<stem>.darkfix.dng` for DNG) beside the input, inside `out`
    when it is a directory, else `out` itself."""
    name = source.stem + default_suffix(fmt)
    if out is None:
        return source.with_name(name)
    return out / name if out_is_dir else out
