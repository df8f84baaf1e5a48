"""Explicit-cache int8 two-layer causal stack (k3 d1, k3 d2) in ONE sub-model whose two layer caches are packed into one cache tensor."""

import torch
import torch.nn.functional as F
from torch import nn

from tests.zoo.blocks import bn

NAME = "packed_cache_explicit"
STREAMING = "explicit"
CONFIG = {
    "channels": 8,
    "sequence_length": 12,       # windows 1, 3, 6 divide it
    "bits": 8,
    "seed": 19,
    "calibration_sequences": 4,
    "calibration_window": 3,
    "sequences": 2,
}


class TwoLayerStack(nn.Module):
    """relu(bn(dw_d1(pad x))) -> relu(bn(dw_d2(pad h))) -> 1x1; cache = [last 2 frames of x | last 4 frames of h]."""

    def __init__(self, c: int):
        super().__init__()
        self.ctx1, self.ctx2 = 2, 4
        self.conv1, self.bn1 = nn.Conv1d(c, c, 3, groups=c), bn(c)
        self.conv2, self.bn2 = nn.Conv1d(c, c, 3, dilation=2, groups=c), bn(c)
        self.out = nn.Conv1d(c, c, 1)
        self.cache_shape = (c, self.ctx1 + self.ctx2)

    def forward(self, x):
        h = torch.relu(self.bn1(self.conv1(F.pad(x, (self.ctx1, 0)))))
        return self.out(torch.relu(self.bn2(self.conv2(F.pad(h, (self.ctx2, 0))))))

    def streaming_forward(self, x, cache):
        p1 = torch.cat([cache[:, :, : self.ctx1], x], dim=2)
        h = torch.relu(self.bn1(self.conv1(p1)))
        p2 = torch.cat([cache[:, :, self.ctx1:], h], dim=2)
        y = self.out(torch.relu(self.bn2(self.conv2(p2))))
        return y, torch.cat([p1[:, :, -self.ctx1:], p2[:, :, -self.ctx2:]], dim=2)


def build_submodels(config):
    return [TwoLayerStack(config["channels"])]
