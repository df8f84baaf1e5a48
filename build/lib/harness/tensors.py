"""Quantized tensors as the chip holds them: integers plus one power-of-two exponent.

Value = ``data * 2**exponent``. Activations are kept in the chip's layout,
time-major (NWC without the batch dimension): ``data[t, c]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QTensor:
    """Integer activation in chip layout with its exponent."""

    data: np.ndarray
    exponent: int

    def to_float(self) -> np.ndarray:
        return self.data.astype(np.float32) * np.float32(2.0**self.exponent)

    @property
    def bits(self) -> int:
        return self.data.dtype.itemsize * 8
