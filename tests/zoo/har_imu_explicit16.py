"""Explicit-cache int16 IMU activity recognizer: dense causal conv k7 + BN + Hardswish, dw k3 d4 + BN + Hardswish + pw, 5-class head."""

from blocks import CausalConvBN, Chain, ClassifierHead, Pointwise

NAME = "zoo_har_imu_explicit16"
STREAMING = "explicit"
CONFIG = {
    "channels": 12,              # two 6-axis IMUs (accel xyz + gyro xyz each)
    "sequence_length": 21,       # windows 1, 3, 7 divide it
    "width": 16,
    "kernel": 7,                 # first layer: dense causal conv, context 6 frames
    "dw_kernel": 3,
    "dw_dilation": 4,            # second layer: context 8 frames
    "classes": 5,                # walk, run, sit, stand, stairs (logits)
    "bits": 16,
    "seed": 14,
    "calibration_sequences": 4,
    "calibration_window": 7,
    "sequences": 2,
}


def build_submodels(config):
    w = config["width"]
    return [
        CausalConvBN(config["channels"], w, config["kernel"], act="hardswish"),
        Chain(CausalConvBN(w, w, config["dw_kernel"], config["dw_dilation"], depthwise=True, act="hardswish"),
              Pointwise(w, w, act=None, batchnorm=False)),
        ClassifierHead(w, config["classes"]),
    ]
