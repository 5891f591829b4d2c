"""The colour guide's wide pass (darkfix.wideguide, `darkfix restore --trust-black`): what it gains where the
file's black level is right and what it costs where it is not.

    python benchmarks/coarse_guide.py BENCH_DIR --weights W [--limit 9 --stride 4]

Each frame is restored at its true ratio through the stages `darkfix restore` uses (torch fp32), without
and with the wide pass (a second pass of `model.guide_gain` over boxes of WIDE_RADIUS packed pixels, after
the network): at that size the input's local means are nearly free of noise, so the pass gives the output
the input's dark colour, and with it any error in the file's black level. Prints plain / colour-aligned
PSNR / SSIM and the dark colour (`grain.dark_colour`: R/G, B/G in the truth's darkest lit windows) of both,
per frame and averaged.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.inference import Restorer  # noqa: E402
from darkfix.lab.evaluate import NetworkMethod, as_float, benchmark_cases, load_truth, scores  # noqa: E402
from darkfix.rawio import read_raw  # noqa: E402
from darkfix.weights import load_weights  # noqa: E402
from darkfix.wideguide import WIDE_RADIUS  # noqa: E402
from grain import dark_colour  # noqa: E402


@click.command()
@click.argument("bench", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.option("--weights", "weights_path", required=True, type=click.Path(path_type=Path, exists=True))
@click.option("--limit", default=9, show_default=True, help="Frames (after --stride).")
@click.option("--stride", default=4, show_default=True, help="Every STRIDE-th frame of the benchmark.")
def main(bench: Path, weights_path: Path, limit: int, stride: int) -> None:
    """Scores of BENCH's frames restored without and with the colour guide's wide pass."""
    model, info = load_weights(weights_path)
    restorer = Restorer(model, device="cpu", precision="fp32")
    methods = {"as shipped": NetworkMethod(weights_path.name, restorer, info, trust_black=False),
               f"wide pass {WIDE_RADIUS}": NetworkMethod(weights_path.name, restorer, info, trust_black=True)}
    rows: dict[str, list[dict]] = {name: [] for name in methods}
    for case in benchmark_cases(bench)[::stride][:limit]:
        frame, truth = read_raw(case.raw), as_float(load_truth(case))
        line = []
        for name, method in methods.items():
            out = as_float(method(case, frame, case.ratio))
            s = scores(out, truth)
            got, want = dark_colour(out, truth)
            s.update(rg=float(got[0]), bg=float(got[1]))
            rows[name].append(s)
            line.append(f"{s['psnr']:.2f} / {s['psnr_aligned']:.2f} / {s['ssim']:.3f}, dark {got[0]:.2f} {got[1]:.2f}")
        click.echo(f"{case.name} (truth's dark {want[0]:.2f} {want[1]:.2f}): " + " | ".join(line))
    for name, row in rows.items():
        mean = {k: float(np.nanmean([s[k] for s in row])) for k in ("psnr", "psnr_aligned", "ssim", "rg", "bg")}
        click.echo(f"{name}: {mean['psnr']:.3f} / {mean['psnr_aligned']:.3f} / {mean['ssim']:.4f}, "
                   f"dark R/G {mean['rg']:.2f}, B/G {mean['bg']:.2f}")


if __name__ == "__main__":
    main()
