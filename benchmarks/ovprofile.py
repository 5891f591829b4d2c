"""Where one fine-pass window's time goes in the OpenVINO engine: OpenVINO's per-node profile, summed by
kind of node, and the convolutions' share against the window's arithmetic.

    python benchmarks/ovprofile.py [--weights W] [--size 544x496] [--precision bf16] [--runs 10] [--nodes]

The window is what a 12 MP frame's tiles read (480 x 432 kept and a margin of 32: 544 x 496 packed
pixels); input is random, which costs the network what a photo costs it. `--nodes` also lists every
node that took over 0.3 ms.
"""

from __future__ import annotations

import collections
import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix import ovengine  # noqa: E402
from darkfix.lab.bench import machine  # noqa: E402
from darkfix.weights import read_info  # noqa: E402


def fine_mac_per_pixel(weights: Path | None) -> float:
    """Multiply-accumulates per packed pixel of the fine part, counted on the weights' own network."""
    import torch

    from darkfix.model import fold_weight_norm
    from darkfix.weights import load_weights

    model = fold_weight_norm(load_weights(weights)[0])
    side, macs = 128, []

    def count(module: torch.nn.Module, _inputs: tuple, out: torch.Tensor) -> None:
        k = module.weight.shape[1] * module.weight.shape[2] * module.weight.shape[3]
        macs.append(k * out.shape[1] * out.shape[2] * out.shape[3])

    hooks = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        b = model.coarse(model.stem(torch.zeros(1, model.in_channels, side, side)))
        macs.clear()
        model.fine(torch.zeros(1, model.in_channels, side, side), b)
    for h in hooks:
        h.remove()
    return sum(macs) / side**2


@click.command()
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None)
@click.option("--size", default="544x496", show_default=True, help="Window WIDTHxHEIGHT, packed pixels.")
@click.option("--precision", type=click.Choice(["bf16", "fp32"]), default="bf16", show_default=True)
@click.option("--runs", type=click.IntRange(1, 1000), default=10, show_default=True)
@click.option("--nodes", is_flag=True, help="Also list each node over 0.3 ms.")
def main(weights: Path | None, size: str, precision: str, runs: int, nodes: bool) -> None:
    w, h = (int(v) for v in size.lower().split("x"))
    info = read_info(weights)
    models = ovengine.load_models(info.path)
    rng = np.random.default_rng(0)
    channels = models["fine"].inputs[0].get_partial_shape()[1].get_length()
    x = rng.random((1, channels, h, w), dtype=np.float32) * 0.3
    b = rng.random((1, 64, h // 16, w // 16), dtype=np.float32)
    config = {"INFERENCE_PRECISION_HINT": ovengine._OV_PRECISION[precision],
              "PERFORMANCE_HINT": "LATENCY", "PERF_COUNT": True}
    request = ovengine._core().compile_model(models["fine"], "CPU", config).create_infer_request()
    for _ in range(3):
        request.infer([x, b])
    walls: list[float] = []
    by_kind: dict[tuple[str, str], float] = collections.defaultdict(float)
    count: collections.Counter = collections.Counter()
    for _ in range(runs):
        t0 = time.perf_counter()
        request.infer([x, b])
        walls.append(time.perf_counter() - t0)
        for p in request.profiling_info:
            by_kind[(p.node_type, p.exec_type)] += p.real_time.total_seconds() * 1000 / runs
            count[(p.node_type, p.exec_type)] += 1
    wall = statistics.median(walls) * 1000
    print(f"machine: {machine()}")
    print(f"fine window {w}x{h}, {precision}: wall {wall:.1f} ms (median of {runs}); "
          f"nodes {sum(by_kind.values()):.1f} ms")
    conv_ms = sum(v for (kind, _), v in by_kind.items() if kind.endswith("Convolution"))
    gmac = fine_mac_per_pixel(info.path) * w * h / 1e9
    print(f"convolutions {conv_ms:.1f} ms for {gmac:.2f} GMAC = {gmac / conv_ms * 1000:.0f} GMAC/s; "
          f"the window as a whole {gmac / wall * 1000:.0f} GMAC/s")
    for (kind, impl), ms in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        if ms >= 0.05:
            print(f"{ms:7.2f} ms  x{count[(kind, impl)] // runs:3d}  {kind} ({impl})")
    if nodes:
        for p in request.profiling_info:
            if p.real_time.total_seconds() > 0.0003:
                print(f"{p.real_time.total_seconds() * 1000:6.2f}  {p.node_type:16s} {p.exec_type:24s} "
                      f"{p.node_name[:70]}")


if __name__ == "__main__":
    main()
