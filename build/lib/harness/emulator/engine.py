"""Bit-exact host emulator of ESP-DL's integer arithmetic, per target.

The virtual board replaces a real ESP32-P4/S3 in CI, so it must compute what
the chip computes, not what ESP-PPQ simulates: esp32p4 rounds half to even with
per-channel weight exponents and 32-bit accumulators; esp32s3 rounds half up,
uses per-tensor weights and 20-bit saturating int8 conv accumulators (bias
first, then filter order). Add/Sub/Concat copy raw integers without aligning
exponents, AveragePool divides by the full kernel area, int16 activations run
ESP-DL's float32 code. Everything constant (unpacked weights, shifts, lookup
tables) is prepared once at load; shapes come from the actual inputs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from harness.errors import HarnessError
from harness.espdl.reader import EspdlModel, Node, TensorInfo
from harness.targets import Shifter, Target, get_target, int_range


class EngineError(HarnessError):
    """A model or input the engine cannot run the way the chip would."""


_INT = {"int8": (np.int8, *int_range(8)), "int16": (np.int16, *int_range(16))}
_QUANT_BITS = {"S8": 8, "S16": 16}
_F32 = np.float32

# Op types whose ESP-DL module takes the int8 table when the exporter stored one (get_operation_lut).
LUT_AWARE_OPS = {
    "Clip", "Elu", "Exp", "HardSigmoid", "HardSwish", "LeakyRelu", "Log", "PRelu", "Relu", "Sigmoid", "Sqrt",
    "Swish", "Tanh", "LUT", "Gelu",
}
# int16 (and table-less int8) activations computed in float32 by ESP-DL.
FLOAT_ACTIVATIONS = {"Sigmoid", "Tanh", "Swish", "Relu", "LeakyRelu", "HardSigmoid", "HardSwish", "Elu", "Exp", "Log",
                     "Sqrt"}
# Ops that move integers without looking at exponents.
RAW_COPY_OPS = {"Concat", "Slice", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Pad", "MaxPool",
                "StreamingCache", "Identity"}
SUPPORTED_OPS = sorted(
    {"Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "RequantizeLinear", "QuantizeLinear", "DequantizeLinear",
     "AveragePool", "GlobalAveragePool", "ReduceMean", "Clip"}
    | LUT_AWARE_OPS | FLOAT_ACTIVATIONS | RAW_COPY_OPS
)


# ---------------------------------------------------------------- arithmetic primitives


def wrap(values: np.ndarray, bits: int) -> np.ndarray:
    """Keep the low ``bits`` bits, sign-extended (``bias & 0xfffff`` loaded into a 20-bit lane)."""
    half = np.int64(1) << (bits - 1)
    return ((values.astype(np.int64) + half) & ((half << 1) - 1)) - half


def _dl_scale(exponent: int) -> np.float32:
    return _F32(2.0**exponent)


# ---------------------------------------------------------------- weight layouts


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
    if layout.startswith("(N/"):
        try:
            align = int(layout[3:layout.index(")")])
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


# ---------------------------------------------------------------- accumulators


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
class _Acc:
    """How one conv-like node accumulates: per-channel lane widths and the (wrapped) bias it preloads."""

    bias: np.ndarray  # int64 [N], as loaded into the lanes
    lo: np.ndarray  # int64 [N]
    hi: np.ndarray
    possible: bool  # can any partial sum leave its lane at all (static bound)?
    exact_f64: bool = True  # every partial sum below 2**53: a float64 matmul is exact


def _make_acc(target: Target, bits: int, bias: np.ndarray, weights: np.ndarray, depthwise: bool) -> _Acc:
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
    return _Acc(lanes, lo, hi, bool(np.any(bound > hi)), bool(np.all(bound < 2**53)))


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


def matmul_accumulate(cols: np.ndarray, wmat: np.ndarray, wmat_f: np.ndarray, acc: _Acc) -> tuple[np.ndarray, int]:
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


# ---------------------------------------------------------------- plans


@dataclass
class _Plan:
    node: Node
    inputs: tuple[str, ...]  # activation inputs, in order
    outputs: tuple[str, ...]
    fn: Callable  # fn(*arrays) -> list of arrays
    saturations: Callable[[], int] | None = None
    reset: Callable[[], None] | None = None


class Engine:
    """One ``.espdl`` model, ready to run with ``target``'s integer semantics.

    ``saturated`` maps node name -> number of outputs whose accumulation saturated (esp32s3's 20-bit
    int8 lanes) in the last ``run``; ESP-PPQ does not simulate this.
    """

    def __init__(self, model: EspdlModel, target: str | Target):
        self.model = model
        self.target = get_target(target) if isinstance(target, str) else target
        self.rounding = self.target.rounding
        self.inputs: list[TensorInfo] = list(model.inputs)
        self.outputs: list[TensorInfo] = list(model.outputs)
        self.saturated: dict[str, int] = {}
        self._plans: list[_Plan] = []
        self._input_names = {i.name for i in self.inputs}
        unknown = [n for n in model.nodes if n.op_type not in _BUILDERS]
        if unknown:
            n = unknown[0]
            raise EngineError(
                f"model {model.name!r}: node {n.name!r} has op type {n.op_type!r}, which the engine does not emulate",
                f"remove or replace that op (the engine runs {', '.join(SUPPORTED_OPS)})",
            )
        for node in model.nodes:
            self._plans.append(_BUILDERS[node.op_type](self, node))
        self.produced = {o for p in self._plans for o in p.outputs}
        missing = [o.name for o in self.outputs if o.name not in self.produced and o.name not in self._input_names]
        if missing:
            raise EngineError(f"model {model.name!r}: no node produces output {missing[0]!r}",
                              "re-export the model with esp-ppq")

    # ------------------------------------------------------------ public API
    def exponent(self, name: str) -> int:
        """Exponent of a graph input, output or activation (``value = q * 2**exponent``)."""
        info = self.model.tensor_info(name)
        if info is None or not info.exponents:
            raise EngineError(f"model {self.model.name!r} has no tensor {name!r} with an exponent",
                              "use a name from the model's inputs, outputs or value_info")
        return int(info.exponents[0])

    def reset(self) -> None:
        """Zero every StreamingCache, like ``dl::Model::reset()`` (a fresh engine starts zeroed)."""
        for plan in self._plans:
            if plan.reset is not None:
                plan.reset()

    def run(self, feeds: dict[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
        """Run once. Inputs/outputs are integers in the file's on-chip layout, batch dim included.

        Returns the graph outputs, or with ``keep=True`` every tensor (graph inputs included).
        """
        env = self._check_feeds(feeds)
        sat: dict[str, int] = {}
        for plan in self._plans:
            try:
                args = [env[name] for name in plan.inputs]
            except KeyError as exc:
                raise EngineError(f"node {plan.node.name!r} reads {exc.args[0]!r}, which nothing produced",
                                  "re-export the model with esp-ppq (nodes must be in topological order)") from None
            try:
                results = plan.fn(*args)
            except EngineError:
                raise
            except (ValueError, IndexError, TypeError, KeyError, ArithmeticError) as exc:
                shapes = ", ".join(str(list(a.shape)) for a in args)
                raise EngineError(
                    f"node {plan.node.name!r} ({plan.node.op_type}) cannot run on inputs of shape {shapes}: {exc}",
                    "feed shapes the model was exported for",
                ) from None
            for name, value in zip(plan.outputs, results):
                env[name] = value
            if plan.saturations is not None:
                count = plan.saturations()
                if count:
                    sat[plan.node.name] = count
        self.saturated = sat
        if keep:
            return env
        return {o.name: env[o.name] for o in self.outputs}

    def run_each(self, feeds: dict[str, np.ndarray], given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every node run on ``given`` values of its inputs where there are some, not on its producers' results.

        ``given`` maps tensor names to values (e.g. ESP-PPQ's embedded test values); an input without one takes
        what this same pass computed for it (from given values upstream), graph inputs take ``feeds``. Returns
        every node's outputs by name: each op's arithmetic checked on its own, so a difference in one op does
        not travel into the next.
        """
        env = {**self._check_feeds(feeds)}
        out: dict[str, np.ndarray] = {}
        for plan in self._plans:
            try:
                results = plan.fn(*[given[n] if n in given else env[n] for n in plan.inputs])
            except (ValueError, IndexError, TypeError, KeyError, ArithmeticError) as exc:
                raise EngineError(f"node {plan.node.name!r} ({plan.node.op_type}) cannot run on its test values: {exc}",
                                  "re-export the model with esp-ppq") from None
            out.update(zip(plan.outputs, results))
            env.update(zip(plan.outputs, results))
        self.reset()
        return out

    # ------------------------------------------------------------ helpers
    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [i.name for i in self.inputs]
        if not isinstance(feeds, dict):
            raise EngineError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}",
                              f"pass {{{', '.join(repr(n) for n in names)}: array}}")
        extra = sorted(set(feeds) - set(names))
        missing = [n for n in names if n not in feeds]
        if extra or missing:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(extra)}"] if extra else [])
            raise EngineError(f"model {self.model.name!r} feeds: {'; '.join(parts)}",
                              f"feed exactly the inputs {', '.join(names)}")
        env: dict[str, np.ndarray] = {}
        for info in self.inputs:
            value = feeds[info.name]
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
            if value.dtype != np.dtype(info.dtype):
                raise EngineError(
                    f"input {info.name!r} of model {self.model.name!r} is {value.dtype}, the model takes {info.dtype}",
                    f"quantize it to {info.dtype} with exponent {list(info.exponents)} first",
                )
            declared = list(info.shape)
            if value.ndim != len(declared) or (declared and declared[0] > 0 and value.shape[0] != declared[0]):
                raise EngineError(
                    f"input {info.name!r} of model {self.model.name!r} has shape {list(value.shape)}, "
                    f"the model takes {declared} (on-chip layout, batch first)",
                    "feed an array of the model's rank and batch size in its on-chip layout",
                )
            env[info.name] = value
        return env

    def _info(self, name: str, node: Node) -> TensorInfo:
        info = self.model.tensor_info(name)
        if info is None or not info.exponents:
            raise EngineError(f"node {node.name!r}: tensor {name!r} has no exponent in the file",
                              "re-export the model with esp-ppq")
        return info

    def _exp(self, name: str, node: Node) -> int:
        return int(self._info(name, node).exponents[0])

    def _out_type(self, node: Node, k: int = 0, allow_float: bool = False):
        """(numpy dtype, lo, hi) of output ``k``; float32 (DequantizeLinear only) gives (float32, None, None)."""
        info = self.model.tensor_info(node.outputs[k])
        dtype = info.dtype if info is not None else {"S8": "int8", "S16": "int16"}.get(
            node.attributes.get("quant_type", ""), "")
        if dtype == "float32" and allow_float:
            return np.float32, None, None
        if dtype not in _INT:
            raise EngineError(f"node {node.name!r}: output {node.outputs[k]!r} has type {dtype or 'unknown'}",
                              "the engine runs int8/int16 models (re-export with esp-ppq w8a8 or w16a16)")
        return _INT[dtype]

    def _bits(self, node: Node) -> int:
        qt = node.attributes.get("quant_type", "")
        if qt in _QUANT_BITS:
            return _QUANT_BITS[qt]
        if qt:
            raise EngineError(f"node {node.name!r} ({node.op_type}) has quant_type {qt}",
                              "the engine runs S8/S16 ops only (export w8a8 or w16a16)")
        return 8 if self._out_type(node)[0] == np.int8 else 16

    def _const(self, name: str):
        return self.model.initializers.get(name)

    def _split(self, node: Node) -> tuple[list[str], list]:
        """Activation inputs and constant inputs (None where an input is an activation)."""
        acts, consts = [], []
        for name in node.inputs:
            t = self._const(name) if name else None
            consts.append(t)
            if name and t is None:
                acts.append(name)
        return acts, consts

    def _lut(self, node: Node):
        name = node.attributes.get("lut")
        if not name:
            return None
        table = self._const(name)
        if table is None:
            raise EngineError(f"node {node.name!r} names lookup table {name!r}, which the file does not contain",
                              "re-export the model with esp-ppq")
        return table


def _sat(values: np.ndarray, out_type) -> np.ndarray:
    dtype, lo, hi = out_type
    return np.minimum(np.maximum(values, lo), hi).astype(dtype)


def _zero_pad(x3: np.ndarray, pt: int, pb: int, pl: int, pr: int, dtype=None) -> np.ndarray:
    """``[H, W, C]`` zero-padded on H and W (np.pad is slow for tiny windows)."""
    if not (pt or pb or pl or pr):
        return x3 if dtype is None else x3.astype(dtype)
    h, w, c = x3.shape
    out = np.zeros((h + pt + pb, w + pl + pr, c), dtype=dtype or x3.dtype)
    out[pt:pt + h, pl:pl + w] = x3
    return out


# ---------------------------------------------------------------- conv-like ops


def _build_conv(eng: Engine, node: Node) -> _Plan:
    acts, consts = eng._split(node)
    a = node.attributes
    if len(acts) != 1 or consts[1] is None:
        raise EngineError(f"Conv {node.name!r} needs one activation input and a constant filter",
                          "re-export the model with esp-ppq")
    weight, bias_t = consts[1], (consts[2] if len(consts) > 2 else None)
    bits = eng._bits(node)
    out_type = eng._out_type(node)
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
    e_in, e_out = eng._exp(acts[0], node), eng._exp(node.outputs[0], node)
    w_exps = np.array(weight.exponents or (0,), dtype=np.int64)
    if w_exps.size not in (1, n):
        raise EngineError(f"{where}: filter has {w_exps.size} exponents for {n} output channels",
                          "re-export the model with esp-ppq")
    shift = eng.target.shifter(np.broadcast_to(e_out - e_in - w_exps, (n,)))
    bias = np.zeros(n, dtype=np.int64) if bias_t is None else np.asarray(bias_t.data, dtype=np.int64).reshape(-1)
    state = {"sat": 0}

    if depthwise:
        wd = w[:, 0]  # [N, KH, KW]
        acc = _make_acc(eng.target, bits, bias, wd.reshape(n, -1), True)
        work = np.int64 if (bits == 16 or acc.possible) else np.int32
        taps = [(i, j, wd[:, i, j].astype(work)) for i in range(kh) for j in range(kw)]
        bias_w = acc.bias.astype(work)

        def run(x):
            x3 = _as_hwc(x, two_d, where)
            xp = _zero_pad(x3, pt, pb, pl, pr, work)
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
            return [_sat(y, out_type).reshape(_out_shape(x, two_d, oh, ow, n))]
    else:
        wmat = w.transpose(2, 3, 1, 0).reshape(kh * kw * c, n)  # rows in chip order (kh, kw, c)
        wmat_f = wmat.astype(np.float64)
        acc = _make_acc(eng.target, bits, bias, wmat.T, False)
        pointwise = kh == kw == 1 and sh == sw == 1 and not any((pt, pb, pl, pr))

        def run(x):
            x3 = _as_hwc(x, two_d, where)
            if x3.shape[2] != c:
                raise EngineError(f"{where}: input has {x3.shape[2]} channels, the filter takes {c}",
                                  "feed the model's channel count")
            if pointwise:
                oh, ow = x3.shape[0], x3.shape[1]
                cols = x3.reshape(-1, c)
            else:
                xp = _zero_pad(x3, pt, pb, pl, pr)
                hp, wp = xp.shape[0], xp.shape[1]
                oh = (hp - dh * (kh - 1) - 1) // sh + 1
                ow = (wp - dw * (kw - 1) - 1) // sw + 1
                if oh <= 0 or ow <= 0:
                    raise EngineError(f"{where}: input {list(x.shape)} is smaller than the kernel", "feed more frames")
                s0, s1, s2 = xp.strides
                view = np.lib.stride_tricks.as_strided(
                    xp, (oh, ow, kh, kw, c), (s0 * sh, s1 * sw, s0 * dh, s1 * dw, s2), writeable=False)
                cols = view.reshape(oh * ow, kh * kw * c)
            total, state["sat"] = matmul_accumulate(cols, wmat, wmat_f, acc)
            y = shift(total)
            if relu:
                y = np.maximum(y, 0)
            return [_sat(y, out_type).reshape(_out_shape(x, two_d, oh, ow, n))]

    return _Plan(node, tuple(acts), node.outputs, run, saturations=lambda: state["sat"])


def _as_hwc(x: np.ndarray, two_d: bool, where: str) -> np.ndarray:
    if two_d:
        if x.ndim != 4 or x.shape[0] != 1:
            raise EngineError(f"{where}: 2-D conv input must be [1, H, W, C], got {list(x.shape)}",
                              "feed NHWC with batch 1")
        return x[0]
    if x.ndim != 3 or x.shape[0] != 1:
        raise EngineError(f"{where}: 1-D conv input must be [1, W, C], got {list(x.shape)}", "feed NWC with batch 1")
    return x[0][None]


def _out_shape(x: np.ndarray, two_d: bool, oh: int, ow: int, n: int) -> tuple[int, ...]:
    return (1, oh, ow, n) if two_d else (1, ow, n)


def _build_dense(eng: Engine, node: Node) -> _Plan:
    """Gemm (constant B, optional bias) and MatMul with a constant B: ESP-DL's 1x1 conv kernel."""
    acts, consts = eng._split(node)
    where = f"{node.op_type} {node.name!r}"
    if len(acts) != 1 or len(consts) < 2 or consts[1] is None or consts[0] is not None:
        raise EngineError(f"{where}: only an activation times a constant matrix is emulated",
                          "export the right-hand operand as a parameter (e.g. nn.Linear / a constant weight)")
    a = node.attributes
    if node.op_type == "Gemm" and (int(a.get("transA", 0) or 0) not in (0, -1) or int(a.get("transB", 0) or 0) not in (0, -1)):
        raise EngineError(f"{where} has transA/transB set", "ESP-DL runs Gemm with transA = transB = 0")
    if a.get("activation", "Linear") not in ("Linear", "Relu", "ReLU"):
        raise EngineError(f"{where} has fused activation {a.get('activation')!r}", "re-export with esp-ppq")
    relu = a.get("activation", "Linear") in ("Relu", "ReLU")
    weight = consts[1]
    bias_t = consts[2] if node.op_type == "Gemm" and len(consts) > 2 else None
    bits = eng._bits(node)
    out_type = eng._out_type(node)
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
    e_in, e_out = eng._exp(acts[0], node), eng._exp(node.outputs[0], node)
    w_exps = np.array(weight.exponents or (0,), dtype=np.int64)
    if w_exps.size not in (1, n):
        raise EngineError(f"{where}: weight has {w_exps.size} exponents for {n} outputs", "re-export with esp-ppq")
    shift = eng.target.shifter(np.broadcast_to(e_out - e_in - w_exps, (n,)))
    bias = np.zeros(n, dtype=np.int64) if bias_t is None else np.asarray(bias_t.data, dtype=np.int64).reshape(-1)
    plans = []
    for m in mats:
        wmat = np.ascontiguousarray(m.T)  # [C, N]
        plans.append((wmat, wmat.astype(np.float64), _make_acc(eng.target, bits, bias, m, False)))
    state = {"sat": 0}
    wshape = dims[:-2] if len(dims) > 2 and node.op_type == "MatMul" else []

    def run(x):
        if x.shape[-1] != c:
            raise EngineError(f"{where}: input {list(x.shape)} has {x.shape[-1]} features, the weight takes {c}",
                              "feed the model's feature count")
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
            out_shape = (*lead, x.shape[-2], n)
        state["sat"] = sat
        y = shift(total)
        if relu:
            y = np.maximum(y, 0)
        return [_sat(y, out_type).reshape(out_shape)]

    return _Plan(node, tuple(acts), node.outputs, run, saturations=lambda: state["sat"])


# ---------------------------------------------------------------- elementwise


def _binary_operands(eng: Engine, node: Node):
    """Activation names and a runner-side getter for the two operands (constants are raw initializer data)."""
    if len(node.inputs) != 2:
        raise EngineError(f"{node.op_type} {node.name!r} has {len(node.inputs)} inputs", "re-export with esp-ppq")
    acts, consts = eng._split(node)
    fixed = [None if t is None else np.asarray(t.data) for t in consts]

    def operands(args):
        it = iter(args)
        return [f if f is not None else next(it) for f in fixed]

    return acts, operands


def _build_addsub(eng: Engine, node: Node) -> _Plan:
    acts, operands = _binary_operands(eng, node)
    out_type = eng._out_type(node)
    sign = 1 if node.op_type == "Add" else -1

    def run(*args):
        x0, x1 = operands(args)
        total = x0.astype(np.int32) + sign * x1.astype(np.int32)  # raw integers, no exponent alignment
        return [_sat(total, out_type)]

    return _Plan(node, tuple(acts), node.outputs, run)


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


def _build_mul(eng: Engine, node: Node) -> _Plan:
    acts, operands = _binary_operands(eng, node)
    out_type = eng._out_type(node)
    bits = eng._bits(node)
    exps = [eng._exp(name, node) if eng._const(name) is None else int((eng._const(name).exponents or (0,))[0])
            for name in node.inputs]
    mul_shift = eng._exp(node.outputs[0], node) - exps[0] - exps[1]
    shift = eng.target.shifter(mul_shift)
    lanes = 16 if bits == 8 else 8
    rescale = _F32(2.0 ** -mul_shift)
    c_path: dict[tuple, bool] = {}

    def run(*args):
        x0, x1 = operands(args)
        prod = x0.astype(np.int64) * x1.astype(np.int64)
        key = (x0.shape, x1.shape)
        if key not in c_path:
            c_path[key] = elemwise_d0(prod.shape, x0.shape, x1.shape) < lanes
        if c_path[key] and bits == 16:
            # C fallback (inner length < 8): float(x0 * x1) * 2^-shift, rounded: int16 products lose bits past 2^24
            y = eng.target.round(prod.astype(_F32) * rescale)
        else:
            y = shift(prod)
        return [_sat(y, out_type)]

    return _Plan(node, tuple(acts), node.outputs, run)


def _build_requant(eng: Engine, node: Node) -> _Plan:
    acts, _ = eng._split(node)
    src = node.inputs[0]
    src_info = eng._info(src, node)
    out_type = eng._out_type(node, allow_float=True)
    e_in, e_out = int(src_info.exponents[0]), eng._exp(node.outputs[0], node)
    if out_type[0] == np.float32:  # DequantizeLinear to float: x * 2^e in float32
        scale = _dl_scale(e_in)
        return _Plan(node, (src,), node.outputs, lambda x: [x.astype(_F32) * scale])
    if src_info.dtype == "float32":  # QuantizeLinear from float: clip(round(x * 2^-e))
        inv = _dl_scale(-e_out)
        return _Plan(node, (src,), node.outputs,
                     lambda x: [_sat(eng.target.round(x.astype(_F32) * inv), out_type)])
    shift = eng.target.shifter(e_out - e_in)
    return _Plan(node, tuple(acts), node.outputs, lambda x: [_sat(shift(x), out_type)])


# ---------------------------------------------------------------- activations


def _full_range(bits: int) -> np.ndarray:
    return np.arange(-(1 << (bits - 1)), 1 << (bits - 1), dtype=np.int64)


def _float_activation(eng: Engine, node: Node, bits: int, x: np.ndarray) -> np.ndarray:
    """ESP-DL's float32 code for one activation on integer inputs ``x`` (int64), before saturation."""
    op = node.op_type
    a = node.attributes
    e_in, e_out = eng._exp(node.inputs[0], node), eng._exp(node.outputs[0], node)
    in_scale, out_scale = _dl_scale(e_in), _dl_scale(-e_out)
    if op == "Relu" and e_in == e_out:
        return np.maximum(x, 0)
    with np.errstate(all="ignore"):
        t = x.astype(_F32) * in_scale
        if op == "Sigmoid":
            y = _sigmoid(t) * out_scale
        elif op == "Tanh":
            y = (_F32(2) * _sigmoid(_F32(2) * t) - _F32(1)) * out_scale
        elif op == "Swish":
            y = (_sigmoid(t) * t) * out_scale
        elif op == "Relu":
            y = np.where(t >= 0, t * out_scale, _F32(0))
        elif op == "LeakyRelu":
            alpha = _F32(a.get("alpha", 0.01))
            y = np.where(t >= 0, t * out_scale, (t * out_scale) * alpha)
        elif op == "HardSigmoid":
            alpha, beta = _F32(a.get("alpha", 0.2)), _F32(a.get("beta", 0.5))
            y = np.maximum(_F32(0), np.minimum(_F32(1), alpha * t + beta)) * out_scale
        elif op == "HardSwish":  # DL_MAX(0, DL_MIN(1, 0.166667 * temp + 0.5)) * temp, in double
            td = t.astype(np.float64)
            y = (np.maximum(0.0, np.minimum(1.0, 0.166667 * td + 0.5)) * td).astype(_F32) * out_scale
        elif op == "Elu":
            alpha = _F32(a.get("alpha", 1.0))
            y = np.where(t >= 0, t * out_scale, (alpha * (np.exp(t) - _F32(1))) * out_scale)
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


def _sigmoid(t: np.ndarray) -> np.ndarray:
    """``math::sigmoid``: ``1.0 / (1.0 + expf(-x))`` -- expf in float32, the division in double, then float."""
    e = np.exp(-t).astype(np.float64)
    return (1.0 / (1.0 + e)).astype(_F32)


def _build_activation(eng: Engine, node: Node) -> _Plan:
    op = node.op_type
    bits = eng._bits(node)
    out_type = eng._out_type(node)
    table = eng._lut(node)
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
        full = _float_activation(eng, node, bits, _full_range(bits))
    else:
        raise EngineError(f"node {node.name!r}: {op} at {bits} bits needs an exported lookup table",
                          "re-export the model with esp-ppq (int8 tables are exported by default)")
    lut = _sat(full, out_type)

    def run(x):
        return [lut[x.astype(np.int64) + offset]]

    return _Plan(node, (src,), node.outputs, run)


def lut16_index(u: np.ndarray, step: int, rounding: str) -> np.ndarray:
    """Table index of ``u = x + 32768``: the nearest entry, ``u / step`` rounded like the target (dl_base_lut.cpp)."""
    return Shifter(step.bit_length() - 1, rounding)(u)


def _build_clip(eng: Engine, node: Node) -> _Plan:
    if eng._lut(node) is not None and eng._bits(node) == 8:
        return _build_activation(eng, node)
    out_type = eng._out_type(node)
    _, consts = eng._split(node)
    bits = eng._bits(node)
    lo, hi = int_range(bits)
    mn = int(np.asarray(consts[1].data).reshape(-1)[0]) if len(consts) > 1 and consts[1] is not None else lo
    mx = int(np.asarray(consts[2].data).reshape(-1)[0]) if len(consts) > 2 and consts[2] is not None else hi
    rescale = _dl_scale(eng._exp(node.inputs[0], node)) * _dl_scale(-eng._exp(node.outputs[0], node))
    full = eng.target.round(np.clip(_full_range(bits), mn, mx).astype(_F32) * rescale)
    lut = _sat(full, out_type)
    offset = 1 << (bits - 1)
    return _Plan(node, (node.inputs[0],), node.outputs, lambda x: [lut[x.astype(np.int64) + offset]])


# ---------------------------------------------------------------- pooling / reduce


def _pool_geometry(node: Node, x: np.ndarray, global_pool: bool):
    """(kernel, strides, pads [hb, he, wb, we]) on a [H, W, C] view."""
    a = node.attributes
    two_d = x.ndim == 4
    if global_pool:
        k = list(x.shape[1:-1]) if two_d else [x.shape[1]]
        s, p = [1] * len(k), [0] * (2 * len(k))
    else:
        k = list(a.get("kernel_shape") or [])
        s = list(a.get("strides") or [1] * len(k))
        p = list(a.get("pads") or [0] * (2 * len(k)))
    if two_d:
        return (k[0], k[1]), (s[0], s[1]), (p[0], p[2], p[1], p[3])
    return (1, k[0]), (1, s[0]), (0, 0, p[0], p[1])


def _pool_windows(x: np.ndarray, kernel, strides, pads, fill):
    """Strided view ``[OH, OW, KH, KW, C]`` of the padded input (padding filled with ``fill``)."""
    x3 = x[0] if x.ndim == 4 else x[0][None]
    hb, he, wb, we = pads
    xp = np.pad(x3, ((hb, he), (wb, we), (0, 0)), constant_values=fill)
    kh, kw = kernel
    sh, sw = strides
    oh = (xp.shape[0] - kh) // sh + 1
    ow = (xp.shape[1] - kw) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError("window larger than the padded input")
    s0, s1, s2 = xp.strides
    view = np.lib.stride_tricks.as_strided(xp, (oh, ow, kh, kw, xp.shape[2]), (s0 * sh, s1 * sw, s0, s1, s2),
                                           writeable=False)
    return view, oh, ow


def avgpool_scale(e_in: int, e_out: int, area: int) -> np.float32:
    """The float32 factor ESP-DL multiplies an average pool's integer window sum by.

    ``2^e_in * fl32(1 / area) * 2^-e_out`` (esp-dl: dl_base_avg_pool2d.cpp:34-35, the C path every target takes:
    ``CONFIG_ACCURATE_INFER`` is 1, dl_define_private.hpp:42). A reciprocal, not a division: for an area whose odd
    part is above 1, ``fl32(1 / area)`` is inexact, so a mean that is exactly halfway between two integers comes
    out a hair above or below it and is rounded away from the tie. ESP-PPQ divides (torch ``avg_pool``) and rounds
    the exact tie instead; the two then differ by 1 LSB (e.g. area 56: sum 651 -> 46.500004 -> 47 on the chip,
    46.5 -> 46 in ESP-PPQ's esp32p4 test value). The engine follows the chip.
    """
    return (_dl_scale(e_in) * (_F32(1) / _F32(area))) * _dl_scale(-e_out)


def _build_avgpool(eng: Engine, node: Node) -> _Plan:
    """AveragePool / GlobalAveragePool, int8 and int16, both targets: one C routine (``avgpool2d_hwc``).

    The window sum is exact (int32; padded positions add nothing, the esp32p4 int8 ISA helper for channels % 16 == 0
    only sums); the divisor is always the full kernel area (count_include_pad=1); then
    ``sat(round(fl32(float(sum) * avgpool_scale)))`` with the target's float rounding (esp32p4 ``fcvt.w.s rne``,
    esp32s3 ``floorf(v + 0.5)``).
    """
    out_type = eng._out_type(node)
    global_pool = node.op_type == "GlobalAveragePool"
    e_in, e_out = eng._exp(node.inputs[0], node), eng._exp(node.outputs[0], node)
    scales: dict[int, np.float32] = {}

    def run(x):
        kernel, strides, pads = _pool_geometry(node, x, global_pool)
        view, oh, ow = _pool_windows(x.astype(np.int64), kernel, strides, pads, 0)
        total = view.sum(axis=(2, 3))  # padded positions add nothing
        area = kernel[0] * kernel[1]  # always the full kernel (count_include_pad=1 on chip)
        if area not in scales:
            scales[area] = avgpool_scale(e_in, e_out, area)
        y = eng.target.round(total.astype(_F32) * scales[area])
        shape = (1, oh, ow, x.shape[-1]) if x.ndim == 4 else (1, ow, x.shape[-1])
        return [_sat(y, out_type).reshape(shape)]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


def _build_maxpool(eng: Engine, node: Node) -> _Plan:
    out_type = eng._out_type(node)

    def run(x):
        kernel, strides, pads = _pool_geometry(node, x, False)
        view, oh, ow = _pool_windows(x.astype(np.int32), kernel, strides, pads, np.iinfo(np.int32).min)
        y = view.max(axis=(2, 3))  # the valid part of each window
        shape = (1, oh, ow, x.shape[-1]) if x.ndim == 4 else (1, ow, x.shape[-1])
        return [_sat(y, out_type).reshape(shape)]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


def _axes_of(eng: Engine, node: Node, index: int = 1, attr: str = "axes"):
    if len(node.inputs) > index and node.inputs[index]:
        t = eng._const(node.inputs[index])
        if t is None:
            raise EngineError(f"{node.op_type} {node.name!r}: {attr} must be a constant", "re-export with esp-ppq")
        return [int(v) for v in np.asarray(t.data).reshape(-1)]
    value = node.attributes.get(attr)
    return None if value is None else [int(v) for v in (value if isinstance(value, list) else [value])]


def reduce_groups(flags: list[bool]) -> list[bool]:
    """ESP-DL's ReduceBase merge of adjacent axes with the same reduce flag (dl_module_reduce_base.hpp:136-148)."""
    merged: list[bool] = []
    for f in flags:
        if not merged or merged[-1] != f:
            merged.append(f)
    return merged


def _build_reducemean(eng: Engine, node: Node) -> _Plan:
    """ReduceMean: ``sat(round(fl32(fl32(float(sum) * 2^e_in) / count) * 2^-e_out))``, a float32 *division*.

    esp-dl: dl_module_reduce_mean.hpp:39-43 (int8 sums in int32, int16 in int64; ``count`` converted to float),
    C on every target, rounded like the target's ``tool::round``. Unlike AveragePool there is no reciprocal, so an
    exact tie stays a tie and rounds half to even (esp32p4) or half up (esp32s3), as ESP-PPQ's ``torch.mean`` does.
    ReduceBase::forward_template (dl_module_reduce_base.hpp:151-262) only writes its output when the merged reduce
    flags form at most 4 alternating groups; the engine refuses anything else rather than invent a value.
    """
    out_type = eng._out_type(node)
    axes = _axes_of(eng, node)
    keep = int(node.attributes.get("keepdims", 1))
    noop = int(node.attributes.get("noop_with_empty_axes", 0) or 0)
    in_scale = _dl_scale(eng._exp(node.inputs[0], node))
    out_scale = _dl_scale(-eng._exp(node.outputs[0], node))
    checked: set[int] = set()

    def run(x):
        ax = tuple(range(x.ndim)) if not axes else tuple(a % x.ndim for a in axes)
        if x.ndim not in checked:
            groups = reduce_groups([i in ax and not (noop and not axes) for i in range(x.ndim)])
            if groups == [False]:
                raise EngineError(f"ReduceMean {node.name!r} reduces no axis (noop_with_empty_axes); ESP-DL would write "
                                  f"the mean of the whole tensor to its first element only",
                                  "remove the no-op ReduceMean from the model")
            if len(groups) > 4:
                raise EngineError(
                    f"ReduceMean {node.name!r} reduces axes {list(ax)} of a rank-{x.ndim} input: {len(groups)} "
                    f"alternating groups of reduced and kept axes; ESP-DL's ReduceBase handles at most 4 and would "
                    f"leave the output unwritten",
                    "reduce adjacent axes (reshape or transpose first), or split it into two ReduceMeans",
                )
            checked.add(x.ndim)
        total = x.astype(np.int64).sum(axis=ax, keepdims=bool(keep))
        count = int(np.prod([x.shape[a] for a in ax]))
        y = eng.target.round(((total.astype(_F32) * in_scale) / _F32(count)) * out_scale)
        y = _sat(y, out_type)
        return [y.reshape(1) if y.ndim == 0 else y]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


# ---------------------------------------------------------------- data movement


def _build_concat(eng: Engine, node: Node) -> _Plan:
    acts, consts = eng._split(node)
    axis = int(node.attributes.get("axis", 0))
    fixed = [None if t is None else np.asarray(t.data) for t in consts]

    def run(*args):
        it = iter(args)
        parts = [f if f is not None else next(it) for f in fixed]
        if len({p.dtype for p in parts}) > 1:
            raise EngineError(f"Concat {node.name!r} mixes {', '.join(str(p.dtype) for p in parts)}",
                              "insert a RequantizeLinear so all operands share one type")
        return [np.concatenate(parts, axis=axis)]  # raw bytes: exponents are not aligned

    return _Plan(node, tuple(acts), node.outputs, run)


def _build_slice(eng: Engine, node: Node) -> _Plan:
    params = []
    for k in range(1, 5):
        if len(node.inputs) > k and node.inputs[k]:
            t = eng._const(node.inputs[k])
            if t is None:
                raise EngineError(f"Slice {node.name!r}: input {k} must be a constant", "re-export with esp-ppq")
            params.append([int(v) for v in np.asarray(t.data).reshape(-1)])
        else:
            params.append(None)
    starts, ends, axes, steps = params
    if starts is None or ends is None:
        starts = [int(v) for v in node.attributes.get("starts", [])]
        ends = [int(v) for v in node.attributes.get("ends", [])]
        axes = axes or node.attributes.get("axes")

    def run(x):
        index = [slice(None)] * x.ndim
        for i, (s, e) in enumerate(zip(starts, ends)):
            ax = (axes[i] if axes else i) % x.ndim
            step = steps[i] if steps else 1
            index[ax] = slice(s, max(min(e, 2**62), -(2**62)), step)
        return [np.ascontiguousarray(x[tuple(index)])]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


def _build_transpose(eng: Engine, node: Node) -> _Plan:
    perm = node.attributes.get("perm")
    return _Plan(node, (node.inputs[0],), node.outputs,
                 lambda x: [np.ascontiguousarray(np.transpose(x, perm))])


def _build_reshape(eng: Engine, node: Node) -> _Plan:
    t = eng._const(node.inputs[1]) if len(node.inputs) > 1 else None
    if t is None:
        raise EngineError(f"Reshape {node.name!r}: shape must be a constant", "re-export with esp-ppq")
    target = [int(v) for v in np.asarray(t.data).reshape(-1)]
    allowzero = int(node.attributes.get("allowzero", 0) or 0)

    def run(x):
        shape = [x.shape[i] if (v == 0 and not allowzero and i < x.ndim) else v for i, v in enumerate(target)]
        return [x.reshape(shape)]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


def _build_flatten(eng: Engine, node: Node) -> _Plan:
    axis = int(node.attributes.get("axis", 1))

    def run(x):
        ax = axis % x.ndim if x.ndim else 0
        return [x.reshape(int(np.prod(x.shape[:ax])), -1)]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


def _build_squeeze(eng: Engine, node: Node) -> _Plan:
    axes = _axes_of(eng, node)

    def run(x):
        if axes is None:
            return [np.squeeze(x)]
        return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


def _build_unsqueeze(eng: Engine, node: Node) -> _Plan:
    axes = _axes_of(eng, node)
    if axes is None:
        raise EngineError(f"Unsqueeze {node.name!r} has no axes", "re-export with esp-ppq")

    def run(x):
        rank = x.ndim + len(axes)
        return [np.expand_dims(x, tuple(a % rank for a in axes))]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


def _build_pad(eng: Engine, node: Node) -> _Plan:
    pads = _axes_of(eng, node, 1, "pads")
    if pads is None:
        raise EngineError(f"Pad {node.name!r} has no pads", "re-export with esp-ppq")
    if any(p < 0 for p in pads):
        raise EngineError(f"Pad {node.name!r} has negative pads {pads}", "ESP-DL pads only; use a Slice to crop")
    value_t = eng._const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    value = int(np.asarray(value_t.data).reshape(-1)[0]) if value_t is not None else 0
    mode = node.attributes.get("mode", "constant") or "constant"
    if mode not in ("constant", "edge", "reflect"):
        raise EngineError(f"Pad {node.name!r} has mode {mode!r}", "ESP-DL pads constant, edge or reflect")

    def run(x):
        half = len(pads) // 2
        width = [(pads[i], pads[i + half]) for i in range(half)]
        if mode == "constant":
            return [np.pad(x, width, constant_values=value)]  # the stored integer, as is
        return [np.pad(x, width, mode=mode)]

    return _Plan(node, (node.inputs[0],), node.outputs, run)


def _build_identity(eng: Engine, node: Node) -> _Plan:
    return _Plan(node, (node.inputs[0],), node.outputs, lambda x: [x.copy()])


def _build_streaming_cache(eng: Engine, node: Node) -> _Plan:
    """``StreamingCache``: out = [cache bytes, input bytes]; cache = the last cache bytes of out (zero at start)."""
    window = int(node.attributes.get("window_size", 1))
    axis = int(node.attributes.get("frame_axis", 1))
    state: dict[str, np.ndarray | None] = {"cache": None}

    def run(x):
        ax = axis % x.ndim
        shape = list(x.shape)
        shape[ax] += window - 1
        keep = math.prod(shape) - x.size
        if state["cache"] is None or state["cache"].size != keep or state["cache"].dtype != x.dtype:
            state["cache"] = np.zeros(keep, dtype=x.dtype)
        flat = np.concatenate([state["cache"], x.reshape(-1)])
        state["cache"] = flat[x.size:].copy()
        return [flat.reshape(shape)]

    def reset():
        if state["cache"] is not None:
            state["cache"][:] = 0

    return _Plan(node, (node.inputs[0],), node.outputs, run, reset=reset)


_BUILDERS: dict[str, Callable[[Engine, Node], _Plan]] = {
    "Conv": _build_conv,
    "Gemm": _build_dense,
    "MatMul": _build_dense,
    "Add": _build_addsub,
    "Sub": _build_addsub,
    "Mul": _build_mul,
    "RequantizeLinear": _build_requant,
    "QuantizeLinear": _build_requant,
    "DequantizeLinear": _build_requant,
    "AveragePool": _build_avgpool,
    "GlobalAveragePool": _build_avgpool,
    "MaxPool": _build_maxpool,
    "ReduceMean": _build_reducemean,
    "Concat": _build_concat,
    "Slice": _build_slice,
    "Transpose": _build_transpose,
    "Reshape": _build_reshape,
    "Flatten": _build_flatten,
    "Squeeze": _build_squeeze,
    "Unsqueeze": _build_unsqueeze,
    "Pad": _build_pad,
    "Identity": _build_identity,
    "StreamingCache": _build_streaming_cache,
    "Clip": _build_clip,
    **{op: _build_activation for op in (LUT_AWARE_OPS | FLOAT_ACTIVATIONS) - {"Clip"}},
}
