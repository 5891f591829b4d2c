"""The yardstick for end-to-end timings: one raw restored the way the paper's authors run their network,
as one process -- imports, LibRaw decode, the eager network on the whole frame, an 8-bit image written.

    python benchmarks/authors_way.py RAW OUT.png --weights W [--ratio R]

It is darkfix's own `LambaNet` (never the authors' code), left as they run it: weight normalisation
recomputed on every call (nothing folded), fp32, plain eager PyTorch with its default threads, the
whole frame at once, no tiles. Decoding, normalisation and the paper's amplification estimate are plain
numpy over the full mosaic; the output is written as an 8-bit PNG with Pillow's default settings
(zlib level 6). It assumes an RGGB sensor (as the authors' code does) and applies no colour processing
of its own: the network's output is written as is. Noise-aware weights get the noise map of the frame's
own estimate (darkfix.noise), computed the same plain way.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("raw", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--weights", type=Path, required=True)
    parser.add_argument("--ratio", type=float, default=None, help="amplification (default: the paper's estimate)")
    args = parser.parse_args(argv)

    import numpy as np
    import rawpy
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from darkfix.amplify import estimate_amplification
    from darkfix.weights import load_weights

    model, _ = load_weights(args.weights)  # weight-normalised, as trained: nothing is folded
    model.eval()

    with rawpy.imread(str(args.raw)) as raw:
        mosaic = raw.raw_image_visible.astype(np.float32)
        black = float(np.mean(raw.black_level_per_channel))
        white = float(raw.white_level)
    x = np.maximum(mosaic - black, 0.0) / (white - black)
    x = np.minimum(x, 1.0)
    amp = args.ratio if args.ratio is not None else estimate_amplification(x)
    h, w = x.shape
    x = x[: h // 32 * 32, : w // 32 * 32]  # the network wants multiples of 32 in the mosaic

    with torch.no_grad():
        packed = F.pixel_unshuffle(torch.from_numpy(np.ascontiguousarray(x * amp, dtype=np.float32))[None, None], 2)
        if model.noise_aware:  # noise-aware weights read the noise map too: the frame's estimate, plain numpy
            from darkfix.noise import amplified_terms, estimate, sigma_planes

            level = estimate([mosaic[i::2, j::2] for i in (0, 1) for j in (0, 1)], np.full(4, black), white)
            a, b = (torch.from_numpy(t).float().view(1, 4, 1, 1) for t in amplified_terms(level, np.full(4, amp)))
            packed = torch.cat([packed, sigma_planes(packed, a, b)], dim=1)
        out = model(packed)
    image = (out[0].permute(1, 2, 0).clamp(0.0, 1.0) * 255.0).round().to(torch.uint8).numpy()
    Image.fromarray(image).save(args.out)


if __name__ == "__main__":
    main(sys.argv[1:])
