"""Per-target numerics: how each chip rounds and how wide its integers are.

A reference quantized for one chip is not valid for another: esp32p4 rounds
half to even and quantizes conv weights per channel, esp32s3 rounds half up
(``floor(x + 0.5)`` in float32) with per-tensor weights. Everything in the
harness that turns floats into integers goes through this module.
"""

from __future__ import annotations

import functools

from dataclasses import dataclass

import numpy as np

from harness.errors import ConfigError

_INT_RANGE = {8: (-128, 127), 16: (-32768, 32767)}


@dataclass(frozen=True)
class Target:
    """One supported chip and its integer arithmetic."""

    name: str
    rounding: str  # "half_even" or "half_up"
    per_channel_weights: bool

    def round(self, x: np.ndarray) -> np.ndarray:
        """Round float32 values to integers the way this chip does (ties included)."""
        x = np.asarray(x, dtype=np.float32)
        if self.rounding == "half_even":
            return np.rint(x)
        return np.floor(x + np.float32(0.5))

    def quantize(self, x: np.ndarray, exponent: int, bits: int) -> np.ndarray:
        """``clip(round(x * 2**-exponent))`` as int8/int16, scaled in float32 like the chip."""
        lo, hi = int_range(bits)
        scaled = np.asarray(x, dtype=np.float32) * np.float32(2.0 ** -exponent)
        return np.clip(self.round(scaled), lo, hi).astype(int_dtype(bits))

    def shifter(self, shift) -> "Shifter":
        """``acc / 2**shift`` rounded like the chip's shifts, for a scalar or per-channel (last axis) shift."""
        if isinstance(shift, (int, np.integer)):
            return _scalar_shifter(int(shift), self.rounding)  # prepared once: the same few shifts recur per frame
        return Shifter(shift, self.rounding)

    def requantize(self, values: np.ndarray, shift: int, bits: int) -> np.ndarray:
        """Move integers to an exponent ``shift`` higher (``assign`` between tensors on the chip), saturating."""
        lo, hi = int_range(bits)
        return np.clip(self.shifter(shift)(values), lo, hi).astype(int_dtype(bits))

    def ppq_platform(self, bits: int):
        """The ESP-PPQ ``TargetPlatform`` for this chip at ``bits`` (imports esp-ppq)."""
        from esp_ppq.api import get_target_platform

        return get_target_platform(self.name, bits)


class Shifter:
    """ESP-DL's ``shift_and_round``, prepared once for a shift: ``shift <= 0`` is an exact left shift.

    Half up adds half and shifts (``tie728`` round macro, C ``shift_and_round``);
    half to even rounds a remainder of exactly half to the even quotient (P4 ``vxrm``).
    """

    def __init__(self, shift, rounding: str):
        s = np.asarray(shift, dtype=np.int64)
        self.left = np.maximum(-s, 0)
        self.right = np.maximum(s, 0)
        half = np.where(s > 0, np.left_shift(np.int64(1), np.maximum(s - 1, 0)), 0).astype(np.int64)
        # half up: (acc + half) >> s.  half to even: (acc + half - 1 + quotient's low bit) >> s, which
        # carries exactly when the remainder is above half, or equal to it with an odd quotient.
        self.even = rounding == "half_even"
        self.offset = np.where(s > 0, half - 1, 0) if self.even else half
        self.odd_bit = (s > 0).astype(np.int64)
        self.trivial = bool(np.all(s == 0))
        self.any_left = bool(np.any(s < 0))
        self.scale = np.ldexp(1.0, -s)  # 2**-shift, exact in float64

    def exact_f64(self, acc: np.ndarray) -> np.ndarray:
        """The same rounding on float64 accumulators that hold integers below 2**53 (a float matmul's result):
        ``acc * 2**-shift`` is exact, so rint (half to even) or floor(+0.5) (half up) round it as the integer
        shifts do. Returns float64 integers; callers saturate before converting."""
        scaled = acc * self.scale
        if self.even:
            return np.rint(scaled, out=scaled)
        scaled += 0.5
        return np.floor(scaled, out=scaled)

    def __call__(self, acc: np.ndarray) -> np.ndarray:
        if self.trivial:
            return acc
        acc = np.asarray(acc).astype(np.int64, copy=False)
        if self.any_left:
            acc = acc << self.left
        if self.even:
            return (acc + self.offset + ((acc >> self.right) & self.odd_bit)) >> self.right
        return (acc + self.offset) >> self.right


@functools.lru_cache(maxsize=256)
def _scalar_shifter(shift: int, rounding: str) -> Shifter:
    return Shifter(shift, rounding)


TARGETS: dict[str, Target] = {
    "esp32p4": Target("esp32p4", "half_even", per_channel_weights=True),
    "esp32s3": Target("esp32s3", "half_up", per_channel_weights=False),
}


def get_target(name: str) -> Target:
    """Look a target up by name, or fail with the list of supported ones."""
    try:
        return TARGETS[name.strip().lower()]
    except KeyError:
        raise ConfigError(
            f"unknown target '{name}'",
            f"use one of: {', '.join(TARGETS)} (e.g. --target esp32p4)",
        ) from None


def int_range(bits: int) -> tuple[int, int]:
    """Inclusive integer range of a ``bits``-wide activation."""
    try:
        return _INT_RANGE[bits]
    except KeyError:
        raise ConfigError(f"unsupported bit width {bits}", "use bits = 8 or 16") from None


def int_dtype(bits: int) -> np.dtype:
    """numpy dtype holding a ``bits``-wide activation."""
    int_range(bits)
    return np.dtype(np.int8 if bits == 8 else np.int16)
