"""A residual block whose input feeds both a causal dilated depthwise conv and the residual Add (auto).

ESP-PPQ 1.3.12 puts one StreamingCache on the input and rewires both consumers
to it, so the Add would read W + 4 frames; the harness gives the conv a cache
of its own. The second sub-model's input feeds two causal convs of different
receptive fields (kernel 3 dilation 2, kernel 3) plus the Add.
"""

import torch
import torch.nn.functional as F
from torch import nn

NAME = "residual_input_auto"
STREAMING = "auto"
CONFIG = {"channels": 8, "sequence_length": 12, "calibration_sequences": 4, "sequences": 2, "seed": 3}


class Residual(nn.Module):
    def __init__(self, channels: int, kernel: int = 3, dilation: int = 2, second_kernel: int | None = None):
        super().__init__()
        self.context = dilation * (kernel - 1)
        self.dw = nn.Conv1d(channels, channels, kernel, dilation=dilation, groups=channels)
        self.bn = nn.BatchNorm1d(channels)
        self.pw = nn.Conv1d(channels, channels, 1)
        self.second = None
        if second_kernel:
            self.second = nn.Conv1d(channels, channels, second_kernel, groups=channels)
            self.second_context = second_kernel - 1
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 1.5)

    def forward(self, x):
        y = torch.relu(self.bn(self.pw(self.dw(F.pad(x, (self.context, 0))))))
        if self.second is not None:
            y = y + self.second(F.pad(x, (self.second_context, 0)))
        return y + x


def build_submodels(config):
    c = config["channels"]
    return [Residual(c), Residual(c, second_kernel=3)]
