"""Softmax and LogSoftmax: float32 outputs, computed as ESP-DL does for int8 (a table) and int16 (float)."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
from onnx import helper

from op_exports import BITS, TARGETS, exact_or_within_one, export, graph
from harness.device import protocol as p
from harness.emulator.engine import Engine
from harness.emulator.virtual_board import Board
from harness.espdl.reader import load_espdl
from harness.targets import get_target


def softmax_model():
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Softmax", ["t"], ["sm"], axis=-1),
             helper.make_node("LogSoftmax", ["t"], ["lsm"], axis=1)]
    return graph("softmax", {"x": [1, 4, 6]}, ["sm", "lsm"], nodes)


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_softmax_and_log_softmax_match_esp_ppq_within_model_test_tolerance(tmp_path_factory, target, bits):
    path = export(softmax_model(), target, bits, tmp_path_factory.getbasetemp() / "ops")
    model, report = exact_or_within_one(path, target, bits, {"Softmax", "LogSoftmax"})
    assert {o.dtype for o in model.outputs} == {"float32"}


def test_int8_softmax_is_the_exp_table_normalised_in_order(tmp_path_factory):
    """No maximum is subtracted at 8 bits: the table holds expf(2^e * q) for every q."""
    model = load_espdl(export(softmax_model(), "esp32p4", 8, tmp_path_factory.getbasetemp() / "ops"))
    engine = Engine(model, "esp32p4")
    env = engine.run({"x": np.random.default_rng(0).integers(-128, 128, (1, 4, 6), dtype=np.int8)}, keep=True)
    t = env["t"].astype(np.float64) * 2.0 ** engine.exponent("t")
    e = np.exp(t).astype(np.float32)
    expected = e / np.add.accumulate(e, axis=-1, dtype=np.float32)[..., -1:]
    assert np.array_equal(env["sm"], expected.astype(np.float32))
    assert np.allclose(env["sm"].sum(axis=-1), 1, atol=1e-6)


def test_a_streaming_module_with_a_float_output_is_refused_at_configure(tmp_path_factory):
    """The runner streams int8/int16: a module ending in Softmax is BAD_CONFIG (as the firmware's element_bits)."""
    nodes = [helper.make_node("Tanh", ["x"], ["t"]), helper.make_node("Softmax", ["t"], ["sm"], axis=1)]
    path = export(graph("softmax_head", {"x": [1, 3, 4]}, ["sm"], nodes), "esp32p4", 8,
                  tmp_path_factory.getbasetemp() / "ops")
    blob = path.read_bytes()
    board = Board(get_target("esp32p4"))
    replies = []
    for seq, message in enumerate([
        p.Hello(1, 1), p.ModelBegin(0, len(blob), hashlib.sha256(blob).digest(), "m"),
        p.ModelChunk(0, 0, blob), p.ModelEnd(0),
        p.Configure(3, p.Schedule.SEQUENTIAL, 0, 0, 1, (p.ModuleConfig(0, p.Layout.NWC, p.Layout.NWC, "x", "sm"),)),
    ]):
        replies += board.handle(p.Packet(seq, message))
    error = replies[-1]
    assert isinstance(error, p.Error) and error.code == p.ErrorCode.BAD_CONFIG
    assert "float32" in error.text and "int8/int16 outputs only" in error.text
