"""Keyword-spotting TCN: two residual blocks with explicit caches."""

import torch
import torch.nn.functional as F
from torch import nn

NAME = "kws_tcn"            # id in test ids and --models
STREAMING = "explicit"      # "explicit": streaming_forward carries caches; "auto": ESP-PPQ auto_streaming
CONFIG = {
    "channels": 40,          # input channels of the first sub-model (required)
    "sequence_length": 48,   # frames of one offline sequence (required); window sizes must divide it
    "kernel": 3,             # your own keys: passed to build_submodels and hashed into the cache key
    "bits": 8,               # 8 or 16 (default 8)
    "seed": 0,               # weights, calibration data and frames derive from it (default 0)
    "calibration_sequences": 8,  # random sequences to calibrate each sub-model (default 8)
    "calibration_window": 4,     # explicit only: window the streaming graph is traced with (default 3)
    "sequences": 2,          # frame sequences streamed per case (default 2)
    "tolerance_lsb": 0,      # allowed |streamed - offline| (default 0) ...
    "tolerance_reason": "",  # ... and why, required when non-zero
}


class Block(nn.Module):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.context = kernel - 1
        self.conv = nn.Conv1d(channels, channels, kernel, groups=channels)
        self.mix = nn.Conv1d(channels, channels, 1)
        self.cache_shape = (channels, self.context)   # (channels, frames) of the cache, or None without state

    def forward(self, x):                              # offline: [1, C, T] -> [1, C, T]
        return self.mix(torch.relu(self.conv(F.pad(x, (self.context, 0))))) + x

    def streaming_forward(self, x, cache):             # one window: ([1, C, W], cache) -> ([1, C, W], new cache)
        padded = torch.cat([cache, x], dim=2)
        return self.mix(torch.relu(self.conv(padded))) + x, padded[:, :, -self.context:]


def build_submodels(config):
    """The sub-models in streaming order; load trained weights here."""
    return [Block(config["channels"], config["kernel"]) for _ in range(2)]
