"""The causal TCN of ESP-DL's streaming tutorial (``examples/tutorial/how_to_deploy_streaming_model``).

A 1x1 input conv, three depthwise-separable causal blocks (depthwise conv, ReLU,
1x1 conv, BatchNorm, ReLU, then SiLU; dilations 1, d, 1), a residual around
them, a causal average pool, a 1x1 output conv, and a classifier that reads
the last ``output_frames`` frames, flattened: one vector per call, not one per
frame. Streamed, the classifier's frames come from a cache on the output
conv's result (``output_frames`` frames wide), which ESP-PPQ cannot insert by
itself: ``streaming_table`` names it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SeparableCausalBlock(nn.Module):
    """relu(bn(pointwise(relu(depthwise(left-padded x))))), then SiLU."""

    def __init__(self, channels: int, kernel_size: int, dilation: int):
        super().__init__()
        self.context = dilation * (kernel_size - 1)
        self.depthwise = nn.Conv1d(channels, channels, kernel_size, dilation=dilation, groups=channels)
        self.pointwise = nn.Conv1d(channels, channels, 1)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: Tensor) -> Tensor:
        h = F.relu(self.depthwise(F.pad(x, (self.context, 0))))
        return F.silu(F.relu(self.norm(self.pointwise(h))))


class TutorialTCN(nn.Module):
    """[1, channels, T] -> [1, channels]: class scores of the last ``output_frames`` frames."""

    def __init__(self, channels: int, expand: int, kernel_size: int, dilation: int, output_frames: int):
        super().__init__()
        self.output_frames = output_frames
        self.pool_context = kernel_size - 1
        self.prev_conv = nn.Conv1d(channels, expand, 1)
        self.blocks = nn.Sequential(
            SeparableCausalBlock(expand, kernel_size, 1),
            SeparableCausalBlock(expand, kernel_size, dilation),
            SeparableCausalBlock(expand, kernel_size, 1),
        )
        self.out_conv = nn.Conv1d(expand, channels, 1)
        self.classifier = nn.Linear(channels * output_frames, channels)
        with torch.no_grad():  # statistics of a trained network, so folding BatchNorm matters
            for block in self.blocks:
                block.norm.running_mean.uniform_(-0.3, 0.3)
                block.norm.running_var.uniform_(0.5, 1.5)
                block.norm.weight.uniform_(0.7, 1.3)
                block.norm.bias.uniform_(-0.2, 0.2)

    def forward(self, x: Tensor) -> Tensor:
        x = self.prev_conv(x)
        x = x + self.blocks(x)
        x = F.avg_pool1d(F.pad(x, (self.pool_context, 0)), self.pool_context + 1, stride=1)
        x = self.out_conv(x)[:, :, -self.output_frames:]
        return self.classifier(torch.flatten(x, 1))


TUTORIAL_CONFIG = {
    "channels": 16,
    "expand": 32,
    "kernel_size": 3,
    "dilation": 2,
    "output_frames": 3,
    "sequence_length": 24,
}


def build_tutorial_tcn(config: dict) -> list[nn.Module]:
    """One sub-model: the whole network (its output is per window, so it must be the last)."""
    return [TutorialTCN(config["channels"], config["expand"], config["kernel_size"], config["dilation"],
                        config["output_frames"])]


def classifier_cache(config: dict) -> list[dict]:
    """The streaming-table entry the classifier needs: the output conv's last ``output_frames`` frames.

    ESP-PPQ names that tensor ``/out_conv/Conv_output_0`` (from the module path); a window of
    ``output_frames`` keeps ``output_frames - 1`` frames of history, so the Slice sees at least
    ``output_frames`` frames at every window size.
    """
    from esp_ppq.api import insert_streaming_cache_on_var

    return [insert_streaming_cache_on_var("/out_conv/Conv_output_0", config["output_frames"])]
