"""An explicit-cache model whose streaming graph has tensors the offline graph lacks.

``streaming_forward`` adds ``0.5 * tanh(h)`` on the path into the cache, which
``forward`` does not: the Tanh and Mul outputs have no offline counterpart, so
their exponents cannot be locked and are calibrated on their own. The harness
must name them, measure the residual they cause and make it the tolerance.
"""

import torch

from models.tcn import ResidualTemporalBlock

NAME = "unlockable"
STREAMING = "explicit"
CONFIG = {"channels": 8, "expand": 16, "sequence_length": 12, "seed": 6, "calibration_sequences": 4,
          "calibration_window": 3, "sequences": 1}


class DriftingBlock(ResidualTemporalBlock):
    def streaming_forward(self, x, cache):
        x = self.input_conv(x)
        h = self.expand(x)
        padded = torch.cat([cache, torch.tanh(h) * 0.5 + h], dim=2)
        return self._after_context(x, padded), padded[:, :, -self.context :]


def build_submodels(config):
    return [DriftingBlock(config["channels"], config["expand"], 3, 2, gate=False)]
