"""Loads the harness's pytest plugin (options, parametrization, stage fixtures)."""

pytest_plugins = ["harness.plugin"]
