"""Add, Sub, Mul, Div, Pow, Mod and Neg: ESP-DL's elementwise kernels with their broadcasting, shifts and
float paths (dl_base_<op>.cpp)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.emulator.common import EngineError, F32, Plan, dl_scale, float_inputs, saturate
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
    return elemwise_runs(out_shape, shape0, shape1)[0]


def elemwise_runs(out_shape, shape0, shape1) -> tuple[int, int, int]:
    """(output_d0, input0_d0, input1_d0): the innermost run lengths after ESP-DL's shape merging; a kernel
    picks its ``n_1`` / ``1_n`` / ``n_n`` variant from them."""
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
    return (o[merged - 1], s0[merged - 1], s1[merged - 1]) if dims else (1, 1, 1)


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


def _scales(eng: Engine, node: Node) -> tuple[np.float32, np.float32, np.float32]:
    """``get_elemwise_operation_args``' input0_scale, input1_scale (``DL_SCALE``) and output_rescale (``DL_RESCALE``)."""
    exps = [eng.tensor_exponent(name, node) if eng.const(name) is None else int((eng.const(name).exponents or (0,))[0])
            for name in node.inputs[:2]]
    return dl_scale(exps[0]), dl_scale(exps[1]), dl_scale(-eng.tensor_exponent(node.outputs[0], node))


@builds("Div")
def build_div(eng: Engine, node: Node) -> Plan:
    """``dl_base_div.cpp``: ``round(x0 * r / x1)`` in float32 with ``r = 2^-out * 2^in0 / 2^in1``, the operand
    order of the variant the run lengths pick (``n_1``: ``x0 * (r / x1)``; ``1_n``: ``(x0 * r) / x1``); a zero
    dividend gives 0, a zero divisor the type's extreme with the dividend's sign. int8 with a one-element operand
    uses a 256-entry table instead (a zero divisor entry 0; a zero dividend scalar gives 127 or -128)."""
    acts, operands = binary_operands(eng, node)
    out_type = eng.out_type(node)
    bits = eng.bits(node)
    s0, s1, r = _scales(eng, node)
    rescale = F32(F32(r * s0) / s1)
    lo, hi = out_type[1], out_type[2]
    rnd = eng.target.round

    def table_for(x0, x1, in0_d0):
        i = np.arange(-128, 128, dtype=F32)
        with np.errstate(divide="ignore", invalid="ignore"):
            if in0_d0 == 1:  # a scalar dividend (create_div_lut's first case)
                num = F32(F32(x0.reshape(-1)[0]) * rescale)
                table = np.where(i == 0, hi if num > 0 else lo, rnd(num / np.where(i == 0, F32(1), i)))
            else:
                scale = F32(rescale / F32(x1.reshape(-1)[0]))
                table = np.where(i == 0, 0, rnd(i * scale))
        return saturate(np.nan_to_num(table, nan=0, posinf=hi, neginf=lo), out_type)

    def run(*args):
        x0, x1 = operands(args)
        out_shape = np.broadcast_shapes(x0.shape, x1.shape)
        _, in0_d0, in1_d0 = elemwise_runs(out_shape, x0.shape, x1.shape)
        if bits == 8:  # elemwise_div<int8_t> looks at input0 first, the int16 one at input1
            variant = "1_n" if in0_d0 == 1 else "n_1" if in1_d0 == 1 else "n_n"
        else:
            variant = "n_1" if in1_d0 == 1 else "1_n" if in0_d0 == 1 else "n_n"
        a, b = (np.broadcast_to(v, out_shape).astype(F32) for v in (x0, x1))
        if bits == 8 and variant != "n_n" and (x0.size == 1 or x1.size == 1):
            table = table_for(x0, x1, in0_d0)
            return [table[(b if variant == "1_n" else a).astype(np.int64) + 128]]
        with np.errstate(divide="ignore", invalid="ignore"):
            y = a * (rescale / b) if variant == "n_1" else (a * rescale) / b
            y = rnd(np.nan_to_num(y, nan=0, posinf=hi, neginf=lo))
        y = np.where(a == 0, 0, np.where(b == 0, np.where(a > 0, hi, lo), y))
        return [saturate(y, out_type)]

    return Plan(node, tuple(acts), node.outputs, run)


@builds("Pow", "Mod")
def build_pow_mod(eng: Engine, node: Node) -> Plan:
    """``dl_base_pow.cpp`` / ``dl_base_mod.cpp``: both operands to float32 (``x * 2^e``), ``powf`` or C's ``fmodf``
    (0 for a zero divisor; the sign of the dividend whatever the node's ``fmod``), times 2^-out, rounded."""
    acts, operands = binary_operands(eng, node)
    pow_ = node.op_type == "Pow"
    if node.attributes.get("quant_type") == "F32":  # ESP-PPQ dispatches it to float (e.g. a float exponent input)
        float_inputs(eng, node, acts)

        def run_float(*args):
            a, b = (v.astype(F32) for v in operands(args))
            with np.errstate(all="ignore"):
                if pow_:
                    return [np.power(a.astype(np.float64), b.astype(np.float64)).astype(F32)]
                return [np.where(b != 0, np.fmod(a, np.where(b != 0, b, F32(1))), F32(0)).astype(F32)]

        return Plan(node, tuple(acts), node.outputs, run_float)
    out_type = eng.out_type(node)
    s0, s1, r = _scales(eng, node)
    lo, hi = out_type[1], out_type[2]

    def run(*args):
        x0, x1 = operands(args)
        a, b = x0.astype(F32) * s0, x1.astype(F32) * s1
        with np.errstate(all="ignore"):
            if pow_:
                y = np.power(a.astype(np.float64), b.astype(np.float64)).astype(F32)
            else:
                y = np.where(b != 0, np.fmod(a, np.where(b != 0, b, F32(1))), F32(0)).astype(F32)
            y = eng.target.round(np.nan_to_num(y * r, nan=0, posinf=hi, neginf=lo))
        return [saturate(y, out_type)]

    return Plan(node, tuple(acts), node.outputs, run)
