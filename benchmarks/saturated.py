"""Saturated colours at low ratios: `tests/test_profile.py`'s scenes (flat patches of random camera colours,
many outside sRGB) shot by its four synthetic cameras (8-14 bits, every CFA phase) at ratios 20 and 40,
restored with each camera's sensor profile through each weights file; colour-aligned PSNR and outlier
pixels (more than 0.3 outside the truth's range within 2 px), the test's own scores.

    python benchmarks/saturated.py WORK_DIR --weights W [--weights W2 ...] [--panel PNG]

Made for issue 21: v4 turned a magenta patch red here (its blue collapsed) while the benchmarks made from
photographs, which hold sRGB's gamut only, did not show it. `--panel` writes the 12-bit camera's first shot:
truth | each weights file (colour-aligned, camera RGB, x3).
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import test_profile as tp  # noqa: E402  (the scenes, cameras and scores of the test)

from darkfix.inference import Restorer  # noqa: E402
from darkfix.profile import read_frame  # noqa: E402
from darkfix.weights import load_weights  # noqa: E402


@click.command()
@click.argument("work", type=click.Path(path_type=Path, file_okay=False))
@click.option("--weights", multiple=True, required=True, help="Weights files (or shipped names); repeatable.")
@click.option("--panel", type=click.Path(path_type=Path, dir_okay=False), default=None)
def main(work: Path, weights: tuple[str, ...], panel: Path | None) -> None:
    sessions = {}
    for cam in tp.CAMERAS:
        folder = work / cam.name  # made anew each run: the test's calibration refuses to overwrite its profile
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        sessions[cam.name] = tp.make_session(cam, folder)
    tiles = []
    for w in weights:
        model, info = load_weights(w)
        restorer = (Restorer(model, device="cpu", precision="fp32"), info)
        scored = []
        for name, session in sessions.items():
            for i, (path, truth, ratio) in enumerate(session.shots):
                out = tp.restored(restorer, read_frame(path, session.profile), ratio)
                scored.append(tp.scores(out, truth))
                click.echo(f"{Path(w).name} {name} x{ratio:.0f}: {scored[-1][0]:.2f} dB, {scored[-1][1]} outliers")
                if name == "12bit" and i == 0:
                    fit, ref = tp.aligned(out, truth)
                    tiles = tiles or [ref]
                    tiles.append(fit)
        click.echo(f"{Path(w).name}: mean {np.mean([s[0] for s in scored]):.2f} dB colour-aligned, "
                   f"{sum(s[1] for s in scored)} outlier pixels ({len(scored)} shots)")
    if panel:
        from PIL import Image

        img = np.concatenate(tiles, axis=2).transpose(1, 2, 0)
        im = Image.fromarray((img * 255).round().astype(np.uint8))
        im.resize((im.width * 3, im.height * 3), Image.Resampling.NEAREST).save(panel)


if __name__ == "__main__":
    main()
