"""Activations: ESP-DL's int8 lookup tables, and the float32 code it runs for int16 (and table-less int8)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.targets import Shifter, int_range
from harness.emulator.common import EngineError, F32, Plan, dl_scale, dl_sigmoid, float_inputs, full_range, libm, saturate
from harness.emulator.ops import builds

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


# Op types whose ESP-DL module takes the int8 table when the exporter stored one (get_operation_lut).
LUT_AWARE_OPS = {
    "Clip", "Elu", "Exp", "HardSigmoid", "HardSwish", "LeakyRelu", "Log", "PRelu", "Relu", "Sigmoid", "Sqrt",
    "Swish", "Tanh", "LUT", "Gelu",
}


# int16 (and table-less int8) activations computed in float32 by ESP-DL.
FLOAT_ACTIVATIONS = {"Sigmoid", "Tanh", "Swish", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Exp", "Log",
                     "Sqrt"}


def _float_activation(eng: Engine, node: Node, bits: int, x: np.ndarray) -> np.ndarray:
    """ESP-DL's float32 code for one activation on integer inputs ``x`` (int64), before saturation."""
    op = node.op_type
    a = node.attributes
    e_in, e_out = eng.tensor_exponent(node.inputs[0], node), eng.tensor_exponent(node.outputs[0], node)
    in_scale, out_scale = dl_scale(e_in), dl_scale(-e_out)
    if op == "Relu" and e_in == e_out:
        return np.maximum(x, 0)
    with np.errstate(all="ignore"):
        t = x.astype(F32) * in_scale
        if op == "Sigmoid":
            y = dl_sigmoid(t) * out_scale
        elif op == "Tanh":
            y = (F32(2) * dl_sigmoid(F32(2) * t) - F32(1)) * out_scale
        elif op == "Swish":
            y = (dl_sigmoid(t) * t) * out_scale
        elif op == "Relu":
            y = np.where(t >= 0, t * out_scale, F32(0))
        elif op == "LeakyRelu":
            alpha = F32(a.get("alpha", 0.01))
            y = np.where(t >= 0, t * out_scale, (t * out_scale) * alpha)
        elif op == "HardSigmoid":
            alpha, beta = F32(a.get("alpha", 0.2)), F32(a.get("beta", 0.5))
            y = np.maximum(F32(0), np.minimum(F32(1), alpha * t + beta)) * out_scale
        elif op == "HardSwish":  # DL_MAX(0, DL_MIN(1, 0.166667 * temp + 0.5)) * temp, in double
            td = t.astype(np.float64)
            y = (np.maximum(0.0, np.minimum(1.0, 0.166667 * td + 0.5)) * td).astype(F32) * out_scale
        elif op == "Elu":
            alpha = F32(a.get("alpha", 1.0))
            y = np.where(t >= 0, t * out_scale, (alpha * (np.exp(t) - F32(1))) * out_scale)
        elif op == "Exp":
            y = np.exp(t) * out_scale
        elif op == "Log":
            y = np.log(t) * out_scale
        elif op == "Sqrt":
            y = np.sqrt(t) * out_scale
        else:  # pragma: no cover - guarded by the builder
            raise EngineError(f"node {node.name!r}: no float path for {op}", "re-export with esp-ppq")
        y = eng.target.round(y)
        lo, hi = int_range(bits)
        y = np.nan_to_num(y, nan=0.0, posinf=hi, neginf=lo)
        return np.clip(y, lo, hi).astype(np.int64)




# ESP-DL's float32 forward of these ops is one libm call per element (dl_module_<op>.hpp, QUANT_TYPE_FLOAT32)
_FLOAT_LIBM = {"Sqrt": np.sqrt, "Log": np.log, "Exp": np.exp}


@builds(*sorted((LUT_AWARE_OPS | FLOAT_ACTIVATIONS) - {"Clip"}))
def build_activation(eng: Engine, node: Node) -> Plan:
    op = node.op_type
    if node.attributes.get("quant_type") == "F32" and op in _FLOAT_LIBM:  # dispatched to float: plain libm
        float_inputs(eng, node, node.inputs[:1])
        fn = _FLOAT_LIBM[op]
        return Plan(node, (node.inputs[0],), node.outputs, lambda x: [libm(fn, np.asarray(x, dtype=F32))])
    bits = eng.bits(node)
    out_type = eng.out_type(node)
    table = eng.lut(node)
    src = node.inputs[0]
    offset = 1 << (bits - 1)
    if table is not None and (op in ("LUT", "Gelu") or (bits == 8 and op in LUT_AWARE_OPS)):
        values = np.asarray(table.data).reshape(-1).astype(np.int64)
        if bits == 8:
            if values.size != 256:
                raise EngineError(f"node {node.name!r}: int8 table has {values.size} entries", "re-export with esp-ppq")
            full = values
        else:
            if values.size < 2:
                raise EngineError(f"node {node.name!r}: int16 table has {values.size} entries", "re-export with esp-ppq")
            step = 65536 // (values.size - 1)
            if step & (step - 1):
                raise EngineError(f"node {node.name!r}: int16 table step {step} is not a power of two",
                                  "re-export with int16_lut_step a power of two")
            full = values[lut16_index(np.arange(65536, dtype=np.int64), step, eng.rounding)]
    elif op in ("LUT", "Gelu"):
        raise EngineError(f"node {node.name!r} ({op}) has no lookup table", "re-export the model with esp-ppq")
    elif op in FLOAT_ACTIVATIONS:
        full = _float_activation(eng, node, bits, full_range(bits))
    elif op == "PRelu" and bits == 16:
        return _prelu16(eng, node, out_type)
    else:
        raise EngineError(f"node {node.name!r}: {op} at {bits} bits needs an exported lookup table",
                          "re-export the model with esp-ppq (int8 tables are exported by default)")
    lut = saturate(full, out_type)

    def run(x):
        return [lut[x.astype(np.int64) + offset]]

    return Plan(node, (src,), node.outputs, run)


def lut16_index(u: np.ndarray, step: int, rounding: str) -> np.ndarray:
    """Table index of ``u = x + 32768``: the nearest entry, ``u / step`` rounded like the target (dl_base_lut.cpp)."""
    return Shifter(step.bit_length() - 1, rounding)(u)


@builds('Clip')
def build_clip(eng: Engine, node: Node) -> Plan:
    if eng.lut(node) is not None and eng.bits(node) == 8:
        return build_activation(eng, node)
    out_type = eng.out_type(node)
    _, consts = eng.operands(node)
    bits = eng.bits(node)
    lo, hi = int_range(bits)
    mn = int(np.asarray(consts[1].data).reshape(-1)[0]) if len(consts) > 1 and consts[1] is not None else lo
    mx = int(np.asarray(consts[2].data).reshape(-1)[0]) if len(consts) > 2 and consts[2] is not None else hi
    rescale = dl_scale(eng.tensor_exponent(node.inputs[0], node)) * dl_scale(-eng.tensor_exponent(node.outputs[0], node))
    full = eng.target.round(np.clip(full_range(bits), mn, mx).astype(F32) * rescale)
    lut = saturate(full, out_type)
    offset = 1 << (bits - 1)
    return Plan(node, (node.inputs[0],), node.outputs, lambda x: [lut[x.astype(np.int64) + offset]])


def _prelu16(eng: Engine, node: Node, out_type) -> Plan:
    """int16 PRelu (ESP-PPQ exports no table at 16 bits): ``prelu_11c`` / ``EE.VPRELU.S16``. A non-negative input
    is copied raw (the output exponent is not applied); a negative one is ``(x * alpha) >> s`` (an arithmetic shift,
    no rounding) with ``s = out - in - alpha``, saturated. ``alpha`` per channel of the last axis of the
    [N, H, W, C] input the kernel requires; slopes of another count are replaced by copies of the first (an NCHW
    tensor's per-channel slopes on the chip: ``harness.espdl.lint``, ``prelu-slopes``)."""
    alpha_t = eng.input_const(node, 1)
    if alpha_t is None:
        raise EngineError(f"PRelu {node.name!r}: slope must be a constant", "re-export the model with esp-ppq")
    alpha = np.asarray(alpha_t.data).reshape(-1).astype(np.int64)
    shift = (eng.tensor_exponent(node.outputs[0], node) - eng.tensor_exponent(node.inputs[0], node)
             - int((alpha_t.exponents or (0,))[0]))

    def run(x):
        if x.ndim != 4:  # get_activation_args reads shape[3]: a rank-3 input indexes past its shape on the chip
            raise EngineError(f"PRelu {node.name!r} on a rank-{x.ndim} input {list(x.shape)}: ESP-DL's integer PRelu "
                              "takes [N, H, W, C] only (it reads shape[3])",
                              "give PRelu a 4-D input (e.g. unsqueeze to [N, C, 1, W]) or export it at 8 bits (a table)")
        # PRelu::get_output_shape: slopes that do not match the last axis become that many copies of the first
        slopes = alpha if alpha.size == x.shape[-1] else np.full(x.shape[-1], alpha[0])
        wide = x.astype(np.int64)
        product = wide * slopes
        negative = (product >> shift) if shift >= 0 else (product << -shift)
        return [saturate(np.where(wide < 0, negative, wide), out_type)]

    return Plan(node, (node.inputs[0],), node.outputs, run)
