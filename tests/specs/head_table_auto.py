"""Auto-streaming int8 keyword spotter: a causal feature block, then a per-window classifier head over the last
4 frames (Slice + Flatten + Linear), streamed with a manual streaming table (the two-argument form)."""

import torch
import torch.nn.functional as F
from torch import nn

NAME = "head_table_auto"
STREAMING = "auto"
CONFIG = {
    "channels": 8,
    "sequence_length": 16,
    "width": 12,
    "classes": 6,
    "head_frames": 4,            # the classifier reads the last 4 frames
    "seed": 21,
    "calibration_sequences": 4,
    "sequences": 2,
}


class Features(nn.Module):
    """1x1 expand, causal depthwise k3 d2 + BatchNorm + ReLU, 1x1 project: one frame per frame."""

    def __init__(self, c: int, w: int):
        super().__init__()
        self.expand = nn.Conv1d(c, w, 1)
        self.dw = nn.Conv1d(w, w, 3, dilation=2, groups=w)
        self.bn = nn.BatchNorm1d(w)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.3, 0.3)
            self.bn.running_var.uniform_(0.5, 1.5)
        self.project = nn.Conv1d(w, w, 1)

    def forward(self, x):
        return self.project(F.relu(self.bn(self.dw(F.pad(self.expand(x), (4, 0))))))


class Head(nn.Module):
    """Causal conv k2 + ReLU, 1x1 mix, the last ``frames`` frames flattened into a Linear: [1, classes] per call."""

    def __init__(self, w: int, classes: int, frames: int):
        super().__init__()
        self.frames = frames
        self.conv = nn.Conv1d(w, w, 2)
        self.mix = nn.Conv1d(w, w, 1)
        self.classifier = nn.Linear(w * frames, classes)

    def forward(self, x):
        x = self.mix(F.relu(self.conv(F.pad(x, (1, 0)))))
        return self.classifier(torch.flatten(x[:, :, -self.frames:], 1))


def build_submodels(config):
    w = config["width"]
    return [Features(config["channels"], w), Head(w, config["classes"], config["head_frames"])]


def streaming_table(config, window):
    from esp_ppq.api import insert_streaming_cache_on_var

    # the head's Slice needs head_frames frames of the mix output at every window size
    return [insert_streaming_cache_on_var("/mix/Conv_output_0", config["head_frames"])]
