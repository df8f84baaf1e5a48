"""A WaveNet-style gated residual block (auto): one causally padded tensor feeds a tanh filter and a sigmoid gate.

torch's tracer merges the two identical ``F.pad`` calls into one Pad read by two convs, which onnxsim cannot fold
and ESP-PPQ's auto-streaming cannot stream; the harness folds the Pad into each conv.
"""

import torch
import torch.nn.functional as F
from torch import nn

NAME = "gated_auto"
STREAMING = "auto"
CONFIG = {"channels": 8, "sequence_length": 12, "calibration_sequences": 4, "sequences": 2, "seed": 6}


class Gated(nn.Module):
    def __init__(self, channels: int, dilation: int):
        super().__init__()
        self.context = 2 * dilation
        self.filter = nn.Conv1d(channels, channels, 3, dilation=dilation)
        self.gate = nn.Conv1d(channels, channels, 3, dilation=dilation)
        self.out = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        padded = F.pad(x, (self.context, 0))
        return x + self.out(torch.tanh(self.filter(padded)) * torch.sigmoid(self.gate(F.pad(x, (self.context, 0)))))


def build_submodels(config):
    return [Gated(config["channels"], 1), Gated(config["channels"], 2)]
