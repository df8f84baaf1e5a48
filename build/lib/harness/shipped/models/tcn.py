"""The seed's temporal conv net, as three streaming sub-models.

Module 0 and 2 are residual blocks around a causal dilated depthwise conv;
module 0 adds a squeeze-and-excitation gate. Module 1 is a pointwise MLP.
``forward`` is the offline form (zero left padding on the whole sequence);
``streaming_forward(x, cache)`` is the same computation on a window of frames
with the padding replaced by an explicit cache of past frames, returning
``(y, new_cache)``. ``cache_shape`` is ``(channels, frames)`` of that cache,
or ``None`` for a sub-model without state.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ResidualTemporalBlock(nn.Module):
    """1x1 conv, 1x1 expand + SiLU, causal dilated depthwise + SiLU, [SE gate], 1x1 project, residual add."""

    def __init__(self, channels: int, expand: int, kernel_size: int, dilation: int, gate: bool):
        super().__init__()
        self.context = dilation * (kernel_size - 1)  # frames of left padding == cache length
        self.input_conv = nn.Conv1d(channels, channels, 1)
        self.expand = nn.Sequential(nn.Conv1d(channels, expand, 1), nn.SiLU())
        self.depthwise = nn.Sequential(
            nn.Conv1d(expand, expand, kernel_size, dilation=dilation, groups=expand), nn.SiLU()
        )
        self.gate = (
            nn.Sequential(
                nn.Conv1d(expand, expand // 4, 1),
                nn.SiLU(),
                nn.Conv1d(expand // 4, expand, 1),
                nn.Sigmoid(),
            )
            if gate
            else None
        )
        self.project = nn.Conv1d(expand, channels, 1)
        self.cache_shape = (expand, self.context)

    def _after_context(self, residual: Tensor, padded: Tensor) -> Tensor:
        h = self.depthwise(padded)
        if self.gate is not None:
            h = h * self.gate(h)
        return self.project(h) + residual

    def forward(self, x: Tensor) -> Tensor:
        x = self.input_conv(x)
        return self._after_context(x, F.pad(self.expand(x), (self.context, 0)))

    def streaming_forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        x = self.input_conv(x)
        padded = torch.cat([cache, self.expand(x)], dim=2)
        return self._after_context(x, padded), padded[:, :, -self.context :]


class PointwiseBlock(nn.Module):
    """1x1 expand conv + ReLU, 1x1 project conv: no temporal context, no cache."""

    cache_shape = None

    def __init__(self, channels: int, expand: int):
        super().__init__()
        self.expand = nn.Sequential(nn.Conv1d(channels, expand, 1), nn.ReLU())
        self.project = nn.Conv1d(expand, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.project(self.expand(x))

    def streaming_forward(self, x: Tensor, cache: None = None) -> tuple[Tensor, None]:
        return self.forward(x), None


SEED_CONFIG = {
    "channels": 64,
    "expand": 128,
    "kernel_size": 3,
    "dilation": 2,
    "sequence_length": 36,
}


def build_tcn(config: dict) -> list[nn.Module]:
    """The three sub-models, in streaming order."""
    c, e = config["channels"], config["expand"]
    k, d = config["kernel_size"], config["dilation"]
    return [
        ResidualTemporalBlock(c, e, k, d, gate=True),
        PointwiseBlock(c, e),
        ResidualTemporalBlock(c, e, k, d, gate=False),
    ]
