"""Resize: ESP-DL's nearest (including its 2x2 kernel) and float32 linear, int8; int16 refused (ESP-DL writes nothing)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import TARGETS, export, graph
from harness.emulator.engine import Engine, EngineError
from harness.espdl.reader import load_espdl


def resize_model():
    """A conv first (NHWC on the chip), then nearest x2 (2x2 kernel), nearest to a size, linear, linear with
    align_corners, and a 1-D nearest x3."""
    rng = np.random.default_rng(2)
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node("Resize", ["c", "", "s2"], ["near2"], mode="nearest"),
        helper.make_node("Resize", ["c", "", "", "size"], ["near_size"], mode="nearest"),
        helper.make_node("Resize", ["c", "", "s3"], ["linear"], mode="linear"),
        helper.make_node("Resize", ["c", "", "s2"], ["linear_ac"], mode="linear",
                         coordinate_transformation_mode="align_corners"),
    ]
    constants = {"w": (rng.standard_normal((8, 3, 1, 1)) * 0.5).astype(np.float32),
                 "s2": np.array([1, 1, 2, 2], np.float32), "s3": np.array([1, 1, 3, 2], np.float32),
                 "size": np.array([1, 8, 7, 9], np.int64)}
    return graph("resize", {"x": [1, 3, 4, 5]}, ["near2", "near_size", "linear", "linear_ac"], nodes, constants)


@pytest.mark.parametrize("target", TARGETS)
def test_int8_resize_matches_esp_ppq(tmp_path_factory, target):
    """Exact, except where a linear resize by 3 lands halfway between two integers: ESP-DL's float32 weights and
    torch's differ there by one LSB, and the lint says so (``resize-linear``)."""
    from harness.emulator.check import check
    from harness.espdl.lint import lint_model

    model = load_espdl(export(resize_model(), target, 8, tmp_path_factory.getbasetemp() / "ops"))
    report = check(model, target)
    assert not report.unexplained, "\n".join(report.lines())
    assert {r.name for r in report.results if r.verdict != "match"} <= {"linear"}
    assert max(r.max_diff for r in report.results) <= 1
    linear = {f.node for f in lint_model(model, target) if f.kind == "resize-linear"}
    assert linear == {n.name for n in model.nodes if n.outputs[0] == "linear"}  # x2 resizes are exact: not linted


def test_int16_resize_is_refused_because_esp_dl_writes_nothing(tmp_path_factory):
    model = load_espdl(export(resize_model(), "esp32p4", 16, tmp_path_factory.getbasetemp() / "ops"))
    with pytest.raises(EngineError, match="resize<int16_t> is empty"):
        Engine(model, "esp32p4")
