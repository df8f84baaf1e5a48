"""Softmax and LogSoftmax: ESP-DL writes float32 (dl_module_softmax.hpp, dl_module_log_softmax.hpp).

int8: a 256-entry table of ``expf(2^e * (i - 128))`` (no maximum subtracted), summed in float32 along the axis
in order, each entry divided by the sum (LogSoftmax: ``2^e * x - logf(sum)``). int16: the input as float32
(``2^e * x``), the axis maximum subtracted, ``expf``, the same in-order sum and division (LogSoftmax:
``x - max - logf(sum)``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.emulator.common import F32, EngineError, Plan, dl_scale, in_order, libm
from harness.emulator.ops import builds
from harness.espdl.reader import Node

if TYPE_CHECKING:
    from harness.emulator.engine import Engine






@builds("Softmax", "LogSoftmax")
def build_softmax(eng: Engine, node: Node) -> Plan:
    bits = eng.bits(node)
    info = eng.model.tensor_info(node.outputs[0])
    if info is not None and info.dtype != "float32":
        raise EngineError(f"{node.op_type} {node.name!r} writes {info.dtype}; ESP-DL writes float32",
                          "re-export the model with esp-ppq")
    log = node.op_type == "LogSoftmax"
    axis = int(node.attributes.get("axis", -1))
    scale = dl_scale(eng.tensor_exponent(node.inputs[0], node))
    table = libm(np.exp, scale * np.arange(-128, 128, dtype=F32)) if bits == 8 else None

    def run(x):
        if x.ndim == 0:
            return [np.array(0.0 if log else 1.0, F32)]
        ax = axis % x.ndim
        v = np.moveaxis(x, ax, -1)
        if bits == 8:
            exps = table[v.astype(np.int64) + 128]
            total = in_order(exps)[..., None]
            y = (scale * v.astype(F32) - libm(np.log, total)) if log else exps / total
        else:
            f = scale * v.astype(F32)
            shifted = (f - f.max(axis=-1, keepdims=True)).astype(F32)
            exps = libm(np.exp, shifted)
            total = in_order(exps)[..., None]
            y = (shifted - libm(np.log, total)) if log else exps / total
        return [np.ascontiguousarray(np.moveaxis(y.astype(F32), -1, ax))]

    return Plan(node, (node.inputs[0],), node.outputs, run)
