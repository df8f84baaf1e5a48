"""One residual block with an explicit cache whose depthwise conv (the cache's reader) runs at 16 bits in an 8-bit
model (tests/test_spec_hooks.py): the locked streaming graph must give that reader its own 16-bit scale."""

from models.tcn import ResidualTemporalBlock

NAME = "hooks_explicit"
STREAMING = "explicit"
CONFIG = {"channels": 8, "expand": 16, "kernel_size": 3, "dilation": 2, "sequence_length": 12, "seed": 3,
          "calibration_sequences": 4, "calibration_window": 2, "sequences": 2}


def build_submodels(config):
    return [ResidualTemporalBlock(config["channels"], config["expand"], config["kernel_size"], config["dilation"],
                                  gate=False)]


def quant_setting(setting, target):
    from esp_ppq.api import get_target_platform

    setting.quantize_activation_setting.calib_algorithm = "minmax"  # quicker than the default "kl" in a test
    setting.dispatching_table.append("/depthwise/depthwise.0/Conv", get_target_platform(target, 16))
