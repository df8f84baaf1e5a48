"""Neg, Split, Gather, DepthToSpace and SpaceToDepth: integers moved (or negated) as ESP-DL moves them."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper

from op_exports import BITS, TARGETS, exact_or_within_one, export, graph
from harness.emulator.engine import Engine, EngineError
from harness.espdl.reader import load_espdl


def neg_split_gather():
    """Split and Gather read an activation (ESP-PPQ 1.3.12 gives their outputs other exponents than a graph
    input they read, while the chip copies the raw integers: ``test_split_of_a_graph_input_is_linted``)."""
    nodes = [
        helper.make_node("Neg", ["x"], ["neg"]),
        helper.make_node("Tanh", ["x"], ["t"]),
        helper.make_node("Split", ["t", "sizes"], ["s0", "s1", "s2"], axis=1),
        helper.make_node("Gather", ["t", "idx"], ["gathered"], axis=2),
    ]
    return graph("neg_split_gather", {"x": [1, 6, 5]}, ["neg", "s0", "s1", "s2", "gathered"], nodes,
                 {"sizes": np.array([1, 3, 2], np.int64), "idx": np.array([[4, 0], [2, 2]], np.int64)})


def depth_space(mode: str):
    nodes = [
        helper.make_node("DepthToSpace", ["x"], ["d2s"], blocksize=2, mode=mode),
        helper.make_node("SpaceToDepth", ["y"], ["s2d"], blocksize=2),
    ]
    return graph(f"depth_space_{mode.lower()}", {"x": [1, 8, 3, 2], "y": [1, 3, 4, 6]}, ["d2s", "s2d"], nodes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_neg_split_gather_match_esp_ppq(tmp_path_factory, target, bits):
    path = export(neg_split_gather(), target, bits, tmp_path_factory.getbasetemp() / "ops")
    exact_or_within_one(path, target, bits, {"Neg", "Split", "Gather"})


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("mode", ["CRD", "DCR"])
def test_depth_to_space_and_back_match_esp_ppq(tmp_path_factory, target, bits, mode):
    """DCR with C / blocksize^2 == blocksize, the only DCR ESP-DL computes as ONNX defines it."""
    path = export(depth_space(mode), target, bits, tmp_path_factory.getbasetemp() / "ops")
    exact_or_within_one(path, target, bits, {"DepthToSpace", "SpaceToDepth"})


def test_neg_saturates_the_minimum(tmp_path_factory):
    model = load_espdl(export(neg_split_gather(), "esp32p4", 8, tmp_path_factory.getbasetemp() / "ops"))
    x = np.array([-128, -127, -1, 0, 127] * 6, np.int8).reshape(1, 6, 5)
    node = next(n for n in model.nodes if n.op_type == "Neg")
    env = Engine(model, "esp32p4").run({model.inputs[0].name: x}, keep=True)
    assert env[node.outputs[0]].reshape(-1)[:5].tolist() == [127, 127, 1, 0, -127]


def test_dcr_that_esp_dl_computes_outside_its_blocks_is_refused(tmp_path_factory):
    """C / blocksize^2 = 3 output channels with blocksize 2: ESP-DL's DCR loop writes outside each block."""
    model = load_espdl(export(depth_space("DCR"), "esp32p4", 8, tmp_path_factory.getbasetemp() / "ops"))
    engine = Engine(model, "esp32p4")
    d2s = next(n for n in model.nodes if n.op_type == "DepthToSpace")
    plan = next(p for p in engine._plans if p.node is d2s)
    with pytest.raises(EngineError, match="DCR mode with 3 output channels and blocksize 2.*mode='CRD'"):
        plan.fn(np.zeros((1, 3, 2, 12), np.int8))


def test_split_of_a_graph_input_is_linted_and_copies_raw_integers(tmp_path_factory):
    """ESP-PPQ 1.3.12 quantizes the parts of a Split of a graph input on their own; the chip copies the input's
    integers into them unchanged, so ESP-PPQ's test values are off by the exponent difference. The engine copies;
    the lint names the node, and the self-test excuses exactly those tensors."""
    from harness.emulator.check import check
    from harness.espdl.lint import lint_model

    nodes = [helper.make_node("Split", ["x", "sizes"], ["s0", "s1"], axis=1)]
    model = graph("split_of_input", {"x": [1, 6, 5]}, ["s0", "s1"], nodes, {"sizes": np.array([2, 4], np.int64)})
    espdl = load_espdl(export(model, "esp32p4", 8, tmp_path_factory.getbasetemp() / "ops"))
    x = np.asarray(espdl.test_inputs["x"].data)
    out = Engine(espdl, "esp32p4").run({"x": x})
    assert np.array_equal(out["s0"], x[:, :2]) and np.array_equal(out["s1"], x[:, 2:])
    differ = [o for o in ("s0", "s1") if espdl.tensor_info(o).exponents != espdl.tensor_info("x").exponents]
    findings = [f for f in lint_model(espdl, "esp32p4") if f.kind == "exponent-mismatch"]
    assert bool(findings) == bool(differ)
    report = check(espdl, "esp32p4")
    assert {r.name for r in report.results if r.verdict != "match"} <= set(differ)
    assert not report.unexplained
