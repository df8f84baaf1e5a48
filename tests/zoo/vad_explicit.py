"""Explicit-cache int8 voice-activity detector: 1x1 in, causal dw k3 dilation 8 + BN + Tanh, 1x1 out; 2-class logit head."""

from blocks import CausalConvBN, Chain, ClassifierHead, Pointwise

NAME = "zoo_vad_explicit"
STREAMING = "explicit"
CONFIG = {
    "channels": 8,               # 8 band energies per 10 ms frame
    "sequence_length": 24,       # windows 1, 3, 12 divide it
    "kernel": 3,
    "dilation": 8,               # context 16 frames: more than a window, less than a sequence
    "classes": 2,                # speech / no speech logits
    "bits": 8,
    "seed": 16,
    "calibration_sequences": 4,
    "calibration_window": 3,
    "sequences": 2,
}


def build_submodels(config):
    c = config["channels"]
    return [
        Chain(Pointwise(c, c, act=None, batchnorm=False),                       # cache holds this 1x1 conv's output
              CausalConvBN(c, c, config["kernel"], config["dilation"], depthwise=True, act="tanh"),
              Pointwise(c, c, act=None, batchnorm=False)),
        ClassifierHead(c, config["classes"]),
    ]
