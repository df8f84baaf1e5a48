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


def libm(fn, values) -> np.ndarray:
    """A float32 libm function (``expf``, ``logf``, ``sqrtf``, ``powf``), correctly rounded: computed in float64,
    rounded to float32 once."""
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # NaN and inf as libm gives them
        return fn(np.asarray(values).astype(np.float64)).astype(F32)


def in_order(values: np.ndarray, ufunc=np.add, dtype=F32) -> np.ndarray:
    """The last axis folded one element after the other in ``dtype`` (the C loop's order), not pairwise."""
    if values.shape[-1] == 0:
        return np.full(values.shape[:-1], ufunc.identity, dtype=dtype)
    return ufunc.accumulate(values.astype(dtype), axis=-1, dtype=dtype)[..., -1]


def sqrt_newton(x: np.ndarray, node: Node) -> np.ndarray:
    """``dl::math::sqrt_newton`` in float32: Newton steps from ``x`` until two agree within 1e-5."""
    shape = np.shape(x)
    x = np.asarray(x, dtype=F32).reshape(-1)
    result = x.copy()
    active = x != 0
    for _ in range(200):
        if not active.any():
            return result.reshape(shape)
        last = result[active]
        new = ((last + x[active] / last) * F32(0.5)).astype(F32)
        result[active] = new
        still = np.abs(new - last) > F32(0.00001)
        idx = np.flatnonzero(active)
        active[idx[~still]] = False
    # float32 Newton steps for a square root end on a fixed point; the bound only keeps a surprise from hanging
    raise EngineError(f"{node.op_type} {node.name!r}: ESP-DL's sqrt_newton did not settle on {x[active][0]!r} "
                      "within 200 steps (the chip would go on looping)",
                      "scale the input down (a larger input exponent) so the norm stays small")


def float_inputs(eng: Engine, node: Node, names) -> None:
    """Refuse a node ESP-PPQ left in float32 (quant_type F32) that reads an integer tensor: ESP-DL's float code
    reads the bytes as float32 (no DequantizeLinear was inserted before it)."""
    for name in names:
        info = eng.model.tensor_info(name)
        if info is not None and info.dtype in ("int8", "int16"):
            raise EngineError(
                f"{node.op_type} {node.name!r} runs in float32 (quant_type F32) but reads {name!r}, an {info.dtype} "
                "tensor, without a DequantizeLinear: the chip would read its bytes as floats",
                "give the float op its own float input, or quantize it (ESP-PPQ dispatching)")


def dl_sigmoid(t: np.ndarray) -> np.ndarray:
    """``dl::math::sigmoid``: ``1.0 / (1.0 + expf(-x))`` -- expf in float32, the division in double, then float."""
    e = np.exp(-np.asarray(t, dtype=F32)).astype(np.float64)
    return (1.0 / (1.0 + e)).astype(F32)
