"""Auto-streaming int8 residual block fed directly by the sub-model input (y = relu(bn(pw(dw_k5(pad(x))))) + x), then a 4-class head."""

from blocks import ClassifierHead, ResidualDW

NAME = "zoo_resid_in_auto"
STREAMING = "auto"          # ESP-PPQ auto_streaming inserts the StreamingCache ops
CONFIG = {
    "channels": 8,               # input features per frame (e.g. 8 log-mel bands)
    "sequence_length": 15,       # frames per offline sequence; windows 1, 3, 5 divide it
    "kernel": 5,                 # causal depthwise kernel (context 4 frames)
    "dilation": 1,
    "classes": 4,                # per-frame logits, softmax-free
    "bits": 8,
    "seed": 11,
    "calibration_sequences": 4,
    "sequences": 2,
}


def build_submodels(config):
    c = config["channels"]
    # ON PURPOSE: the sub-model input feeds the causal dw conv AND the residual Add
    # (ESP-PPQ 1.3.12's auto-streaming rewires that Add to the StreamingCache output)
    return [
        ResidualDW(c, config["kernel"], config["dilation"], act="relu"),
        ClassifierHead(c, config["classes"]),
    ]
