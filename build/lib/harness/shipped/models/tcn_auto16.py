"""Seed TCN at 16 bits (w16a16) with ESP-PPQ ``auto_streaming``: the int16 family of the default matrix."""

from models.tcn import SEED_CONFIG, build_tcn

NAME = "tcn_auto16"
STREAMING = "auto"
CONFIG = {**SEED_CONFIG, "seed": 1, "bits": 16}


def build_submodels(config):
    return build_tcn(config)
