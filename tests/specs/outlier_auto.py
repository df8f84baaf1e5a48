"""A model that quantizes badly: one channel of a middle conv's output is ~30x the others (a large bias), and the
next conv ignores that channel. One int8 scale per tensor then leaves the informative channels a few levels.

The sign-off report must show it: a low SNR, and ESP-PPQ's per-operator table naming ``/outlier/Conv``.
"""

import torch
import torch.nn.functional as F
from torch import nn

NAME = "outlier_auto"
STREAMING = "auto"
CONFIG = {"channels": 8, "sequence_length": 12, "seed": 7, "calibration_sequences": 4, "sequences": 2}


class Outlier(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.pre = nn.Conv1d(channels, channels, 1)
        self.outlier = nn.Conv1d(channels, channels, 1)
        self.post = nn.Conv1d(channels, channels, 3)
        with torch.no_grad():
            self.outlier.bias[0] = 60.0  # the outlier channel
            self.post.weight[:, 0] *= 0.02  # ... carries little of what the output needs

    def forward(self, x):
        h = F.relu(self.outlier(F.relu(self.pre(x))))
        return self.post(F.pad(h, (2, 0)))


def build_submodels(config):
    return [Outlier(config["channels"])]
