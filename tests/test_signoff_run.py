"""A sign-off run as a user makes one: a spec with its own calibration data, ESP-PPQ setting, metric and frame
period, streamed on labelled frames from an ``.npz``, with ``--junitxml``: every part of the report is filled."""

from __future__ import annotations

import hashlib
import json
import xml.etree.ElementTree as ET

import numpy as np

from tests.conftest import ROOT, run_pytest, schema_errors

SPEC = ROOT / "tests" / "specs" / "hooks_auto.py"


def test_a_sign_off_run_fills_every_section(tmp_path):
    rng = np.random.default_rng(5)
    frames = 40.0 * rng.standard_normal((2, 12, 8)).astype(np.float32)  # the scale the spec calibrates for
    npz = tmp_path / "frames.npz"
    np.savez(npz, frames=frames, labels=np.array([1, 3]))
    junit = tmp_path / "junit.xml"
    proc = run_pytest("test_cases", f"--model-spec={SPEC}", "--models=hooks_auto", "--target=esp32p4", "--dut=virtual",
                      "--window-sizes=1,3", f"--frames={npz}", f"--junitxml={junit}", f"--artifacts-dir={tmp_path / 'a'}",
                      f"--hil-cache-dir={tmp_path / 'c'}")
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert "Warning" not in proc.stdout  # pytest-embedded's record_xml_attribute warnings are filtered by name
    session = json.loads((tmp_path / "a" / "session.json").read_text())
    assert not schema_errors(session), schema_errors(session)[:5]

    # provenance: what was tested, reproducibly
    p = session["provenance"]
    assert session["schema"] == 3 and len(p["harness"]["commit"]) == 40 and p["tools"]["esp-ppq"] == "1.3.12"
    assert p["ended"] >= p["started"] and any(a.startswith("--frames=") for a in p["command"])
    [device] = p["devices"]
    assert device["kind"] == "virtual" and device["build_id"].startswith("virtual-") and device["esp_dl_version"]
    [model] = session["models"]
    assert model["calibration_source"]["kind"] == "calibration_data" and len(model["calibration_source"]["sha256"]) == 64
    assert model["frames_source"]["file_sha256"] == hashlib.sha256(npz.read_bytes()).hexdigest()
    assert model["quant_setting"]["quantize_activation_setting.calib_algorithm"] == "minmax"
    streamed = [c for c in session["cases"] if c["test"] == "test_streamed_matches_offline"]
    for case in streamed:
        folder = tmp_path / "c" / "quantized" / case["cache_entry"]
        assert case["espdl_sha256"]["0/offline"] == hashlib.sha256((folder / "m0.offline.espdl").read_bytes()).hexdigest()
        assert f"0/W{case['window']}" in case["espdl_sha256"]

    # accuracy: float -> quantized -> device, with the spec's metric on the labels
    [accuracy] = [c["accuracy"] for c in session["cases"] if c["test"] == "test_quantization_accuracy"]
    assert 5 < accuracy["end_to_end"]["snr_db"] < 80 and accuracy["layers"]["rows"]
    assert set(accuracy["task"]) == {"accuracy_float", "accuracy_quantized", "agreement_float_quantized"}
    assert all({"accuracy_device", "agreement_float_device"} == set(c["task"]) for c in streamed)

    # real time, against the spec's 10 ms frame period, marked as host time
    [rt] = [c["realtime"]["round-robin"] for c in session["cases"]
            if c["test"] == "test_round_robin_equals_sequential" and c["window"] == 1]
    assert rt["host_time"] and rt["frame_period_ms"] == 10 and 0 < rt["rtf"] == rt["worst_step_us"] / 10_000
    assert rt["modules"][0]["runs"] == 2 * 12 and rt["modules"][0]["model_bytes"] > 1000

    report = (tmp_path / "a" / "report.md").read_text()
    for section in ("## Provenance", "## Accuracy", "## Device", "## Real time", "calibration_data sha256",
                    "changed by quant_setting: `dispatching_table.dispatchings./hidden/Conv` = `ESPDL_INT16`, "
                    "`quantize_activation_setting.calib_algorithm` = `minmax`",
                    "Labels (from the `--frames` .npz): esp32p4 hooks_auto `[2]` one per sequence",
                    "accuracy_device (W1)", "| host |", "Per operator of sub-model 0"):
        assert section in report, section
    pngs = sorted(p.name for p in (tmp_path / "a" / "plots").glob("*.png"))
    assert any(n.endswith("-scatter.png") for n in pngs) and "esp32p4-hooks_auto-latency.png" in pngs
    assert all(f"plots/{n}" in report for n in pngs)

    # JUnit: each case's figures as properties
    properties = {}
    for testcase in ET.parse(junit).getroot().iter("testcase"):
        properties[testcase.get("name")] = {p.get("name"): p.get("value") for p in testcase.iter("property")}
    assert float(properties["test_streamed_matches_offline[esp32p4-hooks_auto-W1]"]["streaming_max_abs_lsb"]) == 0
    assert "task_accuracy_device" in properties["test_streamed_matches_offline[esp32p4-hooks_auto-W3]"]
    assert {"latency_p99_host_us", "rtf_host"} <= set(properties["test_round_robin_equals_sequential[esp32p4-hooks_auto-W1]"])
    assert "quantization_snr_db" in properties["test_quantization_accuracy[esp32p4-hooks_auto]"]


def test_a_metric_that_fails_costs_the_accuracy_case_only(tmp_path):
    """The spec's metric raises: test_quantization_accuracy fails with its one line (its figures recorded), the
    streamed cases keep their verdicts and note the metric's failure."""
    spec = tmp_path / "bad_metric.py"
    spec.write_text("from tests.specs.hooks_auto import CONFIG, build_submodels, calibration_data, quant_setting\n"
                    "NAME = 'bad_metric'\nSTREAMING = 'auto'\n"
                    "def metric(outputs, labels):\n    return {'accuracy': float((outputs == labels).mean())}\n")
    rng = np.random.default_rng(5)
    npz = tmp_path / "frames.npz"
    np.savez(npz, frames=40.0 * rng.standard_normal((2, 12, 8)).astype(np.float32), labels=np.array([1, 3]))
    proc = run_pytest("test_cases", f"--model-spec={spec}", "--models=bad_metric", "--target=esp32p4", "--dut=virtual",
                      "--window-sizes=3", f"--frames={npz}", f"--artifacts-dir={tmp_path / 'a'}",
                      f"--hil-cache-dir={tmp_path / 'c'}", "-k", "streamed or accuracy")
    assert proc.returncode == 1, proc.stdout[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr
    session = json.loads((tmp_path / "a" / "session.json").read_text())
    assert not schema_errors(session), schema_errors(session)[:5]
    cases = {c["test"]: c for c in session["cases"]}
    accuracy, streamed = cases["test_quantization_accuracy"], cases["test_streamed_matches_offline"]
    assert accuracy["outcome"] == "failed" and "metric() raised ValueError" in accuracy["message"]
    assert accuracy["accuracy"]["end_to_end"]["snr_db"] > 5 and "metric() raised" in accuracy["accuracy"]["task_error"]
    assert streamed["outcome"] == "passed" and streamed["streaming_verdict"] == "pass"
    assert "metric() raised" in streamed["task_error"]
    assert "**task figures failed**: model spec" in (tmp_path / "a" / "report.md").read_text()
