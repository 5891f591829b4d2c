"""Weights with a low-noise companion: each frame runs through the network trained for its range of noise
(engine.Routed). The training side (`darkfix train --relative-noise`) is tested in test_noise and test_train."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import darkfix
from darkfix.cli import main
from darkfix.errors import WeightsError
from darkfix.model import LambaNet
from darkfix.options import RestoreOptions
from darkfix.packing import prepare_frame
from darkfix.profile import read_frame
from darkfix.weights import read_info, save_weights, with_low_noise

META = {"output": "camera", "input": "balanced+noise", "guide_radius": "6"}


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """(routed weights, main, low): two noise-aware networks whose outputs differ, the first naming the second."""
    d = tmp_path_factory.mktemp("routed")
    paths = []
    for seed in (5, 6):
        torch.manual_seed(seed)
        net = LambaNet(noise_aware=True, guide_radius=6)
        with torch.no_grad():
            net.fine_out.weight_g.normal_(0.0, 0.3)
        paths.append(save_weights(net, d / f"net{seed}.safetensors", META))
    return with_low_noise(paths[0], paths[1], 0.1, d / "routed.safetensors"), *paths


def _relative_noise(path, ratio: float) -> float:
    frame = read_frame(path)
    return float(prepare_frame(frame, RestoreOptions(ratio=ratio), "balanced+noise").packed.relative_noise)


def test_each_frame_runs_through_the_network_of_its_noise(pair, make_dng):
    routed, main_w, low_w = pair
    dng = make_dng(level=60.0)
    quiet, noisy = 3.0, 400.0
    assert _relative_noise(dng, quiet) < 0.1 < _relative_noise(dng, noisy)
    info = read_info(routed)
    assert info.low_noise == (low_w, 0.1)
    out = {}
    for name, w in (("routed", routed), ("main", main_w), ("low", low_w)):
        model = darkfix.load(w, device="cpu", engine="torch")
        out[name] = [model.restore(dng, ratio=r, bit_depth=16).astype(np.int64) for r in (quiet, noisy)]
    assert np.array_equal(out["routed"][0], out["low"][0])
    assert np.array_equal(out["routed"][1], out["main"][1])
    assert np.abs(out["low"][0] - out["main"][0]).mean() > 100  # the two networks do differ


def test_restore_says_which_network_ran(pair, make_dng, tmp_path):
    routed, _, low_w = pair
    dng = make_dng(level=60.0)
    for ratio, which in (("3", f"the low-noise network {low_w.name}"), ("400", "the main network")):
        out = tmp_path / f"x{ratio}.png"
        r = CliRunner().invoke(main, ["restore", str(dng), "-o", str(out), "--weights", str(routed),
                                      "--ratio", ratio, "--engine", "torch", "-v"])
        assert r.exit_code == 0, r.output
        line = next(t for t in r.output.splitlines() if "relative noise" in t)
        assert line.endswith(which) and "low-noise below 0.1" in line
        assert out.is_file()


def test_a_missing_companion_is_one_line_and_nothing_written(pair, make_dng, tmp_path):
    routed, main_w, _ = pair
    alone = tmp_path / "alone"
    alone.mkdir()
    moved = shutil.copy(routed, alone / routed.name)
    out = tmp_path / "x.png"
    r = CliRunner().invoke(main, ["restore", str(make_dng()), "-o", str(out), "--weights", str(moved)])
    assert r.exit_code == 2 and "weights file not found" in r.output and "Traceback" not in r.output
    assert len(r.output.strip().splitlines()) == 1 and not out.exists()


def test_companions_that_cannot_route_are_refused(pair, tmp_path):
    routed, main_w, low_w = pair
    with pytest.raises(WeightsError, match="another file"):  # itself
        with_low_noise(main_w, main_w, 0.1, tmp_path / main_w.name)
    paper = save_weights(LambaNet(), tmp_path / "paper.safetensors", {"output": "camera"})
    with pytest.raises(WeightsError, match="noise-aware"):  # no noise level to route by
        with_low_noise(paper, low_w, 0.1, tmp_path / "p.safetensors")
    with pytest.raises(WeightsError, match="relative noise"):
        with_low_noise(main_w, low_w, 0.0, tmp_path / "z.safetensors")
    assert not (tmp_path / "p.safetensors").exists() and not (tmp_path / "z.safetensors").exists()
    # a companion that itself routes, or that reads another input, is not a companion
    chained = with_low_noise(low_w, main_w, 0.1, low_w.with_name("chained.safetensors"))
    twice = with_low_noise(main_w, chained, 0.1, tmp_path / "twice.safetensors")
    shutil.copy(chained, tmp_path / chained.name)
    with pytest.raises(WeightsError, match="not a low-noise companion"):
        darkfix.load(twice, device="cpu", engine="torch")


@pytest.mark.parametrize("value", ["nope", "{}", json.dumps({"weights": "x.safetensors"}),
                                   json.dumps({"weights": "../x.safetensors", "below": 0.1})])
def test_malformed_low_noise_metadata(pair, tmp_path, value):
    from safetensors import safe_open
    from safetensors.torch import save_file

    _, main_w, _ = pair
    with safe_open(str(main_w), framework="pt") as f:
        meta, state = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    bad = tmp_path / "bad.safetensors"
    save_file(state, str(bad), metadata={**meta, "low_noise": value})
    with pytest.raises(WeightsError, match="low_noise"):
        read_info(bad)


def test_the_shipped_routed_weights_find_their_low_noise_network():
    """darkfix-lamba2021-v14-routed.safetensors (by the bare name darkfix ships it under): v14's tensors, and
    the network trained on low-noise pairs beside it, run below a relative noise of 0.2."""
    routed = read_info("darkfix-lamba2021-v14-routed.safetensors")
    v14 = read_info("darkfix-lamba2021-v14.safetensors")
    low_path, below = routed.low_noise
    low = read_info(low_path)
    assert below == 0.2 and low_path.parent == routed.path.parent and low.noise_aware
    assert routed.metadata["sha256"] == v14.metadata["sha256"] and low.metadata["sha256"] != v14.metadata["sha256"]
    assert "relative noise of 0.02-0.3" in json.loads(low.metadata["training"])["data"]
