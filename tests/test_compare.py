"""Verdicts: tolerance, exponent equality and where the streams first diverge."""

import numpy as np

from harness.verdict.compare import compare, fidelity_verdict, streaming_verdict
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


def test_streaming_verdict_names_the_first_failing_module_and_its_first_divergence():
    good, bad = stream(np.zeros((1, 4, 2))), stream(np.zeros((1, 4, 2)))
    bad.data[0, 3, 1] = 2
    v = streaming_verdict([good, good, good], [good, bad, bad], window=2, tolerance=0)
    assert not v.passed and v.failing_module == 1 and v.module == 1
    f = v.fields()
    assert (f["streaming_verdict"], f["streaming_mismatches"], f["streaming_max_abs_lsb"]) == ("fail", 1, 2)
    assert f["streaming_first_divergence"] == {"module": 1, "sequence": 0, "window": 1, "frame": 3, "channel": 1,
                                               "expected": 0, "actual": 2}
    assert [m["mismatches"] for m in f["streaming_per_module"]] == [0, 1, 1]
    assert v.summary().startswith("streaming verdict FAIL (module 1 of 3)")
    ok = streaming_verdict([good, good], [good, good], window=2, tolerance=0)
    assert ok.passed and ok.module == 1 and ok.fields()["streaming_first_divergence"] is None


def test_fidelity_verdict_holds_each_module_to_its_own_bound():
    sim = stream(np.zeros((1, 4, 2)))
    dev = stream(np.full((1, 4, 2), 3))
    assert fidelity_verdict([sim, sim], [dev, dev], [3, 3], "int16 bound").passed
    v = fidelity_verdict([sim, sim], [dev, dev], [3, 2], "int16 bound")
    f = v.fields()
    assert not v.passed and v.failing_module == 1
    assert (f["fidelity_bound_lsb"], f["fidelity_max_abs_lsb"], f["fidelity_reason"]) == (2, 3, "int16 bound")
