"""AveragePool, GlobalAveragePool and MaxPool: ESP-DL's pooling on [H, W, C] views."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.emulator.common import F32, Plan, dl_scale, saturate
from harness.emulator.ops import builds

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


def _pool_geometry(node: Node, x: np.ndarray, global_pool: bool):
    """(kernel, strides, pads [hb, he, wb, we]) on a [H, W, C] view."""
    a = node.attributes
    two_d = x.ndim == 4
    if global_pool:
        k = list(x.shape[1:-1]) if two_d else [x.shape[1]]
        s, p = [1] * len(k), [0] * (2 * len(k))
    else:
        k = list(a.get("kernel_shape") or [])
        s = list(a.get("strides") or [1] * len(k))
        p = list(a.get("pads") or [0] * (2 * len(k)))
    if two_d:
        return (k[0], k[1]), (s[0], s[1]), (p[0], p[2], p[1], p[3])
    return (1, k[0]), (1, s[0]), (0, 0, p[0], p[1])


def _pool_windows(x: np.ndarray, kernel, strides, pads, fill):
    """Strided view ``[OH, OW, KH, KW, C]`` of the padded input (padding filled with ``fill``)."""
    x3 = x[0] if x.ndim == 4 else x[0][None]
    hb, he, wb, we = pads
    xp = np.pad(x3, ((hb, he), (wb, we), (0, 0)), constant_values=fill)
    kh, kw = kernel
    sh, sw = strides
    oh = (xp.shape[0] - kh) // sh + 1
    ow = (xp.shape[1] - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError("window larger than the padded input")
    s0, s1, s2 = xp.strides
    view = np.lib.stride_tricks.as_strided(xp, (oh, ow, kh, kw, xp.shape[2]), (s0 * sh, s1 * sw, s0, s1, s2),
                                           writeable=False)
    return view, oh, ow


def avgpool_scale(e_in: int, e_out: int, area: int) -> np.float32:
    """The float32 factor ESP-DL multiplies an average pool's integer window sum by.

    ``2^e_in * fl32(1 / area) * 2^-e_out`` (esp-dl: dl_base_avg_pool2d.cpp:34-35, the C path every target takes:
    ``CONFIG_ACCURATE_INFER`` is 1, dl_define_private.hpp:42). A reciprocal, not a division: for an area whose odd
    part is above 1, ``fl32(1 / area)`` is inexact, so a mean that is exactly halfway between two integers comes
    out a hair above or below it and is rounded away from the tie. ESP-PPQ divides (torch ``avg_pool``) and rounds
    the exact tie instead; the two then differ by 1 LSB (e.g. area 56: sum 651 -> 46.500004 -> 47 on the chip,
    46.5 -> 46 in ESP-PPQ's esp32p4 test value). The engine follows the chip.
    """
    return (dl_scale(e_in) * (F32(1) / F32(area))) * dl_scale(-e_out)


@builds('AveragePool', 'GlobalAveragePool')
def build_avgpool(eng: Engine, node: Node) -> Plan:
    """AveragePool / GlobalAveragePool, int8 and int16, both targets: one C routine (``avgpool2d_hwc``).

    The window sum is exact (int32; padded positions add nothing, the esp32p4 int8 ISA helper for channels % 16 == 0
    only sums); the divisor is always the full kernel area (count_include_pad=1); then
    ``sat(round(fl32(float(sum) * avgpool_scale)))`` with the target's float rounding (esp32p4 ``fcvt.w.s rne``,
    esp32s3 ``floorf(v + 0.5)``).
    """
    out_type = eng.out_type(node)
    global_pool = node.op_type == "GlobalAveragePool"
    e_in, e_out = eng.tensor_exponent(node.inputs[0], node), eng.tensor_exponent(node.outputs[0], node)
    scales: dict[int, np.float32] = {}

    def run(x):
        kernel, strides, pads = _pool_geometry(node, x, global_pool)
        view, oh, ow = _pool_windows(x.astype(np.int64), kernel, strides, pads, 0)
        total = view.sum(axis=(2, 3))  # padded positions add nothing
        area = kernel[0] * kernel[1]  # always the full kernel (count_include_pad=1 on chip)
        if area not in scales:
            scales[area] = avgpool_scale(e_in, e_out, area)
        y = eng.target.round(total.astype(F32) * scales[area])
        shape = (1, oh, ow, x.shape[-1]) if x.ndim == 4 else (1, ow, x.shape[-1])
        return [saturate(y, out_type).reshape(shape)]

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds('MaxPool')
def build_maxpool(eng: Engine, node: Node) -> Plan:
    out_type = eng.out_type(node)

    def run(x):
        kernel, strides, pads = _pool_geometry(node, x, False)
        view, oh, ow = _pool_windows(x.astype(np.int32), kernel, strides, pads, np.iinfo(np.int32).min)
        y = view.max(axis=(2, 3))  # the valid part of each window
        shape = (1, oh, ow, x.shape[-1]) if x.ndim == 4 else (1, ow, x.shape[-1])
        return [saturate(y, out_type).reshape(shape)]

    return Plan(node, (node.inputs[0],), node.outputs, run)
