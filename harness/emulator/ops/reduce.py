"""The Reduce* family: ESP-DL's ReduceBase (adjacent axes merged, elements visited in row-major order of the
reduced axes) with each op's own accumulator type and finish (dl_module_reduce_<op>.hpp)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.emulator.common import EngineError, F32, Plan, axes_of, dl_scale, in_order, libm, saturate, sqrt_newton, wrap
from harness.emulator.ops import builds

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


def _reduced_axes(node: Node, axes, noop: int, x: np.ndarray, checked: set[int]) -> tuple[int, ...]:
    """The axes ESP-DL reduces; refuses what ReduceBase::forward_template (dl_module_reduce_base.hpp:151-262)
    would leave unwritten: no reduced axis at all, or more than 4 alternating groups of reduced and kept axes."""
    ax = tuple(range(x.ndim)) if not axes else tuple(a % x.ndim for a in axes)
    if x.ndim not in checked:
        groups = reduce_groups([i in ax and not (noop and not axes) for i in range(x.ndim)])
        if groups == [False]:
            raise EngineError(f"{node.op_type} {node.name!r} reduces no axis (noop_with_empty_axes); ESP-DL would "
                              f"write the reduction of the whole tensor to its first element only",
                              f"remove the no-op {node.op_type} from the model")
        if len(groups) > 4:
            raise EngineError(
                f"{node.op_type} {node.name!r} reduces axes {list(ax)} of a rank-{x.ndim} input: {len(groups)} "
                f"alternating groups of reduced and kept axes; ESP-DL's ReduceBase handles at most 4 and would "
                f"leave the output unwritten",
                f"reduce adjacent axes (reshape or transpose first), or split it into two {node.op_type}s",
            )
        checked.add(x.ndim)
    return ax


def reduce_groups(flags: list[bool]) -> list[bool]:
    """ESP-DL's ReduceBase merge of adjacent axes with the same reduce flag (dl_module_reduce_base.hpp:136-148)."""
    merged: list[bool] = []
    for f in flags:
        if not merged or merged[-1] != f:
            merged.append(f)
    return merged


@builds('ReduceMean')
def build_reducemean(eng: Engine, node: Node) -> Plan:
    """ReduceMean: ``sat(round(fl32(fl32(float(sum) * 2^e_in) / count) * 2^-e_out))``, a float32 *division*.

    esp-dl: dl_module_reduce_mean.hpp:39-43 (int8 sums in int32, int16 in int64; ``count`` converted to float),
    C on every target, rounded like the target's ``tool::round``. Unlike AveragePool there is no reciprocal, so an
    exact tie stays a tie and rounds half to even (esp32p4) or half up (esp32s3), as ESP-PPQ's ``torch.mean`` does.
    ReduceBase::forward_template (dl_module_reduce_base.hpp:151-262) only writes its output when the merged reduce
    flags form at most 4 alternating groups; the engine refuses anything else rather than invent a value.
    """
    out_type = eng.out_type(node)
    axes = axes_of(eng, node)
    keep = int(node.attributes.get("keepdims", 1))
    noop = int(node.attributes.get("noop_with_empty_axes", 0) or 0)
    in_scale = dl_scale(eng.tensor_exponent(node.inputs[0], node))
    out_scale = dl_scale(-eng.tensor_exponent(node.outputs[0], node))
    checked: set[int] = set()

    def run(x):
        ax = _reduced_axes(node, axes, noop, x, checked)
        total = x.astype(np.int64).sum(axis=ax, keepdims=bool(keep))
        count = int(np.prod([x.shape[a] for a in ax]))
        y = eng.target.round(((total.astype(F32) * in_scale) / F32(count)) * out_scale)
        y = saturate(y, out_type)
        return [y.reshape(1) if y.ndim == 0 else y]

    return Plan(node, (node.inputs[0],), node.outputs, run)


def _visited(x: np.ndarray, ax: tuple[int, ...]) -> np.ndarray:
    """``x`` with the kept axes first and the reduced ones flattened last, in the order ESP-DL visits them."""
    kept = [i for i in range(x.ndim) if i not in ax]
    return np.transpose(x, kept + sorted(ax)).reshape([x.shape[i] for i in kept] + [-1])


def _shaped(y: np.ndarray, x: np.ndarray, ax: tuple[int, ...], keep: bool) -> np.ndarray:
    """The reduced values in ESP-DL's output shape (reduced axes as 1 with keepdims; ``[1]`` when all go)."""
    if keep:
        return y.reshape([1 if i in ax else n for i, n in enumerate(x.shape)])
    return y.reshape(1) if y.ndim == 0 else y








def round_double(values: np.ndarray, rounding: str) -> np.ndarray:
    """``dl::tool::round(double)``: half up is ``floor(v + 0.5)``; half even is ESP-DL's software version, which
    treats anything within 1e-6 of a tie as a tie (dl_tool.cpp ``round_half_even(double)``)."""
    v = np.asarray(values, dtype=np.float64)
    if rounding != "half_even":
        return np.floor(v + 0.5)
    rounded = np.where(v < 0, v - 0.5, v + 0.5)
    part = np.trunc(rounded)
    tie = (np.abs(rounded - part) < 1e-6) & (part.astype(np.int64) % 2 != 0)
    return np.where(tie, np.where(v < 0, part + 1, part - 1), part)


def _integer_sum(terms: np.ndarray, bits: int) -> np.ndarray:
    """The C accumulator: int32 for int8 inputs (wraps), int64 for int16."""
    total = terms.astype(np.int64).sum(axis=-1)
    return wrap(total, 32) if bits == 8 else total


@builds("ReduceMax", "ReduceMin", "ReduceSum", "ReduceL1", "ReduceSumSquare", "ReduceL2", "ReduceLogSum",
        "ReduceLogSumExp", "ReduceProd")
def build_reduce(eng: Engine, node: Node) -> Plan:
    """Every Reduce* but ReduceMean, each as its ``dl_module_reduce_<op>.hpp`` computes it:

    * Max, Min: the raw integers (the exponent is not looked at).
    * Sum, L1, SumSquare: an integer sum (int32 for int8, int64 for int16) moved to the output exponent by
      ``shift_and_round`` (out - in; SumSquare out - 2 in).
    * L2: the integer sum of squares times 2^(2 in) in float32, ``sqrt_newton``, times 2^-out, rounded.
    * LogSum: the integer sum times 2^in in float32, ``logf``, times 2^-out, rounded.
    * LogSumExp: ``expf`` of every element (int8: a 256-entry table of ``expf(2^in * (i - 128))``) summed in
      float32 in visiting order, ``logf``, times 2^-out, rounded.
    * Prod: the product in visiting order of the elements times 2^in, in float32 (int8) or double (int16), times
      2^-out and rounded (a double rounds like ``dl::tool::round(double)``).
    """
    op = node.op_type
    out_type = eng.out_type(node)
    bits = eng.bits(node)
    axes = axes_of(eng, node)
    keep = bool(int(node.attributes.get("keepdims", 1)))
    noop = int(node.attributes.get("noop_with_empty_axes", 0) or 0)
    e_in, e_out = eng.tensor_exponent(node.inputs[0], node), eng.tensor_exponent(node.outputs[0], node)
    in_scale, out_rescale = dl_scale(e_in), dl_scale(-e_out)
    shift = eng.target.shifter(e_out - (2 * e_in if op == "ReduceSumSquare" else e_in))
    table = libm(np.exp, in_scale * np.arange(-128, 128, dtype=F32)) if op == "ReduceLogSumExp" else None
    checked: set[int] = set()

    def finish(v: np.ndarray) -> np.ndarray:
        if op in ("ReduceMax", "ReduceMin"):
            return v.max(axis=-1) if op == "ReduceMax" else v.min(axis=-1)
        if op in ("ReduceSum", "ReduceL1", "ReduceSumSquare"):
            wide = v.astype(np.int64)
            terms = {"ReduceSum": wide, "ReduceL1": np.abs(wide), "ReduceSumSquare": wide * wide}[op]
            return saturate(shift(_integer_sum(terms, bits)), out_type)
        if op == "ReduceL2":
            total = _integer_sum(v.astype(np.int64) ** 2, bits).astype(F32) * dl_scale(2 * e_in)
            return saturate(eng.target.round(sqrt_newton(total, node) * out_rescale), out_type)
        if op == "ReduceLogSum":
            total = _integer_sum(v, bits).astype(F32) * in_scale
            return saturate(eng.target.round(libm(np.log, total) * out_rescale), out_type)
        if op == "ReduceLogSumExp":
            terms = table[v.astype(np.int64) + 128] if bits == 8 else libm(np.exp, v.astype(F32) * in_scale)
            total = in_order(terms, np.add, F32)
            return saturate(eng.target.round(libm(np.log, total) * out_rescale), out_type)
        factors = v.astype(F32) * in_scale  # ReduceProd
        if bits == 8:
            return saturate(eng.target.round(in_order(factors, np.multiply, F32) * out_rescale), out_type)
        product = in_order(factors, np.multiply, np.float64)
        return saturate(round_double(product * np.float64(out_rescale), eng.rounding), out_type)

    def run(x):
        ax = _reduced_axes(node, axes, noop, x, checked)
        return [_shaped(finish(_visited(x, ax)), x, ax, keep)]

    return Plan(node, (node.inputs[0],), node.outputs, run)
