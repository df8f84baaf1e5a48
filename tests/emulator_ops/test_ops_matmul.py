"""MatMul of two activations: ESP-DL's conv kernel reads the right-hand operand as a packed filter."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import BITS, TARGETS, export, graph
from harness.emulator.check import check
from harness.emulator.engine import Engine
from harness.emulator.ops.conv import unpack_filter
from harness.espdl.lint import lint_model


def attention_like(n: int):
    """[2, 6, 8] x [2, 8, n] (batched), and a vector times a matrix: both right-hand operands are activations."""
    nodes = [helper.make_node("Tanh", ["a"], ["ta"]), helper.make_node("Tanh", ["b"], ["tb"]),
             helper.make_node("MatMul", ["ta", "tb"], ["y"]),
             helper.make_node("Tanh", ["v"], ["tv"]), helper.make_node("MatMul", ["tv", "tb"], ["z"])]
    return graph(f"matmul_n{n}", {"a": [2, 6, 8], "b": [2, 8, n], "v": [8]}, ["y", "z"], nodes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n", [32, 20])
def test_the_operand_is_read_as_its_input1_layout_says(tmp_path_factory, target, bits, n):
    """ESP-PPQ 1.3.12 leaves B row-major and says so (input1_layout=native_kn): read that way the engine gives
    ESP-PPQ's values; the lint warns that an ESP-DL without the attribute (3.3.9) reads it packed, which is what the
    engine computes for the same bytes marked packed."""
    from op_exports import exact_or_within_one

    path = export(attention_like(n), target, bits, tmp_path_factory.getbasetemp() / "ops")
    model, _ = exact_or_within_one(path, target, bits, {"MatMul"})
    matmuls = [node for node in model.nodes if node.op_type == "MatMul"]
    assert len(matmuls) == 2 and all(m.attributes.get("input1_layout") == "native_kn" for m in matmuls)
    assert {f.node for f in lint_model(model, target) if f.kind == "matmul-native-kn"} == {m.name for m in matmuls}

    node = matmuls[0]
    node.attributes["input1_layout"] = "packed"  # the same bytes, as ESP-DL 3.3.9 takes them
    engine = Engine(model, target)
    env = engine.run({i.name: np.asarray(model.test_inputs[i.name].data) for i in model.inputs}, keep=True)
    x0, x1 = (env[name].astype(np.int64) for name in node.inputs)
    align = 16 if bits == 8 else 8
    layout = f"(N/{align})HWC{align}" + ("_UNALIGNED" if n % align else "")
    read = np.stack([unpack_filter(b, layout, n, 8, 1, 1, False, "t")[:, :, 0, 0].T for b in x1])
    shift = engine.exponent(node.outputs[0]) - engine.exponent(node.inputs[0]) - engine.exponent(node.inputs[1])
    expected = engine.target.shifter(shift)(x0 @ read)
    lo, hi = (-128, 127) if bits == 8 else (-32768, 32767)
    assert np.array_equal(env[node.outputs[0]], np.clip(expected, lo, hi))
    assert not np.array_equal(read, x1)  # packed and row-major differ: the test can tell them apart
    assert not check(model, target).passed  # and so differs from ESP-PPQ's values


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("n", [32, 20])
def test_the_harness_repair_packs_the_operand_and_the_chip_then_computes_esp_ppqs_values(tmp_path_factory, target,
                                                                                         bits, n):
    """With the harness's export repairs, ESP-PPQ takes its packing path: ``input1_layout=packed``, nothing
    linted, and the engine (reading the operand packed, as ESP-DL 3.3.9 does) gives ESP-PPQ's values."""
    from op_exports import exact_or_within_one

    path = export(attention_like(n), target, bits, tmp_path_factory.getbasetemp() / "ops", repaired=True)
    model, _ = exact_or_within_one(path, target, bits, {"MatMul"})
    matmuls = [node for node in model.nodes if node.op_type == "MatMul"]
    assert all(m.attributes.get("input1_layout") == "packed" for m in matmuls)
    assert not [f for f in lint_model(model, target) if f.kind == "matmul-native-kn"]
