"""Auto-streaming int8 spectral-mask denoiser, 3 sub-models: stateless pointwise encoder, causal dw k6 d2 + BN + ReLU6, Sigmoid mask head."""

from torch import nn

from blocks import CausalConvBN, ClassifierHead, Pointwise

NAME = "zoo_denoise_auto"
STREAMING = "auto"
CONFIG = {
    "channels": 16,              # 16 spectral bands per frame
    "sequence_length": 20,       # windows 1, 5, 10 divide it
    "width": 12,
    "kernel": 6,                 # even causal kernel, context 2 * 5 = 10 frames
    "dilation": 2,
    "bits": 8,
    "seed": 15,
    "calibration_sequences": 4,
    "sequences": 2,
}


def build_submodels(config):
    c, w = config["channels"], config["width"]
    return [
        Pointwise(c, w, act="relu6"),                                                    # no state
        nn.Sequential(CausalConvBN(w, w, config["kernel"], config["dilation"], depthwise=True, act="relu6"),
                      nn.Conv1d(w, w, 1)),
        ClassifierHead(w, c, sigmoid=True),                                              # per-band gain in [0, 1]
    ]
