"""Single convolutions of the fine pass in OpenVINO, bf16 against int8 (FakeQuantize on the input and
the weights, which OpenVINO runs as int8 kernels: VNNI or AMX where the CPU has them), in one process.

    python benchmarks/int8conv.py [--runs 15]

A measurement of what the CPU offers, not a darkfix engine: darkfix does not quantise its network.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.lab.bench import machine  # noqa: E402
from darkfix.ovengine import _core, import_openvino  # noqa: E402

# (in, out, kernel, height, width): the 1/4-resolution 64 -> 64 and 32 -> 192 convolutions of a fine
# window and the 24 -> 12 5x5 fusion at full packed resolution
CASES = [(64, 64, 3, 144, 128), (32, 192, 3, 144, 128), (24, 12, 5, 576, 512)]


def _model(cin: int, cout: int, k: int, h: int, w: int, int8: bool):
    ov = import_openvino()
    import openvino.opset13 as ops

    rng = np.random.default_rng(0)
    x = ops.parameter([1, cin, h, w], np.float32, name="x")
    weight = (rng.standard_normal((cout, cin, k, k)) * 0.05).astype(np.float32)
    inp, wnode = x, ops.constant(weight)
    if int8:
        lo, hi = ops.constant(np.float32(0)), ops.constant(np.float32(2.0))
        inp = ops.fake_quantize(x, lo, hi, lo, hi, 256)
        m = np.abs(weight).reshape(cout, -1).max(1).reshape(cout, 1, 1, 1)
        wnode = ops.fake_quantize(wnode, ops.constant(-m), ops.constant(m), ops.constant(-m), ops.constant(m), 255)
    y = ops.relu(ops.convolution(inp, wnode, [1, 1], [k // 2, k // 2], [k // 2, k // 2], [1, 1]))
    return ov.Model([y], [x])


@click.command()
@click.option("--runs", type=click.IntRange(1, 1000), default=15, show_default=True)
def main(runs: int) -> None:
    core = _core()
    print(f"machine: {machine()}")
    for cin, cout, k, h, w in CASES:
        macs = cin * cout * k * k * h * w
        x = np.random.default_rng(1).random((1, cin, h, w), dtype=np.float32)
        times = {}
        for int8 in (False, True):
            compiled = core.compile_model(_model(cin, cout, k, h, w, int8), "CPU",
                                          {"INFERENCE_PRECISION_HINT": "bf16", "PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            for _ in range(3):
                request.infer([x])
            samples = []
            for _ in range(runs):
                t0 = time.perf_counter()
                request.infer([x])
                samples.append(time.perf_counter() - t0)
            times[int8] = statistics.median(samples)
        print(f"{cin:3d} -> {cout:3d} {k}x{k} at {w}x{h}: bf16 {times[False] * 1000:6.2f} ms "
              f"({macs / times[False] / 1e9:4.0f} GMAC/s), int8 {times[True] * 1000:6.2f} ms "
              f"({macs / times[True] / 1e9:4.0f} GMAC/s), {times[False] / times[True]:.2f}x")


if __name__ == "__main__":
    main()
