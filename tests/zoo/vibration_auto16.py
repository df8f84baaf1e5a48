"""Auto-streaming int16 vibration anomaly TCN: residual dw k5 d8 + BN + Hardswish (context > sequence), residual k7 + ReLU6 fed by the sub-model input, 3-class head."""

from torch import nn

from blocks import ClassifierHead, ResidualDW

NAME = "zoo_vibration_auto16"
STREAMING = "auto"
CONFIG = {
    "channels": 8,               # 3-axis accelerometer + 5 derived features per frame
    "sequence_length": 18,       # windows 1, 3, 9 divide it
    "bits": 16,
    "seed": 17,
    "calibration_sequences": 4,
    "sequences": 2,
}


def build_submodels(config):
    c = config["channels"]
    return [
        nn.Sequential(nn.Conv1d(c, c, 1), ResidualDW(c, 5, 8, act="hardswish")),   # context 32 frames > 18
        ResidualDW(c, 7, 1, act="relu6"),   # the sub-model input feeds the conv and the residual Add (int16)
        ClassifierHead(c, 3),               # normal / imbalance / bearing-fault logits
    ]
