"""Flat patches of saturated colour at high ratios: the network's mean output over the truth's, per channel.

    python benchmarks/flat_colour.py --weights W [--weights W2 ...] [--surround grey|none]

Each patch is a square of one colour on grey, in white-balanced camera RGB: white and the sRGB primaries
and secondaries as a typical camera sees them (sRGB red is camera 1, 0.13, 0.03: the camera's channels
overlap), shot by a Sony-like 14-bit sensor (black 512, read noise 2.05 DN, row 0.7 DN) with Poisson shot
noise, the frame's noise level given (as a profile would), restored at the true ratio through the stages
`darkfix restore` uses (packing, the engine's tiles, the colour guide; torch fp32). A pipeline that keeps
colour scores 1.00 in every channel; the summary is each colour's largest channel error as a share of its
brightest channel (|out - truth| / max(truth): a weak channel's ratio alone can be far from 1 for an error
nobody sees), averaged over the colours, the well-exposed settings (level 0.3) and the dim one (0.05)
apart. `--surround none` fills the frame with the flat colour, which looks like what a black-level error
amplified 100-300 times does to a dark frame (the networks trained for that robustness grey it: v5 kept
a third of a red frame's red); `--surround light` fills it shaded by a texture: a scene under light of
that colour, where an offset and a colour can be told apart.

Made for issue 21: the photographs of the benchmarks hold few large areas of saturated colour
(`darkfix train --colour-patches` adds them to training).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.inference import Restorer  # noqa: E402
from darkfix.lab.synth import mosaic  # noqa: E402
from darkfix.noise import NoiseLevel  # noqa: E402
from darkfix.packing import cfa_layout, prepare, unpack  # noqa: E402
from darkfix.weights import INPUT_NOISE, load_weights  # noqa: E402

WHITE, BLACK, READ_DN, ROW_DN = 16383.0, 512.0, 2.05, 0.7
WB = np.array([2.19, 1.0, 1.62])
COLOURS = {"white": (1, 1, 1), "red": (1, 0.13, 0.03), "green": (0.39, 1, 0.31), "blue": (0.08, 0.2, 1),
           "magenta": (0.92, 0.31, 1), "cyan": (0.37, 0.93, 1), "yellow": (1, 0.91, 0.27)}
# (system gain K in DN per electron, exposure ratio, level of the brightest channel after amplification)
SETTINGS = ((0.3, 100, 0.3), (1.25, 200, 0.3), (3.0, 300, 0.3), (1.25, 200, 0.05))
SIDE = 320  # photosites per side of the frame; the patch is the middle half, its mean taken over its middle
GREY = (0.5, 0.5, 0.5)  # around the patch (a colour filling the frame is --surround none)


def shading(rng: np.random.Generator) -> np.ndarray:
    """(SIDE, SIDE) texture of mean 1: log-normal 1/f noise (contrast like a photo's, no photo needed)."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(SIDE), np.fft.fftfreq(SIDE), indexing="ij"))
    field = np.fft.ifft2(np.fft.fft2(rng.normal(size=(SIDE, SIDE))) / np.maximum(f, 1.0 / SIDE)).real
    lum = np.exp(0.8 * field / field.std())
    return lum / lum.mean()


def shoot(colour: tuple[float, float, float], k: float, ratio: float, level: float, rng: np.random.Generator,
          surround: str = "grey") -> tuple[np.ndarray, np.ndarray]:
    """An RGGB mosaic (uint16) and its clean balanced camera RGB (3, SIDE, SIDE): a flat square of `colour`
    x `level` (after the ratio), half the frame's side, on grey; or (`surround` "none") the whole frame
    of it; or ("light") the whole frame, shaded by a texture, as a scene under light of that colour."""
    clean = np.empty((3, SIDE, SIDE))
    clean[:] = np.asarray(GREY if surround == "grey" else colour)[:, None, None] * level
    quarter = slice(SIDE // 4, -SIDE // 4)
    clean[:, quarter, quarter] = np.asarray(colour)[:, None, None] * level
    if surround == "light":
        clean *= shading(rng)[None]
    raw = clean / (ratio * WB[:, None, None])  # normalised, unbalanced, before amplification
    m = unpack(mosaic(torch.from_numpy(raw)[None])[0].numpy(), cfa_layout("RGGB", (SIDE, SIDE)))
    electrons = rng.poisson(m * (WHITE - BLACK) / k)
    dn = BLACK + electrons * k + rng.normal(0.0, math.hypot(READ_DN, ROW_DN), m.shape)
    return np.clip(np.round(dn), 0, WHITE).astype(np.uint16), clean


def restored(restorer: Restorer, noise_aware: bool, mosaic: np.ndarray, k: float, ratio: float) -> np.ndarray:
    """The balanced camera RGB (3, SIDE, SIDE) the network gives."""
    noise = NoiseLevel.from_dn(k, READ_DN, WHITE - BLACK, ROW_DN)
    prep = prepare(mosaic, "RGGB", np.full((2, 2), BLACK), WHITE, float(ratio), wb=WB, balanced=True,
                   noise_aware=noise_aware, noise=noise)
    image = np.zeros((3, SIDE, SIDE), np.float32)

    def sink(out, t) -> None:
        image[:, 2 * t.y0 : 2 * t.y1, 2 * t.x0 : 2 * t.x1] = np.asarray(out)[0]

    restorer(prep.packed, sink)
    return image


@click.command()
@click.option("--weights", multiple=True, required=True, help="Weights files (or shipped names); repeatable.")
@click.option("--surround", type=click.Choice(["grey", "none", "light"]), default="grey", show_default=True,
              help="none: the colour fills the frame (which a black-level error amplified 100-300 times also "
                   "looks like); light: fills it shaded by a texture, a scene under light of that colour.")
def main(weights: tuple[str, ...], surround: str) -> None:
    for w in weights:
        model, info = load_weights(w)
        restorer = Restorer(model, device="cpu", precision="fp32")
        worst: dict[float, list[float]] = {}
        click.echo(f"{Path(w).name}: out / truth (R G B) per colour")
        middle = slice(3 * SIDE // 8, -3 * SIDE // 8)
        for k, ratio, level in SETTINGS:
            rng = np.random.default_rng(0)
            cells = []
            for name, colour in COLOURS.items():
                shot, clean = shoot(colour, k, ratio, level, rng, surround)
                out = restored(restorer, info.input == INPUT_NOISE, shot, k, ratio)
                truth = clean[:, middle, middle].mean((1, 2))
                rel = out[:, middle, middle].mean((1, 2)) / truth
                worst.setdefault(level, []).append(float((np.abs(rel - 1.0) * truth).max() / truth.max()))
                cells.append(f"{name} {' '.join(f'{v:.2f}' for v in rel)}")
            click.echo(f"  K {k} x{ratio} level {level}: " + " | ".join(cells))
        click.echo("  largest channel error / brightest channel (mean over colours and settings): "
                   + ", ".join(f"level {lv}: {np.mean(v):.2f}" for lv, v in worst.items()))


if __name__ == "__main__":
    main()
