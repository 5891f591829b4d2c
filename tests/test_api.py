"""The public library: darkfix.restore / darkfix.load equal the CLI's PNGs; errors; the README example runs."""

from __future__ import annotations

import re
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from _util import read_png
from conftest import ROOT
import darkfix
from darkfix.cli import main


@pytest.mark.parametrize("bit_depth, ensemble", [(8, False), (16, False), (16, True)])
def test_restore_equals_the_cli_png(make_dng, weights_file, tmp_path, bit_depth, ensemble):
    src = make_dng(size=(70, 98), cfa="GBRG", orientation=6)
    out = tmp_path / "cli.png"
    r = CliRunner().invoke(main, ["restore", str(src), "-o", str(out), "--weights", str(weights_file),
                                  "--bit-depth", str(bit_depth), "-m", "+0.5ev", "--device", "cpu", "-v"]
                           + ["--ensemble"] * ensemble)
    assert r.exit_code == 0, r.output
    assert ("self-ensemble: the network also ran on the transposed mosaic" in r.output) == ensemble
    image = darkfix.restore(src, weights=weights_file, bit_depth=bit_depth, brightness=2**0.5, device="cpu",
                            ensemble=ensemble)
    png, depth = read_png(out)
    assert depth == bit_depth and image.dtype == (np.uint8 if bit_depth == 8 else np.uint16)
    assert image.shape == png.shape == (98, 70, 3)  # upright: orientation 6 turns the 70x98 mosaic
    assert np.array_equal(image, png)
    if ensemble:  # the second pass counts (a random network's two passes differ widely)
        single = darkfix.restore(src, weights=weights_file, bit_depth=16, brightness=2**0.5, device="cpu")
        assert not np.array_equal(image, single)
        with pytest.raises(ValueError, match="ensemble must be True or False"):
            darkfix.restore(src, weights=weights_file, device="cpu", ensemble="yes")


def test_load_once_restore_many(make_dng, weights_file):
    model = darkfix.load(weights_file, device="cpu")
    a = model.restore(make_dng("a.dng", seed=1), ratio=20)
    b = model.restore(make_dng("b.dng", seed=2), ratio=20)
    assert a.shape == b.shape and not np.array_equal(a, b)
    assert model.weights.path == weights_file
    paper = model.restore(make_dng("a.dng", seed=1), exposure="paper")
    auto = model.restore(make_dng("a.dng", seed=1))
    assert paper.mean() < auto.mean()  # the paper's estimate aims darker


def test_errors_are_public_classes(tmp_path, weights_file, make_dng):
    model = darkfix.load(weights_file, device="cpu")
    with pytest.raises(darkfix.RawReadError):
        model.restore(tmp_path / "missing.dng")
    (tmp_path / "text.dng").write_text("not a raw")
    with pytest.raises(darkfix.DarkfixError):
        model.restore(tmp_path / "text.dng")
    with pytest.raises(darkfix.WeightsError):
        darkfix.load(tmp_path / "none.safetensors")
    for bad in ({"bit_depth": 12}, {"wb": "tungsten"}, {"exposure": "guess"}, {"brightness": 0}):
        with pytest.raises(ValueError):
            model.restore(make_dng(), **bad)


def test_import_is_light_and_typed():
    code = "import sys, darkfix; print('torch' in sys.modules, sorted(darkfix.__all__))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False")
    assert (ROOT / "darkfix" / "py.typed").is_file()


def test_readme_example_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    block = re.search(r"## Library.*?```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(ROOT)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec"), namespace)
    assert namespace["image"].dtype == np.uint8 and namespace["image16"].dtype == np.uint16
    # normally exposed by default: within half a stop of the example's true exposure (ratio 200, image16),
    # compared in (approximately) linear light
    auto = float(((namespace["image"] / 255.0) ** 2.2).mean())
    true = float(((namespace["image16"] / 65535.0) ** 2.2).mean())
    assert abs(np.log2(auto / true)) < 0.5, (auto, true)


def test_brightness_and_ratio_as_the_cli_takes_them(make_dng, weights_file):
    """Issue 23: "+1ev" raised TypeError ('>' between str and int); now the library parses as `-m` does."""
    model = darkfix.load(weights_file, device="cpu")
    src = make_dng(size=(40, 58))
    twice = model.restore(src, brightness=2.0)
    assert np.array_equal(model.restore(src, brightness="+1ev"), twice)
    assert np.array_equal(model.restore(src, brightness="2"), twice)
    assert np.array_equal(model.restore(src, ratio="30", bit_depth="16"), model.restore(src, ratio=30.0, bit_depth=16))
    assert np.array_equal(darkfix.restore(src, brightness="-0.5ev", weights=weights_file, device="cpu"),
                          model.restore(src, brightness=2**-0.5))


@pytest.mark.parametrize("option,value", [("-m", "bright"), ("-m", "+9ev"), ("-m", "0"), ("--ratio", "0.5"),
                                          ("--ratio", "lots")])
def test_bad_brightness_or_ratio_has_the_cli_message(make_dng, weights_file, tmp_path, option, value):
    src = make_dng(size=(40, 58))
    r = CliRunner().invoke(main, ["restore", str(src), "-o", str(tmp_path / "x.png"), option, value,
                                  "--weights", str(weights_file)])
    assert r.exit_code == 2 and not (tmp_path / "x.png").exists()
    model = darkfix.load(weights_file, device="cpu")
    keyword = "brightness" if option == "-m" else "ratio"
    with pytest.raises(ValueError) as e:
        model.restore(src, **{keyword: value})
    assert str(e.value) and str(e.value) in " ".join(r.output.split())
