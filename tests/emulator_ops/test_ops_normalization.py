"""LayerNormalization, RMSNormalization and LpNormalization: ESP-DL's float32 sequences on integer inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import helper
from torch import nn

from op_exports import BITS, TARGETS, exact_or_within_one, export, from_torch, graph
from harness.emulator.engine import Engine
from harness.espdl.reader import load_espdl


def layer_lp_model():
    rng = np.random.default_rng(4)
    nodes = [
        helper.make_node("Tanh", ["x"], ["t"]),
        helper.make_node("LayerNormalization", ["t", "gamma", "beta"], ["ln"], axis=-1, epsilon=1e-5),
        helper.make_node("LpNormalization", ["t"], ["l2"], axis=-1, p=2),
        helper.make_node("LpNormalization", ["t"], ["l1"], axis=1, p=1),
    ]
    constants = {"gamma": (1 + 0.1 * rng.standard_normal(6)).astype(np.float32),
                 "beta": (0.1 * rng.standard_normal(6)).astype(np.float32)}
    return graph("layer_lp", {"x": [1, 4, 6]}, ["ln", "l2", "l1"], nodes, constants, opset=17)


class RmsNorm(nn.Module):
    """x * rsqrt(mean(x^2) + eps) * w, which ESP-PPQ fuses into RMSNormalization."""

    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(1 + 0.05 * torch.randn(8, generator=torch.Generator().manual_seed(1)))

    def forward(self, x):
        x = torch.tanh(x)
        return x * torch.rsqrt(x.pow(2).mean(dim=-1, keepdim=True) + 1e-5) * self.weight


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_layer_and_lp_normalization_match_esp_ppq(tmp_path_factory, target, bits):
    path = export(layer_lp_model(), target, bits, tmp_path_factory.getbasetemp() / "ops")
    exact_or_within_one(path, target, bits, {"LayerNormalization", "LpNormalization"})


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
def test_rms_normalization_matches_esp_ppq(tmp_path_factory, target, bits):
    path = export(from_torch(RmsNorm(), [3, 8], "rms"), target, bits, tmp_path_factory.getbasetemp() / "ops")
    exact_or_within_one(path, target, bits, {"RMSNormalization"})


def test_a_zero_row_normalizes_to_zero(tmp_path_factory):
    model = load_espdl(export(layer_lp_model(), "esp32p4", 8, tmp_path_factory.getbasetemp() / "ops"))
    env = Engine(model, "esp32p4").run({"x": np.zeros((1, 4, 6), np.int8)}, keep=True)
    assert not env["l2"].any() and not env["l1"].any()
