"""A broken explicit-cache model: streaming_forward ignores its cache input (always zeros).

The exported streaming graph then has no cache input at all; the harness must say so.
"""

import torch

from models.tcn import ResidualTemporalBlock

NAME = "ignored_cache"
STREAMING = "explicit"
CONFIG = {"channels": 8, "expand": 16, "sequence_length": 12, "seed": 5, "calibration_sequences": 4,
          "calibration_window": 2, "sequences": 1}


class ForgetfulBlock(ResidualTemporalBlock):
    def streaming_forward(self, x, cache):
        y, new_cache = super().streaming_forward(x, torch.zeros_like(cache))
        return y, new_cache


def build_submodels(config):
    return [ForgetfulBlock(config["channels"], config["expand"], 3, 2, gate=False)]
