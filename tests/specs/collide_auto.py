"""Two auto-streaming sub-models whose ONNX tensor names collide: both have '/Relu_output_0' (names restart per
sub-model), read by a causal conv in sub-model 0 and by the head's Slice of the last 2 frames in sub-model 1. A
streaming-table entry for that tensor is meant for one of them only."""

import torch
import torch.nn.functional as F
from torch import nn

NAME = "collide_auto"
STREAMING = "auto"
CONFIG = {
    "channels": 4,
    "sequence_length": 8,
    "width": 4,
    "classes": 3,
    "head_frames": 2,
    "seed": 5,
    "calibration_sequences": 4,
    "sequences": 2,
}


class Features(nn.Module):
    def __init__(self, c: int, w: int):
        super().__init__()
        self.inp = nn.Conv1d(c, w, 1)
        self.dw = nn.Conv1d(w, w, 3, groups=w)
        self.pw = nn.Conv1d(w, w, 1)

    def forward(self, x):
        x = F.relu(self.inp(x))  # '/Relu_output_0', read by the causal depthwise conv
        return F.relu(self.pw(F.relu(self.dw(F.pad(x, (2, 0))))))


class Head(nn.Module):
    def __init__(self, w: int, classes: int, frames: int):
        super().__init__()
        self.frames = frames
        self.mix = nn.Conv1d(w, w, 1)
        self.fc = nn.Linear(w * frames, classes)

    def forward(self, x):
        x = F.relu(self.mix(x))  # '/Relu_output_0' again, read by the Slice of the last frames
        return self.fc(torch.flatten(x[:, :, -self.frames:], 1))


def build_submodels(config):
    w = config["width"]
    return [Features(config["channels"], w), Head(w, config["classes"], config["head_frames"])]
