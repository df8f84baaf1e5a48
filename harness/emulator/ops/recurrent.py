"""GRU as ESP-DL runs it on integers (dl_module_gru.hpp, linear_before_reset=1 only).

Per step: the input and hidden products as int16 gate pre-activations at ``gate_exponent`` (``mat_vec_dotprod``:
the int32/int64 sum rounded down by the exponent difference), the int16 biases added with int16 wrap-around,
z and r from ESP-DL's sigmoid table and n from its tanh table (``SigmoidLUT``/``TanhLUT`` over +-6.3 / +-3.5 at the
gate exponent), then ``h = round((1 - z) * n * 2^-out + z * h_prev)`` in float32 on the raw previous state.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.emulator.common import F32, EngineError, Plan, dl_scale, dl_sigmoid, saturate, wrap
from harness.emulator.ops import builds
from harness.espdl.reader import Node

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


class GateTable:
    """``dl::math::SigmoidLUT`` / ``TanhLUT``: float values for integer indices at ``exponent``, symmetric, clamped."""

    def __init__(self, exponent: int, bound: float, tanh: bool):
        scale = dl_scale(exponent)
        lo = int(F32(-bound) / scale) - 1
        hi = int(F32(bound) / scale) + 1
        self.hi = max(hi, -lo)
        self.lo = -self.hi
        x = (np.arange(self.hi + 1, dtype=F32) * scale).astype(F32)
        self.table = ((F32(2) * dl_sigmoid(F32(2) * x) - F32(1)) if tanh else dl_sigmoid(x)).astype(F32)
        self.tanh = tanh

    def get(self, index: np.ndarray) -> np.ndarray:
        index = np.asarray(index, dtype=np.int64)
        magnitude = np.where(index >= 0, np.minimum(index, self.hi), np.where(index > self.lo, -index, self.hi))
        value = self.table[magnitude]
        negative = -value if self.tanh else (F32(1) - value)
        return np.where(index >= 0, value, negative).astype(F32)


def _dot_shift(matrix: np.ndarray, vector: np.ndarray, shift: int, target) -> np.ndarray:
    """``mat_vec_dotprod``: each row's integer dot product times 2^-shift, rounded like the target, int16."""
    acc = matrix.astype(np.int64) @ vector.astype(np.int64)
    if shift >= 0:
        value = target.shifter(shift)(acc)
    else:  # the C path: float(acc) * 2^-shift
        value = target.round(acc.astype(F32) * dl_scale(-shift))
    return np.clip(value, -32768, 32767).astype(np.int64)


@builds("GRU")
def build_gru(eng: Engine, node: Node) -> Plan:
    where = f"GRU {node.name!r}"
    a = node.attributes
    eng.bits(node)  # S8/S16 only
    if int(a.get("linear_before_reset", 0) or 0) != 1:
        raise EngineError(f"{where}: linear_before_reset=0; ESP-DL builds no GRU module for it",
                          "export the GRU with linear_before_reset=1 (PyTorch's GRU)")
    direction = a.get("direction") or "forward"
    if direction not in ("forward", "bidirectional"):
        raise EngineError(f"{where}: direction {direction!r}; ESP-DL runs forward and bidirectional GRUs only",
                          "reverse the sequence before a forward GRU")
    if int(a.get("layout", 0) or 0) != 0:
        raise EngineError(f"{where}: layout 1 (batch first) is not emulated", "export with layout 0")
    hidden = int(a["hidden_size"])
    gate_exp = int(a.get("gate_exponent", -8))
    consts = [eng.const(name) if name else None for name in node.inputs]
    if any(c is None for c in consts[1:3]) or (len(consts) > 3 and node.inputs[3] and consts[3] is None):
        raise EngineError(f"{where}: W, R and B must be constants", "re-export the model with esp-ppq")
    if len(node.inputs) > 4 and any(node.inputs[4:]):
        raise EngineError(f"{where}: sequence_lens or initial_h given; the emulation starts from zero state",
                          "export the GRU without them")
    w, r = (np.asarray(c.data).astype(np.int64) for c in consts[1:3])
    b = np.asarray(consts[3].data).astype(np.int64).reshape(w.shape[0], 6 * hidden) if len(consts) > 3 and \
        consts[3] is not None else None
    e_x = eng.tensor_exponent(node.inputs[0], node)
    e_y = eng.tensor_exponent(node.outputs[0], node)
    e_h = eng.tensor_exponent(node.outputs[1], node) if len(node.outputs) > 1 and node.outputs[1] else e_y
    w_shift = gate_exp - (e_x + int(consts[1].exponents[0]))
    r_shift = gate_exp - (e_h + int(consts[2].exponents[0]))
    sigmoid, tanh = GateTable(gate_exp, 6.3, False), GateTable(gate_exp, 3.5, True)
    rescale = dl_scale(-e_y)
    out_type = eng.out_type(node)
    dirs = w.shape[0]

    def run(x):
        if x.ndim != 3 or x.shape[1] != 1:
            raise EngineError(f"{where}: input {list(x.shape)}; ESP-DL steps [seq, 1, input] (batch 1)",
                              "feed one sequence at a time")
        seq = x.shape[0]
        y = np.zeros((seq, dirs, 1, hidden), dtype=out_type[0])
        y_h = np.zeros((dirs, 1, hidden), dtype=out_type[0])
        for d in range(dirs):
            h = np.zeros(hidden, dtype=np.int64)
            steps = range(seq) if d == 0 else range(seq - 1, -1, -1)
            for t in steps:
                ic = _dot_shift(w[d], x[t, 0], w_shift, eng.target)
                hc = _dot_shift(r[d], h, r_shift, eng.target)
                if b is not None:  # int16 += int16: wraps
                    ic = wrap(ic + b[d, :3 * hidden], 16)
                    hc = wrap(hc + b[d, 3 * hidden:], 16)
                gates = sigmoid.get(ic[:2 * hidden] + hc[:2 * hidden])
                z, rg = gates[:hidden], gates[hidden:]
                index = eng.target.round((ic[2 * hidden:].astype(F32) + rg * hc[2 * hidden:].astype(F32)).astype(F32))
                n = tanh.get(index.astype(np.int64))
                temp = ((F32(1) - z) * n * rescale).astype(F32)
                temp = (temp + z * h.astype(F32)).astype(F32)
                h = saturate(eng.target.round(temp), out_type).astype(np.int64)
                y[t, d, 0] = h
            y_h[d, 0] = h
        return [y, y_h][:len(node.outputs)]

    return Plan(node, (node.inputs[0],), tuple(node.outputs), run)
