"""Stage 5: compare streamed outputs with the offline reference and give a verdict.

Follows ESP-DL's own ``Model::test()`` rules (exponents must be equal, int8
exact, int16 within one LSB) with a per-model tolerance, and says where the
streams first diverge (sequence, window, frame, channel) so a failure points
at a place, not just a count.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from harness.tensors import QTensor


@dataclass(frozen=True)
class Comparison:
    """How a streamed output differs from the offline one."""

    exponent_match: bool
    expected_exponent: int
    actual_exponent: int
    tolerance_lsb: int
    max_abs_lsb: int
    differing: int  # values that differ at all
    mismatches: int  # values beyond the tolerance
    total: int
    snr_db: float | None  # None when identical
    first_divergence: dict | None  # first value beyond tolerance: sequence, window, frame, channel, expected, actual

    @property
    def passed(self) -> bool:
        return self.exponent_match and self.mismatches == 0

    @property
    def verdict(self) -> str:
        return "pass" if self.passed else "fail"

    def summary(self) -> str:
        if not self.exponent_match:
            head = f"exponent {self.actual_exponent} streamed vs {self.expected_exponent} offline; "
        else:
            head = ""
        where = ""
        if self.first_divergence:
            d = self.first_divergence
            where = (
                f"; first at sequence {d['sequence']} window {d['window']} frame {d['frame']} channel {d['channel']}"
                f" (offline {d['expected']}, streamed {d['actual']})"
            )
        snr = "exact" if self.snr_db is None else f"SNR {self.snr_db:.1f} dB"
        return (
            f"{head}{self.mismatches}/{self.total} values beyond ±{self.tolerance_lsb} LSB, "
            f"{self.differing} differ, max |diff| {self.max_abs_lsb} LSB, {snr}{where}"
        )



def compare(expected: QTensor, actual: QTensor, window: int, tolerance_lsb: int = 0) -> Comparison:
    """Compare ``[S, T, C]`` integer streams; differences are counted in LSB of the expected exponent."""
    if expected.data.shape != actual.data.shape:
        raise ValueError(f"shape {actual.data.shape} streamed vs {expected.data.shape} offline")
    ref = expected.data.astype(np.int64)
    if actual.exponent == expected.exponent:
        got = actual.data.astype(np.int64)
    else:  # rescale to the reference's LSB, rounding away from agreement
        got = np.round(actual.data.astype(np.float64) * 2.0 ** (actual.exponent - expected.exponent)).astype(np.int64)
    diff = np.abs(got - ref)
    beyond = diff > tolerance_lsb
    first = None
    if beyond.any():
        s, t, c = (int(i) for i in np.argwhere(beyond)[0])
        first = {
            "sequence": s,
            "window": t // window,
            "frame": t,
            "channel": c,
            "expected": int(ref[s, t, c]),
            "actual": int(got[s, t, c]),
        }
    noise = float(np.sum((got - ref).astype(np.float64) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    snr = None if noise == 0 else (10 * math.log10(signal / noise) if signal > 0 else -math.inf)
    return Comparison(
        exponent_match=actual.exponent == expected.exponent,
        expected_exponent=expected.exponent,
        actual_exponent=actual.exponent,
        tolerance_lsb=tolerance_lsb,
        max_abs_lsb=int(diff.max()) if diff.size else 0,
        differing=int(np.count_nonzero(diff)),
        mismatches=int(np.count_nonzero(beyond)),
        total=int(diff.size),
        snr_db=snr,
        first_divergence=first,
    )


def first_diverging_module(expected: list[QTensor], actual: list[QTensor], window: int, tolerance_lsb: int) -> int | None:
    """Index of the first sub-model whose output already differs beyond tolerance."""
    for k, (e, a) in enumerate(zip(expected, actual)):
        if not compare(e, a, window, tolerance_lsb).passed:
            return k
    return None
