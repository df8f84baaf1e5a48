"""Activations the model zoo does not reach: Elu, Exp, Log, Sqrt, HardSigmoid, Gelu, Clip and PRelu, on their own
exports (int8 tables; int16 tables, integer Clip/PRelu, float32 Log/Sqrt)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import BITS, TARGETS, exact_or_within_one, export, graph


def activation_model():
    nodes = [
        helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Sigmoid", ["x"], ["s"]),
        helper.make_node("Elu", ["t"], ["elu"], alpha=0.7),
        helper.make_node("Exp", ["t"], ["exp"]),
        helper.make_node("Log", ["s"], ["log"]),
        helper.make_node("Sqrt", ["s"], ["sqrt"]),
        helper.make_node("HardSigmoid", ["t"], ["hardsigmoid"], alpha=0.25, beta=0.5),
        helper.make_node("Gelu", ["t"], ["gelu"]),
        helper.make_node("Clip", ["t", "lo", "hi"], ["clip"]),
        helper.make_node("PRelu", ["t", "slope"], ["prelu"]),
    ]
    constants = {"lo": np.array(-0.5, np.float32), "hi": np.array(0.25, np.float32),
                 "slope": np.array([0.2], np.float32)}
    outputs = ["elu", "exp", "log", "sqrt", "hardsigmoid", "gelu", "clip", "prelu"]
    return graph("activations", {"x": [1, 4, 2, 8]}, outputs, nodes, constants, opset=20)  # 4-D: int16 PRelu


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_activations_match_esp_ppq(tmp_path_factory, target, bits):
    """int8: each op with its exported table; int16: ESP-PPQ turns the smooth ones into LUT ops, keeps Clip and
    PRelu integer and leaves Log/Sqrt of a positive input in float32 behind a DequantizeLinear."""
    path = export(activation_model(), target, bits, tmp_path_factory.getbasetemp() / "ops")
    ops = {"Elu", "Exp", "Log", "Sqrt", "HardSigmoid", "Clip", "PRelu"} if bits == 8 else {"LUT", "Clip", "PRelu"}
    model, _ = exact_or_within_one(path, target, bits, ops)
    present = {n.op_type for n in model.nodes}
    assert "Gelu" in present or "LUT" in present  # ESP-PPQ fuses some activations into a plain table
