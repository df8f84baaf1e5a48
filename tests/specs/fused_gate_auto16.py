"""Auto-streaming int16 WaveNet-style gated TCN with filter and gate fused in one causal conv (C -> 2C, BN, channel slices), dilations 1-8, 4-class head."""

import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.blocks import bn

NAME = "fused_gate_auto16"
STREAMING = "auto"
CONFIG = {
    "channels": 8,               # e.g. 8 sub-band energies of an audio stream
    "sequence_length": 24,       # windows 1, 3, 12 divide it
    "kernel": 3,
    "dilations": [1, 2, 4, 8],   # first two layers in sub-model 0, last two in sub-model 1
    "classes": 4,
    "bits": 16,                  # w16a16
    "seed": 20,
    "calibration_sequences": 4,
    "sequences": 2,
}


class FusedGatedResidual(nn.Module):
    """x + mix(tanh(h[:C]) * sigmoid(h[C:])), h = bn(conv_C->2C(pad x)): one causal conv reads the padded input."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.channels = channels
        self.context = dilation * (kernel - 1)
        self.filter_gate = nn.Conv1d(channels, 2 * channels, kernel, dilation=dilation)
        self.bn = bn(2 * channels)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        h = self.bn(self.filter_gate(F.pad(x, (self.context, 0))))
        c = self.channels
        return x + self.mix(torch.tanh(h[:, :c]) * torch.sigmoid(h[:, c:]))


def build_submodels(config):
    c, k = config["channels"], config["kernel"]
    d = config["dilations"]
    return [
        nn.Sequential(nn.Conv1d(c, c, 1), FusedGatedResidual(c, k, d[0]), FusedGatedResidual(c, k, d[1])),
        nn.Sequential(FusedGatedResidual(c, k, d[2]), FusedGatedResidual(c, k, d[3]),
                      nn.Conv1d(c, config["classes"], 1)),
    ]
