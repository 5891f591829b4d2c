"""The OpenVINO engine: agreement with torch, the converted models' cache and its checksum, the engine
choice, and restoring without importing torch."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from _util import read_png
from darkfix import engine, ovengine
from darkfix.colour import to_display
from darkfix.errors import WeightsError
from darkfix.inference import Restorer
from darkfix.weights import load_weights

pytestmark = pytest.mark.skipif(not ovengine.available(), reason="OpenVINO is not installed")


def _psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    return float(10 * np.log10(peak**2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-30)))


def _run(restorer, packed: np.ndarray) -> np.ndarray:
    out = np.zeros((3, 2 * packed.shape[1], 2 * packed.shape[2]), np.float32)

    def sink(o, t):
        out[:, 2 * t.y0 : 2 * t.y1, 2 * t.x0 : 2 * t.x1] = o[0] if isinstance(o, np.ndarray) else o[0].numpy()

    restorer(packed, sink)
    return out


@pytest.fixture(scope="module")
def trained():
    """The packaged weights (a random network's output is too flat to show disagreement), converted."""
    model, info = load_weights()
    return model, ovengine.load_models(info.path)


@pytest.fixture(scope="module")
def unguided(tmp_path_factory):
    """The packaged weights with the colour guide switched off in their metadata, converted."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(load_weights()[1].path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    path = tmp_path_factory.mktemp("unguided") / "unguided.safetensors"
    save_file(tensors, str(path), metadata={**meta, "guide_radius": "0"})
    model, info = load_weights(path)
    assert model.guide_radius == 0
    return model, ovengine.load_models(info.path)


@pytest.fixture(scope="module")
def packed():
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.random((4, 10, 14)), np.ones((1, 20, 20)))[:, :190, :270]
    return (0.25 * smooth + 0.05 * rng.random((4, 190, 270))).astype(np.float32)


@pytest.mark.parametrize("tile", [4096, 64])
def test_openvino_agrees_with_torch_fp32(trained, packed, tile):
    model, models = trained
    ref = _run(Restorer(model, "cpu", "fp32", tile=4096), packed)
    got = _run(ovengine.OpenVINORestorer(models, "fp32", tile=tile), packed)
    assert _psnr(got, ref) >= 50.0


@pytest.mark.parametrize("tile", [4096, 64])
def test_openvino_tiles_with_clipped_white_agree_with_torch(trained, packed, tile):
    """Tiles whose input holds pixels clipped white run the guide's clipped graph (`fine_clipped`), the
    others the cheaper one; the frame still agrees with torch, which always runs the clipped guide."""
    model, models = trained
    window = packed.copy()
    window[:, 40:90, 30:100] = 1.0  # a window past white, in some tiles only
    ref = _run(Restorer(model, "cpu", "fp32", tile=4096), window)
    restorer = ovengine.OpenVINORestorer(models, "fp32", tile=tile)
    got = _run(restorer, window)
    assert _psnr(got, ref) >= 50.0 and "fine_clipped" in restorer._compiled
    near = (slice(None), slice(2 * 34, 2 * 96), slice(2 * 24, 2 * 106))  # the window and 6 packed px around
    assert _psnr(got[near], ref[near]) >= 50.0
    # the clipped graph matters there: the guide without it gives something else
    plain = copy.deepcopy(model)
    plain.guide_clipped = False
    assert _psnr(_run(Restorer(plain, "cpu", "fp32", tile=4096), window)[near], ref[near]) < 45.0


def test_openvino_converts_the_plus_network(trained, packed, tmp_path, monkeypatch):
    """lamba2021-plus weights convert through the same parts and agree with torch, tiled or not."""
    from test_inference import with_plus_layers

    from darkfix.weights import save_weights

    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "cache"))
    path = save_weights(with_plus_layers(trained[0]), tmp_path / "plus.safetensors", {"output": "camera",
                                                                                       "input": "balanced"})
    model, info = load_weights(path)
    assert model.plus and info.architecture == "lamba2021-plus"
    ref = _run(Restorer(model, "cpu", "fp32", tile=4096), packed)
    paper = _run(Restorer(trained[0], "cpu", "fp32", tile=4096), packed)
    assert _psnr(paper, ref) < 40.0  # the extra layers change the output: the comparison below can fail
    models = ovengine.load_models(path)
    for tile in (4096, 64):
        assert _psnr(_run(ovengine.OpenVINORestorer(models, "fp32", tile=tile), packed), ref) >= 50.0


def test_openvino_bf16_close_to_fp32(trained, packed):
    model, models = trained
    if not ovengine.native_bf16()[0]:
        pytest.skip("no native bf16 on this CPU")
    ref = _run(Restorer(model, "cpu", "fp32", tile=4096), packed)
    for tile in (4096, 64):
        assert _psnr(_run(ovengine.OpenVINORestorer(models, "bf16", tile=tile), packed), ref) >= 45.0


@pytest.mark.parametrize("bit_depth", [8, 16])
def test_colour_graph_renders_as_to_display(unguided, packed, bit_depth):
    """The compiled colour rendering gives torch's display codes, within one code (the 8-bit lookup table
    rounds a hair differently near black). The network without the colour guide, whose local statistics
    would add their own rounding (the agreement tests above cover it)."""
    model, models = unguided
    wb, rgb_cam = np.array([2.1, 1.0, 1.6], np.float32), np.array(
        [[1.7, -0.5, -0.2], [-0.2, 1.5, -0.3], [0.05, -0.45, 1.4]], np.float32)
    ov_codes, torch_codes = [], []
    ovengine.OpenVINORestorer(models, "fp32").display(packed, wb, rgb_cam, bit_depth,
                                                      lambda q, t: ov_codes.append(q))
    ref = Restorer(model, "cpu", "fp32")
    ref(packed, lambda o, t: torch_codes.append(to_display(o, torch.from_numpy(wb), torch.from_numpy(rgb_cam),
                                                           bit_depth)))
    assert len(ov_codes) == len(torch_codes) == 1
    a, b = ov_codes[0], torch_codes[0]
    assert a.dtype == b.dtype == (np.uint8 if bit_depth == 8 else np.uint16)
    diff = np.abs(a.astype(np.int64) - b)
    assert diff.max() <= (1 if bit_depth == 8 else 3) and diff.mean() < (0.01 if bit_depth == 8 else 0.5)


def test_cache_is_traced_to_the_weights_bytes(weights_file, tmp_path, monkeypatch):
    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsError, match="no OpenVINO model"):
        ovengine.load_models(weights_file, convert=False)
    said = []
    models = ovengine.load_models(weights_file, say=said.append)
    assert said and "converting" in said[0]
    sha = ovengine.file_sha256(weights_file)
    folder = ovengine.model_dir(sha)
    assert sorted(p.name for p in folder.glob("*.xml")) == sorted(f"{p}.xml" for p in ovengine.PARTS)
    assert models["fine"].get_rt_info(["darkfix", "weights_sha256"]).astype(str) == sha
    ovengine.load_models(weights_file, convert=False)  # cached now: no conversion
    # other weights bytes are another cache entry; a model stamped for other bytes is rebuilt, not used
    from darkfix.weights import save_weights

    other = save_weights(load_weights(weights_file)[0], tmp_path / "other.safetensors",
                         {"output": "camera", "note": "same tensors, other bytes"})
    with pytest.raises(WeightsError):
        ovengine.load_models(other, convert=False)
    stale = ovengine.model_dir(ovengine.file_sha256(other))
    stale.parent.mkdir(parents=True, exist_ok=True)
    import shutil

    shutil.copytree(folder, stale)
    with pytest.raises(WeightsError):
        ovengine.load_models(other, convert=False)  # present but stamped with the first file's checksum
    said.clear()
    rebuilt = ovengine.load_models(other, say=said.append)
    assert said and rebuilt["stem"].get_rt_info(["darkfix", "weights_sha256"]).astype(str) == \
        ovengine.file_sha256(other)
    assert not [p for p in folder.parent.iterdir() if p.name.startswith(".")]  # no half-written folders


def test_engine_choice(monkeypatch, tmp_path):
    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path))
    assert engine.choose("torch", "cpu", "auto") == ("torch", "as requested")
    assert engine.choose("auto", "cuda", "auto")[0] == "torch"
    assert engine.choose("auto", "cpu", "fp16")[0] == "torch"
    assert engine.choose("auto", "cpu", "auto") == ("openvino", "auto: OpenVINO, to be measured against torch "
                                                                "on this CPU")
    for args, msg in ((("openvino", "cuda", "auto"), "runs on CPU"), (("openvino", "cpu", "fp16"), "fp16"),
                      (("tpu", "cpu", "auto"), "unknown engine")):
        with pytest.raises(ValueError, match=msg):
            engine.choose(*args)
    key = ovengine._choice_key("auto")
    (tmp_path / "engine-choice.json").write_text(json.dumps(
        {key: {"choice": "torch", "ms": {"openvino": 9.0, "torch": 5.0}, "tile": 576, "torch_margin": 1.25}}))
    name, why = engine.choose("auto", "cpu", "auto")
    assert name == "torch" and "openvino 9.0 ms, torch 5.0 ms; torch only if 1.25x faster" in why
    # a choice recorded by the first rule (no margin, a 256-pixel tile) is measured again
    (tmp_path / "engine-choice.json").write_text(json.dumps(
        {key: {"choice": "torch", "ms": {"openvino": 9.0, "torch": 5.0}, "tile": 256}}))
    assert engine.choose("auto", "cpu", "auto")[0] == "openvino" and ovengine.engine_choice("auto") is None
    monkeypatch.setattr(ovengine, "available", lambda: False)
    assert engine.choose("auto", "cpu", "auto") == ("torch", "auto: OpenVINO is not installed")
    with pytest.raises(ValueError, match="pip install openvino"):
        engine.choose("openvino", "cpu", "auto")


def test_measurement_decides_auto(weights_file, monkeypatch, tmp_path):
    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path))
    restorer, info = engine.load(weights_file, device="cpu")
    measured = ovengine.engine_choice("auto")
    assert measured is not None and set(measured["ms"]) == {"openvino", "torch"}
    ms = measured["ms"]
    assert measured["choice"] == ("torch" if ms["torch"] * ovengine.TORCH_MARGIN < ms["openvino"] else "openvino")
    assert restorer.engine == measured["choice"] and "measured on this CPU" in restorer.engine_reason
    again, _ = engine.load(weights_file, device="cpu")
    assert again.engine == restorer.engine


def test_restore_on_openvino_without_torch(make_dng, weights_file, tmp_path):
    """A restore served by OpenVINO from the cache never imports torch (nor OpenVINO's model converter),
    and writes what torch writes."""
    src = make_dng("dark.dng", size=(96, 130))
    env = {**os.environ, "DARKFIX_CACHE": str(tmp_path / "cache")}
    code = ("import sys; from darkfix.cli import main\n"
            "try:\n    main(sys.argv[1:])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
            "print('torch imported' if 'torch' in sys.modules else 'no torch')\n"
            "print('converter imported' if 'openvino.tools.ovc' in sys.modules else 'no converter')\n")
    common = [str(src), "--weights", str(weights_file), "--precision", "fp32", "--bit-depth", "16", "--overwrite"]
    first = subprocess.run([sys.executable, "-c", code, "restore", *common, "-o", str(tmp_path / "ov.png"),
                            "--engine", "openvino"], env=env, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    assert "converting" in first.stderr and "torch imported" in first.stdout  # converting needs torch, once
    second = subprocess.run([sys.executable, "-c", code, "restore", *common, "-o", str(tmp_path / "ov.png"),
                             "--engine", "openvino", "-v"], env=env, capture_output=True, text=True)
    assert second.returncode == 0, second.stderr
    assert "no torch" in second.stdout and "engine openvino" in second.stderr
    assert "no converter" in second.stdout and "converter imported" in first.stdout
    batch = subprocess.run([sys.executable, "-c", code, "batch", str(src.parent), "-o", str(tmp_path / "batch"),
                            "--weights", str(weights_file), "--engine", "openvino"], env=env, capture_output=True,
                           text=True)
    assert batch.returncode == 0, batch.stderr
    assert "no torch" in batch.stdout and (tmp_path / "batch" / "dark.png").is_file()
    ref = subprocess.run([sys.executable, "-c", code, "restore", *common, "-o", str(tmp_path / "torch.png"),
                          "--engine", "torch"], env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    a, b = read_png(tmp_path / "ov.png")[0], read_png(tmp_path / "torch.png")[0]
    assert a.shape == b.shape == (96, 130, 3)
    assert _psnr(a, b, 65535.0) >= 50.0


def test_tall_frame_many_strips_and_tiles_agree_with_torch(make_dng, weights_file, tmp_path, monkeypatch):
    """A frame tall enough for several strips of the first pass (of one shape) and several tiles: what
    OpenVINO writes is what torch writes (its outputs are read in place in `display`, the first pass's are
    not: strips kept together would be overwritten)."""
    from click.testing import CliRunner

    from darkfix.cli import main

    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "cache"))
    src = make_dng("tall.dng", size=(2304, 96), level=60.0, seed=4)
    for eng in ("openvino", "torch"):
        r = CliRunner().invoke(main, ["restore", str(src), "-o", str(tmp_path / f"{eng}.png"), "--engine", eng,
                                      "--weights", str(weights_file), "--precision", "fp32", "--bit-depth", "16",
                                      "--tile", "256"])
        assert r.exit_code == 0, r.output
    a, b = read_png(tmp_path / "openvino.png")[0], read_png(tmp_path / "torch.png")[0]
    assert a.shape == b.shape == (2304, 96, 3)
    assert _psnr(a, b, 65535.0) >= 50.0


def test_engine_option_errors(make_dng, monkeypatch):
    from click.testing import CliRunner

    from darkfix.cli import main

    src = make_dng("x.dng")
    r = CliRunner().invoke(main, ["restore", str(src), "--engine", "openvino", "--device", "cuda"])
    assert r.exit_code == 2 and "runs on CPU" in r.output
    monkeypatch.setattr(ovengine, "available", lambda: False)
    r = CliRunner().invoke(main, ["restore", str(src), "--engine", "openvino"])
    assert r.exit_code == 2 and "pip install openvino" in r.output
    assert not (src.parent / "x.png").exists()


def test_openvino_sends_nothing(weights_file, tmp_path):
    """Importing OpenVINO as installed sends usage telemetry; through darkfix, neither importing nor
    converting opens a socket."""
    code = ("import sys\n"
            "sys.addaudithook(lambda ev, args: ev.startswith('socket.') and print('NETWORK', ev, args))\n"
            "from darkfix import ovengine\n"
            f"ovengine.load_models({str(weights_file)!r})\n"
            "print('done')\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "DARKFIX_CACHE": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "done" in r.stdout and "NETWORK" not in r.stdout, r.stdout
