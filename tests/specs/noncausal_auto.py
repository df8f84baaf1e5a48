"""An auto-streaming model with a centred (non-causal) conv: it cannot stream."""

from torch import nn

NAME = "noncausal_auto"
STREAMING = "auto"
CONFIG = {"channels": 8, "sequence_length": 12, "seed": 7, "calibration_sequences": 4, "sequences": 1}


def build_submodels(config):
    c = config["channels"]
    return [nn.Sequential(nn.Conv1d(c, c, 1), nn.Conv1d(c, c, 3, padding=1, groups=c), nn.ReLU())]
