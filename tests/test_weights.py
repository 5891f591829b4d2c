"""Weights files: round trip, and a clear WeightsError for every kind of bad file."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from darkfix.cli import main
from darkfix.errors import WeightsError
from darkfix.model import ARCHITECTURE, LambaNet
from darkfix.weights import default_weights_path, load_weights, save_weights, tensors_sha256


@pytest.fixture(scope="module")
def state():
    torch.manual_seed(99)
    return {k: v.clone() for k, v in LambaNet().state_dict().items()}


def _expect_error(path, *fragments):
    with pytest.raises(WeightsError) as info:
        load_weights(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "\n" not in msg
    for f in fragments:
        assert f in msg, msg
    return msg


def _save_raw_safetensors(path, tensors, metadata):
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata)
    return path


def _darkfix_meta(tensors, **extra):
    meta = {"architecture": ARCHITECTURE, "format_version": "1", "output": "camera",
            "sha256": tensors_sha256(tensors)}
    meta.update(extra)
    return meta


def test_round_trip_keeps_tensors_and_metadata(tmp_path, state):
    model = LambaNet()
    model.load_state_dict(state)
    path = save_weights(model, tmp_path / "w.safetensors",
                        {"output": "camera", "steps": 1234, "data": "synthetic", "extra": {"a": [1, 2]}})
    assert not list(tmp_path.glob(".*.part"))
    loaded, info = load_weights(path)
    assert info.format == "darkfix" and info.output == "camera" and info.path == path
    assert info.metadata["steps"] == "1234"
    assert info.metadata["data"] == "synthetic"
    assert json.loads(info.metadata["extra"]) == {"a": [1, 2]}
    assert info.metadata["architecture"] == ARCHITECTURE
    assert not loaded.training
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, state[k]), k


def test_plus_weights_round_trip_and_are_not_paper_weights(tmp_path, state):
    plus = LambaNet(plus=True)
    plus.load_state_dict(state, strict=False)
    path = save_weights(plus, tmp_path / "p.safetensors", {"output": "camera"})
    loaded, info = load_weights(path)
    assert loaded.plus and info.architecture == "lamba2021-plus"
    for k, v in loaded.state_dict().items():
        assert torch.equal(v, plus.state_dict()[k]), k
    # plus tensors under the paper's name: refused with the missing tensors' news, not half loaded
    tensors = {k: v for k, v in plus.state_dict().items() if not k.startswith("refine2x")}
    save_file(tensors, str(tmp_path / "q.safetensors"), metadata=_darkfix_meta(tensors, architecture="lamba2021-plus"))
    _expect_error(tmp_path / "q.safetensors", "not lamba2021-plus weights", "missing refine2x")


def test_round_trip_srgb_output(tmp_path, state):
    model = LambaNet()
    model.load_state_dict(state)
    _, info = load_weights(save_weights(model, tmp_path / "s.safetensors", {"output": "srgb"}))
    assert info.output == "srgb"


def test_random_bytes(tmp_path):
    rng = np.random.default_rng(0)
    for i, head in enumerate([b"", b"\x00" * 8 + b"{"]):  # the second looks like a safetensors header
        p = tmp_path / f"random{i}.safetensors"
        p.write_bytes(head + rng.bytes(5000))
        _expect_error(p)
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    _expect_error(empty)


@pytest.mark.parametrize("keep", [4, 9, 200, "header", "half", "minus1"])
def test_truncated_safetensors(tmp_path, weights_file, keep):
    data = weights_file.read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    n = {"header": 8 + header, "half": len(data) // 2, "minus1": len(data) - 1}.get(keep, keep)
    p = tmp_path / "cut.safetensors"
    p.write_bytes(data[:n])
    _expect_error(p)


def test_tampered_tensor_fails_checksum(tmp_path, weights_file):
    data = bytearray(weights_file.read_bytes())
    start = 8 + struct.unpack("<Q", data[:8])[0]
    data[start + 1000] ^= 0x01  # one low mantissa bit of one weight: still finite, still plausible
    p = tmp_path / "tampered.safetensors"
    p.write_bytes(bytes(data))
    _expect_error(p, "checksum")


def test_non_finite_tensor(tmp_path, state):
    bad = dict(state)
    bad["conv2x.0.bias"] = bad["conv2x.0.bias"].clone()
    bad["conv2x.0.bias"][3] = float("nan")
    p = _save_raw_safetensors(tmp_path / "nan.safetensors", bad, _darkfix_meta(bad))
    _expect_error(p, "non-finite", "conv2x.0.bias")


def test_safetensors_without_darkfix_metadata(tmp_path, state):
    p = _save_raw_safetensors(tmp_path / "foreign.safetensors", state, {})
    _expect_error(p, "architecture")


def test_unknown_output_space(tmp_path, state):
    p = _save_raw_safetensors(tmp_path / "o.safetensors", state, _darkfix_meta(state, output="xyz"))
    _expect_error(p, "xyz")


def _missing(state):
    s = dict(state)
    del s["RDB2.conv_1x1.0.weight_v"]
    return s, "missing RDB2.conv_1x1.0.weight_v"


def _misshaped(state):
    s = dict(state)
    s["conv2x.0.bias"] = torch.zeros(13)
    return s, "shape of conv2x.0.bias"


def _extra(state):
    s = dict(state)
    s["head.weight"] = torch.zeros(3)
    return s, "extra"


@pytest.mark.parametrize("mutate", [_missing, _misshaped, _extra])
def test_wrong_architecture_safetensors(tmp_path, state, mutate):
    s, detail = mutate(state)
    p = _save_raw_safetensors(tmp_path / "wrong.safetensors", s, _darkfix_meta(s))
    _expect_error(p, f"not {ARCHITECTURE} weights", detail)


@pytest.mark.parametrize("wrap", [True, False], ids=["model-dict", "bare"])
@pytest.mark.parametrize("mutate", [_missing, _misshaped])
def test_wrong_architecture_pth(tmp_path, state, mutate, wrap):
    s, detail = mutate(state)
    p = tmp_path / "wrong.pth"
    torch.save({"model": s} if wrap else s, p)
    _expect_error(p, f"not {ARCHITECTURE} weights", detail)


def test_good_pth_loads_as_authors_format(tmp_path, state):
    p = tmp_path / "ok.pth"
    torch.save({"model": state}, p)
    model, info = load_weights(p)
    assert info.format == "authors" and info.output == "srgb"
    assert torch.equal(model.state_dict()["conv2x.0.weight_v"], state["conv2x.0.weight_v"])


def test_pth_of_other_objects(tmp_path):
    p = tmp_path / "list.pth"
    torch.save([torch.zeros(2)], p)
    _expect_error(p, "not a state dict")
    p = tmp_path / "mixed.pth"
    torch.save({"model": {"a": torch.zeros(1), "b": 3}}, p)
    _expect_error(p, "not a state dict")


class _Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


def test_pth_with_arbitrary_pickle_is_refused(tmp_path, capsys):
    p = tmp_path / "evil.pth"
    torch.save({"model": _Evil()}, p)
    _expect_error(p, "not a readable weights file")
    assert "unpickled!" not in capsys.readouterr().out


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.safetensors", "not found")


def test_directory_is_not_a_weights_file(tmp_path):
    _expect_error(tmp_path, "not found")


def test_default_weights_path_does_not_crash():
    p = default_weights_path()
    assert p.name == "darkfix-lamba2021-v14.safetensors"


# --- darkfix info ---------------------------------------------------------------------------


def test_info_on_good_file(weights_file):
    r = CliRunner().invoke(main, ["info", "--weights", str(weights_file)])
    assert r.exit_code == 0, r.output
    assert "format:        darkfix" in r.stdout
    assert "output:        camera" in r.stdout
    assert "784,768" in r.stdout
    assert "random init for tests" in r.stdout
    assert "colour guide:  " in r.stdout
    assert "engine:        " in r.stdout and "openvino:      " in r.stdout


def test_info_on_authors_checkpoint(reference):
    r = CliRunner().invoke(main, ["info", "--weights", str(reference / "lamba2021_sony_official.pth")])
    assert r.exit_code == 0, r.output
    assert "format:        authors" in r.stdout
    assert "output:        srgb" in r.stdout
    assert "colour guide:  none" in r.stdout  # the paper's sRGB output: nothing to guide


@pytest.mark.parametrize("kind", ["random", "truncated", "missing"])
def test_info_on_bad_file(tmp_path, weights_file, kind):
    p = tmp_path / "bad.safetensors"
    if kind == "random":
        p.write_bytes(np.random.default_rng(1).bytes(3000))
    elif kind == "truncated":
        p.write_bytes(weights_file.read_bytes()[:100_000])
    r = CliRunner().invoke(main, ["info", "--weights", str(p)])
    assert r.exit_code == 2
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("darkfix: error: ") and str(p) in lines[0]
    assert "Traceback" not in r.output


def test_info_with_and_without_default_weights(tmp_path, monkeypatch):
    """The packaged weights are found from a checkout; where none are installed, one line and exit 2."""
    import darkfix.weights as weights_module

    assert default_weights_path().is_file()
    r = CliRunner().invoke(main, ["info"])
    assert r.exit_code == 0 and default_weights_path().name in r.output, r.output
    monkeypatch.setattr(weights_module, "default_weights_path", lambda: tmp_path / "none.safetensors")
    r = CliRunner().invoke(main, ["info"])
    assert r.exit_code == 2, (r.output, r.exception)
    assert "no default weights installed" in r.stderr
    assert len(r.stderr.splitlines()) == 1
