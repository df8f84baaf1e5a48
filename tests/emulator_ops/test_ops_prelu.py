"""int16 PRelu: no table at 16 bits; ESP-DL's integer kernel copies x >= 0 raw and shifts x * alpha down."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import TARGETS, exact_or_within_one, export, graph
from harness.emulator.engine import Engine
from harness.espdl.reader import load_espdl


def prelu_model(channels: int, name: str, conv: bool = True):
    """A conv before the PRelu makes ESP-PPQ lay the tensor out NHWC on the chip (channels last)."""
    rng = np.random.default_rng(channels)
    slope = np.linspace(-0.3, 0.6, channels, dtype=np.float32).reshape(channels, 1, 1)
    first = helper.make_node("Conv", ["x", "w"], ["t"]) if conv else helper.make_node("Tanh", ["x"], ["t"])
    constants = {"slope": slope, "w": (rng.standard_normal((channels, 3, 1, 1)) * 0.5).astype(np.float32)}
    nodes = [first, helper.make_node("PRelu", ["t", "slope"], ["y"])]
    return graph(name, {"x": [1, 3 if conv else channels, 3, 4]}, ["y"], nodes, constants)


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("channels", [5, 16])
def test_int16_prelu_matches_esp_ppq_within_one_lsb(tmp_path_factory, target, channels):
    path = export(prelu_model(channels, f"prelu{channels}"), target, 16, tmp_path_factory.getbasetemp() / "ops")
    model, _ = exact_or_within_one(path, target, 16, {"PRelu"})
    assert not any(n.attributes.get("lut") for n in model.nodes if n.op_type == "PRelu")


def test_int16_prelu_shifts_down_without_rounding(tmp_path_factory):
    model = load_espdl(export(prelu_model(5, "prelu5"), "esp32p4", 16, tmp_path_factory.getbasetemp() / "ops"))
    node = next(n for n in model.nodes if n.op_type == "PRelu")
    engine = Engine(model, "esp32p4")
    plan = next(p for p in engine._plans if p.node is node)
    alpha = model.initializers[node.inputs[1]]
    shift = engine.exponent(node.outputs[0]) - engine.exponent(node.inputs[0]) - alpha.exponents[0]
    x = np.array([-3, 7, -32768, 0, 12345] * 3, np.int16).reshape(1, 3, 1, 5)
    a = np.asarray(alpha.data).reshape(-1).astype(np.int64)
    expected = np.where(x < 0, (x.astype(np.int64) * a) >> shift, x)
    assert np.array_equal(plan.fn(x)[0], np.clip(expected, -32768, 32767))


def test_int16_prelu_on_a_rank_3_input_is_refused(tmp_path_factory):
    from harness.emulator.engine import EngineError

    slope = np.full((4, 1), 0.25, np.float32)
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("PRelu", ["t", "slope"], ["y"])]
    model = load_espdl(export(graph("prelu_rank3", {"x": [1, 4, 6]}, ["y"], nodes, {"slope": slope}), "esp32p4", 16,
                              tmp_path_factory.getbasetemp() / "ops"))
    with pytest.raises(EngineError, match=r"rank-3 input.*\[N, H, W, C\] only"):
        Engine(model, "esp32p4").run({"x": np.zeros(model.inputs[0].shape, np.int16)})


def test_slopes_of_a_channels_first_tensor_become_the_first_slope_and_are_linted(tmp_path_factory):
    """Without a conv ESP-PPQ leaves the tensor [N, C, H, W]; ESP-DL reads the last axis as channels and, the
    slope count not matching it, uses copies of the first slope: linted, and it explains the self-test's mismatch."""
    from harness.emulator.check import check
    from harness.espdl.lint import lint_model

    model = load_espdl(export(prelu_model(5, "prelu_nchw", conv=False), "esp32p4", 16,
                              tmp_path_factory.getbasetemp() / "ops"))
    node = next(n for n in model.nodes if n.op_type == "PRelu")
    assert model.tensor_info(node.inputs[0]).shape == (1, 5, 3, 4)
    assert [f.kind for f in lint_model(model, "esp32p4") if f.node == node.name] == ["prelu-slopes"]
    engine = Engine(model, "esp32p4")
    plan = next(p for p in engine._plans if p.node is node)
    x = np.full((1, 5, 3, 4), -1000, np.int16)
    first = int(np.asarray(model.initializers[node.inputs[1]].data).reshape(-1)[0])
    shift = engine.exponent(node.outputs[0]) - engine.exponent(node.inputs[0]) \
        - model.initializers[node.inputs[1]].exponents[0]
    assert np.all(plan.fn(x)[0] == (-1000 * first) >> shift)
    assert not check(model, "esp32p4").unexplained
