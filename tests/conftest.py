"""Shared fixtures: tiny weights files, the reference vectors, and a factory of small dark DNGs."""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
for p in (str(ROOT), str(TESTS)):  # darkfix from this checkout, and tests/_util.py
    if p not in sys.path:
        sys.path.insert(0, p)

from _util import passthrough_model  # noqa: E402
from darkfix.dng import DngSpec, write_dng  # noqa: E402
from darkfix.model import LambaNet  # noqa: E402
from darkfix.weights import save_weights  # noqa: E402

# Tiny frames gain nothing from threads, and on a busy 2-core machine (a training run beside the tests)
# OpenMP threads oversubscribe the cores: one restore of a 40x58 DNG took 3.5 s with 2 threads, 0.13 s with 1.
torch.set_num_threads(1)

# Converted OpenVINO models and engine timings go to the test session's own cache, never the user's.
os.environ["DARKFIX_CACHE"] = tempfile.mkdtemp(prefix="darkfix-test-cache-")
atexit.register(shutil.rmtree, os.environ["DARKFIX_CACHE"], True)
# Ray started by the tests (and the Ray workers they spawn) reports no usage statistics: nothing leaves the machine
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"

REFERENCE_FILES = ("lamba2021_sony_official.pth", "compat_input.npy", "compat_output.npy",
                   "amplifier_cases.npz", "official_keys.txt")


def reference_dir() -> Path:
    env = os.environ.get("DARKFIX_REFERENCE")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "reference"


@pytest.fixture(scope="session")
def reference() -> Path:
    """The folder of reference vectors and the authors' checkpoint (never part of the repository)."""
    d = reference_dir()
    missing = [f for f in REFERENCE_FILES if not (d / f).is_file()]
    if missing:
        pytest.skip(f"reference data not found in {d} (missing {', '.join(missing)}); set DARKFIX_REFERENCE")
    return d


@pytest.fixture(scope="session")
def weights_file(tmp_path_factory) -> Path:
    """darkfix safetensors of a seeded, randomly initialised network with camera-RGB output."""
    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("weights") / "random.safetensors"
    save_weights(LambaNet(), path, {"output": "camera", "note": "random init for tests"})
    # converted and the engines timed once here, as a user's first run does: every test then meets the
    # warm cache a later run meets, whatever order the tests run in (a refusal is then one line on stderr)
    from darkfix import engine

    engine.load(path, device="cpu")
    return path


@pytest.fixture(scope="session")
def passthrough_weights(tmp_path_factory) -> Path:
    """Weights whose network passes the packed input through (see _util.passthrough_model)."""
    path = tmp_path_factory.mktemp("weights") / "passthrough.safetensors"
    return save_weights(passthrough_model(), path, {"output": "camera"})


def _black_grid(black, shape):
    b = np.asarray(black if isinstance(black, tuple) else (black,) * 4, dtype=np.float64).reshape(2, 2)
    h, w = shape
    return np.tile(b, ((h + 1) // 2, (w + 1) // 2))[:h, :w]


@pytest.fixture
def make_dng(tmp_path):
    """Factory: make_dng(name, size=(h, w), cfa, black (one or per 2x2 position), white, orientation,
    as_shot_neutral, color_matrix, mosaic=None, level) -> Path of a DNG LibRaw reads.

    Without `mosaic`, the frame is dark: a smooth scene of about `level` DN above black (a few per
    mille of the range) with Poisson noise, so the amplifier has real work to do.
    """

    def make(name: str = "frame.dng", size: tuple[int, int] = (64, 96), cfa: str = "RGGB",
             black: float | tuple[float, float, float, float] = 512.0, white: int = 16383,
             orientation: int = 1, as_shot_neutral: tuple[float, float, float] = (0.5, 1.0, 0.6),
             color_matrix: np.ndarray | None = None, mosaic: np.ndarray | None = None, level: float = 40.0,
             seed: int = 0, directory: Path | None = None) -> Path:
        if mosaic is None:
            h, w = size
            rng = np.random.default_rng(seed)
            yy, xx = np.mgrid[0:h, 0:w]
            scene = level * (0.25 + 1.5 * (xx / max(w - 1, 1)) * (0.5 + yy / max(h - 1, 1)))
            mosaic = np.clip(_black_grid(black, size) + rng.poisson(scene), 0, white).astype(np.uint16)
        spec = DngSpec(cfa=cfa, black=black, white=white, orientation=orientation,
                       as_shot_neutral=as_shot_neutral,
                       color_matrix=np.eye(3) if color_matrix is None else np.asarray(color_matrix))
        out_dir = tmp_path if directory is None else directory
        out_dir.mkdir(parents=True, exist_ok=True)
        return write_dng(out_dir / name, np.ascontiguousarray(mosaic, dtype=np.uint16), spec)

    return make


@pytest.fixture(autouse=True)
def _default_sigterm():
    """In-process CLI runs (CliRunner) install darkfix's SIGTERM handler in the test process; put the
    default back after each test so that later tests' child processes start as from a shell."""
    import signal

    yield
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
