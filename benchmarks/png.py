"""PNG writers and zlib levels on one restored-looking 8-bit 12 MP image: time and size, in one run.

    python benchmarks/png.py (--image PHOTO | --weights W [--raw RAW]) [--size 4256x2848] [--runs 3]
                             [--levels 0,1,2,3,6,9] [--json png.json]

The image: a photo resized to --size (with a little noise, like a restored frame), or the output of
`darkfix restore` on --raw (default: the synthetic dark frame) with --weights. A seeded random network's
output is noise and compresses unlike any photo, so one of the two is required.
Writers: darkfix.pngio.encode_png at each level, with its default threads (one deflate slice per 4 MB
of rows, on up to os.cpu_count() threads) and with one thread; Pillow's PNG writer at levels 1 and 6
(its default). Timings cover encoding to bytes in memory (writing the file is not included).
"""

from __future__ import annotations

import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import click
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout


def _image(image_path: Path | None, weights: Path | None, raw: Path | None, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image

    if image_path is not None:
        img = Image.open(image_path).convert("RGB").resize(size, Image.Resampling.LANCZOS)
        arr = np.asarray(img).astype(np.int16)
        noise = np.random.default_rng(0).normal(0.0, 1.5, arr.shape)
        return np.clip(np.round(arr + noise), 0, 255).astype(np.uint8)
    from darkfix.lab.bench import write_synthetic_dng
    from darkfix.inference import Restorer
    from darkfix.pipeline import RestoreOptions, infer_and_render, prepare_frame
    from darkfix.rawio import read_raw
    from darkfix.weights import load_weights

    model, info = load_weights(weights)
    with tempfile.TemporaryDirectory() as tmp:
        if raw is None:
            raw = write_synthetic_dng(Path(tmp) / "synthetic.dng", *size)
        frame = read_raw(raw)
        opts = RestoreOptions()
        prep = prepare_frame(frame, opts, balanced=info.input == "balanced")
        return infer_and_render(frame, prep, Restorer(model, "cpu"), info, opts)


@click.command()
@click.option("--image", "image_path", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--raw", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--size", default="4256x2848", show_default=True)
@click.option("--runs", type=click.IntRange(1), default=3, show_default=True)
@click.option("--levels", default="0,1,2,3,6,9", show_default=True)
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False))
def main(image_path, weights, raw, size, runs, levels, json_path) -> None:
    from PIL import Image
    from rich.console import Console
    from rich.table import Table

    from darkfix.lab.bench import machine, parse_size
    from darkfix.pngio import encode_png

    if image_path is None and weights is None:
        raise click.UsageError("give --image PHOTO or --weights W (a random network's output is noise)")
    console = Console(width=160)
    image = _image(image_path, weights, raw, parse_size(size))
    h, w, _ = image.shape

    def pillow(level: int) -> bytes:
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG", compress_level=level)
        return buf.getvalue()

    writers = {f"darkfix level {lv}": (lambda lv=lv: encode_png(image, lv)) for lv in map(int, levels.split(","))}
    writers["darkfix level 1, 1 thread"] = lambda: encode_png(image, 1, threads=1)
    writers["darkfix level 6, 1 thread"] = lambda: encode_png(image, 6, threads=1)
    writers["Pillow level 1"] = lambda: pillow(1)
    writers["Pillow level 6 (default)"] = lambda: pillow(6)
    times: dict[str, list[float]] = {k: [] for k in writers}
    sizes: dict[str, int] = {}
    for name, fn in writers.items():  # warm-up, and check the output decodes to the image
        data = fn()
        sizes[name] = len(data)
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), image), name
    for i in range(runs):
        console.log(f"round {i + 1} of {runs}")
        for name, fn in writers.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    table = Table(title=f"PNG encoding of a {w}x{h} 8-bit image, median of {runs} ({machine()['cpu']})")
    for col in ("writer", "median", "size", "runs (ms)"):
        table.add_column(col, justify="left" if col == "writer" else "right")
    rows = []
    for name in writers:
        med = statistics.median(times[name])
        rows.append({"writer": name, "median_s": med, "runs_s": times[name], "bytes": sizes[name]})
        table.add_row(name, f"{med * 1000:.0f} ms", f"{sizes[name] / 1e6:.1f} MB",
                      " ".join(f"{t * 1000:.0f}" for t in times[name]))
    console.print(table)
    if json_path:
        json_path.write_text(json.dumps({"machine": machine(), "size": [w, h], "runs": runs,
                                         "source": str(image_path or f"restored with {weights}"), "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
