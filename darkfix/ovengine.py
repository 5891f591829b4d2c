"""The OpenVINO engine: darkfix's network and colour rendering compiled for the CPU by OpenVINO.

Restoring needs no torch: the converted models live in a cache folder, one per weights file, named by
the file's checksum and carrying it in their metadata; a model whose checksum does not match is rebuilt
(converting imports torch once, darkfix.ovexport) or, where torch cannot run, refused. Conversion also
times this engine against the torch one on the machine, once, so that `--engine auto` picks by
measurement (`engine_choice`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import WeightsError
from .tiling import (DEFAULT_CPU_TILE, TiledEngine, Tile, fine_reach, margin_for,
                     release_memory)
from .weights import GUIDE_CLIPPED, file_sha256

PARTS = ("stem", "coarse", "fine", "fine_clipped", "colour8", "colour16")
# Bumped whenever the converted graphs change: models in the cache from another version are rebuilt.
GRAPH_VERSION = "6"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
# `--engine auto` takes torch only where its fine pass is this much faster than OpenVINO's: a process that
# runs torch also pays its import (1-1.5 s and 220 MB on these machines), which OpenVINO's restores skip.
TORCH_MARGIN = 1.25


def available() -> bool:
    """Whether OpenVINO is installed (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def cache_root() -> Path:
    """$DARKFIX_CACHE, else $XDG_CACHE_HOME/darkfix, else ~/.cache/darkfix."""
    if os.environ.get("DARKFIX_CACHE"):
        return Path(os.environ["DARKFIX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "darkfix"


class _CPU:
    """The engine's device, as `torch.device('cpu')` reads for the code that reports it."""

    type = "cpu"

    def __str__(self) -> str:
        return "cpu"


class _SkipConverter:
    """An import hook that makes `import openvino` go without its model converter (openvino.tools.ovc,
    which openvino imports in a try block): 100 modules and 40-60 ms a process that only runs models.
    `converter()` imports it where a model is converted."""

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> None:
        if name == "openvino.tools.ovc":
            raise ImportError("darkfix runs models without converting")


def import_openvino():
    """The openvino module, imported with its usage telemetry turned off: as installed, importing it sends
    a report to Google Analytics (from a forked process) unless the user opted out with Intel's tool;
    without the openvino_telemetry module it uses its own no-op stub. darkfix sends nothing anywhere.
    It comes without `openvino.convert_model` (see `_SkipConverter`) until `converter()` is called."""
    sys.modules.setdefault("openvino_telemetry", None)
    if "openvino" not in sys.modules:
        before = set(sys.modules)
        hook = _SkipConverter()
        sys.meta_path.insert(0, hook)
        try:
            import openvino  # noqa: F401
        except ImportError:  # an openvino that needs its converter to import: imported whole below
            for name in set(sys.modules) - before:
                if name == "openvino" or name.startswith("openvino."):
                    del sys.modules[name]
        finally:
            sys.meta_path.remove(hook)
    import openvino

    return openvino


def converter() -> Callable[..., Any]:
    """OpenVINO's `convert_model` (importing its converter, which `import_openvino` leaves out; also put
    back as `openvino.convert_model`)."""
    ov = import_openvino()
    from openvino.tools.ovc import convert_model

    if not hasattr(ov, "convert_model"):
        ov.convert_model = convert_model
    return convert_model


def _core():
    return import_openvino().Core()


def native_bf16(core=None) -> tuple[bool, str]:
    """Whether OpenVINO runs bf16 natively on this CPU (it lists BF16 among the CPU's capabilities only
    with AVX512-BF16 or AMX), and what says so."""
    caps = (core or _core()).get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    if "BF16" in caps:
        return True, "OpenVINO reports native BF16 on this CPU"
    return False, "OpenVINO reports no native BF16 on this CPU"


def model_dir(sha: str) -> Path:
    return cache_root() / "openvino" / f"{sha[:24]}-g{GRAPH_VERSION}"


def _stamp(models: dict[str, Any], sha: str, name: str, reach: int) -> None:
    for m in models.values():
        m.set_rt_info(sha, ["darkfix", "weights_sha256"])
        m.set_rt_info(name, ["darkfix", "weights_file"])
        m.set_rt_info(GRAPH_VERSION, ["darkfix", "graph_version"])
        m.set_rt_info(str(reach), ["darkfix", "fine_reach"])


def _stamped(model: Any) -> tuple[str, str]:
    """(weights checksum, graph version) the model was stamped with; empty where any stamp is missing."""
    try:
        model.get_rt_info(["darkfix", "fine_reach"])
        return (model.get_rt_info(["darkfix", "weights_sha256"]).astype(str),
                model.get_rt_info(["darkfix", "graph_version"]).astype(str))
    except RuntimeError:  # no such entry
        return "", ""


def _read_cached(folder: Path, sha: str) -> dict[str, Any] | None:
    if not all((folder / f"{p}.xml").is_file() for p in PARTS):
        return None
    core = _core()
    try:
        models = {p: core.read_model(str(folder / f"{p}.xml")) for p in PARTS}
    except RuntimeError:
        return None
    if any(_stamped(m) != (sha, GRAPH_VERSION) for m in models.values()):
        return None
    return models


def load_models(weights: str | os.PathLike, convert: bool = True,
                say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The OpenVINO models for a weights file: from the cache when they were made from these exact bytes,
    else converted now (importing torch; saved to the cache when it is writable), unless `convert` is
    False (then WeightsError)."""
    path = Path(weights)
    sha = file_sha256(path)
    folder = model_dir(sha)
    cached = _read_cached(folder, sha)
    if cached is not None:
        return cached
    if not convert:
        raise WeightsError(f"{path}: no OpenVINO model converted from these weights in {folder.parent}")
    from .ovexport import convert as convert_model
    from .weights import load_weights

    model, _info = load_weights(path)  # a damaged file is refused before any note
    if say:
        say(f"converting {path.name} for OpenVINO (once; cached in {folder.parent})")
    models = convert_model(model)
    _stamp(models, sha, path.name, fine_reach(model.plus, model.guide_radius))
    _save(models, folder)
    return models


def _save(models: dict[str, Any], folder: Path) -> None:
    """Write the models to `folder` whole or not at all (a cache that cannot be written is skipped)."""
    ov = import_openvino()

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError:
        return
    try:
        tmp.chmod(0o755)  # a cache others may read, like the files in it
        for name, m in models.items():
            ov.save_model(m, str(tmp / f"{name}.xml"), compress_to_fp16=False)
        if folder.exists():
            shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError:
        pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class OpenVINORestorer(TiledEngine):
    """The network compiled by OpenVINO for the CPU, applied in tiles like the torch engine; numpy in
    and out. `precision` 'auto' is bf16 where OpenVINO runs it natively, else fp32."""

    engine = "openvino"
    device = _CPU()

    def __init__(self, models: dict[str, Any], precision: str = "auto", threads: int | None = None,
                 tile: int | None = None, margin: int | None = None) -> None:
        core = _core()
        compiled_cache = cache_root() / "openvino" / "compiled"
        try:  # OpenVINO keeps compiled kernels here: a later process compiles in a quarter of the time
            compiled_cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(compiled_cache)})
        except (OSError, RuntimeError):
            pass
        if precision == "auto":
            native, why = native_bf16(core)
            self.precision = "bf16" if native else "fp32"
            self.precision_reason = f"auto: {self.precision} ({why})"
        elif precision in _OV_PRECISION:
            self.precision, self.precision_reason = precision, "as requested"
        else:
            raise ValueError(f"precision {precision!r} is not available with OpenVINO on CPU (fp32 or bf16)")
        config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[self.precision],
                                  "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = threads
        self._compiled = {p: core.compile_model(models[p], "CPU", config) for p in ("stem", "coarse", "fine")}
        self._config = config
        # colour always in f32 (the curve's table index needs more than bf16's 8 bits of mantissa)
        self._colour_config = {**config, "INFERENCE_PRECISION_HINT": "f32"}
        self._core, self._models = core, models
        self._shared = False  # outputs as views of OpenVINO's buffers (`display` only)
        if margin is None:  # the conversion stamped how far the fine part reads
            margin = margin_for(int(models["fine"].get_rt_info(["darkfix", "fine_reach"]).astype(str)))
        self.set_tiling(tile, DEFAULT_CPU_TILE, margin, large_frames=True)

    def _run(self, part: str, *inputs: np.ndarray) -> np.ndarray:
        if part not in self._compiled:  # colour, and the fine part for clipped tiles: compiled when first used
            config = self._config if part == "fine_clipped" else self._colour_config
            self._compiled[part] = self._core.compile_model(self._models[part], "CPU", config)
        # shared: a view of OpenVINO's output buffer, which the part's next call overwrites (never for the
        # first pass, whose strips are kept together)
        share = self._shared and part not in ("stem", "coarse")
        return self._compiled[part](list(inputs), share_outputs=share)[0]

    def stem(self, x: np.ndarray) -> np.ndarray:
        return self._run("stem", x)

    def coarse(self, a: np.ndarray) -> np.ndarray:
        return self._run("coarse", np.ascontiguousarray(a))

    def fine(self, x: np.ndarray, b: np.ndarray) -> np.ndarray:
        return self._run("fine_clipped" if _clipped_white(x) else "fine", x, np.ascontiguousarray(b))

    def concat(self, parts: list[np.ndarray], axis: int) -> np.ndarray:
        return np.concatenate(parts, axis=axis)

    def new_b(self, like: np.ndarray, h: int, w: int) -> np.ndarray:
        return np.empty((1, like.shape[1], h, w), np.float32)

    def release(self) -> None:
        release_memory()

    def display(self, packed: Any, wb: np.ndarray, rgb_cam: np.ndarray, bit_depth: int,
                sink: Callable[[np.ndarray, Tile], None], **walk: Any) -> None:
        """Like calling the engine, but the sink gets each tile's display codes, (h, w, 3) uint8 or uint16,
        rendered as `colour.to_display` renders them (OpenVINO, f32, through the curve's lookup table)."""
        from .colour import display_terms

        matrix, full = display_terms(wb, rgb_cam)
        part = f"colour{bit_depth}"

        def codes(out: np.ndarray, t: Tile) -> None:
            q = self._run(part, np.ascontiguousarray(out), matrix, full)[0]
            sink(q if bit_depth == 8 else q.astype(np.uint16), t)

        # each tile's network output is read once, by the colour part, and its codes once, by the sink,
        # before the next tile: both may stay in OpenVINO's buffers (a 15 MB copy a tile saved)
        self._shared = True
        try:
            self(packed, codes, **walk)
        finally:
            self._shared = False


def _clipped_white(x: np.ndarray) -> bool:
    """Whether a (1, 4, h, w) packed tile holds a pixel the colour guide counts as clipped white (R, the
    mean of the greens and B all at GUIDE_CLIPPED or above; model.guide_gain)."""
    if float(x.max()) < GUIDE_CLIPPED:  # the common case, in one pass
        return False
    p = x[0]
    return bool((np.minimum(np.minimum(p[0], p[3]), 0.5 * (p[1] + p[2])) >= GUIDE_CLIPPED).any())


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _choice_key(precision: str) -> str:
    """Where engine-choice.json files a measurement: this CPU, its core count and the precision."""
    return f"{_cpu_name()} | {os.cpu_count()} cpus | {precision}"


def engine_choice(precision: str = "auto") -> dict | None:
    """The measured choice of engine for this CPU and precision, if conversion measured one."""
    try:
        table = json.loads((cache_root() / "engine-choice.json").read_text())
    except (OSError, ValueError):
        return None
    entry = table.get(_choice_key(precision))
    # entries from before TORCH_MARGIN chose on a bare comparison at a small tile: measured again
    return entry if entry is not None and "torch_margin" in entry else None


def measure_engines(models: dict[str, Any], model: Any, precision: str = "auto", side: int | None = None,
                    runs: int = 5) -> dict:
    """Time the fine pass (most of the network's cost) in both engines on one packed window of `side`
    (default: a default tile with its margins, what a restore runs), the engines alternating, median of
    `runs`; record the choice for `--engine auto`: OpenVINO unless torch is faster by TORCH_MARGIN."""
    from .inference import Restorer

    if side is None:
        side = DEFAULT_CPU_TILE + 2 * margin_for(fine_reach(model.plus, model.guide_radius))
    rng = np.random.default_rng(0)
    x = (rng.random((1, 4, side, side), dtype=np.float32) * 0.3)
    engines: dict[str, TiledEngine] = {"openvino": OpenVINORestorer(models, precision),
                                       "torch": Restorer(model, "cpu", precision)}
    inputs = {name: (eng, eng.coarse(eng.stem(x))) for name, eng in engines.items()}
    for eng, b in inputs.values():  # the first run builds kernels
        eng.fine(x, b)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    # alternating (A B, B A, ...): a machine whose speed drifts over seconds slows both alike
    for i in range(runs):
        for name in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
            eng, b = inputs[name]
            t0 = time.perf_counter()
            eng.fine(x, b)
            samples[name].append(time.perf_counter() - t0)
    times = {name: round(float(np.median(s)) * 1000, 2) for name, s in samples.items()}
    choice = "torch" if times["torch"] * TORCH_MARGIN < times["openvino"] else "openvino"
    entry = {"choice": choice, "ms": times, "tile": side, "torch_margin": TORCH_MARGIN,
             "precision": {n: e.precision for n, e in engines.items()}}
    path = cache_root() / "engine-choice.json"
    try:
        table = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        table = {}
    table[_choice_key(precision)] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return entry
