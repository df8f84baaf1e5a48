"""Loads the harness's pytest plugin when the package is not installed (installed, its pytest11 entry point does)."""

from importlib.metadata import entry_points

if not any(ep.value == "harness.plugin.hooks" for ep in entry_points(group="pytest11")):
    pytest_plugins = ["harness.plugin.hooks"]
