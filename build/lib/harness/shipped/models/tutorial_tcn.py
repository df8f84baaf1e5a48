"""ESP-DL's streaming-tutorial TCN: auto-streaming plus a manual streaming table; one output per window."""

from models.tutorial import TUTORIAL_CONFIG, build_tutorial_tcn, classifier_cache

NAME = "tutorial_tcn"
STREAMING = "auto"
CONFIG = {**TUTORIAL_CONFIG, "seed": 3}


def build_submodels(config):
    return build_tutorial_tcn(config)


def streaming_table(config):
    return classifier_cache(config)
