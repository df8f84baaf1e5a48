"""GRU and LSTM as ESP-DL runs them on integers (dl_module_gru.hpp, linear_before_reset=1 only; dl_module_lstm.hpp).

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


class _Recurrent:
    """What GRU and LSTM share: attribute checks, constant W/R/B, shifts to the gate exponent, gate tables."""

    def __init__(self, eng: Engine, node: Node, gates: int):
        self.where = f"{node.op_type} {node.name!r}"
        a = node.attributes
        eng.bits(node)  # S8/S16 only
        direction = a.get("direction") or "forward"
        if direction not in ("forward", "bidirectional"):
            raise EngineError(f"{self.where}: direction {direction!r}; ESP-DL runs forward and bidirectional ones only",
                              "reverse the sequence before a forward one")
        if int(a.get("layout", 0) or 0) != 0:
            raise EngineError(f"{self.where}: layout 1 (batch first) is not emulated", "export with layout 0")
        consts = [eng.const(name) if name else None for name in node.inputs]
        if any(c is None for c in consts[1:3]) or (len(consts) > 3 and node.inputs[3] and consts[3] is None):
            raise EngineError(f"{self.where}: W, R and B must be constants", "re-export the model with esp-ppq")
        if len(node.inputs) > 4 and any(node.inputs[4:]):
            raise EngineError(f"{self.where}: sequence_lens or initial states given; the emulation starts from zero "
                              "state", "export it without them")
        self.hidden = int(a["hidden_size"])
        self.gate_exp = int(a.get("gate_exponent", -8))
        self.w, self.r = (np.asarray(c.data).astype(np.int64) for c in consts[1:3])
        self.dirs = self.w.shape[0]
        self.b = (np.asarray(consts[3].data).astype(np.int64).reshape(self.dirs, 2 * gates * self.hidden)
                  if len(consts) > 3 and consts[3] is not None else None)
        e_x = eng.tensor_exponent(node.inputs[0], node)
        self.e_y = eng.tensor_exponent(node.outputs[0], node)
        e_h = eng.tensor_exponent(node.outputs[1], node) if len(node.outputs) > 1 and node.outputs[1] else self.e_y
        self.w_shift = self.gate_exp - (e_x + int(consts[1].exponents[0]))
        self.r_shift = self.gate_exp - (e_h + int(consts[2].exponents[0]))
        self.sigmoid, self.tanh = GateTable(self.gate_exp, 6.3, False), GateTable(self.gate_exp, 3.5, True)
        self.out_type = eng.out_type(node)
        self.gates = gates
        self.target = eng.target

    def check(self, x: np.ndarray) -> None:
        if x.ndim != 3 or x.shape[1] != 1:
            raise EngineError(f"{self.where}: input {list(x.shape)}; ESP-DL steps [seq, 1, input] (batch 1)",
                              "feed one sequence at a time")

    def pre_activations(self, d: int, x_t: np.ndarray, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The input and hidden products at the gate exponent (int16), before the biases."""
        return (_dot_shift(self.w[d], x_t, self.w_shift, self.target),
                _dot_shift(self.r[d], h, self.r_shift, self.target))

    def steps(self, d: int, seq: int):
        return range(seq) if d == 0 else range(seq - 1, -1, -1)


@builds("GRU")
def build_gru(eng: Engine, node: Node) -> Plan:
    if int(node.attributes.get("linear_before_reset", 0) or 0) != 1:
        raise EngineError(f"GRU {node.name!r}: linear_before_reset=0; ESP-DL builds no GRU module for it",
                          "export the GRU with linear_before_reset=1 (PyTorch's GRU)")
    rnn = _Recurrent(eng, node, 3)
    hidden, rescale = rnn.hidden, dl_scale(-rnn.e_y)

    def run(x):
        rnn.check(x)
        seq = x.shape[0]
        y = np.zeros((seq, rnn.dirs, 1, hidden), dtype=rnn.out_type[0])
        y_h = np.zeros((rnn.dirs, 1, hidden), dtype=rnn.out_type[0])
        for d in range(rnn.dirs):
            h = np.zeros(hidden, dtype=np.int64)
            for t in rnn.steps(d, seq):
                ic, hc = rnn.pre_activations(d, x[t, 0], h)
                if rnn.b is not None:  # int16 += int16: wraps
                    ic = wrap(ic + rnn.b[d, :3 * hidden], 16)
                    hc = wrap(hc + rnn.b[d, 3 * hidden:], 16)
                gates = rnn.sigmoid.get(ic[:2 * hidden] + hc[:2 * hidden])
                z, rg = gates[:hidden], gates[hidden:]
                index = eng.target.round((ic[2 * hidden:].astype(F32) + rg * hc[2 * hidden:].astype(F32)).astype(F32))
                n = rnn.tanh.get(index.astype(np.int64))
                temp = ((F32(1) - z) * n * rescale).astype(F32)
                temp = (temp + z * h.astype(F32)).astype(F32)
                h = saturate(eng.target.round(temp), rnn.out_type).astype(np.int64)
                y[t, d, 0] = h
            y_h[d, 0] = h
        return [y, y_h][:len(node.outputs)]

    return Plan(node, (node.inputs[0],), tuple(node.outputs), run)


@builds("LSTM")
def build_lstm(eng: Engine, node: Node) -> Plan:
    """``dl_module_lstm.hpp``: gates i, o, f, g from the int16 sum of both products and both biases (int16 wrap),
    ``c = round(f * c_prev + i * g * 2^-gate)`` kept as int16 at the gate exponent (wrapping, unsaturated), and
    ``h = round(o * tanh(c) * 2^-out)``; Y_c is that int16 cell state."""
    rnn = _Recurrent(eng, node, 4)
    hidden = rnn.hidden
    rescale_y, rescale_c = dl_scale(-rnn.e_y), dl_scale(-rnn.gate_exp)
    if len(node.outputs) > 2 and node.outputs[2]:
        info = eng.model.tensor_info(node.outputs[2])
        if info is not None and (info.dtype != "int16" or tuple(info.exponents[:1]) != (rnn.gate_exp,)):
            raise EngineError(f"LSTM {node.name!r}: Y_c is {info.dtype} at exponent {list(info.exponents)}; ESP-DL "
                              f"asserts int16 at the gate exponent {rnn.gate_exp}", "re-export with esp-ppq")

    def run(x):
        rnn.check(x)
        seq = x.shape[0]
        y = np.zeros((seq, rnn.dirs, 1, hidden), dtype=rnn.out_type[0])
        y_h = np.zeros((rnn.dirs, 1, hidden), dtype=rnn.out_type[0])
        y_c = np.zeros((rnn.dirs, 1, hidden), dtype=np.int16)
        for d in range(rnn.dirs):
            h = np.zeros(hidden, dtype=np.int64)
            c = np.zeros(hidden, dtype=np.int64)
            for t in rnn.steps(d, seq):
                ic, hc = rnn.pre_activations(d, x[t, 0], h)
                bias = 0 if rnn.b is None else rnn.b[d, :4 * hidden] + rnn.b[d, 4 * hidden:]
                pre = wrap(ic + hc + bias, 16)
                i_g, o_g, f_g = (rnn.sigmoid.get(pre[k * hidden:(k + 1) * hidden]) for k in range(3))
                g_g = rnn.tanh.get(pre[3 * hidden:])
                temp = (f_g * c.astype(F32) + (i_g * g_g).astype(F32) * rescale_c).astype(F32)
                c = wrap(eng.target.round(temp).astype(np.int64), 16)  # an int stored into int16
                temp = (o_g * rnn.tanh.get(c) * rescale_y).astype(F32)
                h = saturate(eng.target.round(temp), rnn.out_type).astype(np.int64)
                y[t, d, 0] = h
            y_h[d, 0], y_c[d, 0] = h, c
        return [y, y_h, y_c][:len(node.outputs)]

    return Plan(node, (node.inputs[0],), tuple(node.outputs), run)
