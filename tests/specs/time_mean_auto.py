"""An auto model that averages over time (a non-causal op): ESP-PPQ's exporter logs an [ERROR] and exports anyway."""

import torch
from torch import nn

NAME = "time_mean_auto"
STREAMING = "auto"
CONFIG = {"channels": 8, "sequence_length": 12, "seed": 2, "calibration_sequences": 4, "sequences": 1}


class CentreOverTime(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.mix = nn.Conv1d(channels, channels, 1)

    def forward(self, x):
        h = self.mix(x)
        return h - h.mean(dim=2, keepdim=True)


def build_submodels(config):
    return [CentreOverTime(config["channels"])]
