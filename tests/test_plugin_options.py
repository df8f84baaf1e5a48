"""The plugin as users meet it: options with same-named fixtures, documented fixtures, true defaults in --help."""

import pytest

from harness.plugin.options import OPTIONS
from tests.conftest import run_pytest


@pytest.mark.parametrize("dest", OPTIONS)
def test_every_option_has_a_same_named_fixture(request, dest):
    assert request.getfixturevalue(dest) == request.config.getoption(dest)


def test_help_shows_the_harness_options_with_their_real_defaults():
    proc = run_pytest("--help")
    text = " ".join(proc.stdout.split())  # argparse wraps help lines
    for option, default in [("--window-sizes", "Default: 1,3,6"), ("--hil-dut", "Default: auto"),
                            ("--hil-cache-dir", "Default: .hil-cache"), ("--artifacts-dir", "Default: artifacts")]:
        section = text[text.index(option):]
        assert default in section[:400], (option, section[:400])
    assert "--cache-dir" in text and "--hil-cache-dir" in text  # pytest-embedded's own is left alone


def test_fixtures_lists_the_case_fixtures():
    proc = run_pytest("--fixtures", "-q")
    for name in ("hil_case", "hil_model", "hil_session", "quantized_model", "streaming_exports", "hil_cache_dir"):
        assert f"\n{name}" in proc.stdout, name
