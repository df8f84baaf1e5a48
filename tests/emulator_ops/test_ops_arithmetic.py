"""Div, Pow and Mod: ESP-DL's float32 formulas per kernel variant, its int8 division tables and zero rules."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import BITS, TARGETS, exact_or_within_one, export, graph
from harness.emulator.engine import Engine
from harness.espdl.reader import load_espdl


def arithmetic_model():
    """Div of two activations (n_n), by a broadcast column (n_1), by a scalar constant (int8: a table), of a
    scalar constant (1_n); Pow with a constant exponent; Mod (C fmod) of two activations."""
    nodes = [
        helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Sigmoid", ["y"], ["s"]),
        helper.make_node("Sigmoid", ["z"], ["col"]),
        helper.make_node("Div", ["t", "s"], ["div_nn"]),
        helper.make_node("Div", ["t", "col"], ["div_n1"]),
        helper.make_node("Div", ["t", "three"], ["div_scalar"]),
        helper.make_node("Div", ["half", "s"], ["div_1n"]),
        helper.make_node("Pow", ["s", "two"], ["pow"]),
        helper.make_node("Mod", ["t", "s"], ["mod"], fmod=1),
    ]
    constants = {"three": np.array(3.0, np.float32), "half": np.array(0.5, np.float32),
                 "two": np.array(2.0, np.float32)}
    outputs = ["div_nn", "div_n1", "div_scalar", "div_1n", "pow", "mod"]
    return graph("arithmetic", {"x": [1, 4, 8], "y": [1, 4, 8], "z": [1, 4, 1]}, outputs, nodes, constants)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_div_pow_mod_match_esp_ppq(tmp_path_factory, target, bits):
    path = export(arithmetic_model(), target, bits, tmp_path_factory.getbasetemp() / "ops")
    exact_or_within_one(path, target, bits, {"Div", "Pow", "Mod"})


def test_division_by_zero_gives_the_extreme_of_the_dividends_sign(tmp_path_factory):
    model = load_espdl(export(arithmetic_model(), "esp32p4", 16, tmp_path_factory.getbasetemp() / "ops"))
    node = next(n for n in model.nodes if n.op_type == "Div" and n.outputs[0] == "div_nn")
    engine = Engine(model, "esp32p4")
    plan = next(p for p in engine._plans if p.node is node)
    x0 = np.array([[5, -5, 0, 7]], np.int16)
    x1 = np.array([[0, 0, 0, 1]], np.int16)
    y = plan.fn(x0, x1)[0]
    assert y.tolist()[0][:3] == [32767, -32768, 0]


def float_dispatched_model(shared: bool):
    """Ops ESP-PPQ leaves in float32 (quant_type F32) inside an int8/int16 export: a square root, a logarithm and
    a power of a float graph input. ``shared``: that input also feeds a quantized Exp, so ESP-PPQ quantizes it and
    the float ops read integers."""
    nodes = [helper.make_node("Sqrt", ["x"], ["sqrt"]), helper.make_node("Log", ["x"], ["log"]),
             helper.make_node("Pow", ["x", "y"], ["pow"])]
    outputs = ["sqrt", "log", "pow"]
    if shared:
        nodes.append(helper.make_node("Exp", ["x"], ["exp"]))
        outputs.append("exp")
    return graph(f"float_dispatched{'_shared' if shared else ''}", {"x": [1, 5, 6], "y": [1, 5, 6]}, outputs, nodes)


@pytest.mark.parametrize("bits", BITS)
def test_nodes_esp_ppq_leaves_in_float_run_esp_dls_libm_code(tmp_path_factory, bits):
    path = export(float_dispatched_model(False), "esp32p4", bits, tmp_path_factory.getbasetemp() / "ops")
    model = load_espdl(path)
    floats = {n.op_type for n in model.nodes if n.attributes.get("quant_type") == "F32"}
    assert floats == {"Sqrt", "Log", "Pow"}, "ESP-PPQ quantized a node: the test no longer covers the float path"
    exact_or_within_one(path, "esp32p4", bits, floats)


def test_a_float_node_reading_an_integer_tensor_is_refused(tmp_path_factory):
    """ESP-PPQ 1.3.12 inserts no DequantizeLinear before a float32 node that reads a quantized graph input."""
    from harness.emulator.engine import EngineError

    model = load_espdl(export(float_dispatched_model(True), "esp32p4", 8, tmp_path_factory.getbasetemp() / "ops"))
    with pytest.raises(EngineError, match="runs in float32 .* reads 'x', an int8 tensor, without a DequantizeLinear"):
        Engine(model, "esp32p4")
