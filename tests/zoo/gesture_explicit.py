"""Explicit-cache int8 gesture detector: two causal branches (k3 and k7) on one shared cache, concat + BN + ReLU, Sigmoid multi-label head."""

import torch
import torch.nn.functional as F
from torch import nn

from blocks import ClassifierHead, bn

NAME = "zoo_gesture_explicit"
STREAMING = "explicit"
CONFIG = {
    "channels": 12,              # 4 capacitive/radar features x 3 sensors
    "sequence_length": 18,       # windows 1, 3, 9 divide it
    "short_kernel": 3,           # context 2
    "long_kernel": 7,            # context 6 (= the cache length)
    "classes": 6,                # independent gesture scores in [0, 1]
    "bits": 8,
    "seed": 18,
    "calibration_sequences": 4,
    "calibration_window": 3,
    "sequences": 2,
}


class TwoScale(nn.Module):
    def __init__(self, channels: int, short: int, long: int):
        super().__init__()
        self.short_ctx, self.long_ctx = short - 1, long - 1
        self.short = nn.Conv1d(channels, channels, short, groups=channels)
        self.long = nn.Conv1d(channels, channels, long, groups=channels)
        self.fuse = nn.Conv1d(2 * channels, channels, 1)
        self.bn = bn(channels)
        self.cache_shape = (channels, self.long_ctx)

    def _body(self, short_in, long_in):
        h = torch.cat([self.short(short_in), self.long(long_in)], dim=1)
        return torch.relu(self.bn(self.fuse(h)))

    def forward(self, x):
        return self._body(F.pad(x, (self.short_ctx, 0)), F.pad(x, (self.long_ctx, 0)))

    def streaming_forward(self, x, cache):
        padded = torch.cat([cache, x], dim=2)
        return self._body(padded[:, :, self.long_ctx - self.short_ctx:], padded), padded[:, :, -self.long_ctx:]


def build_submodels(config):
    c = config["channels"]
    return [TwoScale(c, config["short_kernel"], config["long_kernel"]), ClassifierHead(c, config["classes"], sigmoid=True)]
