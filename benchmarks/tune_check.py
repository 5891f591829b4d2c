"""Does `darkfix tune` help on the camera it was tuned for? (issue 22, item 4)

    python benchmarks/tune_check.py WORK_DIR --photos PHOTOS/val --train PHOTOS/train --minutes 10

Makes one synthetic camera with a fixed pattern (12 bits, GBRG, black stated 256 but 1-4 DN off per
channel, a column pattern, 0.15 % hot photosites, amp glow in a corner; Tukey-lambda read noise, row and
column noise), 8 lens-cap dark frames and shots of the first `--count` photos at ratios 20 and 40 (with
their clean ground truth); calibrates a profile from the darks; tunes weights for it (`darkfix tune`,
`--minutes`, photos from `--train`; it starts from the default weights); then restores every shot with the
profile through the default and the tuned weights and prints colour-aligned PSNR
(darkfix.lab.evaluate.scores) and SSIM. (The ninth session's figures compared v4, then tune's start, beside
the default v3.)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.colour import render  # noqa: E402
from darkfix.dng import DngSpec, write_dng  # noqa: E402
from darkfix.inference import Restorer  # noqa: E402
from darkfix.lab import synth  # noqa: E402
from darkfix.lab.evaluate import scores  # noqa: E402
from darkfix.lab.train import list_images  # noqa: E402
from darkfix.options import RestoreOptions  # noqa: E402
from darkfix.packing import prepare_frame  # noqa: E402
from darkfix.pipeline import infer_and_render, quantise  # noqa: E402
from darkfix.profile import calibrate, read_frame  # noqa: E402
from darkfix.weights import default_weights_path, load_weights  # noqa: E402

BLACK, WHITE = 256.0, 4095.0
CAMERA = synth.OwnSensor(black=BLACK, white=WHITE, k=1.2, read_dn=2.5, read_lambda=-0.05, row_dn=0.5, col_dn=0.4,
                         spread=0.0)
SPEC = dict(cfa="GBRG", black=BLACK, white=int(WHITE), exposure_time=30.0, iso=3200, model="tune check camera")


def pattern(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """The camera's fixed dark offset per photosite (DN): black errors per CFA position, columns, hot, glow."""
    p = np.tile(np.array([[3.0, -2.0], [1.0, 4.0]]), (h // 2, w // 2))
    p += rng.normal(0.0, 1.0, w)[None, :]
    hot = rng.random((h, w)) < 0.0015
    p[hot] += rng.uniform(50.0, 400.0, hot.sum())
    yy, xx = np.mgrid[0:h, 0:w]
    p += 30.0 * np.exp(-np.hypot(yy, xx) / (0.15 * max(h, w)))
    return p


def dark(h: int, w: int, fixed: np.ndarray, g: torch.Generator) -> np.ndarray:
    sensor, noise = CAMERA.sample(1, g)
    dn = synth.noisy_dn(torch.zeros(1, 4, h // 2, w // 2), torch.ones(1), noise, g, sensor)[0].numpy()
    mosaic = dn.reshape(2, 2, h // 2, w // 2).transpose(2, 0, 3, 1).reshape(h, w)
    return np.clip(np.round(mosaic + BLACK + fixed), 0, WHITE).astype(np.uint16)


@click.command()
@click.argument("work", type=click.Path(path_type=Path, file_okay=False))
@click.option("--photos", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--train", "train_photos", type=click.Path(path_type=Path, exists=True, file_okay=False), required=True)
@click.option("--count", type=int, default=6, show_default=True)
@click.option("--minutes", type=float, default=10.0, show_default=True)
@click.option("--size", type=int, default=512, show_default=True, help="Crop side of the shots.")
def main(work: Path, photos: Path, train_photos: Path, count: int, minutes: float, size: int) -> None:
    work.mkdir(parents=True, exist_ok=True)
    rng, g = np.random.default_rng(0), torch.Generator().manual_seed(0)
    fixed = pattern(size, size, rng)
    # everything one row down an RGGB mosaic: GBRG
    darks = [write_dng(work / f"dark{i}.dng", dark(size, size, fixed, g)[1:], DngSpec(**SPEC)) for i in range(8)]
    profile = work / "camera.npz"
    if not profile.exists():
        calibrate(darks).save(profile)
    shots = []
    for path in list_images(photos)[:count]:
        img = Image.open(path).convert("RGB")
        s0 = min(img.size) // 2 * 2
        box = ((img.width - s0) // 2, (img.height - s0) // 2)
        img = img.crop((*box, box[0] + s0, box[1] + s0)).resize((size, size), Image.Resampling.LANCZOS)
        srgb = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1)[None].float() / 255.0
        scene = synth.make_scene(srgb, g, broad=True)
        scene.sensor = CAMERA.sample(1, g)[0]
        # GBRG: the mosaic starts one row down the RGGB packing
        truth = quantise(render(scene.linear, scene.camera.wb, scene.camera.rgb_cam[0])[..., 1:, :], 16)
        for ratio in (20.0, 40.0):
            s = synth.synthesise(None, g, ratio=torch.tensor([ratio]), exposure=torch.ones(1), scene=scene, own=CAMERA)
            planes = s.raw[0].numpy()
            mosaic = planes.reshape(2, 2, size // 2, size // 2).transpose(2, 0, 3, 1).reshape(size, size)[1:]
            mosaic = np.clip(mosaic + np.round(fixed[1:]), 0, WHITE).astype(np.uint16)
            spec = DngSpec(**{**SPEC, "as_shot_neutral": tuple((1.0 / scene.camera.wb[0]).tolist()),
                              "color_matrix": scene.camera.cam_xyz[0].numpy()})
            shots.append((write_dng(work / f"{path.stem}_x{ratio:g}.dng", mosaic, spec), ratio, truth))
    tuned = work / "tuned.safetensors"
    train_dir = work / "train"
    train_dir.mkdir(exist_ok=True)
    for p in list_images(train_photos, "train")[::10]:
        link = train_dir / p.name
        if not link.exists():
            link.symlink_to(p.resolve())
    subprocess.run([sys.executable, "-c", "from darkfix.cli import main; main()", "tune", "--profile", str(profile),
                    "--images", str(train_dir), "-o", str(tuned), "--minutes", str(minutes)], check=True)
    results = {}
    for name, weights in (("default", default_weights_path()), ("tuned", tuned)):
        model, info = load_weights(weights)
        restorer = Restorer(model, device="cpu", precision="fp32")
        rows = []
        for raw, ratio, truth in shots:
            frame = read_frame(raw, profile)
            opts = RestoreOptions(ratio=ratio, bit_depth=16)
            out = infer_and_render(frame, prepare_frame(frame, opts, info.input), restorer, info, opts)
            rows.append(scores(out, truth))
        results[name] = rows
        aligned = np.mean([r["psnr_aligned"] for r in rows])
        click.echo(f"{name} + profile: colour-aligned PSNR {aligned:.2f} dB, PSNR "
                   f"{np.mean([r['psnr'] for r in rows]):.2f}, SSIM {np.mean([r['ssim'] for r in rows]):.3f} "
                   f"({len(rows)} frames)")
    gain = np.mean([t["psnr_aligned"] - d["psnr_aligned"] for t, d in zip(results["tuned"], results["default"])])
    click.echo(f"tuned - default: {gain:+.2f} dB colour-aligned (target >= +0.3)")


if __name__ == "__main__":
    main()
