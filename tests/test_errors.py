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
        (["--models=nosuch"], "ERROR: unknown model(s) nosuch in --models; choose from tcn_auto, tcn_auto16, tcn_seed, tutorial_tcn."),
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


def test_path_options_work_with_a_space_where_no_ini_file_is_missed(tmp_path):
    """A user's directory without an ini file: an existing directory after a space is the option's value."""
    (tmp_path / "cache").mkdir()
    (tmp_path / "out").mkdir()
    proc = run_pytest("--collect-only", "-q", "--hil-cache-dir", str(tmp_path / "cache"), "--artifacts-dir",
                      str(tmp_path / "out"), "--models", "tcn_seed", "--target", "esp32p4", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "test_streamed_matches_offline[esp32p4-tcn_seed-W3]" in proc.stdout  # the shipped cases, from the package


def test_a_path_after_a_space_that_hides_the_ini_file_is_one_line(tmp_path):
    """pytest looks for its ini file before plugins add options: the existing directory after a space steers that
    search away from this repository's pytest.ini, which would silently drop testpaths and addopts."""
    proc = run_pytest("--collect-only", "--hil-cache-dir", str(tmp_path))
    [line] = error_lines(proc)
    assert line.startswith(f"ERROR: pytest did not read {ROOT / 'pytest.ini'} because an option value given after a "
                           "space was taken for a test path") and "--hil-cache-dir=..." in line


def test_malformed_espdl_is_one_line(tmp_path):
    bad = tmp_path / "bad.espdl"
    bad.write_bytes(b"EDL2" + bytes(4) + (1000).to_bytes(4, "little") + bytes(4) + b"short")
    proc = subprocess.run([sys.executable, "-m", "harness.espdl", str(bad)], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    [line] = error_lines(proc)
    assert str(bad) in line and "size" in line


@pytest.mark.parametrize(
    "value, index, message",
    [
        (float("nan"), (1, 7, 3), r"value nan at index \[1, 7, 3\] is not finite \(1 of 1152 values"),
        (float("inf"), (0, 0, 0), r"value inf at index \[0, 0, 0\] is not finite"),
    ],
)
def test_frames_that_are_not_finite_are_one_line_naming_file_and_index(tmp_path, value, index, message):
    import re

    import numpy as np

    frames = np.zeros((2, 9, 64), dtype=np.float32)
    frames[index] = value
    path = tmp_path / "frames.npy"
    np.save(path, frames)
    proc = run_pytest("--collect-only", f"--artifacts-dir={tmp_path}", f"--frames={path}", "--window-sizes=1,3")
    assert proc.returncode == 4
    [line] = error_lines(proc)
    assert line.startswith(f"ERROR: --frames {path}: ") and re.search(message, line), line
    assert line.endswith("replace NaN/inf values (e.g. with numpy.nan_to_num) before saving the frames.")


def test_frames_too_short_for_a_window_are_one_line(tmp_path):
    import numpy as np

    path = tmp_path / "frames.npy"
    np.save(path, np.zeros((2, 9, 64), dtype=np.float32))
    proc = run_pytest("--collect-only", f"--artifacts-dir={tmp_path}", f"--frames={path}", "--window-sizes=1,6")
    assert proc.returncode == 4
    assert error_lines(proc) == [f"ERROR: --frames {path}: sequences of 9 frames cannot be cut into windows of 6 "
                                 f"frames; pass --window-sizes that divide it."]


def test_a_spec_function_that_fails_is_one_line_per_case_and_runs_once(tmp_path):
    """A spec whose quant_setting raises: each of the model's cases ends with the same line, none with a
    traceback, and the model is not tried again for every case (a calibration costs seconds to minutes)."""
    calls = tmp_path / "calls.txt"
    spec = tmp_path / "broken_setting.py"
    spec.write_text(
        "from models.tcn import ResidualTemporalBlock\n"
        "NAME = 'broken_setting'\nSTREAMING = 'auto'\n"
        "CONFIG = {'channels': 8, 'expand': 16, 'kernel_size': 3, 'dilation': 2, 'sequence_length': 12, 'seed': 3,\n"
        "          'calibration_sequences': 4, 'sequences': 2}\n"
        "def build_submodels(config):\n"
        "    return [ResidualTemporalBlock(8, 16, 3, 2, gate=False)]\n"
        "def quant_setting(setting):\n"
        f"    open({str(calls)!r}, 'a').write('called\\n')\n"
        "    return setting.layer_cfg['x']\n")
    proc = run_pytest("--target=esp32p4", f"--model-spec={spec}", f"--hil-cache-dir={tmp_path / 'cache'}",
                      f"--artifacts-dir={tmp_path / 'out'}", "--window-sizes=1,3")
    assert proc.returncode == 1
    text = proc.stdout + proc.stderr
    assert "Traceback" not in text and 'File "' not in text, text
    line = (f"ConfigError: model spec {spec}: quant_setting() raised AttributeError: 'QuantizationSetting' object "
            f"has no attribute 'layer_cfg'; modify the QuantizationSetting it is given (or return a new one); see "
            f"README, 'Adding a model'.")
    errors = [t for t in text.splitlines() if t.startswith("ConfigError:")]
    assert errors and set(errors) == {line}, text
    assert "errors" in text.splitlines()[-1] and "passed" not in text.splitlines()[-1]
    assert calls.read_text().count("called") == 1
