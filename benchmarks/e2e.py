"""End-to-end timing of `darkfix restore` against the authors' way (benchmarks/authors_way.py), in one run.

    python benchmarks/e2e.py [--raw RAW | --size 4256x2848] [--weights W] [--runs 5] [--json e2e.json]
                             [--engines torch,openvino] [--darkfix-args "--tile 512 --compression 1"] [--ensemble]

Each command is a fresh process, timed from its start until it has exited with its file on disk; the
two alternate (A B, B A, ...) after one untimed warm-up each, so drift on a busy machine hits both alike.
Peak memory is each child's own maximum resident set (os.wait4's rusage). Also timed in the same run:
a process that only imports torch and darkfix (the floor every command pays), and the network alone
(`darkfix bench --no-reference` on the same raw), so that end-to-end time can be read against it.
With several --engines, `darkfix restore --engine E` is timed for each, in the same rounds; with
`--ensemble`, `darkfix restore --engine E --ensemble` too (the network twice), in the same rounds.
Without --weights it uses the packaged weights, or else writes a seeded random weights file (timings are
the same; the images are noise).
"""

from __future__ import annotations

import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # darkfix from this checkout


def run_child(cmd: list[str], output: Path | None) -> tuple[float, float]:
    """Run `cmd` to completion; returns (wall seconds, peak RSS in MB). Raises if it fails."""
    if output is not None and output.exists():
        output.unlink()
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        if code != 0 or (output is not None and not output.is_file()):
            err.seek(0)
            raise SystemExit(f"failed ({code}): {shlex.join(cmd)}\n{err.read().decode(errors='replace')[-4000:]}")
    return wall, usage.ru_maxrss / 1024.0


@click.command()
@click.option("--raw", type=click.Path(path_type=Path, exists=True, dir_okay=False), help="Default: a synthetic frame.")
@click.option("--size", default="4256x2848", show_default=True, help="Synthetic frame size (without --raw).")
@click.option("--weights", type=click.Path(path_type=Path, exists=True, dir_okay=False))
@click.option("--runs", type=click.IntRange(1), default=5, show_default=True)
@click.option("--darkfix-args", default="", help="Extra options for `darkfix restore` (and the network timing).")
@click.option("--engines", default="torch,openvino", show_default=True,
              help="Comma-separated engines to time `darkfix restore --engine E` with (auto allowed).")
@click.option("--ensemble", is_flag=True, help="Also time each engine with restore's --ensemble, in the same rounds.")
@click.option("--json", "json_path", type=click.Path(path_type=Path, dir_okay=False))
def main(raw, size, weights, runs, darkfix_args, engines, ensemble, json_path) -> None:
    from rich.console import Console
    from rich.table import Table

    from darkfix.lab.bench import machine, parse_size, weights_file, write_synthetic_dng

    console = Console(width=160)
    extra = shlex.split(darkfix_args)
    if ensemble and "--ensemble" in extra:
        raise click.UsageError("--ensemble times both; leave it out of --darkfix-args")
    with tempfile.TemporaryDirectory(prefix="darkfix-e2e-") as tmp:
        tmp = Path(tmp)
        if raw is None:
            w, h = parse_size(size)
            raw = write_synthetic_dng(tmp / "synthetic.dng", w, h)
        weights, weights_note = weights_file(weights, tmp)
        out_a = tmp / "authors.png"
        names = [e.strip() for e in engines.split(",") if e.strip()]
        commands = {"authors' way": ([sys.executable, str(ROOT / "benchmarks" / "authors_way.py"), str(raw),
                                      str(out_a), "--weights", str(weights)], out_a)}
        for e in names:
            commands[f"darkfix restore --engine {e}"] = (
                [sys.executable, "-m", "darkfix", "restore", str(raw), "-o", str(tmp / f"darkfix-{e}.png"),
                 "--overwrite", "--weights", str(weights), "--engine", e, *extra], tmp / f"darkfix-{e}.png")
            if ensemble:
                out_e = tmp / f"darkfix-{e}-ensemble.png"
                commands[f"darkfix restore --engine {e} --ensemble"] = (
                    [sys.executable, "-m", "darkfix", "restore", str(raw), "-o", str(out_e), "--overwrite",
                     "--weights", str(weights), "--engine", e, "--ensemble", *extra], out_e)
        commands["import torch + darkfix only"] = (
            [sys.executable, "-c", "import torch, rawpy, darkfix.cli, darkfix.pipeline"], None)
        results: dict[str, dict[str, list[float]]] = {k: {"wall_s": [], "peak_rss_mb": []} for k in commands}
        console.log("warm-up")
        for cmd, out in commands.values():
            run_child(cmd, out)
        order = list(commands)
        for i in range(runs):
            console.log(f"round {i + 1} of {runs}")
            for name in order if i % 2 == 0 else order[::-1]:
                wall, rss = run_child(*commands[name])
                results[name]["wall_s"].append(wall)
                results[name]["peak_rss_mb"].append(rss)
        net_args = [a for a in extra if not a.startswith("--compression")]
        benches = {}
        for e in names:
            console.log(f"the network alone: darkfix bench --no-reference --engine {e}")
            bench_json = tmp / f"bench-{e}.json"
            run_child([sys.executable, "-m", "darkfix", "bench", "--input", str(raw), "--no-reference", "--runs",
                       str(runs), "--weights", str(weights), "--json", str(bench_json), "--engine", e, *net_args], None)
            benches[e] = json.loads(bench_json.read_text())
        sizes = {k: out.stat().st_size for k, (_, out) in commands.items() if out is not None and out.exists()}

    bench = benches[names[0]]
    summary = {
        "machine": machine(), "raw": str(raw), "megapixels": bench["megapixels"], "weights": weights_note,
        "runs": runs, "darkfix_args": darkfix_args, "commands": {k: shlex.join(v[0]) for k, v in commands.items()},
        "results": {k: {**v, "median_wall_s": statistics.median(v["wall_s"]),
                        "max_peak_rss_mb": max(v["peak_rss_mb"])} for k, v in results.items()},
        "png_bytes": sizes, "bench": benches, "engines": {},
    }
    a = summary["results"]["authors' way"]["median_wall_s"]
    floor = summary["results"]["import torch + darkfix only"]["median_wall_s"]
    for e in names:
        d = summary["results"][f"darkfix restore --engine {e}"]["median_wall_s"]
        network_s = benches[e]["stages"]["network"]["median_s"]
        summary["engines"][e] = {"engine": benches[e]["engine"], "precision": benches[e]["precision"],
                                 "restore_s": d, "over_authors": d / a, "speedup_vs_authors": a / d,
                                 "network_alone_s": network_s, "restore_over_network": d / network_s,
                                 "restore_minus_torch_import_over_network": (d - floor) / network_s}
        if ensemble:
            summary["engines"][e]["ensemble_s"] = summary["results"][f"darkfix restore --engine {e} --ensemble"][
                "median_wall_s"]

    table = Table(title=f"end to end, {bench['megapixels']:.1f} MP, median of {runs} (process start to file on disk)")
    for col in ("command", "median", "runs (s)", "peak RSS"):
        table.add_column(col, justify="left" if col == "command" else "right")
    for name, r in summary["results"].items():
        table.add_row(name, f"{r['median_wall_s']:.2f} s", " ".join(f"{t:.2f}" for t in r["wall_s"]),
                      f"{r['max_peak_rss_mb']:.0f} MB")
    console.print(table)
    for e, r in summary["engines"].items():
        console.print(f"--engine {e} ({r['engine']}, {r['precision']}): restore {r['restore_s']:.2f} s = "
                      f"{r['over_authors']:.2f}x the authors' way ({r['speedup_vs_authors']:.2f}x faster); network "
                      f"alone {r['network_alone_s']:.3f} s (bench, same run), restore = "
                      f"{r['restore_over_network']:.1f}x the network")
        if "ensemble_s" in r:
            console.print(f"--engine {e} --ensemble: restore {r['ensemble_s']:.2f} s = "
                          f"{r['ensemble_s'] / r['restore_s']:.2f}x the single pass (same rounds)")
    m = summary["machine"]
    console.print(f"weights: {weights_note}; machine: {m['cpu']}, {m['cpu_count']} CPUs, torch {m['torch']}")
    if json_path:
        json_path.write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
