"""Ways of running the network on one frame, timed against each other in one process, round-robin.

    python benchmarks/variants.py [--size 4256x2848] [--runs 3] [--threads 1,2] [--tiles 384,512,768,1024,4096]
                                  [--weights W] [--bf16] [--compile] [--json variants.json]

What it compares (network only, on a synthetic packed frame amplified like a real one):
- reference: eager LambaNet, fp32, weight normalisation recomputed every call, whole frame, NCHW;
- folded: the same with weight normalisation folded into plain convolutions once;
- one-pass tiles: the previous darkfix (folded LambaNet on 1024-pixel tiles, margin 64, each tile
  running the whole network, 1/32 branch included);
- two-pass: darkfix.inference (1/32 branch once per frame, tiles of the rest with margin 32) as NCHW,
  channels-last, and channels-last with the 12-channel convolutions padded to 16 (the default), at
  each tile size of --tiles (4096 = the whole frame in one tile);
- optionally bf16 (--bf16) and torch.compile/inductor of the two passes (--compile; compile time is
  reported apart and excluded from the medians).
Every variant runs once untimed first. Figures: median wall time of --runs, the process's peak RSS
growth during the call (VmHWM reset before it), and the max abs difference from the reference output.
"""

from __future__ import annotations

import copy
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.lab.bench import machine, parse_size, peak_rss_mb, reset_peak_rss, synthetic_mosaic  # noqa: E402
from darkfix.inference import ALIGN, InferenceNet, Restorer, tiles  # noqa: E402
from darkfix.model import LambaNet, fold_weight_norm  # noqa: E402
from darkfix.packing import pad_to_multiple  # noqa: E402
from darkfix.metadata import Capture  # noqa: E402
from darkfix.pipeline import RestoreOptions, prepare_frame  # noqa: E402
from darkfix.rawio import RawFrame  # noqa: E402

Sink = Callable[[torch.Tensor, object], None]


def _frame(width: int, height: int) -> np.ndarray:
    mosaic = synthetic_mosaic(width, height)
    frame = RawFrame(mosaic=mosaic, black=np.full((2, 2), 512, np.float32), white=16383.0, cfa="RGGB",
                     wb_camera=np.ones(3, np.float32), wb_daylight=np.ones(3, np.float32),
                     rgb_cam=np.eye(3, dtype=np.float32), flip=0, cam_xyz=np.eye(3, dtype=np.float32),
                     capture=Capture())
    return np.asarray(prepare_frame(frame, RestoreOptions()).packed)


def whole_frame(net: torch.nn.Module, grad_mode=torch.no_grad) -> Callable[[np.ndarray, Sink], None]:
    def run(packed: np.ndarray, sink: Sink) -> None:
        with grad_mode():
            _, h, w = packed.shape
            x, _ = pad_to_multiple(torch.from_numpy(packed)[None], ALIGN)
            sink(net(x)[..., : 2 * h, : 2 * w], None)
    return run


def one_pass_tiles(net: torch.nn.Module, size: int = 1024, margin: int = 64) -> Callable[[np.ndarray, Sink], None]:
    """The previous darkfix: every tile runs the whole network over its region plus margin."""
    def run(packed: np.ndarray, sink: Sink) -> None:
        _, h, w = packed.shape
        src = torch.from_numpy(packed)[None]
        with torch.inference_mode():
            for t in tiles(h, w, size):
                cy0, cx0 = max(0, t.y0 - margin), max(0, t.x0 - margin)
                cy1, cx1 = min(h, t.y1 + margin), min(w, t.x1 + margin)
                x, (rh, rw) = pad_to_multiple(src[..., cy0:cy1, cx0:cx1], ALIGN)
                out = net(x)[..., : 2 * rh, : 2 * rw]
                sink(out[..., 2 * (t.y0 - cy0): 2 * (t.y1 - cy0), 2 * (t.x0 - cx0): 2 * (t.x1 - cx0)], t)
    return run


def two_pass(model: LambaNet, tile: int, channels_last: bool = True, pad_outputs: bool = True,
             precision: str = "fp32", compiled: bool = False) -> Restorer:
    r = Restorer(model, "cpu", precision, tile=tile)
    if not (channels_last and pad_outputs):
        r.net = InferenceNet(model, channels_last=channels_last, pad_outputs=pad_outputs).to(r.dtype).eval()
        for p in r.net.parameters():
            p.requires_grad_(False)
    if compiled:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
        r.net.fine = torch.compile(r.net.fine, dynamic=False)
        r.net.coarse = torch.compile(r.net.coarse, dynamic=False)
        r.net.stem_forward = torch.compile(r.net.stem_forward, dynamic=False)
    return r


def _timed(fn: Callable[[], None]) -> tuple[float, float]:
    start = _rss()
    reset_peak_rss()
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    return elapsed, peak_rss_mb() - start


def _rss() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def _max_abs(run: Callable[[np.ndarray, Sink], None], packed: np.ndarray, ref: torch.Tensor) -> float:
    worst = 0.0

    def sink(out: torch.Tensor, t) -> None:
        nonlocal worst
        r = ref if t is None else ref[..., 2 * t.y0: 2 * t.y1, 2 * t.x0: 2 * t.x1]
        worst = max(worst, float((out.float() - r).abs().max()))

    run(packed, sink)
    return worst


@click.command()
@click.option("--size", default="4256x2848", show_default=True)
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--threads", default="", help="Comma-separated thread counts to try (default: torch's choice).")
@click.option("--tiles", "tile_sizes", default="384,512,768,1024,4096", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--bf16", is_flag=True, help="Also bf16 (the default layout, default tile).")
@click.option("--compile", "with_compile", is_flag=True, help="Also torch.compile (inductor, frozen weights).")
@click.option("--only", default="", help="Comma-separated variant-name prefixes to keep.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False))
def main(size, runs, threads, tile_sizes, weights, bf16, with_compile, only, json_path) -> None:
    from rich.console import Console
    from rich.table import Table

    from darkfix.inference import DEFAULT_CPU_TILE

    console = Console(width=200)
    w, h = parse_size(size)
    if weights:
        from darkfix.weights import load_weights

        model, _ = load_weights(weights)
    else:
        torch.manual_seed(0)
        model = LambaNet().eval()
    packed = _frame(w, h)
    folded = fold_weight_norm(copy.deepcopy(model)).eval()
    for p in folded.parameters():
        p.requires_grad_(False)

    variants: dict[str, Callable[[np.ndarray, Sink], None]] = {
        "reference (eager, WN per call, whole frame)": whole_frame(model),
        "folded, whole frame": whole_frame(folded, torch.inference_mode),
        "previous darkfix (one-pass tiles 1024, margin 64)": one_pass_tiles(folded),
    }
    for tile in [int(t) for t in tile_sizes.split(",") if t]:
        variants[f"two-pass NCHW, tile {tile}"] = two_pass(model, tile, channels_last=False, pad_outputs=False)
        variants[f"two-pass channels-last, tile {tile}"] = two_pass(model, tile, pad_outputs=False)
        variants[f"two-pass channels-last + pad16, tile {tile}"] = two_pass(model, tile)
    if bf16:
        variants[f"two-pass bf16, tile {DEFAULT_CPU_TILE}"] = two_pass(model, DEFAULT_CPU_TILE, precision="bf16")
    if only:
        keep = [k.strip() for k in only.split(",")]
        variants = {k: v for i, (k, v) in enumerate(variants.items()) if i == 0 or any(k.startswith(p) for p in keep)}
    compile_s = None
    if with_compile:
        r = two_pass(model, DEFAULT_CPU_TILE, compiled=True)
        t0 = time.perf_counter()
        r(packed, lambda out, t: None)
        compile_s = time.perf_counter() - t0
        variants[f"two-pass compiled (inductor), tile {DEFAULT_CPU_TILE}"] = r

    thread_counts = [int(t) for t in threads.split(",") if t] or [torch.get_num_threads()]
    mp = w * h / 1e6
    times: dict[str, list[float]] = {}
    growth: dict[str, float] = {}
    console.log(f"{len(variants)} variants x {len(thread_counts)} thread settings, {runs} runs, {w}x{h}")
    for n in thread_counts:
        torch.set_num_threads(n)
        for run in variants.values():  # warm-up
            run(packed, lambda out, t: None)
        for i in range(runs):
            console.log(f"threads {n}, round {i + 1} of {runs}")
            for name, run in variants.items():
                key = f"{name} | threads {n}"
                t, g = _timed(lambda: run(packed, lambda out, t: None))
                times.setdefault(key, []).append(t)
                growth[key] = max(growth.get(key, 0.0), g)
    torch.set_num_threads(thread_counts[-1])
    console.log("accuracy against the reference")
    ref_out: list[torch.Tensor] = []
    next(iter(variants.values()))(packed, lambda out, t: ref_out.append(out.clone()))
    errors = {name: _max_abs(run, packed, ref_out[0]) for name, run in variants.items()}

    ref_by_threads = {n: statistics.median(times[f"{next(iter(variants))} | threads {n}"]) for n in thread_counts}
    table = Table(title=f"network on {w}x{h} ({mp:.1f} MP), median of {runs}, {machine()['cpu']}")
    for col in ("variant", "threads", "median", "MP/s", "vs reference", "RSS growth", "max abs vs ref"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    rows = []
    for key, ts in times.items():
        name, n = key.split(" | threads ")
        med = statistics.median(ts)
        speed = ref_by_threads[int(n)] / med
        rows.append({"variant": name, "threads": int(n), "median_s": med, "runs_s": ts, "mp_per_s": mp / med,
                     "speedup_vs_reference_same_threads": speed, "rss_growth_mb": growth[key],
                     "max_abs_vs_reference": errors[name]})
        table.add_row(name, n, f"{med * 1000:.0f} ms", f"{mp / med:.2f}", f"{speed:.2f}x", f"{growth[key]:.0f} MB",
                      f"{errors[name]:.1e}")
    console.print(table)
    if compile_s is not None:
        console.print(f"torch.compile: first call (compilation included) {compile_s:.1f} s")
    if json_path:
        json_path.write_text(json.dumps({"machine": machine(), "size": [w, h], "runs": runs, "rows": rows,
                                         "compile_first_call_s": compile_s,
                                         "weights": str(weights) if weights else "seeded random"}, indent=1))


if __name__ == "__main__":
    main()
