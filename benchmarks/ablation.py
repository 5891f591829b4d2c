"""Issue 21's A/B at equal budget: what the finest-scale path and the noise map each bring.

    python benchmarks/ablation.py --images PHOTOS/train --val PHOTOS/val --val PHOTOS/val_texture \
        --val PHOTOS/train --init weights/darkfix-lamba2021-v3.safetensors --steps 3000 --work DIR

Three runs from the same start, seed, data and schedule (`darkfix.lab.train.train`, batch 6 x 256, the
L1 + camera-RGB loss, MS-SSIM for the last tenth):
- paper: the paper's network (lamba2021) trained on;
- fine: lamba2021-na with its noise map zeroed in training and validation (the path alone);
- both: lamba2021-na as darkfix trains it (path and map).
Each is validated on the same crops (the training's fixed validation set: PSNR on the sRGB rendering, SSIM)
before and after; the table goes to stdout and DIR/ablation.json. Runs that finished are not run again
(their result files are kept), so the script resumes after an interruption.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.lab import train as training  # noqa: E402

VARIANTS = ("paper", "fine", "both")


def _without_map(make):
    """`training.pair_from` with the noise map's channels zeroed: the network sees no noise level."""
    def pair_from(*args, **kwargs):
        pair = make(*args, **kwargs)
        pair.inputs[:, 4:] = 0.0
        return pair
    return pair_from


@click.command()
@click.option("--images", type=click.Path(exists=True, file_okay=False), required=True)
@click.option("--val", type=click.Path(exists=True, file_okay=False), multiple=True, required=True)
@click.option("--val-crops", type=int, default=16, show_default=True)
@click.option("--init", "init_weights", type=click.Path(exists=True, dir_okay=False), required=True)
@click.option("--steps", type=int, default=3000, show_default=True)
@click.option("--lr", type=float, default=1e-4, show_default=True)
@click.option("--seed", type=int, default=21, show_default=True)
@click.option("--work", type=click.Path(file_okay=False, path_type=Path), required=True)
@click.option("--variants", default=",".join(VARIANTS), show_default=True)
def main(images, val, val_crops, init_weights, steps, lr, seed, work, variants) -> None:
    work.mkdir(parents=True, exist_ok=True)
    results = {}
    original = training.pair_from
    for name in variants.split(","):
        if name not in VARIANTS:
            raise click.BadParameter(f"{name!r}: expected some of {', '.join(VARIANTS)}", param_hint="--variants")
        done = work / f"{name}.json"
        if done.is_file():
            results[name] = json.loads(done.read_text())
            continue
        training.pair_from = _without_map(original) if name == "fine" else original
        cfg = training.TrainConfig(images=images, out=str(work / f"{name}.safetensors"), val=list(val),
                                   val_crops=val_crops, iterations=steps, batch=6, crop=256, lr=lr, seed=seed,
                                   validate_every=steps, msssim_from=0.9, init=init_weights,
                                   noise_aware=name != "paper", validate_start=True)
        torch.manual_seed(seed)
        start = time.time()
        summary = training.train(cfg, resume=str(work / f"{name}.safetensors.ckpt")
                                 if (work / f"{name}.safetensors.ckpt").is_file() else None)
        first, last = summary["history"][0], summary["history"][-1]
        results[name] = {"start_psnr": first["psnr"], "start_ssim": first["ssim"], "psnr": last["psnr"],
                         "ssim": last["ssim"], "steps": summary["steps"], "seconds": round(time.time() - start)}
        done.write_text(json.dumps(results[name]))
        print(f"{name}: {first['psnr']:.2f} / {first['ssim']:.3f} -> {last['psnr']:.2f} / {last['ssim']:.3f}",
              flush=True)
    training.pair_from = original
    (work / "ablation.json").write_text(json.dumps(results, indent=1))
    print("| variant | start PSNR / SSIM | after PSNR / SSIM | gain dB |\n|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['start_psnr']:.2f} / {r['start_ssim']:.3f} | {r['psnr']:.2f} / {r['ssim']:.3f} "
              f"| {r['psnr'] - r['start_psnr']:+.2f} |")


if __name__ == "__main__":
    main()
