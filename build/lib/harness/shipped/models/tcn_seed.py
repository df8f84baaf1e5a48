"""Seed TCN with explicit caches: each sub-model's ``streaming_forward`` carries its own cache."""

from models.tcn import SEED_CONFIG, build_tcn

NAME = "tcn_seed"
STREAMING = "explicit"
CONFIG = {**SEED_CONFIG, "seed": 0, "calibration_window": 3}


def build_submodels(config):
    return build_tcn(config)
