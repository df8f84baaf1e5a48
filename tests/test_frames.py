"""Stage 3: frames are deterministic, quantized with the target's rounding, saved with a manifest."""

import json

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.model.frames import frames_from_file, generate_frames, save_frames


def test_generated_frames_are_deterministic_and_on_the_input_exponent(tiny):
    qm = tiny("tiny_explicit")
    a, b = generate_frames(qm), generate_frames(qm)
    assert np.array_equal(a.values, b.values)
    assert a.values.shape == (qm.spec.sequences, qm.spec.sequence_length, qm.spec.channels)
    assert a.values.dtype == np.int8 and a.exponent == qm.input_exponent
    assert not np.array_equal(a.values, generate_frames(qm, seed=qm.spec.seed + 1).values)


def test_each_target_quantizes_with_its_own_rounding(tiny, tmp_path):
    p4, s3 = tiny("tiny_explicit", "esp32p4"), tiny("tiny_explicit", "esp32s3")
    assert p4.input_exponent == s3.input_exponent
    e = p4.input_exponent
    ties = (np.array([[-2.5, -1.5, -0.5, 0.5, 1.5, 2.5, 0.0, 0.0]], dtype=np.float32) * 2.0**e)
    np.save(tmp_path / "ties.npy", ties)
    assert frames_from_file(p4, tmp_path / "ties.npy").values[0, 0, :6].tolist() == [-2, -2, 0, 0, 2, 2]
    assert frames_from_file(s3, tmp_path / "ties.npy").values[0, 0, :6].tolist() == [-2, -1, 0, 1, 2, 3]


def test_saved_manifest_describes_the_file(tiny, tmp_path):
    frames = generate_frames(tiny("tiny_explicit"))
    manifest = json.loads(save_frames(frames, tmp_path).read_text())
    stored = np.load(tmp_path / manifest["file"])
    assert np.array_equal(stored, frames.values)
    assert manifest["shape"] == list(stored.shape) and manifest["dtype"] == "int8"
    assert (manifest["exponent"], manifest["target"], manifest["seed"]) == (frames.exponent, "esp32p4", frames.seed)
    assert manifest["layout"].startswith("NWC")


@pytest.mark.parametrize(
    "array, message",
    [
        (np.zeros((12, 8), dtype=np.int8), "dtype is int8"),
        (np.zeros((12, 5), dtype=np.float32), r"shape \[1, 12, 5\] is not \[frames, 8\]"),
        (np.zeros((2, 3, 12, 8), dtype=np.float32), r"shape \[2, 3, 12, 8\]"),
    ],
)
def test_bad_user_frames_are_one_clear_error(tiny, tmp_path, array, message):
    path = tmp_path / "frames.npy"
    np.save(path, array)
    with pytest.raises(ConfigError, match=message):
        frames_from_file(tiny("tiny_explicit"), path)


def test_saturating_frames_are_measured_and_warned_about(tiny, tmp_path):
    qm = tiny("tiny_explicit")
    rng = np.random.default_rng(0)
    floats = rng.standard_normal((2, 12, 8)).astype(np.float32)
    np.save(tmp_path / "ok.npy", floats)
    np.save(tmp_path / "loud.npy", floats * 1e6)
    ok, loud = frames_from_file(qm, tmp_path / "ok.npy"), frames_from_file(qm, tmp_path / "loud.npy")
    assert ok.saturation < 0.01 and ok.saturation_warning() is None
    assert loud.saturation > 0.95 and "saturate when quantized" in loud.saturation_warning()
    assert generate_frames(qm).saturation < 0.01


def test_a_run_records_the_saturation_of_its_frames_in_every_case(tmp_path):
    from tests.conftest import ROOT, run_pytest

    path = tmp_path / "loud.npy"
    np.save(path, np.random.default_rng(0).standard_normal((2, 12, 8)).astype(np.float32) * 1e6)
    proc = run_pytest("test_cases", "-q", "-k", "host_streaming or embedded", f"--frames={path}",
                      f"--hil-cache-dir={tmp_path}/cache", f"--artifacts-dir={tmp_path}/a", "--target=esp32p4",
                      "--window-sizes=3", f"--model-spec={ROOT}/tests/specs/tiny_auto.py", "--models=tiny_auto")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "FramesWarning: esp32p4 tiny_auto:" in proc.stdout and "saturate when quantized" in proc.stdout
    session = json.loads((tmp_path / "a" / "session.json").read_text())
    assert len(session["cases"]) == 2
    for case in session["cases"]:
        assert case["input_saturation"] > 0.95 and "saturate when quantized" in case["warnings"][0]
    assert "saturate when quantized" in (tmp_path / "a" / "report.md").read_text()
