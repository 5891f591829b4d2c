"""Choosing and loading the engine that runs the network: torch (CPU or CUDA) or OpenVINO (CPU).

`--engine auto` takes OpenVINO on a CPU where it is installed, unless torch measured clearly faster on this
machine for the weights' architecture (ovengine.measure_engines, run once when such weights are first
converted), and always torch for CUDA. Nothing here imports torch unless the torch engine is chosen.
"""

from __future__ import annotations

import os
from typing import Any, Callable

from . import ovengine
from .errors import WeightsError
from .weights import ARCHITECTURE, WeightsInfo, read_info

ENGINES = ("auto", "torch", "openvino")
DEVICES = ("auto", "cpu", "cuda")


def check_device(name: str) -> None:
    """ValueError unless `name` is one of DEVICES (the CLI's --device choices)."""
    if name not in DEVICES:
        raise ValueError(f"unknown device {name!r} (expected {', '.join(DEVICES)})")


def cuda_present() -> bool:
    """Whether CUDA may be available: asks torch only where an NVIDIA driver's device node exists
    (Linux, WSL), so that CPU-only machines decide without importing it."""
    if os.name == "posix" and not any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/dxg")):
        return False
    import torch

    return torch.cuda.is_available()


def choose(engine: str, device: str, precision: str, architecture: str = ARCHITECTURE) -> tuple[str, str]:
    """The engine to run a network of `architecture` and why; ValueError for a combination that cannot run."""
    check_device(device)  # every engine refuses it alike
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r} (expected {', '.join(ENGINES)})")
    if engine == "torch":
        return "torch", "as requested"
    if engine == "openvino":
        if not ovengine.available():
            raise ValueError("the OpenVINO engine needs OpenVINO: pip install openvino")
        if device == "cuda":
            raise ValueError("the OpenVINO engine runs on CPU; use --engine torch for CUDA")
        if precision == "fp16":
            raise ValueError("fp16 is for CUDA; with OpenVINO use fp32 or bf16")
        return "openvino", "as requested"
    if device == "cuda" or (device == "auto" and cuda_present()):
        return "torch", "auto: CUDA"
    if precision == "fp16":
        return "torch", "auto: fp16 is for CUDA"
    if not ovengine.available():
        return "torch", "auto: OpenVINO is not installed"
    measured = ovengine.engine_choice(precision, architecture)
    if measured is None or ovengine.retime_due(measured):
        return "openvino", "auto: OpenVINO, to be measured against torch on this CPU"
    return measured["choice"], _reason(measured)


class Routed:
    """The engine (pipeline.Restorer) of weights with a low-noise companion (WeightsInfo.low_noise): a frame
    whose relative noise at mid-grey (PackedFrame.relative_noise) is below `below` runs through the
    companion, any other through the main weights. Two networks of the same size, each trained on its own
    range of noise, hold more than one at no cost in time. The companion loads when a frame first needs it."""

    def __init__(self, main: Any, load_low: Callable[[], Any], below: float, low_name: str) -> None:
        self.main, self._load_low, self._low = main, load_low, None
        self.below, self.low_name = below, low_name
        self.engine, self.device, self.precision = main.engine, main.device, main.precision
        self.precision_reason = main.precision_reason
        self.engine_reason = main.engine_reason

    def low_noise(self, packed: Any) -> bool:
        """Whether `packed` (a PackedFrame) runs through the low-noise companion."""
        return packed.relative_noise is not None and packed.relative_noise < self.below

    def describe(self, packed: Any) -> str:
        """Which network a frame ran through and why, for `restore -v`."""
        which = f"the low-noise network {self.low_name}" if self.low_noise(packed) else "the main network"
        return f"relative noise {packed.relative_noise:.3g} at mid-grey (low-noise below {self.below:g}): {which}"

    def pick(self, packed: Any) -> Any:
        if not self.low_noise(packed):
            return self.main
        if self._low is None:
            self._low = self._load_low()
        return self._low

    def __call__(self, packed: Any, sink: Callable[[Any, Any], None], **walk: Any) -> None:
        self.pick(packed)(packed, sink, **walk)

    def display(self, packed: Any, *args: Any, **walk: Any) -> None:
        self.pick(packed).display(packed, *args, **walk)


def load(weights: str | os.PathLike | None = None, engine: str = "auto", device: str = "auto",
         precision: str = "auto", threads: int | None = None, tile: int | None = None,
         say: Callable[[str], None] | None = None, route: bool = True) -> tuple[Any, WeightsInfo]:
    """A ready engine for a weights file (default: the packaged ones) and what the file is.
    The engine's `engine_reason` says why it was chosen. Weights with a low-noise companion give a `Routed`
    engine (`route` False: the main weights alone)."""
    info = read_info(weights)
    companion = _companion(info) if route else None  # checked before any work, not at the first low-noise frame
    restorer = _engine_for(info, engine, device, precision, threads, tile, say)
    if companion is None:
        return restorer, info
    low, below = companion
    return Routed(restorer, lambda: _engine_for(low, engine, device, precision, threads, tile, say),
                  below, low.path.name), info


def _companion(info: WeightsInfo) -> tuple[WeightsInfo, float] | None:
    """The low-noise companion `info` names and the relative noise below which it runs, checked; or None."""
    if info.low_noise is None:
        return None
    path, below = info.low_noise
    try:
        low = read_info(path)
    except WeightsError as e:
        raise WeightsError(f"{e} (the low-noise companion {info.path.name} names)") from None
    if low.input != info.input or low.low_noise is not None:
        raise WeightsError(f"{path}: not a low-noise companion for {info.path.name}")
    return low, below


def _engine_for(info: WeightsInfo, engine: str, device: str, precision: str, threads: int | None,
                tile: int | None, say: Callable[[str], None] | None) -> Any:
    """The engine for one weights file, chosen as `choose` says (and, for auto, as measured once)."""
    name, reason = choose(engine, device, precision, info.architecture)
    loaded = None  # (model, info) once torch has loaded the file
    if name == "openvino":
        models = ovengine.load_models(info.path, say=say)
        measured = ovengine.engine_choice(precision, info.architecture)
        # timed once; again, quietly, where that timing was skewed by other processes and the machine is idle now
        if engine == "auto" and (measured is None or ovengine.retime_due(measured)):
            if not ovengine.cache_writable():  # a timing that cannot be kept would be paid on every run
                reason = "auto: OpenVINO, not timed against torch (the cache cannot be written to keep the timing)"
            else:
                from .weights import load_weights

                if say and measured is None:
                    say("timing the OpenVINO and torch engines on this CPU (once)")
                loaded = load_weights(info.path)
                measured = ovengine.measure_engines(models, loaded[0], precision)
                name, reason = measured["choice"], _reason(measured)
        if name == "openvino":
            restorer = ovengine.OpenVINORestorer(models, precision=precision, threads=threads, tile=tile, say=say)
            restorer.engine_reason = reason
            return restorer
    import torch

    from .inference import Restorer
    from .weights import load_weights

    if threads:
        torch.set_num_threads(threads)
    model = (loaded or load_weights(info.path))[0]
    torch_engine = Restorer(model, device=device, precision=precision, tile=tile)
    torch_engine.engine_reason = reason
    return torch_engine


def _reason(measured: dict) -> str:
    ms = measured["ms"]
    return (f"auto: measured on this CPU, fine pass on a {measured['tile']}-pixel tile: "
            f"openvino {ms['openvino']} ms, torch {ms['torch']} ms; torch only if {measured['torch_margin']}x faster"
            + ("; timed while other processes were busy, to be timed again" if measured.get("contended") else ""))
