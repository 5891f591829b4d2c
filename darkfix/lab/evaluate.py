"""`darkfix eval`: measure restorations against ground truth, beside classical baselines.

Two sources of test pairs:

- a benchmark folder written by `darkfix synth` (dark DNGs, 16-bit ground-truth PNGs, manifest.json);
- the SID protocol (Chen et al. 2018): SONY_DIR/Sony_test_list.txt pairs short and long Sony exposures;
  amplification = min(long / short exposure, 300) from the file names, ground truth = LibRaw's rendering
  of the long exposure (camera WB, no auto-brightening, 16 bits).

Every method restores the same decoded frame with the same amplification (the true ratio, or with
`auto` the paper's estimate) and is scored with three numbers (`scores`): PSNR (dB, on [0, 1] floats),
colour-aligned PSNR (the same after a per-channel gain fitted to the ground truth by least squares on the
rendered [0, 1] image, so that a level or colour offset does not dominate what is a denoising score) and
SSIM (pytorch_msssim.ssim: Gaussian window 11, sigma 1.5, data range 1). Summaries: per exposure ratio, per
noise level (bins of the system gain K in the Sony A7S II's 14-bit DN, from a benchmark's manifest:
`K_BINS`) and overall. Methods: the network through the
stages `darkfix restore` uses (any number of weights files), and "libraw": LibRaw's own rendering of
the raw brightened by the amplification, with no denoising (the SID paper's "traditional pipeline").
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Protocol

import numpy as np
import rawpy
import torch
from pytorch_msssim import ssim as _ssim

from ..errors import DarkfixError
from ..inference import Restorer
from ..pipeline import RestoreOptions, infer_and_render, prepare_frame
from ..pngio import read_png as _read_png
from ..rawio import RawFrame, read_raw
from ..rows import correct as correct_rows
from ..weights import WeightsInfo
from .synth import BLACK, SONY_RANGE, WHITE

MANIFEST = "manifest.json"
SID_TEST_LIST = "Sony_test_list.txt"
SID_MAX_RATIO = 300.0
PSNR_CAP = 100.0  # dB for an exact match (mse 1e-10), so that reports stay finite JSON
_SSIM_WIN = 11
_SSIM_STRIP = 512  # output rows per SSIM pass: bounds its memory on full-size frames
# Noise-level bins: upper bounds of the system gain K (DN per electron, in the Sony A7S II's 14-bit range)
# and their names; the ELD calibration spans K 0.09-6 (ISO 800 to ~25600), the broad sensors up to 30
K_BINS = ((0.5, "K<0.5"), (2.0, "K 0.5-2"), (math.inf, "K>2"))


class EvalError(DarkfixError):
    """A benchmark folder or SID layout that cannot be evaluated."""


# ---------------------------------------------------------------------------------------------- metrics


def display_linear(image: np.ndarray) -> np.ndarray:
    """Display codes in [0, 1] back to linear light (the inverse of colour.bt709)."""
    return np.where(image < 0.081, image / 4.5, ((image + 0.099) / 1.099) ** (1 / 0.45))


def as_float(image: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 / uint16 / float image -> float32 in [0, 1]."""
    if image.dtype == np.uint16:
        return image.astype(np.float32) / np.float32(65535.0)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    image = image.astype(np.float32, copy=False)
    if image.size and 0.0 <= float(image.min()) and float(image.max()) <= 1.0:
        return image  # already in range: no full-size copy
    return np.clip(image, 0.0, 1.0)


def psnr(pred: np.ndarray, truth: np.ndarray) -> float:
    """PSNR in dB of two same-shaped images on [0, 1] floats (integer images are scaled first)."""
    a, b = as_float(pred), as_float(truth)
    _check_shapes(a, b)
    mse = 0.0
    for r in range(0, a.shape[0], 1024):  # float64 accumulation without a full-size float64 copy
        d = (a[r : r + 1024] - b[r : r + 1024]).astype(np.float64)
        mse += float(np.dot(d.ravel(), d.ravel()))
    mse /= a.size
    return min(PSNR_CAP, 10.0 * math.log10(1.0 / max(mse, 1e-300)))


def channel_gains(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-channel gains g (3,) minimising sum (g_c pred_c - truth_c)^2: least squares on the images as
    given (rendered, [0, 1]); a channel that is all zero keeps gain 1."""
    a, b = as_float(pred), as_float(truth)
    _check_shapes(a, b)
    a2, ab = a.reshape(-1, 3).astype(np.float64), b.reshape(-1, 3).astype(np.float64)
    num, den = np.einsum("ij,ij->j", a2, ab), np.einsum("ij,ij->j", a2, a2)
    return np.where(den > 0, num / np.maximum(den, 1e-300), 1.0)


def aligned_psnr(pred: np.ndarray, truth: np.ndarray) -> tuple[float, np.ndarray]:
    """Colour-aligned PSNR: PSNR after `channel_gains` (result clipped to [0, 1]), and the gains."""
    gains = channel_gains(pred, truth)
    aligned = np.clip(as_float(pred) * gains.astype(np.float32), 0.0, 1.0)
    return psnr(aligned, truth), gains


def scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """Every score of one restoration: plain PSNR, colour-aligned PSNR (and its gains), SSIM."""
    a, b = as_float(pred), as_float(truth)
    aligned, gains = aligned_psnr(a, b)
    return {"psnr": psnr(a, b), "psnr_aligned": aligned, "ssim": ssim(a, b),
            "gains": [round(float(g), 4) for g in gains]}


def ssim(pred: np.ndarray, truth: np.ndarray) -> float:
    """pytorch_msssim's SSIM (data range 1) of two (H, W, 3) images, in horizontal strips.

    Its map uses 'valid' filtering, so strips overlapping by the window size give exactly the
    whole-image mean while never holding more than a strip's intermediates.
    """
    a, b = as_float(pred), as_float(truth)
    _check_shapes(a, b)
    h, w = a.shape[:2]
    if h < _SSIM_WIN or w < _SSIM_WIN:
        raise EvalError(f"image {w}x{h} is smaller than the SSIM window ({_SSIM_WIN})")
    rows_out = h - _SSIM_WIN + 1
    total = 0.0
    for r0 in range(0, rows_out, _SSIM_STRIP):
        r1 = min(rows_out, r0 + _SSIM_STRIP)
        x = torch.from_numpy(np.ascontiguousarray(a[r0 : r1 + _SSIM_WIN - 1])).permute(2, 0, 1)[None]
        y = torch.from_numpy(np.ascontiguousarray(b[r0 : r1 + _SSIM_WIN - 1])).permute(2, 0, 1)[None]
        with torch.inference_mode():
            value = float(_ssim(x, y, data_range=1.0, size_average=True, win_size=_SSIM_WIN))
        total += value * (r1 - r0)
    return total / rows_out


def _check_shapes(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape:
        raise EvalError(f"prediction {a.shape[1]}x{a.shape[0]} and ground truth {b.shape[1]}x{b.shape[0]} differ "
                        "in size")


def read_png(path: str | Path) -> np.ndarray:
    """A ground-truth PNG as (H, W, 3) uint8/uint16 (pngio.read_png), refusals as EvalError."""
    try:
        return _read_png(path)
    except (OSError, ValueError) as e:
        raise EvalError(str(e)) from None


# ------------------------------------------------------------------------------------------- test cases


@dataclass
class Case:
    """One dark raw to restore and the ground truth to compare it with."""

    name: str
    raw: Path
    ratio: float  # the true exposure ratio
    truth: Path  # a 16-bit PNG (benchmark) or the long exposure (SID)
    truth_kind: str  # "png" | "raw"
    # LibRaw orientation for the libraw baseline: 0 = as stored (the benchmark's ground truth is
    # unrotated); None = LibRaw's own (SID's ground truth is LibRaw's upright rendering)
    libraw_flip: int | None = 0
    meta: dict = field(default_factory=dict)
    # the nominal ratio a case is reported under: a broad-sensor benchmark scales each sensor's ratio
    level: float | None = None

    @property
    def group(self) -> float:
        return self.ratio if self.level is None else self.level


def parse_ratios(text: str | None) -> list[float] | None:
    """'100,250' -> [100.0, 250.0]; None or '' -> None (all)."""
    if not text:
        return None
    try:
        values = [float(t) for t in re.split(r"[,\s]+", text.strip()) if t]
    except ValueError:
        raise EvalError(f"--ratios: expected numbers separated by commas, got {text!r}") from None
    if not values or any(not (v > 0 and math.isfinite(v)) for v in values):
        raise EvalError(f"--ratios: expected positive numbers, got {text!r}")
    return values


def _select(cases: list[Case], ratios: Iterable[float] | None, limit: int | None, stride: int = 1) -> list[Case]:
    """The cases of these ratios, then every `stride`-th, then the first `limit`."""
    if ratios is not None:
        wanted = list(ratios)
        cases = [c for c in cases if any(abs(c.group - r) <= 1e-6 * r for r in wanted)]
    cases = cases[::stride]
    if limit is not None:
        cases = cases[:limit]
    if not cases:
        raise EvalError("no pairs left to evaluate" + (f" for ratios {', '.join(f'{r:g}' for r in ratios)}"
                                                       if ratios is not None else ""))
    for c in cases:
        for p in (c.raw, c.truth):
            if not p.is_file():
                raise EvalError(f"{p}: listed for evaluation but missing")
    return cases


def benchmark_cases(folder: str | Path, ratios: Iterable[float] | None = None,
                    limit: int | None = None, stride: int = 1) -> list[Case]:
    """The pairs of a `darkfix synth` folder, in manifest order, filtered by ratio, every `stride`-th (with
    3 ratios per photo, 4 takes each photo once with the ratios in turn), then the first `limit`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise EvalError(f"{folder}: no such benchmark folder")
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise EvalError(f"{folder}: no {MANIFEST} (make one with darkfix synth, or use --sid for SID)")
    try:
        pairs = json.loads(manifest.read_text())["pairs"]
        cases = [Case(name=Path(p["raw"]).stem, raw=folder / p["raw"], ratio=float(p["ratio"]),
                      truth=folder / p["gt"], truth_kind="png", libraw_flip=0,
                      meta={k: p[k] for k in ("photo", "cfa", "noise", "black", "white", "wb") if k in p},
                      level=float(p["level"]) if "level" in p else None) for p in pairs]
    except (ValueError, KeyError, TypeError) as e:
        raise EvalError(f"{manifest}: malformed manifest ({type(e).__name__}: {e})") from None
    return _select(cases, ratios, limit, stride)


def sid_exposure(path: str | Path) -> float:
    """Exposure time from a SID file name: 10003_00_0.04s.ARW -> 0.04."""
    m = re.fullmatch(r".*_([0-9.]+)s", Path(path).stem)
    if not m:
        raise EvalError(f"{path}: no exposure time in the file name (expected e.g. 10003_00_0.04s.ARW)")
    try:
        value = float(m.group(1))
    except ValueError:
        raise EvalError(f"{path}: bad exposure time {m.group(1)!r} in the file name") from None
    if not value > 0:
        raise EvalError(f"{path}: exposure time must be positive")
    return value


def sid_cases(sony_dir: str | Path, ratios: Iterable[float] | None = None,
              limit: int | None = None, stride: int = 1) -> list[Case]:
    """The SID Sony test pairs listed in SONY_DIR/Sony_test_list.txt (SID's own amplification)."""
    root = Path(sony_dir)
    listing = root / SID_TEST_LIST
    if not listing.is_file():
        raise EvalError(f"{root}: no {SID_TEST_LIST} (expected the SID Sony folder holding Sony/short, Sony/long "
                        "and the test list)")
    cases = []
    for n, line in enumerate(listing.read_text().splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) < 2:
            raise EvalError(f"{listing}:{n}: expected 'SHORT LONG ...', got {line.strip()!r}")
        short, long = root / fields[0], root / fields[1]
        ratio = min(sid_exposure(long) / sid_exposure(short), SID_MAX_RATIO)
        cases.append(Case(name=short.stem, raw=short, ratio=ratio, truth=long, truth_kind="raw", libraw_flip=None,
                          meta={"long": fields[1], **({"iso": fields[2]} if len(fields) > 2 else {})}))
    return _select(cases, ratios, limit, stride)


def sid_truth(path: Path) -> np.ndarray:
    """SID's ground truth: LibRaw's rendering of the long exposure (16 bits, upright)."""
    try:
        with rawpy.imread(str(path)) as raw:
            return raw.postprocess(use_camera_wb=True, half_size=False, no_auto_bright=True, output_bps=16)
    except rawpy.LibRawError as e:
        raise EvalError(f"{path}: cannot decode the long exposure ({type(e).__name__})") from None


def load_truth(case: Case) -> np.ndarray:
    return read_png(case.truth) if case.truth_kind == "png" else sid_truth(case.truth)


# ------------------------------------------------------------------------------------------------ methods


class Method(Protocol):
    name: str
    description: dict

    def __call__(self, case: Case, frame: RawFrame, amplification: float) -> np.ndarray:
        """The restored (H, W, 3) image (uint16 or float in [0, 1]) of `case` at `amplification`."""


class NetworkMethod:
    """The network through `darkfix restore`'s stages (prepare_frame, infer_and_render), 16 bits in memory."""

    def __init__(self, name: str, restorer: Restorer, info: WeightsInfo, trust_black: bool | None = None,
                 ensemble: bool = False, masked_margin: bool = True, picture_rows: bool = True) -> None:
        self.name, self.restorer, self.info, self.trust_black = name, restorer, info, trust_black
        self.ensemble, self.masked_margin, self.picture_rows = ensemble, masked_margin, picture_rows
        self.description = {"kind": "network", "weights": str(info.path), "format": info.format,
                            "output": info.output, "device": str(restorer.device),
                            "precision": restorer.precision, "engine": restorer.engine}
        if trust_black is not None:
            self.description["trust_black"] = trust_black
        if ensemble:
            self.description["ensemble"] = True
        if not masked_margin:
            self.description["masked_margin"] = False
        if not picture_rows:
            self.description["picture_rows"] = False

    def rows(self, frame: RawFrame) -> RawFrame:
        """The frame with its row noise taken out as read_frame does for `darkfix restore`."""
        return correct_rows(frame, self.masked_margin, self.picture_rows)

    def __call__(self, case: Case, frame: RawFrame, amplification: float) -> np.ndarray:
        # the row flags are read_frame's, which `rows` stands in for: the stages below do not read them
        opts = RestoreOptions(ratio=amplification, bit_depth=16, trust_black=self.trust_black, ensemble=self.ensemble)
        frame = self.rows(frame)
        prep = prepare_frame(frame, opts, self.info.input)
        return infer_and_render(frame, prep, self.restorer, self.info, opts)


def brighten_raw(raw: rawpy.RawPy, gain: float) -> None:
    """black + (raw - black) * gain, clipped to [0, white], in place in LibRaw's visible raw (per-CFA black)."""
    visible = raw.raw_image_visible
    black = np.asarray(raw.black_level_per_channel, dtype=np.float32)[raw.raw_colors_visible]
    scaled = (visible.astype(np.float32) - black) * np.float32(gain) + black
    np.clip(scaled, 0.0, float(raw.white_level), out=scaled)
    visible[...] = np.rint(scaled).astype(np.uint16)


def libraw_postprocess(raw: rawpy.RawPy, flip: int | None) -> np.ndarray:
    """LibRaw's SID-convention rendering: camera WB, its colour matrix, BT.709 curve, 16 bits; the file's
    white level as white (adjust_maximum_thr 0)."""
    kwargs = {"user_flip": flip} if flip is not None else {}
    # LibRaw's default (0.75) takes the data's maximum for white when it lies between 0.75 and 1 of it: a
    # denoised raw brightened by the ratio (BM3D's) whose brightest pixel is 86 % of white rendered 10-15 %
    # too bright, a level error far larger than the denoising differences measured here
    return raw.postprocess(use_camera_wb=True, half_size=False, no_auto_bright=True, output_bps=16,
                           adjust_maximum_thr=0.0, **kwargs)


class LibRawMethod:
    """LibRaw's own rendering of the raw brightened by the amplification: no denoising (SID's baseline)."""

    name = "libraw"
    description = {"kind": "libraw", "render": "black + (raw - black) * amplification, clipped to white; rawpy "
                                               "postprocess(use_camera_wb, no_auto_bright, 16 bit), AHD demosaic"}

    def __call__(self, case: Case, frame: RawFrame, amplification: float) -> np.ndarray:
        with rawpy.imread(str(case.raw)) as raw:
            brighten_raw(raw, amplification)
            return libraw_postprocess(raw, case.libraw_flip)


def network_name(info: WeightsInfo, taken: Iterable[str], default: str = "darkfix") -> str:
    """'darkfix' for the main weights, 'authors' for the paper's checkpoint, else the file's stem; unique."""
    base = "authors" if info.format == "authors" else default
    taken = set(taken)
    for name in (base, f"{base}:{info.path.stem}"):
        if name not in taken:
            return name
    i = 2
    while f"{base}:{info.path.stem}#{i}" in taken:
        i += 1
    return f"{base}:{info.path.stem}#{i}"


# --------------------------------------------------------------------------------------------- evaluation


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else float("nan")


SUMMARY_KEYS = ("psnr", "psnr_aligned", "ssim", "seconds")


def _summary(rows: list[dict], methods: list[str]) -> dict:
    out = {}
    for m in methods:
        got = [r["results"][m] for r in rows if m in r["results"]]
        out[m] = {**{k: _mean([g[k] for g in got if k in g]) for k in SUMMARY_KEYS}, "count": len(got)}
    return out


def summaries(rows: list[dict], names: list[str]) -> dict:
    """The report's summaries of scored rows: "per_ratio", "per_noise" (K bins, where the rows know K)
    and "overall", each {group: {method: {"psnr", "psnr_aligned", "ssim", "seconds", "count"}}}."""
    ratios = sorted({r["ratio"] for r in rows})
    bins = [name for _, name in K_BINS if any(r.get("k_bin") == name for r in rows)]
    return {"per_ratio": {ratio_key(q): _summary([r for r in rows if r["ratio"] == q], names) for q in ratios},
            "per_noise": {b: _summary([r for r in rows if r.get("k_bin") == b], names) for b in bins},
            "overall": _summary(rows, names)}


def ratio_key(ratio: float) -> str:
    return f"{ratio:g}"


def sony_gain(meta: dict) -> float | None:
    """A benchmark pair's system gain K in the Sony A7S II's DN (the manifest's K is in the sensor's own
    DN: a 12-bit sensor's K is a quarter of the Sony-scale one); None without noise parameters."""
    noise = meta.get("noise")
    if not noise or "K" not in noise:
        return None
    span = float(meta.get("white", WHITE)) - float(meta.get("black", BLACK))
    return float(noise["K"]) * SONY_RANGE / span


def k_bin(k: float) -> str:
    """The name of K's bin in K_BINS."""
    return next(name for bound, name in K_BINS if k < bound)


def auto_amplification(frame: RawFrame, exposure: str = "auto") -> float:
    """The estimate `darkfix restore --exposure EXPOSURE` makes when no ratio is given."""
    return prepare_frame(frame, RestoreOptions(exposure=exposure)).amplification


METRICS = {
    "psnr": "dB on [0, 1] floats (mean of per-image PSNR), capped at 100",
    "psnr_aligned": "colour-aligned PSNR: the same after each channel of the rendered [0, 1] image is multiplied "
                    "by its least-squares gain onto the ground truth (clipped to [0, 1]); gains per image",
    "ssim": "pytorch_msssim.ssim, data_range 1, Gaussian window 11, sigma 1.5 (mean per image)",
    "seconds": "per image and method, excluding the shared raw decode and ground-truth load",
    "per_noise": "system gain K in DN per electron of the Sony A7S II's 14-bit range (the manifest's K scaled by "
                 "16383 - 512 over the sensor's white - black): " + ", ".join(n for _, n in K_BINS),
}


def evaluate_cases(cases: list[Case], methods: list[Method], auto_amp: bool = False, brightness: float = 1.0,
                   progress: Callable[[str], None] | None = None, exposure: str = "auto") -> dict:
    """Restore every case with every method and score it; returns the report (see `evaluate`).

    Every method gets the same amplification: the true ratio (or, with `auto_amp`, the estimate named by
    `exposure`: darkfix's automatic exposure or the paper's) times `brightness`.
    """
    names = [m.name for m in methods]
    if len(set(names)) != len(names):
        raise ValueError(f"method names must be unique: {names}")
    rows = []
    truth_cache: tuple[Path, np.ndarray] | None = None  # SID pairs share long exposures
    network = next((m for m in methods if isinstance(m, NetworkMethod)), None)
    for i, case in enumerate(cases, 1):
        frame = read_raw(case.raw)
        if auto_amp:  # the estimate `darkfix restore` makes, on the frame with its row noise taken out
            amp = auto_amplification(network.rows(frame) if network else frame, exposure) * brightness
        else:
            amp = case.ratio * brightness
        if truth_cache is None or truth_cache[0] != case.truth:
            truth_cache = (case.truth, as_float(load_truth(case)))
        truth = truth_cache[1]
        results = {}
        for method in methods:
            t0 = time.perf_counter()
            image = method(case, frame, amp)
            seconds = time.perf_counter() - t0
            if image.shape != truth.shape:
                raise EvalError(f"{case.raw}: {method.name} gives {image.shape[1]}x{image.shape[0]}, ground truth "
                                f"{case.truth.name} is {truth.shape[1]}x{truth.shape[0]}")
            results[method.name] = {**scores(image, truth), "seconds": seconds}
        k = sony_gain(case.meta)
        rows.append({"name": case.name, "raw": str(case.raw), "truth": str(case.truth), "ratio": case.group,
                     "true_ratio": case.ratio,
                     **({"k": round(k, 4), "k_bin": k_bin(k)} if k is not None else {}),
                     "amplification": amp, "size": [int(truth.shape[1]), int(truth.shape[0])],
                     "results": results, **({"meta": case.meta} if case.meta else {})})
        if progress:
            line = "  ".join(f"{n} {r['psnr']:.2f}/{r['psnr_aligned']:.2f}/{r['ssim']:.3f}"
                             for n, r in results.items())
            progress(f"[{i}/{len(cases)}] {case.name} x{ratio_key(case.group)} (amp {amp:.1f}): {line}")
    return {
        "amplification": exposure if auto_amp else "ratio",
        "brightness": brightness,
        "metrics": METRICS,
        "methods": {m.name: m.description for m in methods},
        "images": rows,
        **summaries(rows, names),
    }


def evaluate(folder: str | Path, methods: list[Method], *, sid: bool = False, auto_amp: bool = False,
             brightness: float = 1.0, ratios: Iterable[float] | None = None, limit: int | None = None,
             progress: Callable[[str], None] | None = None, exposure: str = "auto", stride: int = 1) -> dict:
    """Evaluate a `darkfix synth` folder (or, with `sid`, a SID Sony folder) with `methods`.

    The report: {"protocol", "source", "amplification", "brightness", "metrics", "methods": {name: description},
    "images": [{"name", "raw", "truth", "ratio", "amplification", "size", "results": {method: {"psnr",
    "psnr_aligned", "gains", "ssim", "seconds"}}, "k", "k_bin"}], "per_ratio": {"100": {method: {"psnr",
    "psnr_aligned", "ssim", "seconds", "count"}}}, "per_noise": {"K<0.5": {...}}, "overall": {method: {...}}}.
    """
    cases = sid_cases(folder, ratios, limit, stride) if sid else benchmark_cases(folder, ratios, limit, stride)
    report = evaluate_cases(cases, methods, auto_amp=auto_amp, brightness=brightness, progress=progress,
                            exposure=exposure)
    from .. import __version__

    return {"darkfix": __version__, "protocol": "sid" if sid else "synthetic", "source": str(folder), **report}


def merge_reports(report: dict, earlier: dict, source: str = "") -> dict:
    """`report` with the methods of an `earlier` report it lacks (e.g. BM3D, too slow to rerun) added to
    its rows, matched by raw file, and its summaries recomputed: each method is summarised over the rows
    it has, so select the same frames (--ratios, --stride, --limit) for a paired comparison."""
    by_raw = {Path(r["raw"]).resolve(): r for r in earlier.get("images", [])}
    added = [m for m in earlier.get("methods", {}) if m not in report["methods"]]
    rows = []
    for row in report["images"]:
        old = by_raw.get(Path(row["raw"]).resolve())
        extra = {m: old["results"][m] for m in added if old is not None and m in old["results"]}
        rows.append({**row, "results": {**row["results"], **extra}})
    methods = {**report["methods"], **{m: {**earlier["methods"][m], "from": source} for m in added}}
    return {**report, "methods": methods, "images": rows, **summaries(rows, list(methods))}


def read_report(path: str | Path) -> dict:
    """A JSON report written by `write_json` (darkfix eval or benchmarks/bm3d_baseline.py)."""
    try:
        report = json.loads(Path(path).read_text())
        if not isinstance(report.get("methods"), dict) or not isinstance(report.get("images"), list):
            raise ValueError("no methods or images")
        return report
    except (OSError, ValueError, AttributeError) as e:
        raise EvalError(f"{path}: not an evaluation report ({e})") from None


# ------------------------------------------------------------------------------------------------- output


def write_json(report: dict, path: str | Path) -> Path:
    """Write the report atomically (replacing an older report)."""
    from ..pngio import write_atomic

    return write_atomic(Path(path), (json.dumps(report, indent=1, allow_nan=False) + "\n").encode(),
                        overwrite=True)


def check_json_target(path: str | Path) -> None:
    """Refuse a --json target before any work: a directory, or one in a missing/unwritable folder."""
    import os

    p = Path(path)
    if p.is_dir():
        raise EvalError(f"{p}: is a directory")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise EvalError(f"{p}: output directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise EvalError(f"{p}: output directory {parent} is not writable")


def summary_groups(report: dict) -> list[tuple[str, dict]]:
    """(label, {method: summary}) for every ratio, every noise bin, then overall, in table order."""
    return ([(f"x{k}", v) for k, v in report["per_ratio"].items()]
            + list(report.get("per_noise", {}).items()) + [("overall", report["overall"])])


def _triple(r: dict) -> str:
    """'plain / colour-aligned / SSIM' of one result or summary (older reports: no aligned PSNR)."""
    aligned = r.get("psnr_aligned")
    return f"{r['psnr']:.2f} / {'-' if aligned is None else f'{aligned:.2f}'} / {r['ssim']:.3f}"


def save_report(report: dict, json_path: Path | None, markdown_path: Path | None,
                say: Callable[[str], None]) -> None:
    """Write the report as JSON and its summary as Markdown where asked, saying where."""
    if json_path is not None:
        write_json(report, json_path)
        say(f"report written to {json_path}")
    if markdown_path is not None:
        markdown_path.write_text(markdown_summary(report))
        say(f"summary table written to {markdown_path}")


def print_report(report: dict, console=None, per_image: bool = True) -> None:
    """Rich tables: per image (optional), then per ratio, per noise level and overall, each cell PSNR /
    colour-aligned PSNR / SSIM; the best colour-aligned PSNR of each row in bold."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    methods = list(report["methods"])

    def cells(results: dict) -> list[str]:
        key = lambda r: r.get("psnr_aligned", r["psnr"])  # noqa: E731
        best = max((key(results[m]) for m in methods if m in results), default=None)
        out = []
        for m in methods:
            r = results.get(m)
            if r is None:
                out.append("-")
                continue
            text = _triple(r)
            out.append(f"[bold]{text}[/bold]" if key(r) == best and len(methods) > 1 else text)
        return out

    what = (f"{report.get('protocol', '')}, amplification {report['amplification']}: "
            "PSNR / colour-aligned PSNR dB / SSIM")
    if per_image:
        t = Table(title=f"Per image ({what})")
        t.add_column("image", overflow="fold")
        t.add_column("ratio", justify="right", no_wrap=True)
        t.add_column("K", justify="right", no_wrap=True)
        t.add_column("amp", justify="right", no_wrap=True)
        for m in methods:
            t.add_column(m, justify="right", no_wrap=True)
        for row in report["images"]:
            k = f"{row['k']:.2f}" if "k" in row else "-"
            t.add_row(row["name"], ratio_key(row["ratio"]), k, f"{row['amplification']:.1f}", *cells(row["results"]))
        console.print(t)
    t = Table(title=f"Per ratio, per noise level (K, Sony 14-bit DN/e-) and overall ({what})")
    t.add_column("group", no_wrap=True)
    t.add_column("n", justify="right", no_wrap=True)
    for m in methods:
        t.add_column(m, justify="right", no_wrap=True)
    groups = summary_groups(report)
    for j, (key, summary) in enumerate(groups):
        n = max(s["count"] for s in summary.values())
        last_of_kind = j + 1 < len(groups) and (groups[j + 1][0].startswith("x") != key.startswith("x")
                                                or groups[j + 1][0] == "overall")
        t.add_row(key, str(n), *cells(summary), end_section=last_of_kind)
    t.add_row("s/image", "", *[f"{report['overall'][m]['seconds']:.2f}" for m in methods])
    console.print(t)


def markdown_summary(report: dict) -> str:
    """The summary as a Markdown table: one row per method, PSNR / colour-aligned PSNR / SSIM per group."""
    groups = summary_groups(report)
    counts = [max(s["count"] for s in g.values()) for _, g in groups]
    lines = ["| method | " + " | ".join(f"{k} (n={n})" for (k, _), n in zip(groups, counts)) + " |",
             "|---" * (len(groups) + 1) + "|"]
    for m in report["methods"]:
        lines.append(f"| {m} | " + " | ".join(_triple(g[m]) if m in g else "-" for _, g in groups) + " |")
    return "\n".join(lines) + "\n"
