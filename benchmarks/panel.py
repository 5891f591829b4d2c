"""Side-by-side panels of restored benchmark images, for the README and the model card.

    python benchmarks/panel.py BENCH_DIR NAME [NAME ...] --weights W [--baseline-weights AUTHORS.pth] [--bm3d] \
        -o panel.png

Each row is one benchmark pair (NAME is a raw file name from manifest.json): LibRaw brightened by the
true ratio (no denoising) | each network given | blind BM3D with `--bm3d` (`bm3d_baseline.py`'s: noise
estimated on the frame) | the ground truth, all at the true ratio. With `--stops S`
everything is amplified 2^S times more (highlights pushed past white), and the ground truth is brightened
in linear light and clipped, as a normal exposure S stops brighter would show it. `--crop Y,X,SIZE` (one
per NAME) shows 100 % crops instead of whole images scaled to --width.
"""

from __future__ import annotations

from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

from darkfix.lab.evaluate import (LibRawMethod, NetworkMethod, as_float, benchmark_cases, display_linear, load_truth,
                                  network_name)
from darkfix.colour import bt709
from darkfix import engine as engines
from darkfix.rawio import read_raw


@click.command()
@click.argument("bench", type=click.Path(path_type=Path, exists=True, file_okay=False))
@click.argument("names", nargs=-1, required=True)
@click.option("--weights", "weights", multiple=True, type=click.Path(path_type=Path, exists=True), required=True)
@click.option("--baseline-weights", "baselines", multiple=True, type=click.Path(path_type=Path, exists=True))
@click.option("--width", type=int, default=480, show_default=True, help="Width of each tile of the panel.")
@click.option("--stops", type=float, default=0.0, show_default=True, help="Over-expose every tile by this much.")
@click.option("--crop", "crops", multiple=True, metavar="Y,X,SIZE",
              help="100 % crops instead of whole scaled images: one per NAME, in order (its top-left and side).")
@click.option("--bm3d", is_flag=True, help="A column of blind BM3D (noise estimated on the frame) before the truth.")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True)
def main(bench: Path, names: tuple[str, ...], weights, baselines, width: int, stops: float, crops: tuple[str, ...],
         bm3d: bool, output: Path) -> None:
    methods = [LibRawMethod()]
    taken: list[str] = []
    for w in (*baselines, *weights):
        restorer, info = engines.load(w, engine="torch", device="cpu")  # routed, as restore runs
        taken.append(network_name(info, taken))
        methods.append(NetworkMethod(taken[-1], restorer, info))
    if bm3d:
        from bm3d_baseline import BM3DMethod

        methods.append(BM3DMethod(blind=True))
    cases = {c.raw.name: c for c in benchmark_cases(bench)}
    if crops and len(crops) != len(names):
        raise click.BadParameter("one --crop per NAME", param_hint="--crop")
    rows = []
    for i, name in enumerate(names):
        case = cases[name]
        frame = read_raw(case.raw)
        truth = as_float(load_truth(case))
        if stops:
            linear = np.clip(display_linear(truth) * 2.0**stops, 0.0, 1.0)
            truth = bt709(torch.from_numpy(linear)).numpy()
        tiles = [as_float(m(case, frame, case.ratio * 2.0**stops)) for m in methods] + [truth]
        if crops:  # 100 %: no resampling
            y, x, side = (int(v) for v in crops[i].split(","))
            tiles = [t[y : y + side, x : x + side] for t in tiles]
            width = tiles[0].shape[1]
        h, w = tiles[0].shape[:2]
        size = (width, round(h * width / w))
        row = [np.asarray(Image.fromarray((t * 255 + 0.5).astype(np.uint8)).resize(size, Image.Resampling.LANCZOS))
               for t in tiles]
        gap = np.full((size[1], 6, 3), 255, np.uint8)
        rows.append(np.concatenate([x for t in row for x in (t, gap)][:-1], axis=1))
        click.echo(f"{name}: " + " | ".join([m.name for m in methods] + ["ground truth"]))
    sep = np.full((6, rows[0].shape[1], 3), 255, np.uint8)
    Image.fromarray(np.concatenate([x for r in rows for x in (r, sep)][:-1], axis=0)).save(output, optimize=True)
    click.echo(str(output))


if __name__ == "__main__":
    main()
