"""The sign-off report's parts: real-time figures, accuracy and task figures, the markdown's sections, plots."""

import math
import re

import numpy as np
import pytest

from harness.device.dut import StreamResult
from harness.ppq.accuracy import aligned, agreement, cosine, snr_db, task_figures, top1
from harness.signoff import plots
from harness.signoff.markdown import lint_lines, markdown
from harness.signoff.provenance import harness_source, run_provenance
from harness.signoff.realtime import realtime_figures


def result(*modules):
    return StreamResult([], [], [], [], [list(m) for m in modules])


# ------------------------------------------------------------------ real time
def test_round_robin_worst_step_is_the_slowest_single_run():
    r = result([(100, 1000, 1)] * 98 + [(150, 1500, 1), (400, 4000, 1)], [(50, 500, 1)] * 100)
    figures = realtime_figures(r, 1, "round-robin", 10.0, False, [123, 45])
    m0, m1 = figures["modules"]
    assert (m0["us"]["p50"], m0["us"]["max"], m0["runs"], m0["model_bytes"]) == (100.0, 400.0, 100, 123)
    assert 150.0 <= m0["us"]["p99"] < 400.0 and m0["cycles"]["max"] == 4000.0
    assert figures["worst_step_us"] == 400.0 and figures["rtf"] == pytest.approx(400.0 / 10_000)
    assert figures["load"] == pytest.approx((100 * 98 + 150 + 400) / 100 / 1 / 10_000 + 50 / 10_000)
    assert not figures["host_time"] and not figures["batched_samples"]


def test_sequential_worst_step_sums_the_modules_of_one_window_and_may_take_the_window():
    r = result([(100, 0, 1), (300, 0, 1)], [(200, 0, 1), (10, 0, 1)])
    figures = realtime_figures(r, 4, "sequential", 1.0, True, [])
    assert figures["worst_step_us"] == 310.0 and figures["rtf"] == pytest.approx(310.0 / 4000)
    assert figures["host_time"] and figures["modules"][0]["model_bytes"] is None


def test_without_a_frame_period_there_is_no_rtf_and_batched_samples_are_flagged():
    figures = realtime_figures(result([(300, 30, 3)]), 3, "round-robin", None, False, [1])
    assert figures["rtf"] is None and figures["load"] is None and figures["batched_samples"]
    assert figures["modules"][0]["us"]["max"] == 100.0  # per run: a message's sum over its windows


# ------------------------------------------------------------------ accuracy
def test_snr_and_cosine():
    x = np.array([1.0, -2.0, 3.0])
    assert math.isinf(snr_db(x, x)) and cosine(x, x) == pytest.approx(1.0)
    assert snr_db(x, x + 0.1) == pytest.approx(10 * math.log10(14 / 0.03))
    assert cosine(x, -x) == pytest.approx(-1.0)


def test_decisions_meet_per_frame_per_sequence_and_per_window_labels():
    out = np.zeros((2, 4, 3))
    out[0, :, 1] = 1  # sequence 0 decides class 1 everywhere
    out[1, :, 2] = 1
    out[1, 3, 0] = 5  # ... sequence 1 class 2, but class 0 at its last frame
    assert top1(out, np.array([[1, 1, 1, 1], [2, 2, 2, 2]]), 4) == pytest.approx(7 / 8)
    assert top1(out, np.array([1, 0]), 4) == 1.0  # per sequence: the decision after the whole sequence
    windows = out[:, 1::2]  # a per-window head, W=2: rows are windows, meeting each window's last frame
    decided, labels = aligned(np.argmax(windows, -1), np.array([[0, 1, 0, 1], [0, 2, 0, 0]]), 4)
    assert labels.tolist() == [[1, 1], [2, 0]] and decided.tolist() == [[1, 1], [2, 0]]
    assert agreement(out, out[:, -1:]) == 1.0 and agreement(out, out[:, :, ::-1]) < 1.0


def spec_with(tmp_path, metric=None):
    from harness.model.spec import load_spec

    body = ("NAME = 'm'\nSTREAMING = 'auto'\nCONFIG = {'channels': 3, 'sequence_length': 3}\n"
            "def build_submodels(config):\n    return []\n")
    path = tmp_path / "m.py"
    path.write_text(body + ("def metric(outputs, labels):\n    return METRIC(outputs, labels)\n" if metric else ""))
    spec = load_spec(path)
    if metric:
        spec.module.METRIC = metric
    return spec


def test_task_figures_top1_agreement_and_the_spec_metric(tmp_path):
    out = np.eye(3)[None].repeat(2, 0)  # [2, 3, 3]: decisions 0, 1, 2
    labels = np.array([[0, 1, 1], [0, 1, 2]])
    figures = task_figures(spec_with(tmp_path), labels, {"float": out, "device": out}, 3, out)
    assert figures == ({"top1_float": 5 / 6, "top1_device": 5 / 6, "agreement_float_device": 1.0}, None)
    metric = spec_with(tmp_path, lambda o, l: {"hits": float((np.argmax(o, -1) == l).sum())})
    assert task_figures(metric, labels, {"device": out}, 3) == ({"hits_device": 5.0}, None)
    # without labels nothing says the outputs are class scores (a regression output has no decision)
    assert task_figures(spec_with(tmp_path), None, {"device": out}, 3, out) == ({}, None)


@pytest.mark.parametrize("metric, match", [(lambda o, l: 1 / 0, r"metric\(\) raised ZeroDivisionError"),
                                           (lambda o, l: [0.5], r"metric\(\) returned \[0.5\]")])
def test_a_broken_metric_is_one_line(tmp_path, metric, match):
    figures, error = task_figures(spec_with(tmp_path, metric), np.zeros((1, 2), int), {"device": np.zeros((1, 2, 2))}, 2)
    assert figures == {} and re.search(match, error) and "\n" not in error


def test_labels_beyond_the_outputs_classes_are_one_line(tmp_path):
    out = np.eye(3)[None].repeat(2, 0)  # three classes
    figures, error = task_figures(spec_with(tmp_path), np.array([0, 9]), {"device": out}, 3, out)
    assert error == ("labels reach class id 9, but the last sub-model's output has 3 channels (classes 0..2); give "
                     "labels of this model's classes, or define metric(outputs, labels) in the spec for another task")
    # a metric decides what labels mean: the same labels are fine for it
    metric = spec_with(tmp_path, lambda o, l: {"n": float(len(l))})
    assert task_figures(metric, np.array([0, 9]), {"device": out}, 3) == ({"n_device": 2.0}, None)


def test_the_float_and_quantized_chains_of_a_model(tiny, tmp_path):
    from harness.model.frames import generate_frames
    from harness.ppq.accuracy import cached_accuracy, measure

    qm = tiny("tiny_auto")
    frames = generate_frames(qm)
    run = measure(qm, frames, tmp_path / "log")
    assert len(run.per_module) == len(qm.modules) and 0 <= run.worst_module < len(qm.modules)
    assert all(10 < m["isolated"]["snr_db"] < 80 and 0.9 < m["cumulative"]["cosine"] <= 1 for m in run.per_module)
    assert run.end_to_end == run.per_module[-1]["cumulative"]
    assert run.float_out.shape == run.quantized_out.shape == (frames.values.shape[0], frames.sequence_length,
                                                               qm.modules[-1].out_channels)
    rows = run.layers["rows"]
    assert rows and run.layers["module"] == run.worst_module and all(r["type"] for r in rows)
    kept = cached_accuracy(qm, frames)
    again = cached_accuracy(qm, frames)  # from disk
    assert np.array_equal(kept.float_out, again.float_out) and kept.per_module == again.per_module


def test_a_model_that_quantizes_badly_shows_a_low_snr_and_the_layer(quantizer, tmp_path):
    """An outlier channel at a middle conv's output (tests/specs/outlier_auto.py): ESP-PPQ's layerwise error
    lands on the conv that reads it; the output's worst channel names the conv that produces it."""
    from harness.model.frames import generate_frames
    from harness.model.spec import load_spec
    from harness.ppq.accuracy import measure
    from harness.targets import get_target
    from tests.conftest import SPECS

    qm = quantizer.model(load_spec(SPECS / "outlier_auto.py"), get_target("esp32p4"))
    run = measure(qm, generate_frames(qm), tmp_path / "log")
    assert run.end_to_end["snr_db"] < 15  # a well-quantized model of this size is near 30 dB (tiny_auto)
    rows = run.layers["rows"]
    worst = min(rows, key=lambda r: r["output_worst_channel_snr_db"])
    assert worst["operator"] == "/outlier/Conv" and worst["output_worst_channel_snr_db"] < 6
    assert worst["output_worst_channel"] != 0  # a crushed channel, not the outlier itself
    text = markdown({"schema": 3, "run": {"id": "x"}, "dut": "virtual", "targets": ["esp32p4"], "calibrations": 1,
                     "exports": 1, "summary": {}, "other_tests": {}, "cases": [case(
                         target="esp32p4", test="test_quantization_accuracy", id="esp32p4-outlier_auto",
                         accuracy={"per_module": run.per_module, "end_to_end": run.end_to_end, "worst_module": 0,
                                   "layers": run.layers, "task": {}})]})
    assert "Lowest: the output of **/outlier/Conv**" in text


# ------------------------------------------------------------------ provenance
def test_provenance_names_the_harness_commit_and_the_tools():
    source = harness_source()
    assert len(source["commit"]) == 40 and isinstance(source["dirty"], bool)
    p = run_provenance(["pytest", "--target", "esp32p4"])
    assert p["tools"]["esp-ppq"] == "1.3.12" and p["tools"]["torch"].startswith("2.13")
    assert p["command"] == ["pytest", "--target", "esp32p4"] and p["started"]


# ------------------------------------------------------------------ markdown
def case(**fields):
    return {"nodeid": "n", "id": "esp32s3-m-W1", "test": "test_streamed_matches_offline", "target": "esp32s3",
            "model": "m", "window": 1, "outcome": "passed", "message": "", **fields}


def test_lint_findings_go_next_to_a_difference_they_may_explain_else_to_possible():
    data = {"cases": [case(lint=["module 0: saturate"], streaming_max_abs_lsb=0, fidelity_max_abs_lsb=0),
                      case(id="esp32s3-k-W1", model="k", lint=["module 0: avgpool"], fidelity_max_abs_lsb=1)]}
    text = "\n".join(lint_lines(data))
    explain, possible = text.split("## Possible on other inputs")
    assert "esp32s3-k-W1 (test_streamed_matches_offline): module 0: avgpool" in explain and "saturate" not in explain
    assert "esp32s3 **m** module 0: saturate" in possible and "avgpool" not in possible


def test_the_report_has_every_section():
    rt = realtime_figures(result([(100, 0, 1)]), 1, "round-robin", 10.0, True, [10])
    data = {
        "schema": 3, "run": {"id": "abc"}, "dut": "virtual", "dut_reason": "asked", "targets": ["esp32p4"],
        "calibrations": 0, "exports": 0, "summary": {"passed": 3}, "other_tests": {},
        "provenance": {"harness": {"version": "0.9.0", "commit": "f" * 40, "dirty": False}, "tools": {"esp-ppq": "1.3.12"},
                       "command": ["pytest"], "devices": [{"kind": "virtual", "target": "esp32p4", "build_id": "v-1"}]},
        "models": [{"target": "esp32p4", "model": "m", "cache_entry": "m-x",
                    "calibration_source": {"kind": "calibration_data", "sha256": "ab" * 32, "shape": [4, 8, 2]},
                    "frames_source": {"source": "f.npz", "file_sha256": "cd" * 32}}],
        "cases": [
            case(target="esp32p4", test="test_quantization_accuracy", id="esp32p4-m", accuracy={
                "per_module": [{"module": 0, "isolated": {"snr_db": 30.0, "cosine": 0.99},
                                "cumulative": {"snr_db": 30.0, "cosine": 0.99}}],
                "end_to_end": {"snr_db": 30.0, "cosine": 0.99}, "worst_module": 0, "labels": [4, 8],
                "layers": {"rows": [{"operator": "/conv/Conv", "type": "Conv", "accumulated_snr_db": 31.0,
                                     "own_snr_db": 35.0, "output_worst_channel_snr_db": 20.0,
                                     "output_worst_channel": 2}]},
                "task": {"top1_float": 0.9, "top1_quantized": 0.85}}),
            case(target="esp32p4", id="esp32p4-m-W1", task={"top1_device": 0.85}, streaming_max_abs_lsb=0),
            case(target="esp32p4", id="esp32p4-m-W1", test="test_round_robin_equals_sequential",
                 realtime={"round-robin": rt}, device_free_bytes={"internal": 1, "psram": 2}),
        ],
    }
    text = markdown(data, {"esp32p4-m": ["plots/x-scatter.png"]}, "Plots skipped: matplotlib is not installed.")
    for needle in ("## Provenance", "commit ffffffffffff", "calibration_data sha256 abababababababab",
                   "frames f.npz sha256 cdcdcdcdcdcdcdcd", "runner build v-1", "## Accuracy", "top1_float 0.900",
                   "top1_device (W1) 0.850", "| /conv/Conv | Conv | 31.0 | 35.0 | 20.0 (2) |", "Lowest: the output of **/conv/Conv**, channel 2", "## Device", "## Real time",
                   "| host |", "0.010", "![float vs quantized](plots/x-scatter.png)", "Plots skipped"):
        assert needle in text, needle


def test_report_figures_read_as_what_they_are():
    """A count is an integer, a rate has decimals, a cosine that rounds to 1 shows its distance from 1."""
    from harness.signoff.markdown import _cos, _figure

    assert [_figure(v) for v in (4.0, 0.5, 1.0, 0.0, 12.25)] == ["4", "0.500", "1.000", "0.000", "12.250"]
    assert [_cos(v) for v in (0.99, 0.999999, 1.0, float("nan"), None)] == ["0.99000", "1 - 1.0e-06", "1", "nan", "-"]


# ------------------------------------------------------------------ plots
def test_plots_are_drawn_from_the_saved_arrays_and_kept_when_their_inputs_repeat(tmp_path):
    cases = tmp_path / "cases"
    folder = cases / "test_quantization_accuracy[esp32p4-m]"
    folder.mkdir(parents=True)
    np.save(folder / "float.npy", np.linspace(-1, 1, 60).reshape(2, 10, 3))
    np.save(folder / "quantized.npy", np.linspace(-1, 1, 60).reshape(2, 10, 3) + 0.01)
    failing = cases / "test_streamed_matches_offline[esp32p4-m-W1]"
    failing.mkdir()
    np.save(failing / "device_offline.npy", np.zeros((2, 10, 3), np.int8))
    np.save(failing / "streamed.npy", np.eye(10, 3, dtype=np.int8)[None].repeat(2, 0))
    rr = cases / "test_round_robin_equals_sequential[esp32p4-m-W1]"
    rr.mkdir()
    np.save(rr / "runs_us_m0.npy", np.arange(20.0))
    data = {"cases": [
        case(target="esp32p4", test="test_quantization_accuracy", id="esp32p4-m", accuracy={"per_module": []}),
        case(target="esp32p4", id="esp32p4-m-W1", outcome="failed", streaming_verdict="fail"),
        case(target="esp32p4", id="esp32p4-m-W1", test="test_round_robin_equals_sequential",
             realtime={"round-robin": realtime_figures(result([(1, 0, 1)]), 1, "round-robin", None, True, [])}),
    ]}
    kept = tmp_path / "kept"
    made = plots.draw(data, tmp_path, kept)
    assert sorted(made) == ["esp32p4-m", "esp32p4-m-W1", "latency"]
    assert all((tmp_path / p).stat().st_size > 1000 for ps in made.values() for p in ps)
    assert any(p.endswith("streaming-error.png") for p in made["esp32p4-m-W1"])
    assert len(list(kept.glob("*.png"))) == 1  # the scatter: the only plot a warm run repeats exactly
    (tmp_path / made["esp32p4-m"][0]).unlink()
    plots.draw(data, tmp_path, kept)
    assert (tmp_path / made["esp32p4-m"][0]).is_file()


def test_the_plotting_process_draws_a_models_latency_as_its_cases_finish_and_shows_the_smallest_window(tmp_path):
    """A finished case's run times are drawn while later cases run; the report's figure is the smallest window's
    (the same picture as drawn in this process), whatever order the cases finish in."""
    import json
    import time

    def rr_case(window, runs):
        folder = tmp_path / "cases" / f"test_round_robin_equals_sequential[esp32p4-m-W{window}]"
        folder.mkdir(parents=True)
        np.save(folder / "runs_us_m0.npy", runs)
        return case(target="esp32p4", id=f"esp32p4-m-W{window}", test="test_round_robin_equals_sequential",
                    window=window, realtime={"round-robin": realtime_figures(result([(1, 0, 1)]), window, "round-robin",
                                                                             None, True, [])})

    w3, w1 = rr_case(3, np.arange(40.0)), rr_case(1, np.arange(20.0) ** 2)
    plotter = plots.Plotter()
    plotter.latency(tmp_path, w3)
    png = tmp_path / "plots" / "esp32p4-m-latency.png"
    deadline = time.monotonic() + 60
    while not png.is_file() and time.monotonic() < deadline:  # drawn before the run ends
        time.sleep(0.05)
    assert png.is_file()
    plotter.latency(tmp_path, w1)
    session = tmp_path / "session.json"
    session.write_text(json.dumps({"cases": [w3, w1]}))
    made = plotter.draw(session, tmp_path, None)
    assert made == {"latency": ["plots/esp32p4-m-latency.png"]} and plotter.process.poll() is not None
    drawn_here = plots.latency_histogram("esp32p4 m W1 round-robin", [np.arange(20.0) ** 2], True, tmp_path / "w1.png")
    assert png.read_bytes() == drawn_here.read_bytes()


def test_without_matplotlib_the_report_says_so(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    assert plots.available() == "Plots skipped: matplotlib is not installed (pip install matplotlib)."


# ------------------------------------------------------------------ session.json schema
def test_the_schema_catches_what_a_reader_would_trip_on(tmp_path):
    """docs/session.schema.json is strict where it matters: a wrong schema number, an undocumented field, an
    infinite number (strict JSON has none), a case without its outcome."""
    from harness.plugin.recording import plain
    from harness.plugin.report import SessionReport
    from tests.conftest import schema_errors

    report = SessionReport("virtual", ["esp32p4"], "asked")
    report.cases["n"] = {"nodeid": "n", "categories": ["passed"], **plain(
        {"id": "esp32p4-m-W1", "test": "t", "target": "esp32p4", "model": "m", "window": 1,
         "accuracy": {"per_module": [{"module": 0, "isolated": {"snr_db": float("inf"), "cosine": 1.0},
                                      "cumulative": {"snr_db": 12.5, "cosine": 0.9}}],
                      "end_to_end": {"snr_db": 12.5, "cosine": 0.9}, "worst_module": 0, "task": {}, "layers": None}})}
    report.write(tmp_path)
    import json

    data = json.loads((tmp_path / "session.json").read_text())
    assert not schema_errors(data) and data["cases"][0]["accuracy"]["per_module"][0]["isolated"]["snr_db"] == "inf"
    assert "| 0 | exact | 1 | 12.5 |" in (tmp_path / "report.md").read_text()
    for broken in ({**data, "schema": 2}, {**data, "extra": 1},
                   {**data, "cases": [{**data["cases"][0], "undocumented": 1}]},
                   {**data, "cases": [{k: v for k, v in data["cases"][0].items() if k != "outcome"}]}):
        assert schema_errors(broken)
