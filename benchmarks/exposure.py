"""How far the amplification estimates land from the true exposure ratio on `darkfix synth` benchmarks.

    python benchmarks/exposure.py BENCH_DIR [BENCH_DIR ...]

For each benchmark and each estimate (darkfix's automatic exposure, the paper's), the error in stops
(log2 of estimate / true ratio): median, median absolute, maximum absolute, and how many frames are more
than 1.5 stops off.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # darkfix from this checkout

from darkfix.options import RestoreOptions  # noqa: E402
from darkfix.packing import prepare_frame  # noqa: E402
from darkfix.rawio import read_raw  # noqa: E402


def stops_off(bench: Path, exposure: str) -> np.ndarray:
    pairs = json.loads((bench / "manifest.json").read_text())["pairs"]
    return np.array([np.log2(prepare_frame(read_raw(bench / p["raw"]), RestoreOptions(exposure=exposure))
                             .amplification / p["ratio"]) for p in pairs])


def main(benches: list[str]) -> None:
    for bench in map(Path, benches):
        for exposure in ("auto", "paper"):
            e = stops_off(bench, exposure)
            print(f"{bench} {exposure}: median {np.median(e):+.2f} stops, median |err| {np.median(abs(e)):.2f}, "
                  f"max |err| {abs(e).max():.2f}, over 1.5 stops: {(abs(e) > 1.5).sum()}/{len(e)}")


if __name__ == "__main__":
    main(sys.argv[1:])
