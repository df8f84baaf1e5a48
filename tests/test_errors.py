"""Bad inputs a user can give: each one ends the run with exactly one clear line, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import ROOT, run_pytest


def error_lines(proc: subprocess.CompletedProcess) -> list[str]:
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text, text
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.parametrize(
    "args, message",
    [
        (
            ["--window-sizes=5"],
            "ERROR: --window-sizes: window size 5 does not divide the sequence length 36 of model 'tcn_auto'; "
            "choose one of 1, 2, 3, 4, 6, 9, 12, 18, 36; pass window sizes that divide it.",
        ),
        (["--window-sizes=0,x"], "ERROR: --window-sizes: '0' is not a positive integer; give e.g. --window-sizes 1,3,6."),
        (["--target=esp32c3"], "ERROR: unknown target 'esp32c3'; use one of: esp32p4, esp32s3 (e.g. --target esp32p4)."),
        (["--models=nosuch"], "ERROR: unknown model(s) nosuch in --models; choose from tcn_auto, tcn_seed."),
    ],
)
def test_bad_option_is_one_line(tmp_path, args, message):
    proc = run_pytest("--collect-only", f"--artifacts-dir={tmp_path}", *args)
    assert proc.returncode == 4
    assert error_lines(proc) == [message]


def test_broken_model_spec_is_one_line(tmp_path):
    spec = tmp_path / "broken.py"
    spec.write_text("NAME = 'broken'\nCONFIG = {\n")
    proc = run_pytest("--collect-only", f"--artifacts-dir={tmp_path}", f"--model-spec={spec}")
    assert proc.returncode == 4
    [line] = error_lines(proc)
    assert line.startswith(f"ERROR: model spec {spec}: cannot be imported: SyntaxError:")
    assert line.endswith("fix the file (see README, 'Adding a model').")


def test_path_option_after_a_space_is_explained(tmp_path):
    # pytest takes an existing path after a space for a test path when it looks for pytest.ini
    proc = run_pytest("--collect-only", "--cache-dir", str(tmp_path))
    [line] = error_lines(proc)
    assert line.startswith("ERROR: pytest did not find the project's pytest.ini") and "--cache-dir=..." in line


def test_malformed_espdl_is_one_line(tmp_path):
    bad = tmp_path / "bad.espdl"
    bad.write_bytes(b"EDL2" + bytes(4) + (1000).to_bytes(4, "little") + bytes(4) + b"short")
    proc = subprocess.run([sys.executable, "-m", "harness.espdl", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = error_lines(proc)
    assert str(bad) in line and "size" in line


def test_window_not_dividing_user_frames_is_one_line(tmp_path):
    import numpy as np

    frames = tmp_path / "frames.npy"
    np.save(frames, np.zeros((10, 8), dtype=np.float32))
    proc = run_pytest(
        "test_cases", "-q", f"--artifacts-dir={tmp_path}", f"--cache-dir={tmp_path}/cache", "--target=esp32p4",
        f"--model-spec={ROOT}/tests/specs/tiny_auto.py", "--models=tiny_auto", "--window-sizes=3",
        f"--frames={frames}",
    )
    assert proc.returncode == 1
    assert "HarnessError: window size 3 does not divide the 10 frames per sequence of" in proc.stdout
