"""LayerNormalization, RMSNormalization and LpNormalization as ESP-DL computes them on integers.

Each normalizes the trailing axes from ``axis`` of every leading index, in float32 (dl_module_<op>.hpp), in the
order the C loops add, with ESP-DL's own square roots (``sqrt_newton``, ``fast_inv_sqrt``), and rounds the result
to the output exponent like the target.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.emulator.common import F32, EngineError, Plan, dl_scale, in_order, saturate, sqrt_newton
from harness.emulator.ops import builds
from harness.espdl.reader import Node

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


def _rows(x: np.ndarray, axis: int) -> np.ndarray:
    """``x`` as [outer, inner]: the leading axes before ``axis`` against the rest (C order)."""
    ax = axis % x.ndim
    return x.reshape(int(np.prod(x.shape[:ax], dtype=np.int64)), -1)






@builds("LayerNormalization")
def build_layer_norm(eng: Engine, node: Node) -> Plan:
    """``dl_module_layer_normalization.hpp`` (integer path): mean ``fl32(int_sum / n)`` (the division in double),
    variance the in-order float32 sum of ``(x - mean)^2`` times ``2^(2 in)`` over n, ``1 / sqrt_newton(var + eps)``,
    then ``round((fl32(x 2^in) - mean 2^in) * inv * scale 2^s + bias 2^b) * 2^-out)``; the optional Mean and
    InvStdDev outputs rounded to their exponents."""
    eng.bits(node)  # S8/S16 only
    out_type = eng.out_type(node)
    axis = int(node.attributes.get("axis", -1))
    eps = F32(node.attributes.get("epsilon", 1e-5))
    scale_t, bias_t = eng.input_const(node, 1), eng.input_const(node, 2)
    if (len(node.inputs) > 1 and node.inputs[1] and scale_t is None) or \
            (len(node.inputs) > 2 and node.inputs[2] and bias_t is None):
        raise EngineError(f"LayerNormalization {node.name!r}: scale and bias must be constants",
                          "re-export the model with esp-ppq")
    in_scale = dl_scale(eng.tensor_exponent(node.inputs[0], node))
    out_scale = dl_scale(-eng.tensor_exponent(node.outputs[0], node))
    gamma = None if scale_t is None else (np.asarray(scale_t.data).reshape(-1).astype(F32)
                                          * dl_scale(int((scale_t.exponents or (0,))[0]))).astype(F32)
    beta = None if bias_t is None else (np.asarray(bias_t.data).reshape(-1).astype(F32)
                                        * dl_scale(int((bias_t.exponents or (0,))[0]))).astype(F32)
    extra = [(k, eng.out_type(node, k), dl_scale(-eng.tensor_exponent(node.outputs[k], node)))
             for k in range(1, len(node.outputs)) if node.outputs[k]]

    def run(x):
        rows = _rows(x, axis)
        n = rows.shape[1]
        total = rows.astype(np.int64).sum(axis=1)  # an int in C: no row of int8/int16 here reaches 2^31
        mean = (total.astype(np.float64) / n).astype(F32)
        diff = (rows.astype(F32) - mean[:, None]).astype(F32)
        variance = in_order((diff * diff).astype(F32))
        mean_scaled = (mean * in_scale).astype(F32)
        variance = ((variance * (in_scale * in_scale)).astype(F32) / F32(n)).astype(F32)
        inv_std = (F32(1) / sqrt_newton((variance + eps).astype(F32), node)).astype(F32)
        normalized = (((rows.astype(F32) * in_scale).astype(F32) - mean_scaled[:, None]) * inv_std[:, None])
        result = normalized.astype(F32)
        if gamma is not None:
            result = (result * gamma[None, :]).astype(F32)
        if beta is not None:
            result = (result + beta[None, :]).astype(F32)
        outputs = [saturate(eng.target.round((result * out_scale).astype(F32)), out_type).reshape(x.shape)]
        lead = x.shape[:axis % x.ndim] + (1,) * (x.ndim - axis % x.ndim)
        for k, kind, rescale in extra:
            value = ((mean * rescale) * in_scale) if k == 1 else (inv_std * rescale)
            outputs.append(saturate(eng.target.round(value.astype(F32)), kind).reshape(lead))
        return outputs

    return Plan(node, (node.inputs[0],), tuple(node.outputs), run)


def _inv_sqrt(x: np.ndarray) -> np.ndarray:
    """``dl::math::fast_inv_sqrt`` with ``DL_FAST_MATH`` 0 (ESP-DL's setting): ``1.0f / sqrtf(x)``."""
    return (F32(1) / np.sqrt(np.asarray(x, dtype=F32))).astype(F32)


@builds("RMSNormalization")
def build_rms_norm(eng: Engine, node: Node) -> Plan:
    """``dl_module_rms_normalization.hpp``: the integer sum of squares (``reduce_l2``), ``fl32(sum) * 2^(2 in) / n``,
    ``1 / sqrtf(. + eps)`` times ``2^in * 2^-out``, then ``round(x * rms * scale)`` with the float32 scale."""
    eng.bits(node)
    out_type = eng.out_type(node)
    axis = int(node.attributes.get("axis", -1))
    eps = F32(node.attributes.get("epsilon", 1e-5))
    scale_t = eng.input_const(node, 1)
    if scale_t is None:
        raise EngineError(f"RMSNormalization {node.name!r}: the scale must be a constant", "re-export with esp-ppq")
    gamma = np.asarray(scale_t.data).reshape(-1)
    if gamma.dtype != np.float32:  # ESP-DL reads it as float*
        gamma = (gamma.astype(F32) * dl_scale(int((scale_t.exponents or (0,))[0]))).astype(F32)
    in_scale = dl_scale(eng.tensor_exponent(node.inputs[0], node))
    factor = F32(in_scale * dl_scale(-eng.tensor_exponent(node.outputs[0], node)))
    in_sq = F32(in_scale * in_scale)

    def run(x):
        rows = _rows(x, axis)
        sum_sq = (rows.astype(np.int64) ** 2).sum(axis=1)
        mean_sq = ((sum_sq.astype(F32) * in_sq).astype(F32) / F32(rows.shape[1])).astype(F32)
        rms = (_inv_sqrt((mean_sq + eps).astype(F32)) * factor).astype(F32)
        result = ((rows.astype(F32) * rms[:, None]).astype(F32) * gamma[None, :]).astype(F32)
        return [saturate(eng.target.round(result), out_type).reshape(x.shape)]

    return Plan(node, (node.inputs[0],), node.outputs[:1], run)


@builds("LpNormalization")
def build_lp_norm(eng: Engine, node: Node) -> Plan:
    """``dl_module_lp_normalization.hpp`` on the raw integers (the input exponent cancels): p=1 the float32 sum of
    ``|x|``, p=2 ``1 / sqrtf`` of the integer sum of squares; times 2^-out; ``round(x * inv)``; a zero norm gives 0."""
    eng.bits(node)
    out_type = eng.out_type(node)
    axis = int(node.attributes.get("axis", -1))
    p = int(node.attributes.get("p", 2))
    if p not in (1, 2):
        raise EngineError(f"LpNormalization {node.name!r}: p={p}; ONNX and ESP-DL define p 1 and 2",
                          "use p=1 or p=2")
    out_scale = dl_scale(-eng.tensor_exponent(node.outputs[0], node))

    def run(x):
        v = np.moveaxis(x, axis % x.ndim, -1)
        if p == 1:
            norm = in_order(np.abs(v.astype(F32)))
            inv = np.where(norm > 0, F32(1) / np.where(norm > 0, norm, F32(1)), F32(0)).astype(F32)
        else:
            norm = (v.astype(np.int64) ** 2).sum(axis=-1).astype(F32)
            inv = np.where(norm > 0, _inv_sqrt(np.where(norm > 0, norm, F32(1))), F32(0)).astype(F32)
        inv = (inv * out_scale).astype(F32)
        y = saturate(eng.target.round((v.astype(F32) * inv[..., None]).astype(F32)), out_type)
        y = np.where(inv[..., None] > 0, y, np.zeros_like(y))
        return [np.ascontiguousarray(np.moveaxis(y, -1, axis % x.ndim))]

    return Plan(node, (node.inputs[0],), node.outputs, run)
