"""``head_table_auto`` with its head flattened by ``reshape(x.size(0), -1)``: the export traces one sequence, so
the graph's Reshape takes ``[1, -1]`` and ESP-PPQ's simulator cannot run two sequences of it at once."""

from torch import nn

from tests.specs.head_table_auto import CONFIG as TABLE_CONFIG
from tests.specs.head_table_auto import Features, Head
from tests.specs.head_table_auto import streaming_table as table_entries

NAME = "head_reshape_auto"
STREAMING = "auto"
CONFIG = {**TABLE_CONFIG, "seed": 22}


class ReshapedHead(Head):
    def forward(self, x):
        x = self.mix(nn.functional.relu(self.conv(nn.functional.pad(x, (1, 0)))))
        return self.classifier(x[:, :, -self.frames:].reshape(x.size(0), -1))


def build_submodels(config):
    w = config["width"]
    return [Features(config["channels"], w), ReshapedHead(w, config["classes"], config["head_frames"])]


def streaming_table(config, window):
    return table_entries(config, window)
