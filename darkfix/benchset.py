"""`darkfix synth`: a benchmark folder of synthetic dark raws (real DNG files) with ground truth.

Each photo becomes, for each exposure ratio, a dark DNG (random CFA phase, Sony A7S II noise, the
sampled camera's ColorMatrix1 and AsShotNeutral in its tags), plus one 16-bit PNG ground truth: the
clean linear camera image rendered in the SID convention. `manifest.json` lists every pair.
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
from .colour import render
from .dng import DngSpec, write_dng
from .pipeline import quantise
from .pngio import encode_png, write_atomic
from .train import list_images

MANIFEST = "manifest.json"
_PHASES = {(0, 0): "RGGB", (0, 1): "GRBG", (1, 0): "GBRG", (1, 1): "BGGR"}


def make_benchmark(photos: str | os.PathLike, out: str | os.PathLike, ratios: tuple[float, ...] = (100, 250, 300),
                   seed: int = 0, limit: int | None = None, max_side: int | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Write the benchmark folder and return its manifest."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, path in enumerate(list_images(photos)[:limit]):
        g = torch.Generator().manual_seed(seed * 100_003 + i)
        img = Image.open(path).convert("RGB")
        if max_side and max(img.size) > max_side:
            img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        w, h = img.size
        srgb = torch.from_numpy(np.asarray(img)[: h // 2 * 2, : w // 2 * 2].copy()).permute(2, 0, 1)[None].float()
        camera = synth.sample_camera(1, g)
        linear = synth.unprocess(srgb / 255.0, camera, g)
        dy, dx = (int(v) for v in torch.randint(2, (2,), generator=g))
        cfa = _PHASES[(dy, dx)]
        rgb_cam = camera.rgb_cam[0]
        truth = quantise(render(linear, camera.wb, rgb_cam)[..., dy:, dx:], 16)
        gt_name = f"{path.stem}_gt.png"
        write_atomic(out / gt_name, encode_png(truth, 6), overwrite=True)
        for ratio in ratios:
            noise = synth.sample_noise(1, g, broad=0.0)
            dn = synth.noisy_dn(synth.mosaic(linear), torch.tensor([float(ratio)]), noise, g)
            planes = torch.round(dn[0] + synth.BLACK).clamp(0, synth.WHITE).to(torch.int32).numpy()
            _, hh, ww = planes.shape
            mosaic = planes.reshape(2, 2, hh, ww).transpose(2, 0, 3, 1).reshape(2 * hh, 2 * ww)[dy:, dx:]
            name = f"{path.stem}_x{int(ratio)}.dng"
            spec = DngSpec(cfa=cfa, black=synth.BLACK, white=int(synth.WHITE),
                           as_shot_neutral=tuple((1.0 / camera.wb[0]).tolist()),
                           color_matrix=camera.cam_xyz[0].numpy(), model="synthetic A7S II noise",
                           description=f"darkfix synth: {path.name} at 1/{ratio:g} exposure")
            write_dng(out / name, np.ascontiguousarray(mosaic.astype(np.uint16)), spec)
            entries.append({"raw": name, "gt": gt_name, "ratio": float(ratio), "photo": path.name, "cfa": cfa,
                            # the true noise, in DN: lets oracle baselines (BM3D + VST) do their best
                            "noise": {"K": float(noise.K[0]), "read_sigma": float(noise.read_sigma[0]),
                                      "read_lambda": None if torch.isnan(noise.read_lambda[0])
                                      else float(noise.read_lambda[0]),
                                      "row_sigma": float(noise.row_sigma[0]),
                                      "black_bias": [round(float(v), 4) for v in noise.bias[0]]}})
            if progress:
                progress(name)
    manifest = {"version": 1, "seed": seed, "ratios": list(ratios), "black": synth.BLACK, "white": synth.WHITE,
                "convention": "ground truth = clean linear camera RGB rendered with camera WB, "
                              "LibRaw's camera->sRGB matrix and the BT.709 curve (SID), 16-bit PNG",
                "pairs": entries}
    (out / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest
