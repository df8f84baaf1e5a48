"""Equal, Greater, GreaterOrEqual, Less, LessOrEqual: raw integer comparisons written as bool (ESP-DL)."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import BITS, TARGETS, exact_or_within_one, export, graph
from harness.emulator.engine import Engine
from harness.espdl.reader import load_espdl

OPS = ("Equal", "Greater", "GreaterOrEqual", "Less", "LessOrEqual")


def compare_model():
    """Every comparison of a [1, 4, 6] input with a broadcast [1, 4, 1] input (a rounded copy makes ties for Equal)."""
    nodes = [helper.make_node("Relu", ["b"], ["r"])]
    nodes += [helper.make_node(op, ["a", "r"], [op.lower()]) for op in OPS]
    return graph("compare", {"a": [1, 4, 6], "b": [1, 4, 1]}, [op.lower() for op in OPS], nodes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_comparisons_match_esp_ppq(tmp_path_factory, target, bits):
    path = export(compare_model(), target, bits, tmp_path_factory.getbasetemp() / "ops")
    model, _ = exact_or_within_one(path, target, bits, set(OPS))
    assert {o.dtype for o in model.outputs} == {"bool"}


def test_each_comparison_is_its_numpy_operator_on_the_stored_integers(tmp_path_factory):
    """Over random int8 inputs (ties included), each node's bools are its operator on the integers it reads,
    broadcast; ESP-PPQ requantizes the second operand to the first one's exponent beforehand."""
    path = export(compare_model(), "esp32p4", 8, tmp_path_factory.getbasetemp() / "ops")
    model = load_espdl(path)
    engine = Engine(model, "esp32p4")
    rng = np.random.default_rng(0)
    a = rng.integers(-4, 4, model.input("a").shape, dtype=np.int8)  # a narrow range: many ties
    b = rng.integers(-4, 4, model.input("b").shape, dtype=np.int8)
    env = engine.run({"a": a, "b": b}, keep=True)
    functions = dict(zip(OPS, (np.equal, np.greater, np.greater_equal, np.less, np.less_equal)))
    for node in (n for n in model.nodes if n.op_type in functions):
        x0, x1 = (env[name].astype(int) for name in node.inputs)
        assert np.array_equal(env[node.outputs[0]], functions[node.op_type](x0, x1)), node.op_type
        assert engine.exponent(node.inputs[0]) == engine.exponent(node.inputs[1])
    assert env["equal"].any() and not env["equal"].all()
