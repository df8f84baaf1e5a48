"""A small TCN with explicit caches, for the harness's own tests."""

from models.tcn import build_tcn

NAME = "tiny_explicit"
STREAMING = "explicit"
CONFIG = {"channels": 8, "expand": 16, "kernel_size": 3, "dilation": 2, "sequence_length": 12, "seed": 3,
          "calibration_sequences": 4, "calibration_window": 2, "sequences": 2}


def build_submodels(config):
    return build_tcn(config)
