"""Conv, Gemm and MatMul: ESP-DL's conv kernels (1x1 for dense), their packed filters and saturating accumulators."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.targets import Target
from harness.emulator.common import EngineError, Plan, saturate, wrap, zero_pad
from harness.emulator.ops import builds

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


def _packed_order(n: int, c: int, kh: int, kw: int, align: int, depthwise: bool) -> np.ndarray:
    """ONNX flat index (of an ``[N, C, KH, KW]`` filter) of every element in ESP-PPQ's P4/S3 packed order.

    First ``N // align * align`` output channels as ``(N/align, KH, KW, C, align)`` blocks, then the
    remaining channels plain ``[n, KH, KW, C]`` (conv) or ``[C, KH, KW, n]`` (depthwise).
    """
    idx = np.arange(n * c * kh * kw, dtype=np.int64).reshape(n, c, kh, kw).transpose(0, 2, 3, 1)
    aligned = n // align * align
    blocks = idx[:aligned].reshape(n // align, align, kh, kw, c).transpose(0, 2, 3, 4, 1).reshape(-1)
    rest = idx[aligned:]
    if depthwise:
        rest = rest.transpose(3, 1, 2, 0)
    return np.concatenate([blocks, rest.reshape(-1)])


def _plain_order(n: int, c: int, kh: int, kw: int, depthwise: bool) -> np.ndarray:
    """ONNX flat index order of the plain ``c``-target layouts (NHWC conv, HWCN depthwise)."""
    idx = np.arange(n * c * kh * kw, dtype=np.int64).reshape(n, c, kh, kw).transpose(0, 2, 3, 1)
    if depthwise:
        idx = idx.transpose(1, 2, 3, 0)
    return idx.reshape(-1)


def unpack_filter(data: np.ndarray, layout: str, n: int, c: int, kh: int, kw: int, depthwise: bool,
                  where: str) -> np.ndarray:
    """The ``[N, C, KH, KW]`` ONNX filter stored in ``data`` with ESP-PPQ's ``layout``."""
    flat = np.asarray(data).reshape(-1)
    if flat.size != n * c * kh * kw:
        raise EngineError(f"{where}: filter has {flat.size} values, expected {n}x{c}x{kh}x{kw}",
                          "re-export the model with esp-ppq")
    older = re.fullmatch(r"N(\d+)H?WC\1(_UNALIGNED)?", layout)  # older exporters' spelling of "(N/16)HWC16"...
    if layout.startswith("(N/") or older:
        try:
            align = int(older.group(1)) if older else int(layout[3:layout.index(")")])
        except ValueError:
            raise EngineError(f"{where}: unknown filter layout {layout!r}", "re-export the model with esp-ppq") from None
        order = _packed_order(n, c, kh, kw, align, depthwise)
    elif layout in ("", "NWC", "NHWC", "WCN", "HWCN", "UNK"):
        order = _plain_order(n, c, kh, kw, depthwise)
    else:
        raise EngineError(f"{where}: unknown filter layout {layout!r}", "re-export the model with esp-ppq")
    out = np.empty(flat.size, dtype=np.int64)
    out[order] = flat
    return out.reshape(n, c, kh, kw)


def accumulator_width(target: Target, bits: int, depthwise: bool, aligned_lane: bool) -> int:
    """Bits of the saturating accumulator lane an output channel is computed in.

    esp32s3 int8: QACC 20-bit lanes (depthwise: every channel; conv/Gemm: the first N//16*16 channels),
    remainder channels in the 40-bit ACCX. esp32s3 int16: 40 bit. esp32p4: int8 32 bit, int16 QACC 64 bit
    (40-bit XACC for remainder channels).
    """
    if target.name == "esp32s3":
        if bits == 8:
            return 20 if (depthwise or aligned_lane) else 40
        return 40
    if bits == 8:
        return 32
    return 64 if (depthwise or aligned_lane) else 40


@dataclass
class Accumulator:
    """How one conv-like node accumulates: per-channel lane widths and the (wrapped) bias it preloads."""

    bias: np.ndarray  # int64 [N], as loaded into the lanes
    lo: np.ndarray  # int64 [N]
    hi: np.ndarray
    possible: bool  # can any partial sum leave its lane at all (static bound)?
    exact_f64: bool = True  # every partial sum below 2**53: a float64 matmul is exact


def make_acc(target: Target, bits: int, bias: np.ndarray, weights: np.ndarray, depthwise: bool) -> Accumulator:
    """``weights`` int64 ``[N, J]`` in accumulation order."""
    n = weights.shape[0]
    align = 16 if bits == 8 else 8
    aligned = np.arange(n) < (n // align * align)
    widths = np.array([accumulator_width(target, bits, depthwise, bool(a)) for a in aligned], dtype=np.int64)
    lanes = bias.astype(np.int64).copy()
    for w in np.unique(widths):
        sel = widths == w
        if w < 64:
            lanes[sel] = wrap(lanes[sel], int(w))
    hi = (np.int64(1) << (widths - 1)) - 1
    lo = -(np.int64(1) << (widths - 1))
    bound = np.abs(lanes) + np.abs(weights).sum(axis=1) * (1 << (bits - 1))
    return Accumulator(lanes, lo, hi, bool(np.any(bound > hi)), bool(np.all(bound < 2**53)))


def _saturating_rows(x: np.ndarray, w: np.ndarray, bias: np.ndarray, lo: np.ndarray, hi: np.ndarray):
    """Sequential saturating accumulation ``acc = sat(acc + x[j] * w[j])`` for each row, bias first."""
    acc = bias.astype(np.int64).copy()
    hit = np.zeros(acc.shape, dtype=bool)
    for j in range(x.shape[1]):
        acc += x[:, j] * w[:, j]
        over = (acc > hi) | (acc < lo)
        if over.any():
            hit |= over
            np.clip(acc, lo, hi, out=acc)
    return acc, hit


def matmul_accumulate(cols: np.ndarray, wmat: np.ndarray, wmat_f: np.ndarray, acc: Accumulator) -> tuple[np.ndarray, int]:
    """``bias + cols @ wmat`` as the chip accumulates it: exact sums, saturated lanes redone sequentially.

    ``cols`` int ``[M, J]``, ``wmat`` int64 ``[J, N]`` (``wmat_f`` the float64 copy, exact for these sums).
    Returns (int64 ``[M, N]``, number of saturated outputs).
    """
    if acc.exact_f64:
        out = np.rint(cols.astype(np.float64) @ wmat_f).astype(np.int64) + acc.bias
    else:
        out = cols.astype(np.int64) @ wmat + acc.bias
    if not acc.possible:
        return out, 0
    bound = np.abs(cols).astype(np.float64) @ np.abs(wmat_f) + np.abs(acc.bias)
    rows, chans = np.nonzero(bound > acc.hi)
    if rows.size == 0:
        return out, 0
    xs = cols[rows].astype(np.int64)
    ws = wmat[:, chans].T
    partial = np.cumsum(xs * ws, axis=1) + acc.bias[chans][:, None]
    leaves = ((partial > acc.hi[chans][:, None]) | (partial < acc.lo[chans][:, None])).any(axis=1)
    if not leaves.any():
        return out, 0
    sel = np.nonzero(leaves)[0]
    seq, hit = _saturating_rows(xs[sel], ws[sel], acc.bias[chans[sel]], acc.lo[chans[sel]], acc.hi[chans[sel]])
    out[rows[sel], chans[sel]] = seq
    return out, int(np.count_nonzero(hit))


@builds('Conv')
def build_conv(eng: Engine, node: Node) -> Plan:
    acts, consts = eng.operands(node)
    a = node.attributes
    if len(acts) != 1 or consts[1] is None:
        raise EngineError(f"Conv {node.name!r} needs one activation input and a constant filter",
                          "re-export the model with esp-ppq")
    weight, bias_t = consts[1], (consts[2] if len(consts) > 2 else None)
    bits = eng.bits(node)
    out_type = eng.out_type(node)
    kernel = list(a.get("kernel_shape") or [])
    two_d = len(kernel) == 2 or (not kernel and len(weight.dims) == 4)
    if not kernel:
        kernel = list(weight.dims[:2]) if two_d else [weight.dims[0]]
    kh, kw = (kernel if two_d else [1, kernel[0]])
    group = int(a.get("group", 1))
    depthwise = group != 1
    dims = list(weight.dims)
    if depthwise:
        n, c = dims[-2], dims[-1]
    else:
        c, n = dims[-2], dims[-1]
    where = f"Conv {node.name!r}"
    if depthwise and (c != 1 or group != n):
        raise EngineError(
            f"{where} has group={group} with {c} input channels per group and {n} outputs; ESP-DL runs every "
            f"group != 1 conv as a depthwise conv (one input channel per output), so it would compute garbage",
            "use a depthwise conv (groups == channels) or split the grouped conv into separate convs",
        )
    w = unpack_filter(weight.data, weight.layout, n, c, kh, kw, depthwise, where)  # [N, C, KH, KW]
    pads = list(a.get("pads") or [])
    if two_d:
        pads = pads or [0, 0, 0, 0]
        pt, pl, pb, pr = pads  # ONNX [h_begin, w_begin, h_end, w_end]
        sh, sw = (list(a.get("strides") or [1, 1]) + [1, 1])[:2]
        dh, dw = (list(a.get("dilations") or [1, 1]) + [1, 1])[:2]
    else:
        pads = pads or [0, 0]
        pt, pb, (pl, pr) = 0, 0, pads
        sh, dh = 1, 1
        sw = (a.get("strides") or [1])[0]
        dw = (a.get("dilations") or [1])[0]
    relu = a.get("activation", "Linear") in ("Relu", "ReLU")
    if a.get("activation", "Linear") not in ("Linear", "Relu", "ReLU"):
        raise EngineError(f"{where} has fused activation {a.get('activation')!r}",
                          "ESP-DL fuses only Relu into Conv; re-export with esp-ppq")
    e_in, e_out = eng.tensor_exponent(acts[0], node), eng.tensor_exponent(node.outputs[0], node)
    w_exps = np.array(weight.exponents or (0,), dtype=np.int64)
    if w_exps.size not in (1, n):
        raise EngineError(f"{where}: filter has {w_exps.size} exponents for {n} output channels",
                          "re-export the model with esp-ppq")
    shift = eng.target.shifter(np.broadcast_to(e_out - e_in - w_exps, (n,)))
    bias = np.zeros(n, dtype=np.int64) if bias_t is None else np.asarray(bias_t.data, dtype=np.int64).reshape(-1)
    state = {"sat": 0}

    if depthwise:
        wd = w[:, 0]  # [N, KH, KW]
        acc = make_acc(eng.target, bits, bias, wd.reshape(n, -1), True)
        work = np.int64 if (bits == 16 or acc.possible) else np.int32
        taps = [(i, j, wd[:, i, j].astype(work)) for i in range(kh) for j in range(kw)]
        bias_w = acc.bias.astype(work)

        def run(x):
            x3 = as_hwc(x, two_d, where)
            xp = zero_pad(x3, pt, pb, pl, pr, work)
            hp, wp = xp.shape[0], xp.shape[1]
            oh = (hp - dh * (kh - 1) - 1) // sh + 1
            ow = (wp - dw * (kw - 1) - 1) // sw + 1
            if oh <= 0 or ow <= 0:
                raise EngineError(f"{where}: input {list(x.shape)} is smaller than the kernel",
                                  "feed more frames")
            total = np.empty((oh, ow, n), dtype=work)
            total[...] = bias_w
            hit = None
            for i, j, wt in taps:
                patch = xp[i * dh: i * dh + sh * (oh - 1) + 1: sh, j * dw: j * dw + sw * (ow - 1) + 1: sw]
                total += patch * wt
                if acc.possible:
                    over = (total > acc.hi) | (total < acc.lo)
                    if over.any():
                        hit = over if hit is None else (hit | over)
                        np.clip(total, acc.lo, acc.hi, out=total)
            state["sat"] = 0 if hit is None else int(np.count_nonzero(hit))
            y = shift(total)
            if relu:
                y = np.maximum(y, 0)
            return [saturate(y, out_type).reshape(out_shape(x, two_d, oh, ow, n))]
    else:
        wmat = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, n)  # rows in chip order (kh, kw, c)
        wmat_f = wmat.astype(np.float64)
        acc = make_acc(eng.target, bits, bias, wmat.T, False)
        pointwise = kh == kw == 1 and sh == sw == 1 and not any((pt, pb, pl, pr))
        # no partial sum can saturate a lane and every sum is exact in float64: the whole conv in floats
        in_floats = acc.exact_f64 and not acc.possible
        bias_f = acc.bias.astype(np.float64)
        dtype, lo, hi = out_type

        def run(x):
            x3 = as_hwc(x, two_d, where)
            if x3.shape[2] != c:
                raise EngineError(f"{where}: input has {x3.shape[2]} channels, the filter takes {c}",
                                  "feed the model's channel count")
            if pointwise:
                oh, ow = x3.shape[0], x3.shape[1]
                cols = x3.reshape(-1, c)
            else:
                xp = zero_pad(x3, pt, pb, pl, pr)
                hp, wp = xp.shape[0], xp.shape[1]
                oh = (hp - dh * (kh - 1) - 1) // sh + 1
                ow = (wp - dw * (kw - 1) - 1) // sw + 1
                if oh <= 0 or ow <= 0:
                    raise EngineError(f"{where}: input {list(x.shape)} is smaller than the kernel", "feed more frames")
                s0, s1, s2 = xp.strides
                view = np.lib.stride_tricks.as_strided(
                    xp, (oh, ow, kh, kw, c), (s0 * sh, s1 * sw, s0 * dh, s1 * dw, s2), writeable=False)
                cols = view.reshape(oh * ow, kh * kw * c)
            if in_floats:
                total_f = cols.astype(np.float64) @ wmat_f
                total_f += bias_f
                y = shift.exact_f64(total_f)
                np.clip(y, 0 if relu else lo, hi, out=y)
                return [y.astype(dtype).reshape(out_shape(x, two_d, oh, ow, n))]
            total, state["sat"] = matmul_accumulate(cols, wmat, wmat_f, acc)
            y = shift(total)
            if relu:
                y = np.maximum(y, 0)
            return [saturate(y, out_type).reshape(out_shape(x, two_d, oh, ow, n))]

    return Plan(node, tuple(acts), node.outputs, run, saturations=lambda: state["sat"])


def as_hwc(x: np.ndarray, two_d: bool, where: str) -> np.ndarray:
    if two_d:
        if x.ndim != 4 or x.shape[0] != 1:
            raise EngineError(f"{where}: 2-D conv input must be [1, H, W, C], got {list(x.shape)}",
                              "feed NHWC with batch 1")
        return x[0]
    if x.ndim != 3 or x.shape[0] != 1:
        raise EngineError(f"{where}: 1-D conv input must be [1, W, C], got {list(x.shape)}", "feed NWC with batch 1")
    return x[0][None]


def out_shape(x: np.ndarray, two_d: bool, oh: int, ow: int, n: int) -> tuple[int, ...]:
    return (1, oh, ow, n) if two_d else (1, ow, n)


@builds('Gemm', 'MatMul')
def build_dense(eng: Engine, node: Node) -> Plan:
    """Gemm (constant B, optional bias) and MatMul with a constant B: ESP-DL's 1x1 conv kernel (MatMul of two
    activations: ``_build_activation_matmul``)."""
    acts, consts = eng.operands(node)
    where = f"{node.op_type} {node.name!r}"
    if node.op_type == "MatMul" and len(acts) == 2:
        return _build_activation_matmul(eng, node)
    if len(acts) != 1 or len(consts) < 2 or consts[1] is None or consts[0] is not None:
        raise EngineError(f"{where}: only an activation times a constant matrix (or two activations, MatMul) is "
                          "emulated", "export the right-hand operand as a parameter (e.g. nn.Linear / a constant weight)")
    a = node.attributes
    if node.op_type == "Gemm" and (int(a.get("transA", 0) or 0) not in (0, -1) or int(a.get("transB", 0) or 0) not in (0, -1)):
        raise EngineError(f"{where} has transA/transB set", "ESP-DL runs Gemm with transA = transB = 0")
    if a.get("activation", "Linear") not in ("Linear", "Relu", "ReLU"):
        raise EngineError(f"{where} has fused activation {a.get('activation')!r}", "re-export with esp-ppq")
    relu = a.get("activation", "Linear") in ("Relu", "ReLU")
    weight = consts[1]
    bias_t = consts[2] if node.op_type == "Gemm" and len(consts) > 2 else None
    bits = eng.bits(node)
    out_type = eng.out_type(node)
    dims = list(weight.dims)
    if len(dims) < 2:
        raise EngineError(f"{where}: weight of rank {len(dims)}", "re-export the model with esp-ppq")
    c, n = dims[-2], dims[-1]
    batch = int(np.prod(dims[:-2])) if len(dims) > 2 else 1
    if node.op_type == "Gemm" and len(dims) == 4 and dims[:2] != [1, 1]:
        raise EngineError(f"{where}: filter dims {dims}", "re-export the model with esp-ppq")
    if node.op_type == "Gemm":
        batch = 1
    flat = np.asarray(weight.data).reshape(batch, -1)
    mats = [unpack_filter(f, weight.layout, n, c, 1, 1, False, where)[:, :, 0, 0] for f in flat]  # [N, C] each
    e_in, e_out = eng.tensor_exponent(acts[0], node), eng.tensor_exponent(node.outputs[0], node)
    w_exps = np.array(weight.exponents or (0,), dtype=np.int64)
    if w_exps.size not in (1, n):
        raise EngineError(f"{where}: weight has {w_exps.size} exponents for {n} outputs", "re-export with esp-ppq")
    shift = eng.target.shifter(np.broadcast_to(e_out - e_in - w_exps, (n,)))
    bias = np.zeros(n, dtype=np.int64) if bias_t is None else np.asarray(bias_t.data, dtype=np.int64).reshape(-1)
    plans = []
    for m in mats:
        wmat = np.ascontiguousarray(m.T)  # [C, N]
        plans.append((wmat, wmat.astype(np.float64), make_acc(eng.target, bits, bias, m, False)))
    state = {"sat": 0}
    wshape = dims[:-2] if len(dims) > 2 and node.op_type == "MatMul" else []

    def run(x):
        if x.shape[-1] != c:
            raise EngineError(f"{where}: input {list(x.shape)} has {x.shape[-1]} features, the weight takes {c}",
                              "feed the model's feature count")
        vector = x.ndim == 1 and bool(wshape)  # a 1-D left operand: one row, dropped again (ONNX MatMul)
        if vector:
            x = x.reshape(1, c)
        sat = 0
        if not wshape:
            total, sat = matmul_accumulate(x.reshape(-1, c), plans[0][0], plans[0][1], plans[0][2])
            out_shape = (*x.shape[:-1], n)
        else:  # constant batched B: ONNX broadcasting of the leading dims
            lead = np.broadcast_shapes(tuple(x.shape[:-2]), tuple(wshape))
            xb = np.broadcast_to(x, (*lead, *x.shape[-2:])).reshape(-1, *x.shape[-2:])
            idx = np.broadcast_to(np.arange(batch).reshape(wshape), lead).reshape(-1)
            parts = []
            for xi, bi in zip(xb, idx):
                t, s = matmul_accumulate(xi, *plans[bi])
                parts.append(t)
                sat += s
            total = np.stack(parts)
            out_shape = (*lead, n) if vector else (*lead, x.shape[-2], n)
        state["sat"] = sat
        y = shift(total)
        if relu:
            y = np.maximum(y, 0)
        return [saturate(y, out_type).reshape(out_shape)]

    return Plan(node, tuple(acts), node.outputs, run, saturations=lambda: state["sat"])


def _build_activation_matmul(eng: Engine, node: Node) -> Plan:
    """MatMul of two activations (dl_module_matmul.hpp): each [C, N] slice of B is the filter of ESP-DL's 1x1 conv
    kernel at run time, per-tensor exponents, no bias; ONNX's broadcasting of the leading dims and 1-D operands.

    ``input1_layout`` says how B lies in memory: ``packed`` (or absent, every export before the attribute) is the
    packed ``(N/16)HWC16`` filter order (``(N/8)`` at 16 bits) that ESP-PPQ's Reshape/Transpose put it in;
    ``native_kn`` (ESP-PPQ 1.3.12) is row-major [K, N], which its exporter states ESP-DL's kernels now take. ESP-DL
    3.3.9's sources, the newest here, do not read the attribute and take every B as packed: the lint says so
    (``matmul-native-kn``), and the harness exports B packed, which every release reads.
    """
    where = f"{node.op_type} {node.name!r}"
    a = node.attributes
    if a.get("activation", "Linear") not in ("Linear", "Relu", "ReLU"):
        raise EngineError(f"{where} has fused activation {a.get('activation')!r}", "re-export with esp-ppq")
    relu = a.get("activation", "Linear") in ("Relu", "ReLU")
    bits = eng.bits(node)
    out_type = eng.out_type(node)
    e0, e1 = (eng.tensor_exponent(name, node) for name in node.inputs[:2])
    shift = eng.target.shifter(eng.tensor_exponent(node.outputs[0], node) - e0 - e1)
    align = 16 if bits == 8 else 8
    native = a.get("input1_layout") == "native_kn"
    state = {"sat": 0}

    def run(x0, x1):
        left, right = x0.ndim == 1, x1.ndim == 1
        a0 = x0.reshape(1, -1) if left else x0
        a1 = x1.reshape(-1, 1) if right else x1
        if a0.shape[-1] != a1.shape[-2]:
            raise EngineError(f"{where}: cannot multiply {list(x0.shape)} by {list(x1.shape)}",
                              "feed the shapes the model was exported for")
        lead = np.broadcast_shapes(a0.shape[:-2], a1.shape[:-2])
        b0 = np.broadcast_to(a0, (*lead, *a0.shape[-2:])).reshape(-1, *a0.shape[-2:])
        b1 = np.broadcast_to(a1, (*lead, *a1.shape[-2:])).reshape(-1, *a1.shape[-2:])
        parts, sat = [], 0
        c, n = a1.shape[-2:]
        layout = f"(N/{align})HWC{align}" + ("_UNALIGNED" if n % align else "")
        for m, w in zip(b0, b1):
            if native:  # row-major [K, N], as the exporter says the kernel takes it
                wmat = w.astype(np.int64)
            else:  # the conv kernel reads B's memory as a packed filter (what the exporter packed it into)
                wmat = np.ascontiguousarray(unpack_filter(w, layout, n, c, 1, 1, False, where)[:, :, 0, 0].T)
            acc = make_acc(eng.target, bits, np.zeros(wmat.shape[1], np.int64), wmat.T, False)
            total, hit = matmul_accumulate(m, wmat, wmat.astype(np.float64), acc)
            parts.append(total)
            sat += hit
        state["sat"] = sat
        y = shift(np.stack(parts).reshape(*lead, a0.shape[-2], a1.shape[-1]))
        if relu:
            y = np.maximum(y, 0)
        if left:
            y = y[..., 0, :]
        if right:
            y = y[..., 0]
        if left and right:  # ESP-DL's output of a dot product has shape [1]
            y = y.reshape(1)
        return [saturate(y, out_type)]

    return Plan(node, tuple(node.inputs[:2]), node.outputs, run, saturations=lambda: state["sat"])
