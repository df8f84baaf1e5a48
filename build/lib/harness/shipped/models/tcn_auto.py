"""Seed TCN exported with ESP-PPQ ``auto_streaming``: only the plain causal ``forward`` is used."""

from models.tcn import SEED_CONFIG, build_tcn

NAME = "tcn_auto"
STREAMING = "auto"
CONFIG = {**SEED_CONFIG, "seed": 1}


def build_submodels(config):
    return build_tcn(config)
