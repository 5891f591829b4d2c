"""`darkfix synth`: a benchmark folder of synthetic dark raws (real DNG files) with ground truth.

Each photo becomes, for each exposure ratio, a dark DNG (random CFA phase, the Sony A7S II or a random
sensor, the sampled camera's ColorMatrix1 and AsShotNeutral in its tags), plus one 16-bit PNG ground
truth: the clean linear camera image rendered in the SID convention. `manifest.json` lists every pair.

By default the frames carry the training recipe's per-channel black-level error (`black_bias`: the file
states the black level a little wrong); `black_error=False` zeroes it, so that denoising is measured apart
from robustness to a wrong black level (every random draw is kept: the frames differ by the bias alone).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image

from . import synth
from ..colour import render
from ..dng import DngSpec, write_dng
from ..options import parse_ratio
from ..pipeline import quantise
from ..pngio import encode_png, write_atomic
from .train import list_images

MANIFEST = "manifest.json"
_PHASES = {(0, 0): "RGGB", (0, 1): "GRBG", (1, 0): "GBRG", (1, 1): "BGGR"}


def make_benchmark(photos: str | os.PathLike, out: str | os.PathLike, ratios: tuple[float, ...] = (100, 250, 300),
                   seed: int = 0, limit: int | None = None, max_side: int | None = None, sensors: str = "sony",
                   progress: Callable[[str], None] | None = None, black_error: bool = True,
                   part: str = "all", overwrite: bool = False, masked: int = 0) -> dict:
    """Write the benchmark folder and return its manifest.

    `sensors`: "sony" (the Sony A7S II of SID: 14 bits, black 512, ELD noise) or "broad" (each photo its
    own random sensor: 8-16 bits, black 0-10 %, white balance 1-3; the ratios are scaled by
    `synth.ratio_limit`, so an 8-bit sensor's 300 becomes about 25, and the manifest holds the true one).
    `black_error=False`: no black-level error (manifest `black_bias` all 0). `part`: `train.list_images`'s
    selection ("held-out": the Urban100 photos training leaves out, for a detail-rich benchmark).
    `masked`: that many (even) columns of optically masked photosites left of each frame (no light: black,
    read and row noise, the same rows' offsets), which the DNG's ActiveArea and MaskedAreas declare; the
    pictures are those of the same benchmark without them.
    Refuses (FileExistsError) a folder that already holds a benchmark unless `overwrite`; ValueError for a
    ratio outside 1-10000 or an odd `masked`.
    """
    if masked < 0 or masked % 2:
        raise ValueError(f"masked columns must be an even number, not {masked}")
    if sensors not in ("sony", "broad"):
        raise ValueError(f"unknown sensors {sensors!r} (expected sony or broad)")
    for r in ratios:
        parse_ratio(r)  # ValueError, in the CLI's words, for a ratio outside 1-10000
    broad = sensors == "broad"
    out = Path(out)
    if (out / MANIFEST).exists() and not overwrite:
        raise FileExistsError(f"{out}: already holds a benchmark (darkfix synth --overwrite replaces it)")
    images = list_images(photos, part)[:limit]  # before the folder is made: no empty folder left behind
    if (out / MANIFEST).exists():  # replaced whole: none of the old pairs left beside the new manifest
        for pair in json.loads((out / MANIFEST).read_text()).get("pairs", []):
            for name in {pair.get("raw"), pair.get("gt")} - {None}:
                (out / Path(name).name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, path in enumerate(images):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        img = Image.open(path).convert("RGB")
        if max_side and max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        w, h = img.size
        srgb = torch.from_numpy(np.asarray(img)[: h // 2 * 2, : w // 2 * 2].copy()).permute(2, 0, 1)[None].float()
        scene = synth.make_scene(srgb / 255.0, g, broad)
        camera, sensor = scene.camera, scene.sensor
        dy, dx = (int(v) for v in torch.randint(2, (2,), generator=g))
        cfa = _PHASES[(dy, dx)]
        rgb_cam = camera.rgb_cam[0]
        truth = quantise(render(scene.linear, camera.wb, rgb_cam)[..., dy:, dx:], 16)
        gt_name = f"{path.stem}_gt.png"
        write_atomic(out / gt_name, encode_png(truth, 6), overwrite=True)
        black, white = float(sensor.black[0]), float(sensor.white[0])
        scale = (white - black) / synth.SONY_RANGE  # the ELD parameters in this sensor's DN
        for k, nominal in enumerate(ratios):
            ratio = float(nominal) * (float(synth.ratio_limit(sensor)[0]) if broad else 1.0)
            # the masked columns' own draws come from a generator of their own: the picture is the one a
            # benchmark without them holds
            masked_g = torch.Generator().manual_seed((seed * 100_003 + i) * 1_009 + k) if masked else None
            # one cell more than asked: the CFA phase's crop below takes a column from the picture's side
            cells = masked // 2 + 1 if masked else 0
            s = synth.synthesise(None, g, broad=broad, ratio=torch.tensor([ratio]), exposure=torch.ones(1),
                                 scene=scene, black_error=black_error, masked=cells, masked_g=masked_g)
            planes = s.raw[0].to(torch.int32).numpy()
            _, hh, ww = planes.shape
            full = planes.reshape(2, 2, hh, ww).transpose(2, 0, 3, 1).reshape(2 * hh, 2 * ww)[dy:]
            # the masked columns in the picture's CFA phase: both cropped by dx
            mosaic = np.concatenate([full[:, dx : dx + masked], full[:, 2 * cells + dx :]], axis=1)
            name = f"{path.stem}_x{int(nominal)}.dng"
            spec = DngSpec(cfa=cfa, black=black, white=int(white),
                           as_shot_neutral=tuple((1.0 / camera.wb[0]).tolist()),
                           color_matrix=camera.cam_xyz[0].numpy(),
                           model="synthetic A7S II noise" if not broad else
                           f"synthetic {int(round(np.log2(white + 1)))}-bit sensor",
                           description=f"darkfix synth: {path.name} at 1/{ratio:g} exposure", margin_left=masked)
            write_dng(out / name, np.ascontiguousarray(mosaic.astype(np.uint16)), spec)
            noise = s.noise
            entries.append({"raw": name, "gt": gt_name, "ratio": ratio, "level": float(nominal),
                            "photo": path.name, "cfa": cfa,
                            "black": black, "white": white, "wb": [round(float(v), 4) for v in camera.wb[0]],
                            # the true noise, in this sensor's DN: lets oracle baselines (BM3D + VST) do their best
                            "noise": {"K": float(noise.K[0]) * scale, "read_sigma": float(noise.read_sigma[0]) * scale,
                                      "read_lambda": None if torch.isnan(noise.read_lambda[0])
                                      else float(noise.read_lambda[0]),
                                      "row_sigma": float(noise.row_sigma[0]) * scale,
                                      "black_bias": [round(float(v) * scale, 4) if black_error else 0.0
                                                     for v in noise.bias[0]]}})
            if progress:
                progress(name)
    manifest = {"version": 2, "seed": seed, "ratios": list(ratios), "sensors": sensors,
                "black_error": black_error, "photos": part, "masked_columns": masked,
                "convention": "ground truth = clean linear camera RGB rendered with camera WB, "
                              "LibRaw's camera->sRGB matrix and the BT.709 curve (SID), 16-bit PNG",
                "pairs": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
