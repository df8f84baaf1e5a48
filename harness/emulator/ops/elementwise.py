"""Add, Sub, Mul and Neg: ESP-DL's elementwise kernels with their broadcasting and shifts."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.emulator.common import EngineError, F32, Plan, saturate
from harness.emulator.ops import builds

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


def binary_operands(eng: Engine, node: Node):
    """Activation names and a runner-side getter for the two operands (constants are raw initializer data)."""
    if len(node.inputs) != 2:
        raise EngineError(f"{node.op_type} {node.name!r} has {len(node.inputs)} inputs", "re-export with esp-ppq")
    acts, consts = eng.operands(node)
    fixed = [None if t is None else np.asarray(t.data) for t in consts]

    def operands(args):
        it = iter(args)
        return [f if f is not None else next(it) for f in fixed]

    return acts, operands


@builds('Add', 'Sub')
def build_addsub(eng: Engine, node: Node) -> Plan:
    acts, operands = binary_operands(eng, node)
    out_type = eng.out_type(node)
    sign = 1 if node.op_type == "Add" else -1

    def run(*args):
        x0, x1 = operands(args)
        total = x0.astype(np.int32) + sign * x1.astype(np.int32)  # raw integers, no exponent alignment
        return [saturate(total, out_type)]

    return Plan(node, tuple(acts), node.outputs, run)


def elemwise_d0(out_shape, shape0, shape1) -> int:
    """Innermost run length after ESP-DL's elementwise shape merging (``get_elemwise_operation_args``)."""
    dims = len(out_shape)
    o = list(out_shape)
    s0 = [1] * (dims - len(shape0)) + list(shape0)
    s1 = [1] * (dims - len(shape1)) + list(shape1)
    merged = dims
    for i in range(dims):
        j = i + 1
        while j < dims:
            if s0[i] == s1[i] and s0[j] == s1[j]:
                s0[i] *= s0[j]; s1[i] *= s1[j]; o[i] *= o[j]
                s0[j] = s1[j] = o[j] = 1
            elif s0[i] == 1 and s0[j] == 1:
                s1[i] *= s1[j]; o[i] *= o[j]
                s1[j] = o[j] = 1
            elif s1[i] == 1 and s1[j] == 1:
                s0[i] *= s0[j]; o[i] *= o[j]
                s0[j] = o[j] = 1
            else:
                break
            j += 1
        if j == dims:
            merged = i + 1
            break
    return o[merged - 1] if dims else 1


@builds('Mul')
def build_mul(eng: Engine, node: Node) -> Plan:
    acts, operands = binary_operands(eng, node)
    out_type = eng.out_type(node)
    bits = eng.bits(node)
    exps = [eng.tensor_exponent(name, node) if eng.const(name) is None else int((eng.const(name).exponents or (0,))[0])
            for name in node.inputs]
    mul_shift = eng.tensor_exponent(node.outputs[0], node) - exps[0] - exps[1]
    shift = eng.target.shifter(mul_shift)
    lanes = 16 if bits == 8 else 8
    rescale = F32(2.0 ** -mul_shift)
    c_path: dict[tuple, bool] = {}

    def run(*args):
        x0, x1 = operands(args)
        prod = x0.astype(np.int64) * x1.astype(np.int64)
        key = (x0.shape, x1.shape)
        if key not in c_path:
            c_path[key] = elemwise_d0(prod.shape, x0.shape, x1.shape) < lanes
        if c_path[key] and bits == 16:
            # C fallback (inner length < 8): float(x0 * x1) * 2^-shift, rounded: int16 products lose bits past 2^24
            y = eng.target.round(prod.astype(F32) * rescale)
        else:
            y = shift(prod)
        return [saturate(y, out_type)]

    return Plan(node, tuple(acts), node.outputs, run)


@builds("Neg")
def build_neg(eng: Engine, node: Node) -> Plan:
    """``dl_module_neg.hpp``: ``-x`` on the raw integers (exponent unchanged), the type's minimum to its maximum."""
    acts, _ = eng.operands(node)
    out_type = eng.out_type(node)

    def run(x):
        return [saturate(-x.astype(np.int32), out_type)]

    return Plan(node, tuple(acts), node.outputs, run)
