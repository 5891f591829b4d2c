"""Throughput of `darkfix batch` on a folder of raws against processing them one after another, in one run.

    python benchmarks/batch.py [--count 10] [--size 4256x2848] [--weights W] [--rounds 1] [--processes]
                               [--engine auto|torch|openvino] [--dir DIR] [--json batch.json]

Three ways over the same files, one process each (fresh interpreter, timed from its start until it
exits with every PNG on disk), alternating in each round after one untimed warm-up:

- "one after another": one process that imports darkfix once, then for each file decodes, runs the
  network and colour, and encodes the PNG, each stage waiting for the last (no thread or process overlaps
  another stage);
- "darkfix batch": the command as users run it (decode in a worker process one file ahead, PNG encoding
  on a thread while the network makes the next band);
- with --processes, also one `darkfix restore` process per file, as a shell loop would run them;
- with --ray, `darkfix batch --ray`, starting its own local Ray instance (timed from the process start:
  Ray's start-up, its actors' start-up and model loads included).

The raws are synthetic 12 MP dark DNGs (darkfix.lab.bench.write_synthetic_dng, one seed each), kept in --dir
so that reruns skip writing them. They are uncompressed, so they decode faster than a camera's
compressed raws: the overlap a real folder gains is, if anything, larger.
"""

from __future__ import annotations

import json
import shlex
import statistics
import sys
import tempfile
from pathlib import Path

import click

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))

from e2e import run_child  # noqa: E402

# The no-overlap baseline, run as its own process: the pipeline's stages called one after another.
SEQUENTIAL = """
import sys
from pathlib import Path
from darkfix import engine
from darkfix.pipeline import RestoreOptions, output_size, prepare_frame, render_bands
from darkfix.pngio import PngStream, atomic_output
from darkfix.rawio import read_raw

restorer, info = engine.load(Path(sys.argv[1]), engine=sys.argv[3], device="cpu")
opts = RestoreOptions(overwrite=True)
out = Path(sys.argv[2])
for src in map(Path, sys.argv[4:]):
    frame = read_raw(src)
    prep = prepare_frame(frame, opts, balanced=info.input == "balanced")
    w, h = output_size(frame, prep)
    with atomic_output(out / (src.stem + ".png"), True) as f, PngStream(f, w, h, 8, opts.compression) as png:
        render_bands(frame, prep, restorer, info, opts, png.write)
"""


@click.command()
@click.option("--count", default=10, show_default=True, help="Raws in the folder.")
@click.option("--size", default="4256x2848", show_default=True)
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--rounds", default=1, show_default=True, help="Timed rounds (each way once per round).")
@click.option("--processes", is_flag=True, help="Also time one `darkfix restore` process per file.")
@click.option("--ray", "with_ray", is_flag=True, help="Also time `darkfix batch --ray` (needs darkfix[ray]).")
@click.option("--engine", type=click.Choice(["auto", "torch", "openvino"]), default="auto", show_default=True,
              help="The engine every way uses.")
@click.option("--dir", "folder", type=click.Path(path_type=Path, file_okay=False), help="Where the raws are kept.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False))
def main(count, size, weights, rounds, processes, with_ray, engine, folder, json_path) -> None:
    from rich.console import Console
    from rich.table import Table

    from darkfix.lab.bench import machine, parse_size, weights_file, write_synthetic_dng

    console = Console(width=160)
    w, h = parse_size(size)
    with tempfile.TemporaryDirectory(prefix="darkfix-batch-") as tmp:
        tmp = Path(tmp)
        folder = folder or tmp / "raws"
        folder.mkdir(parents=True, exist_ok=True)
        weights, note = weights_file(weights, tmp)
        raws = []
        for i in range(count):
            raw = folder / f"frame{i:02d}.dng"
            if not raw.exists():
                console.log(f"writing {raw}")
                write_synthetic_dng(raw, w, h, seed=i)
            raws.append(raw)
        outdir = tmp / "out"
        outdir.mkdir()
        py = sys.executable
        ways = {
            "one after another": [[py, "-c", SEQUENTIAL, str(weights), str(outdir), engine, *map(str, raws)]],
            "darkfix batch": [[py, "-m", "darkfix", "batch", str(folder), "-o", str(outdir), "--overwrite",
                               "--weights", str(weights), "--device", "cpu", "--engine", engine]],
        }
        if processes:
            ways["one restore process per file"] = [
                [py, "-m", "darkfix", "restore", str(r), "-o", str(outdir / f"{r.stem}.png"), "--overwrite",
                 "--weights", str(weights), "--device", "cpu", "--engine", engine] for r in raws]
        if with_ray:
            ways["darkfix batch --ray (own Ray instance)"] = [ways["darkfix batch"][0] + ["--ray"]]
        times: dict[str, list[float]] = {k: [] for k in ways}
        peaks: dict[str, float] = {k: 0.0 for k in ways}

        def run(name: str) -> float:
            total = 0.0
            for cmd in ways[name]:
                console.log(f"{name}: {shlex.join(cmd[:3]) if cmd[1] == '-c' else shlex.join(cmd)}"[:150])
                wall, rss = run_child(cmd, None)
                total += wall
                peaks[name] = max(peaks[name], rss)
            missing = [r.stem for r in raws if not (outdir / f"{r.stem}.png").exists()]
            if missing:
                raise SystemExit(f"{name}: no PNG for {missing}")
            for p in outdir.glob("*.png"):
                p.unlink()
            return total

        names = list(ways)
        run(names[0])  # warm-up: page cache, first-import compilation
        for r in range(rounds):
            for name in names if r % 2 == 0 else names[::-1]:
                times[name].append(run(name))
    base = statistics.median(times["one after another"])
    rows = []
    where = machine()
    table = Table(title=f"{count} raws of {w}x{h}: wall time, process start to last PNG on disk "
                        f"({where['cpu']}, {where['cpu_count']} CPUs)")
    for col in ("way", "wall (median)", "per file", "throughput vs one after another", "peak RSS (largest process)"):
        table.add_column(col, justify="right")
    for name in names:
        t = statistics.median(times[name])
        rows.append({"way": name, "wall_s": times[name], "per_file_s": t / count, "speedup": base / t,
                     "peak_rss_mb": peaks[name]})
        table.add_row(name, f"{t:.1f} s", f"{t / count:.2f} s", f"{base / t:.2f}x", f"{peaks[name]:.0f} MB")
    console.print(table)
    console.print(f"weights: {note}")
    if json_path:
        json_path.write_text(json.dumps({"machine": where, "count": count, "size": [w, h], "rows": rows},
                                        indent=1))


if __name__ == "__main__":
    main()
