"""Explicit-cache int8 keyword spotter, 3 sub-models: stateless pointwise+BN+ReLU6 front end, residual dw k5 d2 + BN + ReLU6, 6-class head."""

from blocks import ClassifierHead, Pointwise, ResidualDW

NAME = "zoo_kws_explicit"
STREAMING = "explicit"      # each stateful sub-model carries its cache in streaming_forward
CONFIG = {
    "channels": 10,              # 10 MFCCs per frame
    "sequence_length": 12,       # windows 1, 3, 6 divide it
    "width": 16,                 # channels inside the network
    "kernel": 5,
    "dilation": 2,               # context 2 * 4 = 8 frames
    "classes": 6,                # silence, unknown + 4 keywords, logits
    "bits": 8,
    "seed": 12,
    "calibration_sequences": 4,
    "calibration_window": 3,     # window the streaming graph is traced with
    "sequences": 2,
}


def build_submodels(config):
    w = config["width"]
    return [
        Pointwise(config["channels"], w, act="relu6"),                    # no state
        ResidualDW(w, config["kernel"], config["dilation"], act="relu6"),  # cache: last 8 input frames
        ClassifierHead(w, config["classes"]),
    ]
