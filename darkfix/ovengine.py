"""The OpenVINO engine: darkfix's network and colour rendering compiled for the CPU by OpenVINO.

Restoring needs no torch: the converted models live in a cache folder, one per weights file, named by
the file's checksum and carrying it in their metadata; a model whose checksum does not match is rebuilt
(converting imports torch once, darkfix.ovexport) or, where torch cannot run, refused. Conversion also
times this engine against the torch one on the machine, once, so that `--engine auto` picks by
measurement (`engine_choice`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .errors import WeightsError
from .pngio import os_reason
from .tiling import (DEFAULT_CPU_TILE, TiledEngine, Tile, fine_reach, margin_for,
                     release_memory)
from .weights import ARCHITECTURE, GUIDE_CLIPPED, GUIDE_EPS, GUIDE_MAX_GAIN, GUIDE_WIENER, file_sha256

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: concurrent first runs may both convert
    fcntl = None  # type: ignore[assignment]

PARTS = ("stem", "coarse", "fine", "fine_clipped", "colour8", "colour16")
# Bumped whenever the converted graphs change: models in the cache from another version are rebuilt. The
# colour guide's constants are baked into the graphs, so they are part of it.
GRAPH_VERSION = f"8w{GUIDE_WIENER:g}m{GUIDE_MAX_GAIN:g}e{GUIDE_EPS:g}"
_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}
# `--engine auto` takes torch only where its fine pass is this much faster than OpenVINO's: a process that
# runs torch also pays its import (1-1.5 s and 220 MB on these machines), which OpenVINO's restores skip.
TORCH_MARGIN = 1.25
# the checksums of a cached model folder's files, written with them and checked before every read
CHECKSUMS = "checksums.json"
_CACHE_ROOM = 64 << 20  # free bytes below which the cache counts as full (converted models: ~10 MB)
# an engine timing during which other processes kept more than this share of the CPUs busy is provisional:
# timed again (quietly) by a later run on an idle machine, at most RETIMINGS times
CONTENDED = 0.25
RETIMINGS = 3


def available() -> bool:
    """Whether OpenVINO is installed (without importing it)."""
    return importlib.util.find_spec("openvino") is not None


def cache_root() -> Path:
    """$DARKFIX_CACHE, else $XDG_CACHE_HOME/darkfix, else ~/.cache/darkfix."""
    if os.environ.get("DARKFIX_CACHE"):
        return Path(os.environ["DARKFIX_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "darkfix"


def cache_writable() -> bool:
    """Whether darkfix can keep anything in its cache (a read-only, another user's or file-blocked one: no)."""
    folder = cache_root()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)


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


def _damage(folder: Path) -> str | None:
    """What is wrong with a cached model folder: a file that does not match the checksum recorded when it
    was written, or is missing (None: all as written)."""
    try:
        recorded = json.loads((folder / CHECKSUMS).read_text())
    except FileNotFoundError:
        return f"{CHECKSUMS} is missing"
    except (OSError, ValueError):
        return f"{CHECKSUMS} is unreadable"
    if not isinstance(recorded, dict) or any(f"{p}.xml" not in recorded for p in PARTS):
        return f"{CHECKSUMS} is incomplete"
    for name, sha in sorted(recorded.items()):
        try:
            if file_sha256(folder / name) != sha:
                return f"{name} does not match its checksum"
        except OSError as e:
            return f"{name}: {e.strerror}"
    return None


def _read_models(folder: Path) -> dict[str, Any]:
    core = _core()
    return {p: core.read_model(str(folder / f"{p}.xml")) for p in PARTS}


def _read_cached(folder: Path, sha: str) -> tuple[dict[str, Any] | None, str | None]:
    """(the cached models, None) when `folder` holds them whole, made from these weights by this graph
    version; else (None, what is wrong with the folder), or (None, None) where there is none."""
    if not folder.is_dir():
        return None, None
    damage = _damage(folder)
    if damage is None:
        try:
            models = _read_models(folder)
        except RuntimeError:
            return None, "a model does not read"
        if all(_stamped(m) == (sha, GRAPH_VERSION) for m in models.values()):
            return models, None
        damage = "made from other weights"
    return None, damage


@contextmanager
def _conversion_lock(name: str, say: Callable[[str], None] | None) -> Iterator[str | None]:
    """Held while one process converts a weights file, so that concurrent first runs convert once. Yields
    None, or why the cache cannot be written (then nothing is locked: the conversion stays in memory)."""
    locks = cache_root() / "openvino" / "locks"
    try:
        locks.mkdir(parents=True, exist_ok=True)
        fd = os.open(locks / f"{name}.lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
    except OSError as e:
        unwritable: str | None = os_reason(e)
    else:
        unwritable = None
    if unwritable is not None:
        yield unwritable
        return
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if say:
                    say("waiting for another darkfix process that is converting the same weights")
                fcntl.flock(fd, fcntl.LOCK_EX)
            except OSError:  # a file system without locks: each process converts, as before
                pass
        yield None
    finally:
        os.close(fd)  # the lock goes with it (and with the process, however it ends)


def _as_read_back(models: dict[str, Any]) -> dict[str, Any]:
    """The models as reading them from a cache gives them. The converter leaves marks on the graph that
    saving drops (e.g. divisions kept out of bf16), so the model it returns compiles differently from the
    one a later run reads: up to 2/255 on 9 % of the pixels in bf16 (issue 23). Every run uses what was
    read from files; where the cache cannot be written, through a temporary folder."""
    ov = import_openvino()
    try:
        with tempfile.TemporaryDirectory(prefix="darkfix-ov-") as d:
            for name, m in models.items():
                ov.save_model(m, str(Path(d) / f"{name}.xml"), compress_to_fp16=False)
            core = _core()
            out = {}
            for name in models:  # weights read into memory, not mapped from a file about to go
                weights = np.fromfile(Path(d) / f"{name}.bin", np.uint8)
                out[name] = core.read_model((Path(d) / f"{name}.xml").read_bytes(), ov.Tensor(weights))
            return out
    except (OSError, RuntimeError):  # no temporary space either: the models as converted
        return models


def load_models(weights: str | os.PathLike, convert: bool = True,
                say: Callable[[str], None] | None = None) -> dict[str, Any]:
    """The OpenVINO models for a weights file: from the cache when they were made from these exact bytes and
    every file matches its recorded checksum, else converted now (importing torch; one process at a time,
    saved to the cache when it is writable, else kept in memory with a warning), unless `convert` is False
    (then WeightsError). The models returned are always those read back from files, so that the first run
    gives the same picture as every later one."""
    path = Path(weights)
    sha = file_sha256(path)
    folder = model_dir(sha)
    cached, damage = _read_cached(folder, sha)
    if cached is not None:
        return cached
    if not convert:
        raise WeightsError(f"{path}: no OpenVINO model converted from these weights in {folder.parent}")
    from .ovexport import convert as convert_model
    from .weights import load_weights

    model, _info = load_weights(path)  # a damaged file is refused before any note
    with _conversion_lock(folder.name, say) as unwritable:
        if unwritable is None:
            cached, again = _read_cached(folder, sha)  # converted by another process while this one waited
            if cached is not None:
                return cached
            damage = damage if again is None else again
            if shutil.disk_usage(folder.parent.parent).free < _CACHE_ROOM:
                unwritable = "disk full"
        if say:
            if unwritable is not None:
                say(f"warning: converting {path.name} for OpenVINO in memory, again on every run: cannot write "
                    f"the cache {folder.parent} ({unwritable}); set DARKFIX_CACHE to a writable folder")
            elif damage is not None and damage != f"{CHECKSUMS} is missing":
                say(f"converting {path.name} for OpenVINO again: the cached models were damaged ({damage}); "
                    f"rebuilt in {folder.parent}")
            else:
                say(f"converting {path.name} for OpenVINO (once; cached in {folder.parent})")
        models = convert_model(model)
        _stamp(models, sha, path.name, fine_reach(model.plus, model.guide_radius, model.noise_aware))
        failed = unwritable or _save(models, folder)
        if failed is None:
            try:
                return _read_models(folder)
            except RuntimeError:
                failed = "the saved models do not read"
        if unwritable is None and say:
            say(f"warning: could not cache the converted models in {folder.parent} ({failed}); "
                "they are converted again next time")
        return _as_read_back(models)


def _save(models: dict[str, Any], folder: Path) -> str | None:
    """Write the models and their checksums to `folder`, whole or not at all (replacing a damaged one);
    None, or why they could not be written."""
    ov = import_openvino()

    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError as e:
        return os_reason(e)
    try:
        tmp.chmod(0o755)  # a cache others may read, like the files in it
        for name, m in models.items():
            ov.save_model(m, str(tmp / f"{name}.xml"), compress_to_fp16=False)
        sums = {p.name: file_sha256(p) for p in sorted(tmp.iterdir())}
        (tmp / CHECKSUMS).write_text(json.dumps(sums, indent=1))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except OSError as e:
        return os_reason(e)
    except RuntimeError:  # OpenVINO's own writer: "basic_ios::clear: iostream error" on a full disk
        return "disk full" if shutil.disk_usage(folder.parent).free < _CACHE_ROOM else "OpenVINO could not write it"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return None


def _blob_key(model: Any, part: str, config: dict[str, Any]) -> str:
    """What a compiled model depends on: the graph (weights checksum, graph version, part), the settings,
    OpenVINO's version and the CPU."""
    stamp = "/".join(_stamped(model))
    what = json.dumps([stamp, part, sorted((k, str(v)) for k, v in config.items()), import_openvino().get_version(),
                       _cpu_name()])
    return hashlib.sha256(what.encode()).hexdigest()[:32]


def compile_cached(core: Any, model: Any, part: str, config: dict[str, Any],
                   say: Callable[[str], None] | None = None) -> Any:
    """`core.compile_model(model, "CPU", config)`, kept in `$DARKFIX_CACHE/openvino/blobs` as OpenVINO's
    exported blob behind its SHA-256, so that a later process imports it (a fifth of the compile time) after
    checking it: a damaged blob is said in one line, removed and compiled anew, never run. (OpenVINO's own
    CACHE_DIR checks nothing: 4 KB of garbage in a blob gave an all-black picture on every run.)"""
    if not all(_stamped(model)):  # a graph that names no weights (not from load_models): nothing to key it by
        return core.compile_model(model, "CPU", config)
    blob = cache_root() / "openvino" / "blobs" / f"{_blob_key(model, part, config)}.blob"
    try:
        data = blob.read_bytes()
    except OSError:
        data = None
    if data is not None:
        recorded, _, payload = data.partition(b"\n")
        damage = None if hashlib.sha256(payload).hexdigest().encode() == recorded else "checksum differs"
        if damage is None:
            try:
                return core.import_model(io.BytesIO(payload), "CPU", config)
            except RuntimeError:
                damage = "OpenVINO cannot import it"
        if say:
            say(f"compiled {part} model damaged in the cache ({blob.name}: {damage}): compiling it again")
        try:
            blob.unlink(missing_ok=True)
        except OSError:  # another user's cache: left, and not used
            pass
    compiled = core.compile_model(model, "CPU", config)
    try:
        payload = compiled.export_model().getvalue()
        blob.parent.mkdir(parents=True, exist_ok=True)
        tmp = blob.with_name(f".{blob.name}.{os.getpid()}")
        try:
            tmp.write_bytes(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
            os.replace(tmp, blob)  # checksum and blob in one file, in place at once
        finally:
            tmp.unlink(missing_ok=True)
    except (OSError, RuntimeError):  # a cache that cannot be written: compiled again next time
        pass
    return compiled


class OpenVINORestorer(TiledEngine):
    """The network compiled by OpenVINO for the CPU, applied in tiles like the torch engine; numpy in
    and out. `precision` 'auto' is bf16 where OpenVINO runs it natively, else fp32."""

    engine = "openvino"
    device = _CPU()

    def __init__(self, models: dict[str, Any], precision: str = "auto", threads: int | None = None,
                 tile: int | None = None, margin: int | None = None,
                 say: Callable[[str], None] | None = None) -> None:
        core = _core()
        self._say = say  # told of a damaged compiled model in the cache
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
        self._compiled = {p: compile_cached(core, models[p], p, config, say) for p in ("stem", "coarse", "fine")}
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
            self._compiled[part] = compile_cached(self._core, self._models[part], part, config, self._say)
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
        # before the next tile: both may stay in OpenVINO's buffers (a 15 MB copy a tile saved). Not with
        # the ensemble: a tile's first output must outlive the fine part's second call, which would overwrite it
        self._shared = not walk.get("ensemble", False)
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


def _choice_key(precision: str, architecture: str = ARCHITECTURE) -> str:
    """Where engine-choice.json files a measurement: this CPU, its core count, the precision and the
    network's architecture (their costs differ: the noise-aware network's tiles are larger)."""
    return f"{_cpu_name()} | {os.cpu_count()} cpus | {precision} | {architecture}"


def engine_choice(precision: str = "auto", architecture: str = ARCHITECTURE) -> dict | None:
    """The measured choice of engine for this CPU, precision and architecture, if conversion measured one."""
    try:
        table = json.loads((cache_root() / "engine-choice.json").read_text())
    except (OSError, ValueError):
        return None
    entry = table.get(_choice_key(precision, architecture))
    # entries from before TORCH_MARGIN chose on a bare comparison at a small tile: measured again
    return entry if entry is not None and "torch_margin" in entry else None


def _cpu_sample() -> tuple[float, float, float] | None:
    """(monotonic seconds, seconds the machine's CPUs were busy in all, this process's CPU seconds);
    None where the kernel does not say (no /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    busy = (sum(fields) - fields[3] - fields[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    own = os.times()
    return time.monotonic(), busy, own.user + own.system


def others_load(since: tuple[float, float, float] | None) -> float:
    """The share of the machine's CPUs that other processes kept busy since `since` (a `_cpu_sample`)."""
    now = _cpu_sample()
    if since is None or now is None or now[0] <= since[0]:
        return 0.0
    others = (now[1] - since[1]) - (now[2] - since[2])
    return max(0.0, others / ((now[0] - since[0]) * (os.cpu_count() or 1)))


def retime_due(entry: dict) -> bool:
    """Whether a choice timed while other processes loaded the CPUs should be timed again now: it was, it
    has not been timed again RETIMINGS times, and the machine looks idle (1-minute load average)."""
    if not entry.get("contended") or entry.get("retimed", 0) >= RETIMINGS:
        return False
    try:
        return os.getloadavg()[0] < 2 * CONTENDED * (os.cpu_count() or 1)
    except OSError:
        return False


def measure_engines(models: dict[str, Any], model: Any, precision: str = "auto", side: int | None = None,
                    runs: int = 5) -> dict:
    """Time the fine pass (most of the network's cost) in both engines on one packed window of `side`
    (default: a default tile with its margins, what a restore runs), the engines alternating, median of
    `runs`; record the choice for `--engine auto`: OpenVINO unless torch is faster by TORCH_MARGIN."""
    from .inference import Restorer

    if side is None:
        side = DEFAULT_CPU_TILE + 2 * margin_for(fine_reach(model.plus, model.guide_radius, model.noise_aware))
    rng = np.random.default_rng(0)
    x = (rng.random((1, model.in_channels, side, side), dtype=np.float32) * 0.3)
    engines: dict[str, TiledEngine] = {"openvino": OpenVINORestorer(models, precision),
                                       "torch": Restorer(model, "cpu", precision)}
    inputs = {name: (eng, eng.coarse(eng.stem(x))) for name, eng in engines.items()}
    for eng, b in inputs.values():  # the first run builds kernels
        eng.fine(x, b)
    samples: dict[str, list[float]] = {name: [] for name in engines}
    since = _cpu_sample()
    # alternating (A B, B A, ...): a machine whose speed drifts over seconds slows both alike
    for i in range(runs):
        for name in (list(engines) if i % 2 == 0 else list(engines)[::-1]):
            eng, b = inputs[name]
            t0 = time.perf_counter()
            eng.fine(x, b)
            samples[name].append(time.perf_counter() - t0)
    times = {name: round(float(np.median(s)) * 1000, 2) for name, s in samples.items()}
    choice = "torch" if times["torch"] * TORCH_MARGIN < times["openvino"] else "openvino"
    load = others_load(since)
    entry = {"choice": choice, "ms": times, "tile": side, "torch_margin": TORCH_MARGIN,
             "precision": {n: e.precision for n, e in engines.items()}, "others_load": round(load, 2)}
    path = cache_root() / "engine-choice.json"
    try:
        table = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        table = {}
    key = _choice_key(precision, model.architecture)
    before = table.get(key) or {}
    if before.get("contended"):
        entry["retimed"] = before.get("retimed", 0) + 1
    if load > CONTENDED:  # other processes skewed the timings (140 vs 224 ms busy, 67 vs 136 alone): provisional
        entry["contended"] = True
    table[key] = entry
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        tmp.write_text(json.dumps(table, indent=1))
        os.replace(tmp, path)
    except OSError:
        pass
    return entry
