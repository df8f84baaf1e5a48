"""RequantizeLinear, QuantizeLinear and DequantizeLinear: exponent changes between tensors."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.emulator.common import F32, Plan, dl_scale, saturate
from harness.emulator.ops import builds

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


@builds('RequantizeLinear', 'QuantizeLinear', 'DequantizeLinear')
def build_requant(eng: Engine, node: Node) -> Plan:
    acts, _ = eng.operands(node)
    src = node.inputs[0]
    src_info = eng.tensor_info(src, node)
    out_type = eng.out_type(node, allow_float=True)
    e_in, e_out = int(src_info.exponents[0]), eng.tensor_exponent(node.outputs[0], node)
    if out_type[0] == np.float32:  # DequantizeLinear to float: x * 2^e in float32
        scale = dl_scale(e_in)
        return Plan(node, (src,), node.outputs, lambda x: [x.astype(F32) * scale])
    if src_info.dtype == "float32":  # QuantizeLinear from float: clip(round(x * 2^-e))
        inv = dl_scale(-e_out)
        return Plan(node, (src,), node.outputs,
                     lambda x: [saturate(eng.target.round(x.astype(F32) * inv), out_type)])
    shift = eng.target.shifter(e_out - e_in)
    return Plan(node, tuple(acts), node.outputs, lambda x: [saturate(shift(x), out_type)])
