"""tiny_auto at w16a16: the harness's own offline exports with 16-bit arithmetic, for the engine tests."""

from models.tcn import build_tcn

NAME = "tiny_auto16"
STREAMING = "auto"
CONFIG = {"channels": 8, "expand": 16, "kernel_size": 3, "dilation": 2, "sequence_length": 12, "seed": 5,
          "calibration_sequences": 4, "sequences": 2, "bits": 16}


def build_submodels(config):
    return build_tcn(config)
