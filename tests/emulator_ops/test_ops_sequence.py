"""ReverseSequence, ScatterND and ConvTranspose (exported as InsertZeros + Conv): integers placed as ESP-DL does."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import BITS, TARGETS, exact_or_within_one, export, graph


def sequence_model():
    rng = np.random.default_rng(5)
    nodes = [
        helper.make_node("Tanh", ["x"], ["t"]),
        helper.make_node("ReverseSequence", ["t", "lens"], ["reversed"], batch_axis=0, time_axis=1),
        helper.make_node("Tanh", ["d"], ["td"]), helper.make_node("Tanh", ["u"], ["tu"]),
        helper.make_node("ScatterND", ["td", "idx", "tu"], ["scattered"]),
        helper.make_node("ScatterND", ["td", "idx", "tu"], ["scattered_max"], reduction="max"),
        helper.make_node("ConvTranspose", ["t", "w"], ["up"], strides=[2], output_padding=[1], pads=[1, 1]),
    ]
    constants = {"lens": np.array([5], np.int64), "idx": np.array([[2], [0], [5]], np.int64),
                 "w": (rng.standard_normal((6, 4, 3)) * 0.4).astype(np.float32)}
    return graph("sequence", {"x": [1, 6, 7], "d": [8, 3], "u": [3, 3]},
                 ["reversed", "scattered", "scattered_max", "up"], nodes, constants, opset=18)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_reverse_scatter_and_transposed_conv_match_esp_ppq(tmp_path_factory, target, bits):
    path = export(sequence_model(), target, bits, tmp_path_factory.getbasetemp() / "ops")
    exact_or_within_one(path, target, bits, {"ReverseSequence", "ScatterND", "InsertZeros", "Conv"})
