"""Per-target rounding: the two chips disagree exactly on ties, and that must show."""

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.targets import get_target, int_range


def test_ties_follow_each_targets_rounding():
    ties = np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5], dtype=np.float32)
    assert get_target("esp32p4").quantize(ties, 0, 8).tolist() == [-2, -2, 0, 0, 2, 2]
    assert get_target("esp32s3").quantize(ties, 0, 8).tolist() == [-2, -1, 0, 1, 2, 3]


def test_half_up_adds_one_half_in_float32():
    # 0.49999997f + 0.5f rounds to 1.0f in float32; float64 arithmetic would give 0
    x = np.float32(0.49999997)
    assert get_target("esp32s3").quantize(np.array([x]), 0, 8).tolist() == [1]
    assert np.floor(np.float64(x) + 0.5) == 0


def test_exponent_scales_and_saturates():
    p4 = get_target("esp32p4")
    assert p4.quantize(np.array([0.25, -0.375, 100.0, -100.0]), -3, 8).tolist() == [2, -3, 127, -128]
    assert p4.quantize(np.array([1000.0]), -5, 16).dtype == np.int16
    assert p4.quantize(np.array([1e9]), 0, 16).tolist() == [int_range(16)[1]]


def test_unknown_target_names_the_supported_ones():
    with pytest.raises(ConfigError, match=r"unknown target 'esp32c3'; use one of: esp32p4, esp32s3"):
        get_target("esp32c3")
