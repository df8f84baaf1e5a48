"""Equal, Greater, GreaterOrEqual, Less, LessOrEqual: ESP-DL compares the raw integers of its two inputs.

``dl_base_<op>.cpp`` (and its PIE kernels) test ``input0 <op> input1`` on the int8/int16 values without
looking at their exponents, broadcasting as the elementwise ops do, and write a bool tensor (exponent 0).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.emulator.common import EngineError, Plan
from harness.emulator.ops import builds
from harness.emulator.ops.elementwise import binary_operands
from harness.espdl.reader import Node

if TYPE_CHECKING:
    from harness.emulator.engine import Engine

_COMPARE = {"Equal": np.equal, "Greater": np.greater, "GreaterOrEqual": np.greater_equal, "Less": np.less,
            "LessOrEqual": np.less_equal}


@builds(*_COMPARE)
def build_compare(eng: Engine, node: Node) -> Plan:
    acts, operands = binary_operands(eng, node)
    info = eng.model.tensor_info(node.outputs[0])
    if info is not None and info.dtype != "bool":
        raise EngineError(f"node {node.name!r} ({node.op_type}) writes {info.dtype}; ESP-DL writes bool",
                          "re-export the model with esp-ppq")
    compare = _COMPARE[node.op_type]

    def run(*args):
        x0, x1 = operands(args)
        return [compare(x0.astype(np.int32), x1.astype(np.int32))]

    return Plan(node, tuple(acts), node.outputs, run)
