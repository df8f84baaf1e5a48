"""Kills the virtual board process in the middle of the case named by ``$HIL_KILL_CASE`` (after its set-up)."""

import os

import pytest

from harness.plugin.state import SESSION


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    if item.name == os.environ.get("HIL_KILL_CASE"):
        hil = item.config.stash[SESSION]
        target = item.callspec.params["hil_case"].target.name
        hil._boards[target].kill()  # SIGKILL: the process ends without a word
    return (yield)
