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



def compare(expected: QTensor, actual: QTensor, window: int, tolerance_lsb: int = 0,
            rows: list[int] | None = None) -> Comparison:
    """Compare ``[S, T, C]`` integer streams; differences are counted in LSB of the expected exponent.

    ``rows``: the data are per-window outputs ``[S, judged, values]`` and row i is window ``rows[i]``
    (its divergence is placed at that window's last frame; ``channel`` is the value's index).
    """
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
        j = rows[t] if rows is not None else t // window
        first = {
            "sequence": s,
            "window": j,
            "frame": (j + 1) * window - 1 if rows is not None else t,
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


@dataclass(frozen=True)
class Verdict:
    """One question asked of every sub-model's output: ``streaming`` exactness or arithmetic ``fidelity``.

    Each module's output is compared with its own tolerance; the verdict passes when all do. The scalar
    figures are those of the first failing module, or of the last module (end to end) when all pass.
    """

    name: str
    comparisons: tuple[Comparison, ...]
    reason: str = ""
    limit: str = "tolerance"  # what the allowed difference is called: a "tolerance" or a "bound"

    @property
    def failing_module(self) -> int | None:
        return next((k for k, c in enumerate(self.comparisons) if not c.passed), None)

    @property
    def passed(self) -> bool:
        return self.failing_module is None

    @property
    def module(self) -> int:
        return len(self.comparisons) - 1 if self.passed else self.failing_module

    def summary(self) -> str:
        c = self.comparisons[self.module]
        head = f"{self.name} verdict {'pass' if self.passed else 'FAIL'}"
        return f"{head} (module {self.module} of {len(self.comparisons)}): {c.summary()}"

    def fields(self) -> dict:
        """session.json fields: ``<name>_mismatches``, ``<name>_max_abs_lsb``, ``<name>_tolerance_lsb`` ..."""
        c = self.comparisons[self.module]
        where = None if c.first_divergence is None else {"module": self.module, **c.first_divergence}
        return {
            f"{self.name}_verdict": "pass" if self.passed else "fail",
            f"{self.name}_module": self.module,
            f"{self.name}_mismatches": c.mismatches,
            f"{self.name}_max_abs_lsb": c.max_abs_lsb,
            f"{self.name}_{self.limit}_lsb": c.tolerance_lsb,
            f"{self.name}_exponent_match": c.exponent_match,
            f"{self.name}_first_divergence": where,
            f"{self.name}_per_module": [{"max_abs_lsb": m.max_abs_lsb, f"{self.limit}_lsb": m.tolerance_lsb,
                                         "mismatches": m.mismatches} for m in self.comparisons],
            **({f"{self.name}_reason": self.reason} if self.reason else {}),
        }


def _rows_of(k: int, n: int, rows: list[int] | None) -> list[int] | None:
    return rows if k == n - 1 else None  # only the last module can have a per-window output


def streaming_verdict(offline: list[QTensor], streamed: list[QTensor], window: int, tolerance: int,
                      reason: str = "", rows: list[int] | None = None) -> Verdict:
    """Streaming exactness: every module's streamed output equals the same device's offline one (``tolerance``).

    ``rows``: the last module's output is per window, compared on these windows (``harness.verdict.per_window``).
    """
    n = len(offline)
    return Verdict("streaming", tuple(compare(o, s, window, tolerance, _rows_of(k, n, rows))
                                      for k, (o, s) in enumerate(zip(offline, streamed))), reason)


def fidelity_verdict(simulated: list[QTensor], device: list[QTensor], bounds, reason: str, window: int | None = None,
                     rows: list[int] | None = None) -> Verdict:
    """Arithmetic fidelity: every module's offline device output is within its bound of ESP-PPQ's simulation.

    Whole sequences are one window; a per-window last module is compared on the prefixes that end with
    ``rows`` (windows of ``window`` frames).
    """
    n = len(simulated)

    def compared(k: int) -> Comparison:
        per_window = _rows_of(k, n, rows)
        whole = window if per_window is not None else simulated[k].data.shape[1]
        return compare(simulated[k], device[k], whole, bounds[k], per_window)

    return Verdict("fidelity", tuple(compared(k) for k in range(n)), reason, "bound")
