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
