"""A second, coarse pass of the colour guide (issue 21, dark colour): what it gains where the file's black
level is right and what it costs where it is not.

    python benchmarks/coarse_guide.py BENCH_DIR --weights W [--radius 24] [--limit 9 --stride 4]

Each frame is restored at its true ratio through the stages `darkfix restore` uses (torch fp32), once as
shipped and once with `model.guide_gain` applied a second time after the first, over boxes of RADIUS packed
pixels (13 x 13 cells at 24): at that size the input's local means are nearly free of noise, so the pass
gives the output the input's dark colour, and with it any error in the file's black level. Prints plain /
colour-aligned PSNR / SSIM and the dark colour (`grain.dark_colour`: R/G, B/G in the truth's darkest lit
windows) of both, per frame and averaged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

import darkfix.inference as inference  # noqa: E402
from darkfix.inference import Restorer  # noqa: E402
from darkfix.lab.evaluate import NetworkMethod, as_float, benchmark_cases, load_truth, scores  # noqa: E402
from darkfix.model import guide_gain  # noqa: E402
from darkfix.rawio import read_raw  # noqa: E402
from darkfix.weights import load_weights  # noqa: E402
from grain import dark_colour  # noqa: E402


def with_coarse_pass(radius: int):
    """`guide_gain` followed by a second pass of it over boxes of `radius` on the first pass's output."""

    def gain(mean_out: torch.Tensor, packed: torch.Tensor, r: int, clipped: bool = True) -> torch.Tensor:
        first = guide_gain(mean_out, packed, r, clipped)
        return first * guide_gain((mean_out.float() * first).clamp(0.0, 1.0), packed, radius, clipped)

    return gain


@click.command()
@click.argument("bench", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--weights", "weights_path", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--radius", default=24, show_default=True, help="The coarse pass's radius, packed pixels.")
@click.option("--limit", default=9, show_default=True, help="Frames (after --stride).")
@click.option("--stride", default=4, show_default=True, help="Every STRIDE-th frame of the benchmark.")
def main(bench: Path, weights_path: Path, radius: int, limit: int, stride: int) -> None:
    """Scores of BENCH's frames restored with and without a coarse colour-guide pass."""
    model, info = load_weights(weights_path)
    method = NetworkMethod(weights_path.name, Restorer(model, device="cpu", precision="fp32"), info)
    rows: dict[str, list[dict]] = {"as shipped": [], f"coarse pass {radius}": []}
    for case in benchmark_cases(bench)[::stride][:limit]:
        frame, truth = read_raw(case.raw), as_float(load_truth(case))
        line = []
        for row, gain in zip(rows.values(), (guide_gain, with_coarse_pass(radius))):
            inference.guide_gain = gain  # the name InferenceNet calls
            out = as_float(method(case, frame, case.ratio))
            s = scores(out, truth)
            got, want = dark_colour(out, truth)
            s.update(rg=float(got[0]), bg=float(got[1]))
            row.append(s)
            line.append(f"{s['psnr']:.2f} / {s['psnr_aligned']:.2f} / {s['ssim']:.3f}, dark {got[0]:.2f} {got[1]:.2f}")
        inference.guide_gain = guide_gain
        click.echo(f"{case.name} (truth's dark {want[0]:.2f} {want[1]:.2f}): " + " | ".join(line))
    for name, row in rows.items():
        mean = {k: float(np.nanmean([s[k] for s in row])) for k in ("psnr", "psnr_aligned", "ssim", "rg", "bg")}
        click.echo(f"{name}: {mean['psnr']:.3f} / {mean['psnr_aligned']:.3f} / {mean['ssim']:.4f}, "
                   f"dark R/G {mean['rg']:.2f}, B/G {mean['bg']:.2f}")


if __name__ == "__main__":
    main()
