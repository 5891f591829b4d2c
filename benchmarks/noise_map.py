"""How much noise-aware weights rely on their noise map, and what the frame's own estimate costs.

    python benchmarks/noise_map.py PHOTOS/train PHOTOS/val --weights W [--count 8,4]

Synthetic pairs (`darkfix.lab.synth`, no black-level error, exposure 1) from the first held-out photos of
the training folder and the first validation photos (384 px crops), each as the Sony A7S II and as a
broad sensor: PSNR of the sRGB rendering with the true noise map scaled by 0.25-4, and with the map from
`darkfix.noise.estimate` on the frame (what `darkfix restore` uses without a profile or NoiseProfile).
"""

from __future__ import annotations

import sys
from pathlib import Path

import click
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.lab import synth  # noqa: E402
from darkfix.lab.evaluate import psnr  # noqa: E402
from darkfix.lab.train import Pair, list_images, load_photo  # noqa: E402
from darkfix.noise import amplified_terms, estimate, sigma_planes  # noqa: E402
from darkfix.weights import load_weights  # noqa: E402

SCALES = (0.25, 0.5, 1.0, 2.0, 4.0)


@click.command()
@click.argument("train_photos", type=click.Path(exists=True, file_okay=False))
@click.argument("val_photos", type=click.Path(exists=True, file_okay=False))
@click.option("--weights", required=True)
@click.option("--count", default="8,4", show_default=True, help="Held-out photos, validation photos.")
def main(train_photos: str, val_photos: str, weights: str, count: str) -> None:
    model, info = load_weights(weights)
    if not info.noise_aware:
        raise click.BadParameter("not noise-aware weights", param_hint="--weights")
    model.eval()
    n_held, n_val = (int(v) for v in count.split(","))
    paths = list_images(train_photos, "held-out")[:n_held] + list_images(val_photos)[:n_val]
    g = torch.Generator().manual_seed(3)
    results: dict[str, list[float]] = {**{f"x{s:g}": [] for s in SCALES}, "estimate": []}
    for path in paths:
        img = load_photo(path, 512)[:, :384, :384].float()[None] / 255
        for broad in (False, True):
            s = synth.synthesise(img, g, broad=broad, exposure=torch.ones(1), black_error=False)
            x = s.network_input()
            pair = Pair(x, s.target_balanced(), s.camera.rgb_cam, s.ratio)
            truth = pair.target()[0].permute(1, 2, 0).numpy()

            def score(noise_map: torch.Tensor) -> float:
                with torch.no_grad():
                    pred = model(torch.cat([x, noise_map.float()], 1))
                return psnr(pair.render(pred)[0].permute(1, 2, 0).numpy(), truth)

            true_map = s.noise_map(x)
            for scale in SCALES:
                results[f"x{scale:g}"].append(score(true_map * scale))
            level = estimate(s.raw[0].numpy(), np.full(4, s.sensor.black.item()), s.sensor.white.item())
            a, b = (torch.from_numpy(t).float().view(1, 4, 1, 1)
                    for t in amplified_terms(level, synth.packed_wb(s.camera.wb)[0].flatten() * s.ratio))
            results["estimate"].append(score(sigma_planes(x, a, b)))
            click.echo(f"{path.name} {'broad' if broad else 'sony'}: "
                       + " ".join(f"{k} {v[-1]:.2f}" for k, v in results.items()))
    click.echo(f"mean PSNR over {len(results['estimate'])} frames: "
               + ", ".join(f"{k} {np.mean(v):.2f}" for k, v in results.items()))


if __name__ == "__main__":
    main()
