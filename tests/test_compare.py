"""Verdicts: tolerance, exponent equality and where the streams first diverge."""

import numpy as np

from harness.compare import compare, first_diverging_module
from harness.tensors import QTensor


def stream(values, exponent=-6):
    return QTensor(np.asarray(values, dtype=np.int8), exponent)


def test_identical_streams_pass_exactly():
    a = stream(np.arange(24).reshape(1, 6, 4))
    r = compare(a, a, window=2)
    assert r.passed and r.max_abs_lsb == 0 and r.differing == 0 and r.snr_db is None and r.first_divergence is None


def test_first_divergence_names_window_frame_channel():
    ref = np.zeros((2, 6, 4), dtype=np.int8)
    got = ref.copy()
    got[1, 4, 3] = 2  # sequence 1, frame 4 -> window 2 at W=2
    got[1, 5, 0] = 1
    r = compare(stream(ref), stream(got), window=2, tolerance_lsb=1)
    assert not r.passed
    assert (r.mismatches, r.differing, r.max_abs_lsb) == (1, 2, 2)
    assert r.first_divergence == {"sequence": 1, "window": 2, "frame": 4, "channel": 3, "expected": 0, "actual": 2}
    assert "first at sequence 1 window 2 frame 4 channel 3" in r.summary()
    assert compare(stream(ref), stream(got), window=2, tolerance_lsb=2).passed


def test_exponent_mismatch_fails_even_with_equal_integers():
    a = stream(np.ones((1, 2, 2)), -6)
    b = stream(np.ones((1, 2, 2)), -5)
    r = compare(a, b, window=1, tolerance_lsb=10)
    assert not r.passed and not r.exponent_match and r.max_abs_lsb == 1
    assert r.summary().startswith("exponent -5 streamed vs -6 offline")


def test_first_diverging_module():
    good = stream(np.zeros((1, 2, 2)))
    bad = stream(np.ones((1, 2, 2)))
    assert first_diverging_module([good, good], [good, bad], 1, 0) == 1
    assert first_diverging_module([good, good], [good, good], 1, 0) is None
