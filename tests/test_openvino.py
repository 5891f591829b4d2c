"""The OpenVINO engine: agreement with torch, the converted models' cache and its checksum, the engine
choice, and restoring without importing torch."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from _util import read_png, run_restorer as _run
from darkfix import engine, ovengine
from darkfix.colour import to_display
from darkfix.errors import WeightsError
from darkfix.inference import Restorer
from darkfix.weights import default_weights_path, load_weights

pytestmark = pytest.mark.skipif(not ovengine.available(), reason="OpenVINO is not installed")


def _psnr(a: np.ndarray, b: np.ndarray, peak: float = 1.0) -> float:
    return float(10 * np.log10(peak**2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-30)))


# packaged paper-architecture weights (a random network's output is too flat to show disagreement); the
# noise-aware default has its own conversion test (test_noise.py: test_noise_aware_weights_convert_to_openvino)
PAPER = default_weights_path().with_name("darkfix-lamba2021-v3.safetensors")


@pytest.fixture(scope="module")
def trained():
    """The packaged paper-architecture weights, converted."""
    model, info = load_weights(PAPER)
    return model, ovengine.load_models(info.path)


@pytest.fixture(scope="module")
def unguided(tmp_path_factory):
    """The packaged paper-architecture weights with the colour guide switched off in their metadata, converted."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(PAPER), framework="pt") as f:
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
def test_openvino_ensemble_agrees_with_torch(trained, packed, tile):
    """The transposed pass (`ensemble`) on OpenVINO: its second window shape, its numpy outputs."""
    model, models = trained
    torch_engine = Restorer(model, "cpu", "fp32", tile=4096)
    ov = ovengine.OpenVINORestorer(models, "fp32", tile=tile)
    ref, got = _run(torch_engine, packed, ensemble=True), _run(ov, packed, ensemble=True)
    assert _psnr(got, ref) >= 50.0 and _psnr(ref, _run(Restorer(model, "cpu", "fp32", tile=4096), packed)) < 60.0


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
    assert _psnr(paper, ref) < 45.0  # the extra layers change the output: the 50 dB comparison below can fail
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


def test_cache_is_traced_to_the_weights_bytes(weights_file, tmp_path, monkeypatch, fast_convert):
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
    # a choice timed for one architecture is not another's (their costs differ)
    assert engine.choose("auto", "cpu", "auto", "lamba2021-na")[0] == "openvino"
    assert ovengine.engine_choice("auto", "lamba2021-na") is None
    # a choice recorded by the first rule (no margin, a 256-pixel tile) is measured again
    (tmp_path / "engine-choice.json").write_text(json.dumps(
        {key: {"choice": "torch", "ms": {"openvino": 9.0, "torch": 5.0}, "tile": 256}}))
    assert engine.choose("auto", "cpu", "auto")[0] == "openvino" and ovengine.engine_choice("auto") is None
    monkeypatch.setattr(ovengine, "available", lambda: False)
    assert engine.choose("auto", "cpu", "auto") == ("torch", "auto: OpenVINO is not installed")
    with pytest.raises(ValueError, match="pip install openvino"):
        engine.choose("openvino", "cpu", "auto")


def test_measurement_decides_auto(weights_file, monkeypatch, tmp_path, fast_convert):
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


@pytest.mark.parametrize("ensemble", [False, True])
def test_tall_frame_many_strips_and_tiles_agree_with_torch(make_dng, weights_file, tmp_path, monkeypatch, fast_convert,
                                                           ensemble):
    """A frame tall enough for several strips of the first pass (of one shape) and several tiles: what
    OpenVINO writes is what torch writes (its outputs are read in place in `display`, the first pass's are
    not: strips kept together would be overwritten; nor, with the ensemble, the fine part's: its first view's
    output would be overwritten by the second's, stripes all over the picture)."""
    from click.testing import CliRunner

    from darkfix.cli import main

    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "cache"))
    src = make_dng("tall.dng", size=(2304, 96), level=60.0, seed=4)
    for eng in ("openvino", "torch"):
        r = CliRunner().invoke(main, ["restore", str(src), "-o", str(tmp_path / f"{eng}.png"), "--engine", eng,
                                      "--weights", str(weights_file), "--precision", "fp32", "--bit-depth", "16",
                                      "--tile", "256"] + ["--ensemble"] * ensemble)
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


# --- issue 23: one picture per input, a cache that checks itself ---------------------------------------------


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "seeding_x200.dng"


def test_first_converting_run_gives_the_later_runs_picture(tmp_path, monkeypatch):
    """Issue 23: the first restore on a machine (the one that converts) differed from every later one by up to
    2-3/255 on 9-20 % of the pixels (measured here: 2/255 on 9.3 %, bf16): it ran the converter's in-memory
    graph, whose marks (divisions kept out of bf16) saving drops. Now every run uses what is read from files."""
    import darkfix

    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "cache"))
    images = [darkfix.load(engine="openvino", precision=precision).restore(EXAMPLE, bit_depth=16)
              for precision in ("bf16", "bf16", "fp32", "fp32")]  # empty cache, then warm, per precision
    assert images[0].shape == (432, 767, 3)
    assert np.array_equal(images[0], images[1]) and np.array_equal(images[2], images[3])


@pytest.fixture(scope="module")
def random_converted(weights_file):
    """The test weights converted once for the module (a conversion takes 10-15 s here)."""
    from darkfix.ovexport import convert

    return convert(load_weights(weights_file)[0])


@pytest.fixture
def fast_convert(random_converted, monkeypatch):
    """`load_models` converts by copying `random_converted`: what is under test is the cache, not the converter."""
    import darkfix.ovexport

    monkeypatch.setattr(darkfix.ovexport, "convert", lambda model: {k: m.clone() for k, m in random_converted.items()})


def _cached_folder(weights_file) -> Path:
    return ovengine.model_dir(ovengine.file_sha256(weights_file))


def test_damaged_model_file_is_rebuilt_not_run(weights_file, packed, tmp_path, monkeypatch, fast_convert):
    """Issue 23: random floats over a weight region of the cached fine.bin gave exit 0 and a wrong picture
    (max error 179/255). Now every cached file is checked against the checksum recorded when it was written."""
    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "cache"))
    expected = _run(ovengine.OpenVINORestorer(ovengine.load_models(weights_file), "fp32"), packed)
    fine_bin = _cached_folder(weights_file) / "fine.bin"
    data = bytearray(fine_bin.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 4096] = np.random.default_rng(0).random(1024, np.float32).tobytes()
    fine_bin.write_bytes(bytes(data))
    said: list[str] = []
    models = ovengine.load_models(weights_file, say=said.append)
    assert len(said) == 1 and "damaged (fine.bin does not match its checksum)" in said[0], said
    assert np.array_equal(_run(ovengine.OpenVINORestorer(models, "fp32"), packed), expected)
    said.clear()
    ovengine.load_models(weights_file, say=said.append)
    assert said == []  # rebuilt whole: the next run reads it silently


def test_damaged_compiled_blob_is_compiled_again_not_run(weights_file, packed, tmp_path, monkeypatch, fast_convert):
    """Issue 23: 4 KB of garbage in OpenVINO's compiled blob gave exit 0 and an all-black PNG on every run."""
    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "cache"))
    models = ovengine.load_models(weights_file)
    expected = _run(ovengine.OpenVINORestorer(models, "fp32"), packed)
    blobs = sorted((tmp_path / "cache" / "openvino" / "blobs").glob("*.blob"))
    assert len(blobs) == 3  # stem, coarse, fine (the others compile when first used)
    for blob in blobs:
        data = bytearray(blob.read_bytes())
        data[1000:5096] = np.random.default_rng(1).integers(0, 256, 4096, np.uint8).tobytes()
        blob.write_bytes(bytes(data))
    said: list[str] = []
    got = _run(ovengine.OpenVINORestorer(models, "fp32", say=said.append), packed)
    assert np.array_equal(got, expected)
    assert len(said) == 3 and all("damaged in the cache" in s and "checksum differs" in s for s in said), said
    said.clear()
    assert np.array_equal(_run(ovengine.OpenVINORestorer(models, "fp32", say=said.append), packed), expected)
    assert said == []  # written anew and whole


def _refuse_writes_under(root: Path, monkeypatch, error: int = 13) -> None:
    """Make every file or folder darkfix creates under `root` fail with `error` (EACCES: another user's
    cache; tests run as root, which permissions do not stop)."""
    import errno as errnos
    import tempfile

    real_open, real_mkdtemp, real_mkdir = os.open, tempfile.mkdtemp, Path.mkdir

    def refuse(path) -> None:
        if str(path).startswith(str(root)):
            raise OSError(error, os.strerror(error), str(path))

    def fake_open(path, flags, *args, **kwargs):
        if flags & (os.O_CREAT | os.O_WRONLY | os.O_RDWR):
            refuse(path)
        return real_open(path, flags, *args, **kwargs)

    def fake_mkdtemp(suffix=None, prefix=None, dir=None):
        refuse(dir)
        return real_mkdtemp(suffix, prefix, dir)

    def fake_mkdir(self, *args, **kwargs):
        if not self.is_dir():
            refuse(self)
        return real_mkdir(self, *args, **kwargs)

    assert errnos.errorcode[error]
    monkeypatch.setattr(ovengine.os, "open", fake_open)
    monkeypatch.setattr(ovengine.tempfile, "mkdtemp", fake_mkdtemp)
    monkeypatch.setattr(Path, "mkdir", fake_mkdir)
    real_write_bytes = Path.write_bytes
    monkeypatch.setattr(Path, "write_bytes", lambda self, data: refuse(self) or real_write_bytes(self, data))


def test_another_users_valid_cache_is_used_read_only(weights_file, packed, tmp_path, monkeypatch, fast_convert):
    """Issue 23: a cache another user made (blobs mode 0440) ended in a traceback ("cannot remove: Permission
    denied"). A valid one is read, its blobs imported, and nothing is written or said."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("DARKFIX_CACHE", str(cache))
    expected = _run(ovengine.OpenVINORestorer(ovengine.load_models(weights_file), "fp32"), packed)
    before = {p: p.stat().st_mtime_ns for p in cache.rglob("*")}
    _refuse_writes_under(cache, monkeypatch)
    said: list[str] = []
    models = ovengine.load_models(weights_file, say=said.append)
    assert np.array_equal(_run(ovengine.OpenVINORestorer(models, "fp32", say=said.append), packed), expected)
    assert said == [] and {p: p.stat().st_mtime_ns for p in cache.rglob("*")} == before


@pytest.mark.parametrize("how", ["a file", "another user's", "full", "fills while writing"])
def test_unwritable_cache_converts_in_memory_with_one_warning(weights_file, packed, tmp_path, monkeypatch, how,
                                                              fast_convert):
    """Issue 23: a cache on a full disk gave a traceback from ov.save_model (`basic_ios::clear`), exit 1; a
    read-only cache or a path that is a file converted on every run, each time saying "(once; cached in ...)"."""
    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path / "good"))
    expected = _run(ovengine.OpenVINORestorer(ovengine.load_models(weights_file), "fp32"), packed)
    cache = tmp_path / "cache"
    monkeypatch.setenv("DARKFIX_CACHE", str(cache))
    if how == "a file":
        cache.write_text("not a folder")
    elif how == "another user's":
        _refuse_writes_under(cache, monkeypatch)
    else:
        ov = ovengine.import_openvino()
        real_save = ov.save_model

        def full(model, path, *args, **kwargs):
            if str(path).startswith(str(cache)):
                raise RuntimeError("Exception from src/core/src/pass/serialize.cpp: basic_ios::clear: iostream error")
            return real_save(model, path, *args, **kwargs)

        monkeypatch.setattr(ov, "save_model", full)
        free = 0 if how == "full" else 1 << 30
        monkeypatch.setattr(ovengine.shutil, "disk_usage", lambda p: __import__("shutil")._ntuple_diskusage(1, 1, free))
    said: list[str] = []
    models = ovengine.load_models(weights_file, say=said.append)
    warnings = [s for s in said if s.startswith("warning: ")]
    assert len(warnings) == 1, said
    if how == "fills while writing":  # said converting, then that it could not keep it
        assert len(said) == 2 and "could not cache" in said[1] and "converted again next time" in said[1]
    else:
        assert len(said) == 1 and "in memory" in said[0] and "(once" not in said[0]
        assert {"a file": "Not a directory", "another user's": "Permission denied", "full": "disk full"}[how] in said[0]
    assert np.array_equal(_run(ovengine.OpenVINORestorer(models, "fp32"), packed), expected)
    assert not list(tmp_path.glob("cache/openvino/*/*.xml"))


def test_unwritable_cache_from_the_command_line(make_dng, weights_file, tmp_path):
    """One warning line, exit 0, and no engine timing that could not be kept (it would cost a torch import on
    every run and say "(once)" each time)."""
    src = make_dng(size=(40, 58))
    env = {**os.environ, "DARKFIX_CACHE": str(tmp_path / "cache")}
    (tmp_path / "cache").write_text("a file where the cache should be")
    r = subprocess.run([sys.executable, "-m", "darkfix", "restore", str(src), "-o", str(tmp_path / "x.png"),
                        "--weights", str(weights_file), "-v"], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.splitlines()[-1] == str(tmp_path / "x.png"), r.stderr
    lines = [line for line in r.stderr.splitlines() if line.startswith("darkfix")]
    assert len(lines) == 1 and "warning: converting" in lines[0] and "Not a directory" in lines[0], r.stderr
    assert "engine openvino (auto: OpenVINO, not timed against torch" in r.stderr
    assert "Traceback" not in r.stderr


def test_concurrent_first_runs_convert_once(weights_file, tmp_path):
    """Issue 23: two restores converting at once both converted. Now the second waits for the first."""
    code = ("import sys\nfrom darkfix import ovengine\n"
            "models = ovengine.load_models(sys.argv[1], say=lambda m: print(m, flush=True))\n"
            "print('stamped', models['fine'].get_rt_info(['darkfix', 'weights_sha256']).astype(str))\n")
    env = {**os.environ, "DARKFIX_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", code, str(weights_file)], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    said = [line for o in outs for line in o.splitlines() if not line.startswith("stamped")]
    assert sum(line.startswith("converting") for line in said) == 1, outs
    assert sum(line.startswith("waiting for another darkfix process") for line in said) >= 1, outs  # they overlapped
    sha = ovengine.file_sha256(weights_file)
    assert all(f"stamped {sha}" in o for o in outs)


def test_others_load_sees_a_busy_process():
    """The engine timing's measure of contention: the share of the CPUs other processes used."""
    since = ovengine._cpu_sample()
    if since is None:
        pytest.skip("no /proc/stat")
    burner = subprocess.Popen([sys.executable, "-c", "import time\nt = time.time()\nwhile time.time() - t < 1.5: pass"])
    burner.wait()
    assert ovengine.others_load(since) >= 0.8 / os.cpu_count()


def test_choice_timed_under_contention_is_provisional(weights_file, tmp_path, monkeypatch, fast_convert):
    """Issue 23: two first runs at once stored for good a choice timed under that contention (140 vs 224 ms;
    67 vs 136 alone). Now such a choice is used but timed again, quietly, once the machine is idle."""
    monkeypatch.setenv("DARKFIX_CACHE", str(tmp_path))
    models = ovengine.load_models(weights_file)
    model = load_weights(weights_file)[0]
    monkeypatch.setattr(ovengine, "others_load", lambda since: 0.6)
    entry = ovengine.measure_engines(models, model, side=128, runs=1)
    assert entry["contended"] and entry["others_load"] == 0.6 and ovengine.engine_choice("auto") == entry
    monkeypatch.setattr(ovengine.os, "getloadavg", lambda: (3.0 * os.cpu_count(), 0.0, 0.0))
    assert not ovengine.retime_due(entry)  # busy now: the provisional choice is used
    assert engine.choose("auto", "cpu", "auto")[0] == entry["choice"]
    monkeypatch.setattr(ovengine.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    assert ovengine.retime_due(entry)  # idle: timed again
    assert engine.choose("auto", "cpu", "auto") == ("openvino", "auto: OpenVINO, to be measured against torch "
                                                                "on this CPU")
    said: list[str] = []
    engine.load(weights_file, device="cpu", say=said.append)
    again = ovengine.engine_choice("auto")
    assert again["retimed"] == 1 and again["contended"] and said == []  # quietly
    for _ in range(ovengine.RETIMINGS - 1):
        again = ovengine.measure_engines(models, model, side=128, runs=1)
    assert again["retimed"] == ovengine.RETIMINGS and not ovengine.retime_due(again)  # kept after that
    monkeypatch.setattr(ovengine, "others_load", lambda since: 0.05)
    final = ovengine.measure_engines(models, model, side=128, runs=1)
    assert "contended" not in final and not ovengine.retime_due(final)


def test_conversion_goes_through_torch_export_without_warnings(weights_file, packed, monkeypatch):
    """Issue 23: converting said `torch.jit.trace is deprecated` 156 times. It now goes through torch.export
    (OpenVINO reads the ExportedProgram), warns nothing, and runs as torch does (>= 50 dB at fp32; measured on
    the packaged weights: bit-identical to the traced graphs at fp32 and bf16, and as fast)."""
    import warnings

    from darkfix.ovexport import convert

    def no_tracing(*args, **kwargs):
        raise AssertionError("torch.jit.trace was called")

    monkeypatch.setattr(torch.jit, "trace", no_tracing)
    model = load_weights(weights_file)[0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models = convert(model)
    assert [str(w.message) for w in caught] == []
    assert [str(i.get_partial_shape()) for i in models["fine"].inputs] == ["[1,4,?,?]", "[1,64,?,?]"]
    from darkfix.tiling import fine_reach, margin_for

    got = _run(ovengine.OpenVINORestorer(models, "fp32", margin=margin_for(fine_reach(model.plus, model.guide_radius))),
               packed)
    ref = _run(Restorer(model, "cpu", "fp32"), packed)
    assert _psnr(got, ref) >= 50.0
