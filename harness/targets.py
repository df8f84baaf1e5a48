"""Per-target numerics: how each chip rounds and how wide its integers are.

A reference quantized for one chip is not valid for another: esp32p4 rounds
half to even and quantizes conv weights per channel, esp32s3 rounds half up
(``floor(x + 0.5)`` in float32) with per-tensor weights. Everything in the
harness that turns floats into integers goes through this module.
"""

from __future__ import annotations

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

    def shift_round(self, acc: np.ndarray, shift: int | np.ndarray) -> np.ndarray:
        """Integer ``acc / 2**shift`` rounded like the chip's shifts (``shift <= 0``: exact left shift)."""
        acc = np.asarray(acc, dtype=np.int64)
        shift = np.asarray(shift, dtype=np.int64)
        left = acc << np.maximum(-shift, 0)
        s = np.maximum(shift, 0)
        half = np.where(s > 0, np.int64(1) << np.maximum(s - 1, 0), 0)
        if self.rounding == "half_up":
            right = (acc + half) >> s
        else:
            q = acc >> s
            r = acc - (q << s)
            right = q + ((r > half) | ((r == half) & (s > 0) & ((q & 1) == 1)))
        return np.where(shift > 0, right, left)

    def requantize(self, values: np.ndarray, shift: int, bits: int) -> np.ndarray:
        """Move integers to an exponent ``shift`` higher (``assign`` between tensors on the chip), saturating."""
        lo, hi = int_range(bits)
        return np.clip(self.shift_round(values, shift), lo, hi).astype(int_dtype(bits))

    def ppq_platform(self, bits: int):
        """The ESP-PPQ ``TargetPlatform`` for this chip at ``bits`` (imports esp-ppq)."""
        from esp_ppq.api import get_target_platform

        return get_target_platform(self.name, bits)


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
