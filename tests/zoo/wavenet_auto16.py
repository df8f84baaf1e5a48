"""Auto-streaming int16 WaveNet-style gated TCN (tanh(bn(dw)) * sigmoid(dw), dilations 1, 2, 4, 8; one F.pad shared by filter and gate) in 2 sub-models, 4-class head."""

import torch
import torch.nn.functional as F
from torch import nn

from blocks import bn

NAME = "zoo_wavenet_auto16"
STREAMING = "auto"
CONFIG = {
    "channels": 8,               # e.g. 8 sub-band energies of an audio stream
    "sequence_length": 24,       # windows 1, 3, 12 divide it
    "kernel": 3,
    "dilations": [1, 2, 4, 8],   # first two layers in sub-model 0, last two in sub-model 1
    "classes": 4,
    "bits": 16,                  # w16a16
    "seed": 13,
    "calibration_sequences": 4,
    "sequences": 2,
}


class GatedResidual(nn.Module):
    """x + mix(tanh(bn(filter(pad x))) * sigmoid(gate(pad x))), both causal depthwise convs on one padded input."""

    def __init__(self, channels: int, kernel: int, dilation: int):
        super().__init__()
        self.context = dilation * (kernel - 1)
        self.filter = nn.Conv1d(channels, channels, kernel, dilation=dilation, groups=channels)
        self.filter_bn = bn(channels)
        self.gate = nn.Conv1d(channels, channels, kernel, dilation=dilation, groups=channels)
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        padded = F.pad(x, (self.context, 0))  # one Pad read by both convs (torch's ONNX export merges two equal pads anyway)
        z = torch.tanh(self.filter_bn(self.filter(padded))) * torch.sigmoid(self.gate(padded))
        return x + self.mix(z)


def build_submodels(config):
    c, k = config["channels"], config["kernel"]
    d = config["dilations"]
    return [
        nn.Sequential(nn.Conv1d(c, c, 1), GatedResidual(c, k, d[0]), GatedResidual(c, k, d[1])),
        nn.Sequential(GatedResidual(c, k, d[2]), GatedResidual(c, k, d[3]), nn.Conv1d(c, config["classes"], 1)),
    ]
