"""Resize on [N, W, C] / [N, H, W, C]: ESP-DL's nearest and linear kernels (dl_base_resize.cpp), int8 only.

Nearest takes input row ``min(int(y * (1 / scale)), H - 1)`` (ESP-DL ignores ``nearest_mode`` and the coordinate
transformation) and moves it to the output exponent with a rounding shift. Linear computes in float32: the input
dequantized (``x * 2^in``), ``linear_coeffs``' floor-and-clamp weights, a row pass then a column pass, and
``round(v * 2^-out)``. ESP-DL's int16 ``resize`` is empty (it writes nothing) and cubic is not implemented: refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.emulator.common import F32, EngineError, Plan, dl_scale, saturate
from harness.emulator.ops import builds
from harness.espdl.reader import Node

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


def _coefficients(out_length: int, in_length: int, scale_inv: np.float32, align_corners: bool):
    """``linear_coeffs`` for every output position: (left index, left weight, right weight), float32."""
    out_x = np.arange(out_length, dtype=F32)
    fx = out_x * scale_inv if align_corners else (out_x + F32(0.5)) * scale_inv - F32(0.5)
    fx = fx.astype(F32)
    left = np.floor(fx).astype(np.int64)
    fx = (fx - left.astype(F32)).astype(F32)
    low = left < 0
    left, fx = np.where(low, 0, left), np.where(low, F32(0), fx)
    high = left >= in_length - 1
    left, fx = np.where(high, in_length - 2, left), np.where(high, F32(1), fx)
    return left, (F32(1) - fx).astype(F32), fx.astype(F32)


@builds("Resize")
def build_resize(eng: Engine, node: Node) -> Plan:
    where = f"Resize {node.name!r}"
    mode = node.attributes.get("mode") or "nearest"
    if eng.bits(node) != 8:
        raise EngineError(f"{where} at 16 bits: ESP-DL 3.3.9's resize<int16_t> is empty (the chip writes nothing)",
                          "export the Resize at 8 bits (a per-layer int8 setting) or upsample another way")
    if mode not in ("nearest", "linear"):
        raise EngineError(f"{where}: mode {mode!r}; ESP-DL implements nearest and linear only",
                          "export with mode='nearest' or 'linear'")
    out_type = eng.out_type(node)
    align = node.attributes.get("coordinate_transformation_mode") == "align_corners"
    scales_t = eng.input_const(node, 2)
    sizes_t = eng.input_const(node, 3)
    scales = None if scales_t is None or np.asarray(scales_t.data).size == 0 else \
        np.asarray(scales_t.data, dtype=F32).reshape(-1)
    sizes = None if sizes_t is None else np.asarray(sizes_t.data, dtype=np.int64).reshape(-1)
    if scales is None and sizes is None:
        raise EngineError(f"{where} has neither constant scales nor sizes", "re-export the model with esp-ppq")
    e_in, e_out = eng.tensor_exponent(node.inputs[0], node), eng.tensor_exponent(node.outputs[0], node)
    move = eng.target.shifter(e_out - e_in)

    def geometry(x):
        spatial = x.shape[1:-1]  # NWC / NHWC: scales and sizes are NCW / NCHW
        if sizes is not None:
            outs = [int(s) for s in sizes[2:2 + len(spatial)]]
            factors = [F32(o) / F32(i) for o, i in zip(outs, spatial)]
        else:
            factors = [F32(s) for s in scales[2:2 + len(spatial)]]
            outs = [int(F32(i) * f) for i, f in zip(spatial, factors)]
        if mode == "linear" and align:
            factors = [F32(o - 1) / F32(i - 1) for o, i in zip(outs, spatial)]
        return spatial, outs, [F32(F32(1) / f) for f in factors]

    def nearest(x):
        spatial, outs, inverse = geometry(x)
        if len(spatial) == 2 and all(f == 2 for f in (F32(1) / inverse[0], F32(1) / inverse[1])):
            index = [np.arange(o) // 2 for o in outs]  # the 2x2 kernel
        else:
            index = [np.minimum((np.arange(o, dtype=F32) * inv).astype(np.int64), n - 1)
                     for o, inv, n in zip(outs, inverse, spatial)]
        y = x[:, index[0]] if len(spatial) == 1 else x[:, index[0]][:, :, index[1]]
        return saturate(move(y.astype(np.int64)), out_type)

    def linear(x):
        spatial, outs, inverse = geometry(x)
        if min(spatial) < 2:
            raise EngineError(f"{where}: linear resize of an axis of length 1 reads before the tensor on the chip "
                              "(linear_coeffs clamps to index -1)", "use nearest for that axis")
        d = x.astype(F32) * dl_scale(e_in)
        inv_out = dl_scale(-e_out)
        lw, lw0, lw1 = _coefficients(outs[-1], spatial[-1], inverse[-1], align)
        if len(spatial) == 1:
            v = d[:, lw] * lw0[None, :, None] + d[:, lw + 1] * lw1[None, :, None]
        else:
            rows = d[:, :, lw] * lw0[None, None, :, None] + d[:, :, lw + 1] * lw1[None, None, :, None]
            lh, lh0, lh1 = _coefficients(outs[0], spatial[0], inverse[0], align)
            v = rows[:, lh] * lh0[None, :, None, None] + rows[:, lh + 1] * lh1[None, :, None, None]
        return saturate(eng.target.round(v.astype(F32) * inv_out), out_type)

    def run(x):
        if x.ndim not in (3, 4):
            raise EngineError(f"{where} on a rank-{x.ndim} input: ESP-DL resizes [N, W, C] and [N, H, W, C]",
                              "resize a 3-D or 4-D tensor")
        return [nearest(x) if mode == "nearest" else linear(x)]

    return Plan(node, (node.inputs[0],), node.outputs, run)
