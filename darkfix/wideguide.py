"""The colour guide's wide pass: dark colour from the input's local means over large boxes, for frames whose
black level is exact (a sensor profile measured it; `--trust-black`).

The network's own colour guide (`model.guide_gain`, radius GUIDE_RADIUS) works over boxes of 12 x 12 packed
pixels, where the noise of dim areas hides their colour; the network itself learned to ignore dark local
means, because training frames carry a per-channel black-level error (synth: ELD's 0.5 DN on every frame,
up to BLACK_SPREAD DN on half of them) that shifts them. Dark areas come out greyer than they are (the
README example's grass: B/G 0.40 where the truth has 0.08). A second pass of the same guide over boxes of
2 WIDE_RADIUS + 4 packed pixels, after the network, sees those means nearly free of noise and gives them
back - but also any error in the file's black level, amplified 100-300 times: with v10, +0.10 dB colour-
aligned on the validation photos, +0.17 on the textures (9 frames each; the README example +0.48 with v9),
and -0.50 on the black-error benchmark. So it runs only where the black level is known to be right
(benchmarks/coarse_guide.py; benchmarks/RESULTS.md, sixteenth session).

The pass needs the output's local means around every tile, so the frame is restored whole first and the
tiles handed on afterwards, in the order the engine produced them: memory for the whole output (12 bytes a
pixel) instead of a band.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from .colour import display_tiles
from .model import guide_gain
from .tiling import Tile
from .weights import GUIDE_CELL

# packed pixels: boxes of 13 x 13 cells. 12 and 36 gave the README example less (+0.3, +0.4 dB aligned with
# v8); at 24 the means of a dim area are nearly free of noise, yet a dark object of 100 px keeps its own.
WIDE_RADIUS = 24


class WideGuide:
    """An engine (pipeline.Restorer) whose output goes through the wide pass before it reaches the sink."""

    def __init__(self, inner: Any, radius: int = WIDE_RADIUS) -> None:
        self.inner, self.radius = inner, radius
        self.engine = inner.engine  # as the inner engine runs
        self.device, self.precision = inner.device, inner.precision

    @torch.inference_mode()
    def _restored(self, packed: Any, **walk: Any) -> list[tuple[str, Any, Tile]]:
        """Run the engine over the whole frame (`walk`: by_columns, reverse and ensemble, as the engine's call
        takes them) and apply the wide pass: its events in order, ("tile", output, tile) with the corrected
        (1, 3, 2h, 2w) float32 output, or ("start"/"done", None, band)."""
        _, h, w = packed.shape
        events: list[tuple[str, Any, Tile]] = []
        mean: torch.Tensor | None = None

        def sink(out: Any, t: Tile) -> None:
            nonlocal mean
            o = out.detach().float().clone() if isinstance(out, torch.Tensor) else \
                torch.from_numpy(np.array(out, np.float32))  # a copy: engines may reuse their buffers
            if mean is None:
                mean = o.new_zeros((1, 3, h, w))
            mean[..., t.y0 : t.y1, t.x0 : t.x1] = F.avg_pool2d(o, 2)  # over each packed pixel's 2 x 2
            events.append(("tile", o, t))

        self.inner(packed, sink, band_start=lambda r: events.append(("start", None, r)),
                   band_done=lambda r: events.append(("done", None, r)), **walk)
        assert mean is not None
        # guide_gain works in cells of GUIDE_CELL: both sides padded to a multiple, as the edges repeat
        pad = (0, -w % GUIDE_CELL, 0, -h % GUIDE_CELL)
        inp = torch.from_numpy(np.ascontiguousarray(packed[:4, 0:h, 0:w], np.float32)[None]).to(mean.device)
        gain = guide_gain(F.pad(mean, pad, mode="replicate"), F.pad(inp, pad, mode="replicate"), self.radius)
        for kind, o, t in events:
            if kind == "tile":  # each packed pixel's gain on its 2 x 2, as the network's own guide applies it
                g = gain[..., t.y0 : t.y1, t.x0 : t.x1].repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
                o.mul_(g).clamp_(0.0, 1.0)
        return events

    def __call__(self, packed: Any, sink: Callable[[Any, Tile], None], band_start: Callable[[Tile], None] | None = None,
                 band_done: Callable[[Tile], None] | None = None, **walk: Any) -> None:
        """As the engine's call: `sink(out, tile)` gets float32 tensors, band by band in the walk's order."""
        for kind, o, t in self._restored(packed, **walk):
            if kind == "tile":
                sink(o, t)
            elif kind == "start" and band_start is not None:
                band_start(t)
            elif kind == "done" and band_done is not None:
                band_done(t)

    def display(self, packed: Any, wb: np.ndarray, rgb_cam: np.ndarray, bit_depth: int,
                sink: Callable[[np.ndarray, Tile], None], **walk: Any) -> None:
        """As the engine's `display`: the sink gets each tile's display codes (`colour.to_display`)."""
        display_tiles(self, packed, wb, rgb_cam, bit_depth, sink, **walk)
