"""Explicit-cache int16 WaveNet-style gated units (tanh(bn(dw)) * sigmoid(dw) on one shared padded input), dilations 2 and 8, 2 sub-models, 4-class head."""

import torch
import torch.nn.functional as F
from torch import nn

from blocks import bn

NAME = "zoo_wavenet_explicit16"
STREAMING = "explicit"
CONFIG = {
    "channels": 8,               # e.g. 8 sub-band energies of an audio stream
    "sequence_length": 24,       # windows 1, 3, 12 divide it
    "kernel": 3,
    "dilations": [2, 8],         # one gated unit per sub-model (one cache each): context 4 and 16 frames
    "classes": 4,
    "bits": 16,                  # w16a16: Tanh/Sigmoid as int16 (no LUT)
    "seed": 21,
    "calibration_sequences": 4,
    "calibration_window": 3,
    "sequences": 2,
}


class GatedUnit(nn.Module):
    """[1x1 in] -> x + mix(tanh(bn(filter(pad x))) * sigmoid(gate(pad x))) -> [1x1 head]; the cache holds past x."""

    def __init__(self, channels: int, kernel: int, dilation: int, pre: nn.Module | None = None,
                 post: nn.Module | None = None):
        super().__init__()
        self.context = dilation * (kernel - 1)
        self.pre = pre if pre is not None else nn.Identity()
        self.filter = nn.Conv1d(channels, channels, kernel, dilation=dilation, groups=channels)
        self.filter_bn = bn(channels)
        self.gate = nn.Conv1d(channels, channels, kernel, dilation=dilation, groups=channels)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.post = post if post is not None else nn.Identity()
        self.cache_shape = (channels, self.context)

    def _unit(self, x, padded):
        z = torch.tanh(self.filter_bn(self.filter(padded))) * torch.sigmoid(self.gate(padded))
        return self.post(x + self.mix(z))

    def forward(self, x):
        x = self.pre(x)
        return self._unit(x, F.pad(x, (self.context, 0)))

    def streaming_forward(self, x, cache):
        x = self.pre(x)
        padded = torch.cat([cache, x], dim=2)
        return self._unit(x, padded), padded[:, :, -self.context:]


def build_submodels(config):
    c, k = config["channels"], config["kernel"]
    d = config["dilations"]
    return [
        GatedUnit(c, k, d[0], pre=nn.Conv1d(c, c, 1)),
        GatedUnit(c, k, d[1], post=nn.Conv1d(c, config["classes"], 1)),
    ]
