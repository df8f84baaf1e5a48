"""One small auto-streaming sub-model with every optional spec function (tests/test_spec_hooks.py).

``calibration_data`` returns sequences 40x the scale of the harness's random default, ``quant_setting`` picks the
minmax calibration and runs the middle conv at 16 bits (its neighbours, and so the model's input and output, stay
int8), ``metric`` scores the last frame's decision.
"""

import numpy as np
import torch.nn.functional as F
from torch import nn

NAME = "hooks_auto"
STREAMING = "auto"
CONFIG = {"channels": 8, "expand": 16, "sequence_length": 12, "seed": 4, "calibration_sequences": 4, "sequences": 2,
          "frame_period_ms": 10, "scale": 40.0}


class Block(nn.Module):
    """1x1 convs with ReLUs between them (Conv-ReLU-Conv pairs ESP-PPQ can equalize), then a causal conv over 3
    frames (the streamed state) and a 1x1 projection."""

    def __init__(self, channels: int, expand: int):
        super().__init__()
        self.expand = nn.Conv1d(channels, expand, 1)
        self.hidden = nn.Conv1d(expand, expand, 1)
        self.temporal = nn.Conv1d(expand, expand, 3, groups=expand)
        self.project = nn.Conv1d(expand, channels, 1)

    def forward(self, x):
        h = F.relu(self.hidden(F.relu(self.expand(x))))
        return self.project(self.temporal(F.pad(h, (2, 0))))


def build_submodels(config):
    return [Block(config["channels"], config["expand"])]


def calibration_data(config):
    rng = np.random.default_rng(11)
    shape = (6, config["sequence_length"], config["channels"])
    return config["scale"] * rng.standard_normal(shape).astype(np.float32)


def quant_setting(setting, target):
    from esp_ppq.api import get_target_platform

    setting.quantize_activation_setting.calib_algorithm = "minmax"
    setting.dispatching_table.append("/hidden/Conv", get_target_platform(target, 16))


def metric(outputs, labels):
    return {"accuracy": float(np.mean(outputs[:, -1].argmax(-1) == labels))}
