"""A small TCN exported with ESP-PPQ auto_streaming, for the harness's own tests."""

from models.tcn import build_tcn

NAME = "tiny_auto"
STREAMING = "auto"
CONFIG = {"channels": 8, "expand": 16, "kernel_size": 3, "dilation": 2, "sequence_length": 12, "seed": 4,
          "calibration_sequences": 4, "sequences": 2}


def build_submodels(config):
    return build_tcn(config)
