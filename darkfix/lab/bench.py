"""`darkfix bench`: time each stage of a restoration, and the network against the way the reference code
runs it (eager fp32, weight normalisation recomputed on every call, the whole frame at once), in one run.

Every stage is timed on the same frame: a synthetic dark raw (a DNG written to a temporary folder, so
decoding is real) or a given file. One untimed warm-up pass comes first; each figure is then the median
of N runs. Peak memory is the process's resident set (VmHWM, reset before each stage where Linux allows)
and, on CUDA, the allocator's peak; CUDA timings synchronise the device before reading the clock.
"""

from __future__ import annotations

import copy
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..dng import DngSpec, write_dng
from ..errors import WeightsError
from ..inference import ALIGN, Restorer, Tile
from ..model import LambaNet
from ..packing import pad_to_multiple
from ..pipeline import RestoreOptions, infer_and_render, prepare_frame
from ..pngio import encode_png, write_atomic
from ..profile import read_frame
from ..weights import WeightsInfo, load_weights, save_weights

STAGES = ("decode", "pack+amplify", "network", "colour", "encode")
BLACK, WHITE = 512, 16383


# --- a synthetic dark frame -------------------------------------------------------------------------

def synthetic_mosaic(width: int, height: int, seed: int = 0, ratio: float = 100.0) -> np.ndarray:
    """A dark RGGB uint16 mosaic (black 512, white 16383): a smooth scene with edges at 1/`ratio` of a good
    exposure, with shot, read and row noise (Sony A7S II-like, system gain 2 DN/e-). Made in bands of rows,
    so a 100 MP frame costs little more memory than its own 200 MB."""
    if width < 2 or height < 2 or width % 2 or height % 2:
        raise ValueError("synthetic frames need even sizes of at least 2x2")
    rng = np.random.default_rng(seed)
    h, w = height // 2, width // 2  # packed size
    gh, gw = 9, 13
    grid = rng.uniform(0.02, 1.0, size=(4, gh, gw)) * np.array([0.5, 1.0, 1.0, 0.7])[:, None, None]
    cols = _interp_matrix(gw, w)  # (gw, w)
    cx = np.arange(w)
    k, read_sigma, row_sigma = 2.0, 4.9, 0.8
    scale = (WHITE - BLACK) / ratio
    mosaic = np.empty((height, width), np.uint16)
    band = 256
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        rows = _interp_matrix(gh, h)[:, y0:y1].T  # (rows, gh)
        clean = np.einsum("rg,cgw->crw", rows, grid @ cols)
        ry = np.arange(y0, y1)[:, None]
        clean *= 0.75 + 0.25 * (((ry // 96) + (cx // 96)) % 2)  # a checkerboard of sharp edges
        signal = clean * scale
        dn = k * rng.poisson(signal / k) + rng.normal(0.0, read_sigma, signal.shape)
        dn += rng.normal(0.0, row_sigma, (2, y1 - y0, 1))[[0, 0, 1, 1]]
        planes = np.clip(np.round(dn + BLACK), 0, WHITE).astype(np.uint16)
        view = mosaic[2 * y0 : 2 * y1].reshape(y1 - y0, 2, w, 2)
        view[:, 0, :, 0], view[:, 0, :, 1], view[:, 1, :, 0], view[:, 1, :, 1] = planes
    return mosaic


def _interp_matrix(n: int, size: int) -> np.ndarray:
    """(n, size) weights that linearly interpolate n grid values onto `size` samples."""
    pos = np.linspace(0.0, n - 1.0, size)
    lo = np.minimum(pos.astype(np.int64), n - 2) if n > 1 else np.zeros(size, np.int64)
    frac = pos - lo
    m = np.zeros((n, size))
    m[lo, np.arange(size)] = 1.0 - frac
    if n > 1:
        m[lo + 1, np.arange(size)] += frac
    return m


def write_synthetic_dng(path: str | os.PathLike, width: int = 4256, height: int = 2848, seed: int = 0) -> Path:
    """Write `synthetic_mosaic` as a Bayer DNG that LibRaw reads back."""
    spec = DngSpec(cfa="RGGB", black=float(BLACK), white=WHITE, as_shot_neutral=(0.5, 1.0, 0.6),
                   model="darkfix bench", description=f"darkfix bench synthetic frame, seed {seed}")
    return write_dng(path, synthetic_mosaic(width, height, seed), spec)


def parse_size(text: str) -> tuple[int, int]:
    """'4256x2848' -> (4256, 2848): mosaic width and height."""
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"size must be WIDTHxHEIGHT, e.g. 4256x2848 (got {text!r})") from None
    if w < 32 or h < 32 or w % 2 or h % 2:
        raise ValueError(f"size must be even and at least 32x32 (got {text!r})")
    return w, h


# --- measuring ----------------------------------------------------------------------------------------

def _status_mb(field: str) -> float | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def reset_peak_rss() -> bool:
    """Reset the kernel's record of this process's peak resident set (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """Peak resident set since the last reset (or since start), in MB."""
    hwm = _status_mb("VmHWM")
    if hwm is not None:
        return hwm
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if platform.system() == "Darwin" else peak / 1024.0


def machine() -> dict[str, object]:
    """What the figures were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    info: dict[str, object] = {
        "cpu": cpu, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(), "os": platform.platform(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


@dataclass
class _Stage:
    times: list[float]
    peak_mb: float = 0.0  # the process's peak RSS during the stage
    grew_mb: float = 0.0  # that peak above the RSS when the stage started
    gpu_peak_mb: float | None = None


class _Timer:
    def __init__(self, device: torch.device, per_stage_peak: bool) -> None:
        self.device = device
        self.per_stage_peak = per_stage_peak
        self.stages: dict[str, _Stage] = {}

    def __call__(self, name: str, fn: Callable[[], object]) -> object:
        stage = self.stages.setdefault(name, _Stage([]))
        cuda = self.device.type == "cuda"
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        start_rss = _status_mb("VmRSS") or 0.0
        if self.per_stage_peak:
            reset_peak_rss()
        t0 = time.perf_counter()
        result = fn()
        if cuda:
            torch.cuda.synchronize()
        stage.times.append(time.perf_counter() - t0)
        peak = peak_rss_mb()
        stage.peak_mb = max(stage.peak_mb, peak)
        stage.grew_mb = max(stage.grew_mb, peak - start_rss)
        if cuda:
            stage.gpu_peak_mb = max(stage.gpu_peak_mb or 0.0, torch.cuda.max_memory_allocated() / 2**20)
        return result


def _replay(restorer, sample) -> object:
    """A copy of `restorer` that walks the frame's tiles as the real one does but hands the sink one stored
    network output per tile (cut to the tile's size) instead of running the network: it times the colour
    stage, whichever engine renders it."""

    class Replay(type(restorer)):  # type: ignore[misc]
        def _coarse(self, frame) -> None:
            return None

        def _run_region(self, frame, b, t: Tile, sink, span=None, twin=None) -> None:
            sink(sample[..., : 2 * (t.y1 - t.y0), : 2 * (t.x1 - t.x0)], t)

        def _whole(self, frame):  # CUDA's whole-frame path (inference.Restorer)
            return sample[..., : 2 * frame.h, : 2 * frame.w]

    replay = Replay.__new__(Replay)
    replay.__dict__.update(restorer.__dict__)
    return replay


def reference_network(model: LambaNet, device: torch.device) -> Callable[[np.ndarray], torch.Tensor]:
    """The network the way the reference code runs it: eager fp32, weight normalisation recomputed on
    every call, the whole frame at once (padded to a multiple of 16)."""
    net = copy.deepcopy(model).float().to(device).eval()

    def run(packed: np.ndarray) -> torch.Tensor:
        with torch.no_grad():
            x, (h, w) = pad_to_multiple(torch.from_numpy(packed)[None].to(device), ALIGN)
            return net(x)[..., : 2 * h, : 2 * w]

    return run


def _load(weights: Path | None) -> tuple[LambaNet, WeightsInfo, str]:
    if weights is not None:
        model, info = load_weights(weights)
        return model, info, f"{info.path} ({info.format})"
    try:
        model, info = load_weights(None)
        return model, info, f"{info.path} (packaged)"
    except WeightsError:
        torch.manual_seed(0)
        model = LambaNet().eval()
        info = WeightsInfo(Path("random"), "random", "camera", {})
        return model, info, "none installed: a seeded random model (timings hold, images are noise)"


def weights_file(weights: Path | None, tmp: Path) -> tuple[Path, str]:
    """A weights file for child processes: the given one, the packaged one, or a seeded random model saved
    in `tmp`; with a note saying which."""
    model, info, note = _load(weights)
    if info.format != "random":
        return info.path, note
    return save_weights(model, tmp / "random.safetensors", {"output": "camera"}), note


def run_bench(size: tuple[int, int] = (4256, 2848), runs: int = 3, device: str = "auto", precision: str = "auto",
              threads: int | None = None, tile: int | None = None, weights: Path | None = None,
              input_path: Path | None = None, reference: bool = True, compression: int = 1,
              progress: Callable[[str], None] | None = None, engine: str = "auto") -> dict:
    """Time every stage and the reference network; returns the results as a JSON-ready dict."""
    from .. import engine as engines

    say = progress or (lambda _msg: None)
    if threads:
        torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory(prefix="darkfix-bench-") as tmp:
        path, weights_text = weights_file(weights, Path(tmp))
        # the main network alone: a low-noise companion is one of the same size
        restorer, info = engines.load(path, engine=engine, device=device, precision=precision, threads=threads,
                                      tile=tile, say=say, route=False)
        model = load_weights(path)[0]
        dev = torch.device(str(restorer.device))
        opts = RestoreOptions(compression=compression)
        timer = _Timer(dev, reset_peak_rss())
        if input_path is None:
            say(f"writing a synthetic {size[0]}x{size[1]} dark raw")
            source = write_synthetic_dng(Path(tmp) / "synthetic.dng", *size)
        else:
            source = Path(input_path)
        out_png = Path(tmp) / "out.png"
        ref_run = reference_network(model, dev) if reference else None
        sample: list = []

        def keep_first(out, t: Tile) -> None:
            if not sample:
                sample.append(out.copy() if isinstance(out, np.ndarray) else out.clone())

        say("warming up")
        frame = read_frame(source)
        prep = prepare_frame(frame, opts, info.input)
        packed = np.asarray(prep.packed)
        restorer(packed, keep_first)
        image = infer_and_render(frame, prep, restorer, info, opts)  # the real image, for the encoder
        if ref_run is not None:
            ref_run(packed)
        replay = _replay(restorer, sample[0])
        png_bytes = 0
        for i in range(runs):
            say(f"run {i + 1} of {runs}")
            frame = timer("decode", lambda: read_frame(source))  # as restore decodes: row noise taken out
            # restore normalises tile by tile inside the network stage; here the whole frame is made once
            # so that the network is timed alone
            def pack() -> tuple:
                p = prepare_frame(frame, opts, info.input)
                return p, np.asarray(p.packed)

            prep, packed = timer("pack+amplify", pack)
            timer("network", lambda: restorer(packed, lambda out, t: None))
            timer("colour", lambda: infer_and_render(frame, prep, replay, info, opts))

            def encode() -> int:
                data = encode_png(image, compression)
                write_atomic(out_png, data, overwrite=True)
                return len(data)

            png_bytes = timer("encode", encode)
            if ref_run is not None:
                timer("reference network", lambda: ref_run(packed))
        accuracy = _agreement(restorer, packed, ref_run) if ref_run is not None else None
    return _report(timer, size if input_path is None else (frame.mosaic.shape[1], frame.mosaic.shape[0]),
                   runs, restorer, weights_text, input_path, compression, png_bytes, accuracy)


def _agreement(restorer: Restorer, packed: np.ndarray, ref_run: Callable[[np.ndarray], torch.Tensor]) -> dict:
    """Max abs difference and PSNR of darkfix's network against the reference on the whole frame."""
    ref = ref_run(packed).float()
    worst = 0.0
    sq = 0.0

    def sink(out, t: Tile) -> None:
        nonlocal worst, sq
        diff = torch.as_tensor(out, device=ref.device).float() - ref[..., 2 * t.y0 : 2 * t.y1, 2 * t.x0 : 2 * t.x1]
        worst = max(worst, float(diff.abs().max()))
        sq += float(diff.double().pow(2).sum())

    restorer(packed, sink)
    mse = sq / ref.numel()
    return {"max_abs": worst, "psnr_db": (10 * math.log10(1.0 / mse)) if mse > 0 else float("inf")}


def _report(timer: _Timer, size: tuple[int, int], runs: int, restorer: Restorer, weights_text: str,
            input_path: Path | None, compression: int, png_bytes: int, accuracy: dict | None) -> dict:
    mp = size[0] * size[1] / 1e6
    stages = {}
    for name, st in timer.stages.items():
        stages[name] = {"median_s": statistics.median(st.times), "runs_s": st.times,
                        "peak_rss_mb": st.peak_mb, "rss_growth_mb": st.grew_mb}
        if st.gpu_peak_mb is not None:
            stages[name]["gpu_peak_mb"] = st.gpu_peak_mb
    net = stages["network"]["median_s"]
    total = sum(stages[s]["median_s"] for s in STAGES)
    result = {
        "machine": machine(),
        "device": str(restorer.device), "engine": restorer.engine, "engine_reason": restorer.engine_reason,
        "precision": restorer.precision, "precision_reason": restorer.precision_reason,
        "tile": restorer.tile_for((size[1] + 1) // 2, (size[0] + 1) // 2), "margin": restorer.margin,
        "input": str(input_path) if input_path else "synthetic", "size": list(size), "megapixels": mp,
        "weights": weights_text, "runs": runs, "png_compression": compression, "png_bytes": png_bytes,
        "stages": stages,
        "network_mp_per_s": mp / net, "network_frames_per_s": 1.0 / net,
        "pipeline_s": total, "pipeline_over_network": total / net,
        "peak_rss_mb": max(s["peak_rss_mb"] for n, s in stages.items() if n != "reference network"),
    }
    if "reference network" in stages:
        ref = stages["reference network"]["median_s"]
        result["reference_s"] = ref
        result["speedup"] = ref / net
        result["reference_peak_rss_mb"] = stages["reference network"]["peak_rss_mb"]
    if accuracy is not None:
        result["vs_reference"] = accuracy
    return result


def print_report(r: dict, console=None) -> None:
    """A rich table of `run_bench`'s result."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    m = r["machine"]
    w, h = r["size"]
    console.print(f"[bold]darkfix bench[/]: {r['input']} {w}x{h} ({r['megapixels']:.1f} MP), "
                  f"{r['engine']} on {r['device']}, {r['precision']}, tile {r['tile']} margin {r['margin']}, "
                  f"median of {r['runs']} runs after a warm-up")
    console.print(f"machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']} with "
                  f"{m['torch_threads']} threads ({m['cpu_capability']})" + (f", {m['gpu']}" if "gpu" in m else ""))
    console.print(f"engine: {r['engine']} ({r['engine_reason']})")
    console.print(f"precision: {r['precision']} ({r['precision_reason']})")
    console.print(f"weights: {r['weights']}")
    table = Table()
    table.add_column("stage")
    table.add_column("median", justify="right")
    table.add_column("runs", justify="right")
    table.add_column("peak RSS", justify="right")
    table.add_column("RSS growth", justify="right")
    gpu = any("gpu_peak_mb" in s for s in r["stages"].values())
    if gpu:
        table.add_column("GPU peak", justify="right")
    for name, s in r["stages"].items():
        label = name
        if name == "encode":
            label = f"encode + write (PNG level {r['png_compression']}, {r['png_bytes'] / 1e6:.1f} MB)"
        if name == "reference network":
            label = "reference network (eager fp32, weight norm per call, whole frame)"
        row = [label, f"{s['median_s'] * 1000:.0f} ms", " ".join(f"{t * 1000:.0f}" for t in s["runs_s"]),
               f"{s['peak_rss_mb']:.0f} MB", f"{s['rss_growth_mb']:+.0f} MB"]
        if gpu:
            row.append(f"{s['gpu_peak_mb']:.0f} MB" if "gpu_peak_mb" in s else "")
        table.add_row(*row)
    console.print(table)
    console.print(f"network: {r['network_mp_per_s']:.2f} MP/s, {r['network_frames_per_s']:.2f} frames/s; "
                  f"all five stages {r['pipeline_s'] * 1000:.0f} ms = {r['pipeline_over_network']:.2f} x the network")
    if "speedup" in r:
        console.print(f"speed-up against the reference network, same run: [bold]{r['speedup']:.2f}x[/] "
                      f"({r['reference_s'] * 1000:.0f} ms -> {r['stages']['network']['median_s'] * 1000:.0f} ms)")
    if "vs_reference" in r:
        a = r["vs_reference"]
        console.print(f"output vs reference: max abs {a['max_abs']:.2e}, PSNR {a['psnr_db']:.1f} dB")
