"""Peak memory (and time) of `darkfix restore` as a whole process, by frame size and tile size.

    python benchmarks/memory.py [--sizes 4256x2848,8704x5792,12288x8192] [--tiles default,384,512,768,1024]
                                [--weights W] [--dir DIR] [--json memory.json]

Each row is one fresh `python -m darkfix restore RAW -o OUT.png --tile T` process on a synthetic dark DNG
(darkfix.lab.bench.write_synthetic_dng; kept in --dir so that reruns skip writing them); peak memory is
that child's maximum resident set from os.wait4, imports and decode buffers included. The default
sizes are 12 MP (the SID Sony frame), 50 MP and 100 MP.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import run_child  # noqa: E402


@click.command()
@click.option("--sizes", default="4256x2848,8704x5792,12288x8192", show_default=True)
@click.option("--tiles", default="default", show_default=True, help="Comma-separated --tile values ('default' = none).")
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--dir", "folder", type=click.Path(path_type=Path, file_okay=False), help="Where the raws are kept.")
@click.option("--extra", default="", help="More options for darkfix restore, e.g. '--threads 2'.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False))
def main(sizes, tiles, weights, folder, extra, json_path) -> None:
    import shlex

    from rich.console import Console
    from rich.table import Table

    from darkfix.lab.bench import machine, parse_size, weights_file, write_synthetic_dng

    console = Console(width=160)
    rows = []
    with tempfile.TemporaryDirectory(prefix="darkfix-mem-") as tmp:
        tmp = Path(tmp)
        folder = folder or tmp
        folder.mkdir(parents=True, exist_ok=True)
        weights, _ = weights_file(weights, tmp)
        for size in sizes.split(","):
            w, h = parse_size(size)
            raw = folder / f"synthetic_{w}x{h}.dng"
            if not raw.exists():
                console.log(f"writing {raw}")
                write_synthetic_dng(raw, w, h)
            for tile in tiles.split(","):
                out = tmp / "out.png"
                cmd = [sys.executable, "-m", "darkfix", "restore", str(raw), "-o", str(out), "--overwrite",
                       "--weights", str(weights), *shlex.split(extra)]
                if tile != "default":
                    cmd += ["--tile", tile]
                console.log(shlex.join(cmd))
                wall, rss = run_child(cmd, out)
                rows.append({"size": [w, h], "megapixels": w * h / 1e6, "tile": tile, "wall_s": wall,
                             "peak_rss_mb": rss, "png_bytes": out.stat().st_size})
    table = Table(title=f"darkfix restore: peak RSS by frame and tile size ({machine()['cpu']})")
    for col in ("frame", "tile", "peak RSS", "wall"):
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(f"{r['size'][0]}x{r['size'][1]} ({r['megapixels']:.0f} MP)", r["tile"],
                      f"{r['peak_rss_mb']:.0f} MB", f"{r['wall_s']:.1f} s")
    console.print(table)
    if json_path:
        json_path.write_text(json.dumps({"machine": machine(), "extra": extra, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
