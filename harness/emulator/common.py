"""What every operator builder shares: the plan it returns, the error it raises, ESP-DL's saturation,
wrapping and float32 scale helpers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

import numpy as np

from harness.errors import HarnessError
from harness.espdl.reader import Node
from harness.targets import int_range

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


class EngineError(HarnessError):
    """A model or input the engine cannot run the way the chip would."""


INT_TYPES = {"int8": (np.int8, *int_range(8)), "int16": (np.int16, *int_range(16))}


QUANT_BITS = {"S8": 8, "S16": 16}


F32 = np.float32


def wrap(values: np.ndarray, bits: int) -> np.ndarray:
    """Keep the low ``bits`` bits, sign-extended (``bias & 0xfffff`` loaded into a 20-bit lane)."""
    half = np.int64(1) << (bits - 1)
    return ((values.astype(np.int64) + half) & ((half << 1) - 1)) - half


def dl_scale(exponent: int) -> np.float32:
    return F32(2.0**exponent)


@dataclass
class Plan:
    node: Node
    inputs: tuple[str, ...]  # activation inputs, in order
    outputs: tuple[str, ...]
    fn: Callable  # fn(*arrays) -> list of arrays
    saturations: Callable[[], int] | None = None
    reset: Callable[[], None] | None = None


def saturate(values: np.ndarray, out_type) -> np.ndarray:
    dtype, lo, hi = out_type
    return np.minimum(np.maximum(values, lo), hi).astype(dtype)


def zero_pad(x3: np.ndarray, pt: int, pb: int, pl: int, pr: int, dtype=None) -> np.ndarray:
    """``[H, W, C]`` zero-padded on H and W (np.pad is slow for tiny windows)."""
    if not (pt or pb or pl or pr):
        return x3 if dtype is None else x3.astype(dtype)
    h, w, c = x3.shape
    out = np.zeros((h + pt + pb, w + pl + pr, c), dtype=dtype or x3.dtype)
    out[pt:pt + h, pl:pl + w] = x3
    return out


def full_range(bits: int) -> np.ndarray:
    return np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64)


def axes_of(eng: Engine, node: Node, index: int = 1, attr: str = "axes"):
    if len(node.inputs) > index and node.inputs[index]:
        t = eng.const(node.inputs[index])
        if t is None:
            raise EngineError(f"{node.op_type} {node.name!r}: {attr} must be a constant", "re-export with esp-ppq")
        return [int(v) for v in np.asarray(t.data).reshape(-1)]
    value = node.attributes.get(attr)
    return None if value is None else [int(v) for v in (value if isinstance(value, list) else [value])]
