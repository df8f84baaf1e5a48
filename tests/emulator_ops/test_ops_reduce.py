"""The Reduce* family: each op's accumulator, order and finish as dl_module_reduce_<op>.hpp computes them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import BITS, TARGETS, exact_or_within_one, export, graph
from harness.emulator.engine import Engine
from harness.emulator.common import sqrt_newton
from harness.emulator.ops.reduce import round_double
from harness.espdl.reader import Node, load_espdl

OPS = ("ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp",
       "ReduceProd", "ReduceSumSquare", "ReduceMean")
# (axes, keepdims) per op: merged patterns [K,R], [R,K], [R,K,R], [K,R,K,R] and all, with and without keepdims
AXES = {"ReduceMax": ([2], 0), "ReduceMin": ([0, 2], 1), "ReduceSum": ([1], 1), "ReduceL1": ([1, 3], 0),
        "ReduceL2": ([3], 1), "ReduceLogSum": ([0, 1, 2, 3], 0), "ReduceLogSumExp": ([1, 2], 1),
        "ReduceProd": ([2], 0), "ReduceSumSquare": ([0, 3], 1), "ReduceMean": ([1, 3], 1)}


def reduce_model():
    """Every Reduce op on activations of a [1, 3, 4, 5] input (Sigmoid: positive, for ReduceLogSum; Tanh: signed)."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Sigmoid", ["x"], ["p"])]
    constants = {}
    for op in OPS:
        axes, keep = AXES[op]
        constants[f"{op}_axes"] = np.array(axes, np.int64)
        source = "p" if op in ("ReduceLogSum", "ReduceProd") else "t"
        nodes.append(helper.make_node(op, [source, f"{op}_axes"], [op.lower()], keepdims=keep))
    return graph("reduce", {"x": [1, 3, 4, 5]}, [op.lower() for op in OPS], nodes, constants, opset=18)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_every_reduce_matches_esp_ppq(tmp_path_factory, target, bits):
    path = export(reduce_model(), target, bits, tmp_path_factory.getbasetemp() / "ops")
    exact_or_within_one(path, target, bits, set(OPS))


def test_max_and_min_copy_integers_and_sums_shift_them(tmp_path_factory):
    model = load_espdl(export(reduce_model(), "esp32p4", 8, tmp_path_factory.getbasetemp() / "ops"))
    engine = Engine(model, "esp32p4")
    x = np.random.default_rng(3).integers(-128, 128, model.inputs[0].shape, dtype=np.int8)
    env = engine.run({model.inputs[0].name: x}, keep=True)
    t = env["t"]
    assert np.array_equal(env["reducemax"], t.max(axis=2))
    assert np.array_equal(env["reducemin"], t.min(axis=(0, 2), keepdims=True))
    shift = engine.exponent("reducesum") - engine.exponent("t")
    total = t.astype(np.int64).sum(axis=1, keepdims=True)
    expected = np.clip(np.rint(total / 2.0 ** shift), -128, 127) if shift > 0 else np.clip(total << -shift, -128, 127)
    assert np.array_equal(env["reducesum"], expected.astype(np.int8))


def test_sqrt_newton_is_esp_dls_float_iteration():
    x = np.array([0.0, 1.0, 2.0, 10.0, 12345.0], np.float32)
    got = sqrt_newton(x, Node("n", "ReduceL2", (), (), {}))
    assert got.dtype == np.float32 and got[0] == 0 and got[1] == 1
    assert np.allclose(got, np.sqrt(x), rtol=1e-6)


def test_double_rounding_treats_near_ties_as_ties_on_p4():
    v = np.array([2.5, 3.5, 2.5000001, -2.5, 2.4999999, 1.2])
    assert round_double(v, "half_even").tolist() == [2, 4, 2, -2, 2, 1]  # within 1e-6 of a tie: a tie
    assert round_double(v, "half_up").tolist() == [3, 4, 3, -2, 2, 1]
