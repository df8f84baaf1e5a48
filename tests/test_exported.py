"""Bring-your-own exports (``STREAMING = "exported"``): files become cases, and files the chip cannot run are refused.

The files come from the harness's own export of ``tutorial_tcn`` (the offline
file with its embedded test values, one streaming file per window), from an
export whose wiring repair is switched off (ESP-PPQ 1.3.12's shared cache), and,
when ``ESP_DL_REPO`` names an esp-dl checkout, from esp-dl's committed tutorial.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import harness.ppq.quantize
from harness.errors import ConfigError, QuantizationError
from harness.model.spec import load_spec
from harness.targets import get_target
from tests.conftest import ROOT, run_pytest

ESP_DL_REPO = Path(os.environ["ESP_DL_REPO"]) if os.environ.get("ESP_DL_REPO") else None
TUTORIAL_FILES = "examples/tutorial/how_to_deploy_streaming_model/test_streaming_model/main/models"


def exported_spec(directory: Path, name: str, exports: dict) -> Path:
    path = directory / f"{name}.py"
    path.write_text(f'NAME = "{name}"\nSTREAMING = "exported"\nEXPORTS = {exports!r}\n')
    return path


@pytest.fixture(scope="module")
def tutorial_files(quantizer, tmp_path_factory):
    """tutorial_tcn for esp32p4 as a user's export pipeline would leave it: model.espdl + streaming_w{W}.espdl."""
    qm = quantizer.model(load_spec(ROOT / "models" / "tutorial_tcn.py"), get_target("esp32p4"))
    directory = tmp_path_factory.mktemp("tutorial-files")
    shutil.copy(qm.modules[0].offline_espdl, directory / "model.espdl")
    for w in (3, 6):
        shutil.copy(quantizer.streaming_exports(qm, w)[0].path, directory / f"streaming_w{w}.espdl")
    return directory


def session_of(artifacts: Path) -> dict:
    return json.loads((artifacts / "session.json").read_text())


def test_the_harness_own_exports_pass_both_verdicts_as_an_exported_spec(tutorial_files, tmp_path):
    spec = exported_spec(tutorial_files, "mine", {
        "esp32p4": {"offline": "model.espdl", "streaming": {3: "streaming_w3.espdl", 6: "streaming_w6.espdl"}}})
    proc = run_pytest("test_cases", f"--model-spec={spec}", "--models=mine", "--target=esp32p4", "--dut=virtual",
                      "--window-sizes=3,6", f"--artifacts-dir={tmp_path / 'a'}", f"--hil-cache-dir={tmp_path / 'c'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    session = session_of(tmp_path / "a")
    streamed = {c["window"]: c for c in session["cases"] if c["test"] == "test_streamed_matches_offline"}
    assert sorted(streamed) == [3, 6]
    for case in streamed.values():
        assert case["outcome"] == "passed" and case["streaming_verdict"] == "pass"
        # the fidelity verdict is judged against the offline file's embedded test output, not skipped
        assert case["fidelity_verdict"] == "pass" and case["fidelity_bound_lsb"] == 0
        assert case["total"] == 16  # the last window's [1, 16] classifier output
    frames = json.loads((tmp_path / "a" / "esp32p4-mine" / "frames.json").read_text())
    assert frames["source"] == f"embedded test input of {tutorial_files / 'model.espdl'}"
    assert session["calibrations"] == 0 and session["exports"] == 0  # the files are the user's: nothing re-made


def test_a_file_without_test_values_streams_on_generated_frames_and_says_fidelity_is_not_judged(quantizer, tmp_path):
    qm = quantizer.model(load_spec(ROOT / "models" / "tutorial_tcn.py"), get_target("esp32p4"))
    shutil.copy(quantizer.offline_exports(qm, 24)[0].path, tmp_path / "model.espdl")  # exported without test values
    shutil.copy(quantizer.streaming_exports(qm, 3)[0].path, tmp_path / "w3.espdl")
    spec = exported_spec(tmp_path, "bare", {"esp32p4": {"offline": "model.espdl", "streaming": {3: "w3.espdl"}}})
    proc = run_pytest("test_cases", f"--model-spec={spec}", "--models=bare", "--target=esp32p4", "--dut=virtual",
                      "--window-sizes=3", f"--artifacts-dir={tmp_path / 'a'}", f"--hil-cache-dir={tmp_path / 'c'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    case = next(c for c in session_of(tmp_path / "a")["cases"] if c["test"] == "test_streamed_matches_offline")
    assert case["streaming_verdict"] == "pass" and case["fidelity_verdict"] == "not judged"
    assert "fidelity not judged: the offline file embeds no test output" in case["not_judged"]
    report = (tmp_path / "a" / "report.md").read_text()
    assert "| 0 (≤ 0) | 0/16 | not judged |" in report and "## Reported, not judged" in report
    frames = json.loads((tmp_path / "a" / "esp32p4-bare" / "frames.json").read_text())
    assert frames["source"].startswith("generated")


def test_a_file_esp_ppq_wired_wrong_is_refused_with_the_cause(quantizer, tmp_path, monkeypatch):
    """ESP-PPQ 1.3.12's shared cache (the residual Add reads W + context frames), exported with the harness's
    repair switched off: as the user's file it must fail at load, naming the op, never run."""
    monkeypatch.setattr(harness.ppq.quantize, "per_consumer_caches", lambda graph: graph)
    for check in ("check_streaming_structure", "check_frame_rate"):
        monkeypatch.setattr(harness.ppq.quantize, check, lambda *args, **kwargs: None)
    broken = harness.ppq.quantize.Quantizer(tmp_path / "cache")
    qm = broken.model(load_spec(ROOT / "models" / "tutorial_tcn.py"), get_target("esp32p4"))
    shutil.copy(qm.modules[0].offline_espdl, tmp_path / "model.espdl")
    shutil.copy(broken.streaming_exports(qm, 3)[0].path, tmp_path / "w3.espdl")
    monkeypatch.undo()

    spec = load_spec(exported_spec(tmp_path, "wired_wrong", {
        "esp32p4": {"offline": "model.espdl", "streaming": {3: "w3.espdl"}}}))
    user = quantizer.model(spec, get_target("esp32p4"))
    with pytest.raises(QuantizationError, match=r"w3\.espdl: Add '/Add' reads StreamingCache '.*' \(the window plus 2 "
                                                r"cached frames\) but has no time context") as info:
        quantizer.streaming_exports(user, 3)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("mistake, exports, message", [
    ("missing file", {"esp32p4": {"offline": "model.espdl", "streaming": {3: "nope.espdl"}}},
     r"\['streaming'\]\[3\] .*nope\.espdl does not exist; fix the path"),
    ("window key", {"esp32p4": {"offline": "model.espdl", "streaming": {"3": "streaming_w3.espdl"}}},
     r"has window '3'; key each file by its window size \(int\)"),
    ("wrong window", {"esp32p4": {"offline": "model.espdl", "streaming": {4: "streaming_w3.espdl"}}},
     r"streaming_w3\.espdl takes \[1, 3, 16\] \(NWC\), not windows of 4 frames; key it by its own window size, 3"),
    ("unknown target", {"esp32c3": {"offline": "model.espdl", "streaming": {3: "streaming_w3.espdl"}}},
     r"EXPORTS names target 'esp32c3'; use esp32p4, esp32s3"),
    ("no streaming files", {"esp32p4": {"offline": "model.espdl", "streaming": {}}}, r"EXPORTS\['esp32p4'\] is"),
    ("not a model", {"esp32p4": {"offline": "model.espdl", "streaming": {3: "spec.py"}}},
     r"spec\.py cannot be read: .*; export it again with ESP-PPQ"),
])
def test_a_wrong_exports_entry_is_one_line_naming_it(tutorial_files, tmp_path, mistake, exports, message):
    for f in tutorial_files.glob("*.espdl"):
        shutil.copy(f, tmp_path / f.name)
    (tmp_path / "spec.py").write_text("not an espdl file\n")
    with pytest.raises(ConfigError, match=message) as info:
        load_spec(exported_spec(tmp_path, "wrong", exports))
    assert "\n" not in str(info.value)


def test_a_window_the_files_do_not_have_is_refused_in_one_line(tutorial_files, quantizer):
    spec = load_spec(exported_spec(tutorial_files, "one_window", {
        "esp32p4": {"offline": "model.espdl", "streaming": {3: "streaming_w3.espdl"}}}))
    assert spec.windows("esp32p4", [1, 3, 6]) == [3]  # the default matrix runs the windows there are files for
    with pytest.raises(ConfigError, match=r"no streaming file for window 6 on esp32p4; add it to EXPORTS or use \[3\]"):
        quantizer.streaming_exports(quantizer.model(spec, get_target("esp32p4")), 6)


@pytest.mark.skipif(ESP_DL_REPO is None, reason="set ESP_DL_REPO to a git checkout of espressif/esp-dl")
def test_esp_dl_tutorial_files_stream_and_pass_on_both_targets(tmp_path):
    """esp-dl's committed tutorial files, as its README's spec names them: what its firmware asserts on chip."""
    for target in ("esp32p4", "esp32s3"):
        (tmp_path / target).mkdir()
        for name in ("model", "streaming_model"):
            (tmp_path / target / f"{name}.espdl").write_bytes(subprocess.run(
                ["git", "-C", str(ESP_DL_REPO), "show", f"HEAD:{TUTORIAL_FILES}/{target}/{name}.espdl"],
                check=True, capture_output=True).stdout)
    spec = exported_spec(tmp_path, "esp_dl_tutorial", {
        t: {"offline": f"{t}/model.espdl", "streaming": {3: f"{t}/streaming_model.espdl"}} for t in ("esp32p4", "esp32s3")})
    proc = run_pytest("test_cases", f"--model-spec={spec}", "--models=esp_dl_tutorial", "--dut=virtual",
                      f"--artifacts-dir={tmp_path / 'a'}", f"--hil-cache-dir={tmp_path / 'c'}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    cases = [c for c in session_of(tmp_path / "a")["cases"] if c["test"] == "test_streamed_matches_offline"]
    assert sorted(c["target"] for c in cases) == ["esp32p4", "esp32s3"]
    assert all(c["streaming_verdict"] == "pass" and c["fidelity_verdict"] == "pass" for c in cases)
