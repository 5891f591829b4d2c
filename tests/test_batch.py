"""`darkfix batch` end to end: bad files, decoder crashes and hangs, interruption and resume."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import png
import pytest
from _util import default_signals, shell_env
from click.testing import CliRunner

from darkfix.batch import find_raws, run_batch
from darkfix.cli import main
from darkfix.decoder import DecodeWorker
from darkfix.inference import Restorer
from darkfix.pipeline import RestoreOptions
from darkfix.weights import load_weights

ROOT = Path(__file__).resolve().parents[1]


# `darkfix` with each band of the picture held back a fifth of a second (arguments after `-c CODE`): a run that
# lasts long enough to be interrupted on any machine, with nothing else changed
SLOWED_DARKFIX = """
import time
import darkfix.pipeline as pipeline
render = pipeline.render_bands
def slowed(frame, prep, restorer, info, opts, emit):
    render(frame, prep, restorer, info, opts, lambda rows: (time.sleep(0.2), emit(rows)))
pipeline.render_bands = slowed
from darkfix.cli import main
main()
"""


def _png_ok(path: Path) -> bool:
    w, h, rows, _ = png.Reader(filename=str(path)).read()
    return sum(1 for _ in rows) == h and w > 0


def test_batch_keeps_going_and_resumes(make_dng, weights_file, tmp_path):
    folder = tmp_path / "shots"
    for i, cfa in enumerate(("RGGB", "BGGR", "GRBG")):
        make_dng(f"good{i}.dng", size=(40, 58), cfa=cfa, directory=folder)
    (folder / "empty.ARW").write_bytes(b"")
    (folder / "noise.NEF").write_bytes(bytes(range(256)) * 40)
    (folder / "notes.txt").write_text("not a raw")
    out = tmp_path / "out"
    args = ["batch", str(folder), "-o", str(out), "--weights", str(weights_file), "--threads", "1"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 1, r.output
    assert sorted(p.name for p in out.iterdir()) == ["good0.png", "good1.png", "good2.png"]
    assert "empty.ARW: empty file" in r.output
    assert "noise.NEF" in r.output and "Traceback" not in r.output
    # a second run skips what is done and still reports the bad files
    r2 = CliRunner().invoke(main, args)
    assert r2.exit_code == 1
    assert re.search(r"│\s+0 │\s+3 │\s+2 │", r2.output), r2.output


def test_each_failure_is_printed_once_with_its_reason_as_it_happens(make_dng, weights_file, tmp_path):
    """Issue 23: a reason-less `failed: ...nef` line came above the bar, the reason only after the table."""
    folder = tmp_path / "shots"
    make_dng("good.dng", size=(40, 58), directory=folder)
    (folder / "empty.ARW").write_bytes(b"")
    (folder / "noise.NEF").write_bytes(bytes(range(256)) * 40)
    r = CliRunner().invoke(main, ["batch", str(folder), "-o", str(tmp_path / "out"), "--weights", str(weights_file),
                                  "--threads", "1"])
    assert r.exit_code == 1, r.output
    lines = r.output.splitlines()
    table = next(i for i, line in enumerate(lines) if "darkfix batch" in line)
    for name, reason in (("empty.ARW", "empty file"), ("noise.NEF", "")):
        mentions = [i for i, line in enumerate(lines) if name in line]
        assert len(mentions) == 1, r.output  # once...
        line = lines[mentions[0]]
        assert line.startswith("failed: ") and reason in line and mentions[0] < table  # ...with why, before the end
        assert len(line) > len(f"failed: {folder / name}") + 5  # a reason follows the name
    assert r.output.count("failed: ") == 2, [line for line in lines if "failed: " in line]


def test_batch_recursive_pattern_and_symlink_loop(make_dng, weights_file, tmp_path):
    folder = tmp_path / "shots"
    make_dng("a.dng", size=(40, 58), directory=folder)
    make_dng("b.dng", size=(40, 58), directory=folder / "night")
    (folder / "night" / "loop").symlink_to(folder, target_is_directory=True)
    assert [p.name for p in find_raws(folder)] == ["a.dng"]
    assert [p.name for p in find_raws(folder, recursive=True)] == ["a.dng", "b.dng"]
    assert list(find_raws(folder, recursive=True, pattern="b.*")) == [folder / "night" / "b.dng"]
    make_dng("a.ARW", size=(40, 58), directory=folder)  # same stem as a.dng: one PNG name for two raws
    r = CliRunner().invoke(main, ["batch", str(folder), "-r", "-o", str(tmp_path / "o"), "--weights",
                                  str(weights_file), "--threads", "1"])
    assert r.exit_code == 1, r.output
    assert "a.dng: would write" in r.output and str(folder / "a.ARW") in r.output
    assert (tmp_path / "o" / "a.png").is_file() and (tmp_path / "o" / "night" / "b.png").is_file()


def test_decoder_crash_and_hang_fail_only_that_file(make_dng, weights_file, tmp_path):
    folder = tmp_path / "shots"
    names = ["a.dng", "crash.dng", "b.dng", "hang.dng", "exit.dng", "c.dng"]
    files = [make_dng(n, size=(40, 58), directory=folder) for n in names]
    outputs = [tmp_path / "out" / f"{p.stem}.png" for p in files]
    model, info = load_weights(weights_file)
    worker = DecodeWorker(timeout=8.0, fn=__import__("_faulty").crash_or_hang)
    report = run_batch(files, outputs, Restorer(model, device="cpu"), info, RestoreOptions(), worker=worker)
    assert [p.name for p in report.done] == ["a.dng", "b.dng", "c.dng"]
    reasons = dict((p.name, why) for p, why in report.failed)
    assert "crashed (signal SIGSEGV)" in reasons["crash.dng"] and "hung" in reasons["hang.dng"]
    assert "crashed (exit code 3)" in reasons["exit.dng"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.png", "b.png", "c.png"]


def test_decode_timeout_starts_when_the_worker_is_ready(tmp_path):
    """A worker that takes longer to start than a file may take to decode does not fail that file: the
    file's time starts when the worker says it is ready (the 8 s above once failed under load)."""
    from darkfix.errors import DarkfixError

    worker = DecodeWorker(timeout=1.5, fn=__import__("_slow_start").quick)
    try:
        worker.submit(tmp_path / "a.dng")
        with pytest.raises(DarkfixError, match="decoded in time"):
            worker.result()
    finally:
        worker.close()


def test_output_written_meanwhile_by_another_batch_is_skipped(make_dng, weights_file, tmp_path, monkeypatch):
    """Two batches on one folder: a PNG the other one finished while this one decoded counts as skipped."""
    folder, out = tmp_path / "shots", tmp_path / "out"
    out.mkdir()
    files = [make_dng(n, size=(40, 58), directory=folder) for n in ("a.dng", "raced.dng", "c.dng")]
    monkeypatch.setenv("DARKFIX_TEST_RACE_DIR", str(out))
    model, info = load_weights(weights_file)
    worker = DecodeWorker(fn=__import__("_faulty").races_another_batch)
    report = run_batch(files, [out / f"{p.stem}.png" for p in files], Restorer(model, device="cpu"), info,
                       RestoreOptions(), worker=worker)
    assert [p.name for p in report.done] == ["a.dng", "c.dng"] and not report.failed
    assert [p.name for p in report.skipped] == ["raced.dng"]
    assert (out / "raced.png").read_bytes() == b"written by the other batch"  # left as the other one wrote it


def test_an_output_another_live_process_claimed_is_skipped(make_dng, weights_file, tmp_path):
    """Per-output claims: a file another process is restoring now is skipped, not restored twice; once that
    process is dead (kill -9), its claim is free and its partial file is replaced."""
    from test_pngio import hold_claim

    folder, out = tmp_path / "shots", tmp_path / "out"
    out.mkdir()
    files = [make_dng(n, size=(40, 58), directory=folder) for n in ("a.dng", "b.dng", "c.dng")]
    outputs = [out / f"{p.stem}.png" for p in files]
    model, info = load_weights(weights_file)
    restorer = Restorer(model, device="cpu")
    holder = hold_claim(out / "b.png")
    try:
        report = run_batch(files, outputs, restorer, info, RestoreOptions())
        assert [p.name for p in report.done] == ["a.dng", "c.dng"] and [p.name for p in report.skipped] == ["b.dng"]
        assert sorted(p.name for p in out.iterdir()) == [".b.png.part", "a.png", "c.png"]
    finally:
        holder.kill()
        holder.wait()
    report = run_batch(files, outputs, restorer, info, RestoreOptions())
    assert [p.name for p in report.done] == ["b.dng"] and len(report.skipped) == 2 and not report.failed
    assert sorted(p.name for p in out.iterdir()) == ["a.png", "b.png", "c.png"] and _png_ok(out / "b.png")


def test_two_batches_on_one_folder_share_the_work(make_dng, weights_file, tmp_path):
    """Issue 23: two batches at once on one folder both restored nearly everything (9 + 8 of 10)."""
    folder, out = tmp_path / "shots", tmp_path / "out"
    for i in range(10):
        make_dng(f"f{i:02d}.dng", size=(256, 384), seed=i, directory=folder)
    cmd = [sys.executable, "-m", "darkfix", "batch", str(folder), "-o", str(out), "--weights", str(weights_file),
           "--engine", "torch", "--threads", "1"]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=shell_env())
             for _ in range(2)]
    counts = []
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        row = re.search(r"│\s+(\d+) │\s+(\d+) │\s+0 │", err)
        counts.append((int(row.group(1)), int(row.group(2))))
    assert all(done + skipped == 10 for done, skipped in counts), counts
    assert sum(done for done, _ in counts) == 10, counts  # each file restored once, by one of them
    assert sorted(p.name for p in out.iterdir()) == [f"f{i:02d}.png" for i in range(10)]
    assert all(_png_ok(p) for p in out.iterdir())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_leaves_nothing_partial_and_rerun_finishes(make_dng, weights_file, tmp_path, sig):
    folder = tmp_path / "shots"
    for i in range(6):
        make_dng(f"f{i:02d}.dng", size=(384, 512), seed=i, directory=folder)
    out = tmp_path / "out"
    args = ["batch", str(folder), "-o", str(out), "--weights", str(weights_file), "--threads", "1"]
    # slowed (each band a fifth of a second more): the signal lands mid-batch however fast the machine is
    proc = subprocess.Popen([sys.executable, "-c", SLOWED_DARKFIX, *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=shell_env(), preexec_fn=default_signals)
    deadline = time.monotonic() + 120
    while not list(out.glob("*.png")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "finished before it could be interrupted"
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    done = sorted(out.glob("*.png"))
    assert 1 <= len(done) < 6
    assert not [p for p in out.iterdir() if p.suffix != ".png"], "temporary files left behind"
    assert all(_png_ok(p) for p in done)
    rerun = subprocess.run([sys.executable, "-m", "darkfix", *args], capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert len(list(out.glob("*.png"))) == 6
    assert all(_png_ok(p) for p in out.glob("*.png"))
