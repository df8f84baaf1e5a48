"""A broken explicit-cache model: streaming_forward keeps the oldest frames as its new cache.

The host streaming check must catch it: the first window matches, later ones do not.
"""

import torch

from models.tcn import ResidualTemporalBlock

NAME = "stale_cache"
STREAMING = "explicit"
CONFIG = {"channels": 8, "expand": 16, "sequence_length": 12, "seed": 5, "calibration_sequences": 4,
          "calibration_window": 3, "sequences": 1}


class StaleCacheBlock(ResidualTemporalBlock):
    def streaming_forward(self, x, cache):
        x = self.input_conv(x)
        padded = torch.cat([cache, self.expand(x)], dim=2)
        return self._after_context(x, padded), padded[:, :, : self.context]


def build_submodels(config):
    return [StaleCacheBlock(config["channels"], config["expand"], 3, 2, gate=False)]
