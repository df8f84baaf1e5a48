"""Ops that move integers without looking at exponents: Concat, Slice, Split, Gather, Transpose, Reshape, Flatten,
Squeeze, Unsqueeze, Pad, Identity, DepthToSpace, SpaceToDepth."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.emulator.common import EngineError, Plan, axes_of
from harness.emulator.ops import builds

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


@builds('Concat')
def build_concat(eng: Engine, node: Node) -> Plan:
    acts, consts = eng.operands(node)
    axis = int(node.attributes.get("axis", 0))
    fixed = [None if t is None else np.asarray(t.data) for t in consts]

    def run(*args):
        it = iter(args)
        parts = [f if f is not None else next(it) for f in fixed]
        if len({p.dtype for p in parts}) > 1:
            raise EngineError(f"Concat {node.name!r} mixes {', '.join(str(p.dtype) for p in parts)}",
                              "insert a RequantizeLinear so all operands share one type")
        return [np.concatenate(parts, axis=axis)]  # raw bytes: exponents are not aligned

    return Plan(node, tuple(acts), node.outputs, run)


@builds('Slice')
def build_slice(eng: Engine, node: Node) -> Plan:
    params = []
    for k in range(1, 5):
        if len(node.inputs) > k and node.inputs[k]:
            t = eng.const(node.inputs[k])
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

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds('Transpose')
def build_transpose(eng: Engine, node: Node) -> Plan:
    perm = node.attributes.get("perm")
    return Plan(node, (node.inputs[0],), node.outputs,
                 lambda x: [np.ascontiguousarray(np.transpose(x, perm))])


@builds('Reshape')
def build_reshape(eng: Engine, node: Node) -> Plan:
    t = eng.input_const(node, 1)
    if t is None:
        raise EngineError(f"Reshape {node.name!r}: shape must be a constant", "re-export with esp-ppq")
    target = [int(v) for v in np.asarray(t.data).reshape(-1)]
    allowzero = int(node.attributes.get("allowzero", 0) or 0)

    def run(x):
        shape = [x.shape[i] if (v == 0 and not allowzero and i < x.ndim) else v for i, v in enumerate(target)]
        return [x.reshape(shape)]

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds('Flatten')
def build_flatten(eng: Engine, node: Node) -> Plan:
    axis = int(node.attributes.get("axis", 1))

    def run(x):
        ax = axis % x.ndim if x.ndim else 0
        return [x.reshape(int(np.prod(x.shape[:ax])), -1)]

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds('Squeeze')
def build_squeeze(eng: Engine, node: Node) -> Plan:
    axes = axes_of(eng, node)

    def run(x):
        if axes is None:
            return [np.squeeze(x)]
        return [np.squeeze(x, axis=tuple(a % x.ndim for a in axes))]

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds('Unsqueeze')
def build_unsqueeze(eng: Engine, node: Node) -> Plan:
    axes = axes_of(eng, node)
    if axes is None:
        raise EngineError(f"Unsqueeze {node.name!r} has no axes", "re-export with esp-ppq")

    def run(x):
        rank = x.ndim + len(axes)
        return [np.expand_dims(x, tuple(a % rank for a in axes))]

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds('Pad')
def build_pad(eng: Engine, node: Node) -> Plan:
    pads = axes_of(eng, node, 1, "pads")
    if pads is None:
        raise EngineError(f"Pad {node.name!r} has no pads", "re-export with esp-ppq")
    if any(p < 0 for p in pads):
        raise EngineError(f"Pad {node.name!r} has negative pads {pads}", "ESP-DL pads only; use a Slice to crop")
    value_t = eng.input_const(node, 2)
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

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds('Identity')
def build_identity(eng: Engine, node: Node) -> Plan:
    return Plan(node, (node.inputs[0],), node.outputs, lambda x: [x.copy()])


@builds("Split")
def build_split(eng: Engine, node: Node) -> Plan:
    """``dl_module_split.hpp``: consecutive parts along ``axis``, sized by the constant ``split`` input; without
    it ESP-DL reads ``num_outputs`` as the size of every part but the last (not the number of parts)."""
    sizes = axes_of(eng, node, 1, "split")
    axis = int(node.attributes.get("axis", 0))
    num = node.attributes.get("num_outputs")
    count = len(node.outputs)

    def run(x):
        ax = axis % x.ndim
        if sizes is not None:
            parts = sizes
        else:
            if not num or int(num) < 1:
                raise EngineError(f"Split {node.name!r} has neither a split input nor num_outputs",
                                  "re-export with esp-ppq")
            n = int(num)
            pieces = -(-x.shape[ax] // n)
            parts = [n] * (pieces - 1) + [x.shape[ax] - (pieces - 1) * n]
        if len(parts) != count or sum(parts) != x.shape[ax]:
            raise EngineError(f"Split {node.name!r}: ESP-DL cuts axis {ax} of {list(x.shape)} into {parts}, the "
                              f"node has {count} outputs", "give Split an explicit split input")
        bounds = np.cumsum([0, *parts])
        return [np.ascontiguousarray(np.take(x, range(a, b), axis=ax)) for a, b in zip(bounds[:-1], bounds[1:])]

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds("Gather")
def build_gather(eng: Engine, node: Node) -> Plan:
    """``dl_module_gather.hpp``: whole slices of ``axis`` copied by constant indices, used as they are (a
    negative or too large index reads outside the tensor on the chip, so it is refused here)."""
    table = eng.input_const(node, 1)
    if table is None:
        raise EngineError(f"Gather {node.name!r}: the indices must be a constant", "re-export with esp-ppq")
    indices = np.asarray(table.data).astype(np.int64)
    axis = int(node.attributes.get("axis", 0))

    def run(x):
        ax = axis % x.ndim
        if indices.size and (indices.min() < 0 or indices.max() >= x.shape[ax]):
            raise EngineError(f"Gather {node.name!r}: indices {indices.min()}..{indices.max()} on an axis of "
                              f"{x.shape[ax]}: ESP-DL does not wrap negative indices",
                              "use indices within 0..size-1 (ESP-DL reads outside the tensor otherwise)")
        return [np.ascontiguousarray(np.take(x, indices, axis=ax))]

    return Plan(node, (node.inputs[0],), node.outputs, run)


def _depth_to_space_order(h: int, w: int, c: int, block: int, mode: str) -> np.ndarray:
    """Flat output index of every input element of ``[H, W, C]`` (``dl_module_depth_to_space.hpp``'s loops)."""
    oc = c // (block * block)
    hh, ww, cc = np.meshgrid(np.arange(h), np.arange(w), np.arange(c), indexing="ij")
    if mode == "CRD":
        out_c, out_h, out_w = cc // (block * block), hh * block + (cc % (block * block)) // block, ww * block + cc % block
    else:  # ESP-DL's DCR: the channel is c % block (ONNX's DCR would be c % oc)
        out_c, out_h, out_w = cc % block, hh * block + cc // (block * block), ww * block + (cc % (block * block)) // block
    return (out_h * (w * block * oc) + out_w * oc + out_c).reshape(-1)


@builds("DepthToSpace")
def build_depth_to_space(eng: Engine, node: Node) -> Plan:
    """NHWC on the chip: each input element goes where ESP-DL's loop for the node's mode writes it."""
    block = int(node.attributes.get("blocksize", 2))
    mode = node.attributes.get("mode") or "DCR"
    orders: dict[tuple, np.ndarray] = {}

    def run(x):
        if x.ndim != 4:
            raise EngineError(f"DepthToSpace {node.name!r} takes [N, H, W, C], got {list(x.shape)}",
                              "re-export with esp-ppq")
        n, h, w, c = x.shape
        if mode != "CRD" and c // (block * block) != block:
            raise EngineError(f"DepthToSpace {node.name!r} in DCR mode with {c // (block * block)} output channels and "
                              f"blocksize {block}: ESP-DL's DCR loop writes outside each block unless they are equal "
                              "(esp-dl dl_module_depth_to_space.hpp), so the chip's result is not defined",
                              "export the model with mode='CRD' (torch.nn.PixelShuffle exports CRD)")
        key = (h, w, c)
        if key not in orders:
            orders[key] = _depth_to_space_order(h, w, c, block, mode)
        out = np.empty((n, h * w * c), dtype=x.dtype)
        out[:, orders[key]] = x.reshape(n, -1)
        return [out.reshape(n, h * block, w * block, c // (block * block))]

    return Plan(node, (node.inputs[0],), node.outputs, run)


@builds("SpaceToDepth")
def build_space_to_depth(eng: Engine, node: Node) -> Plan:
    """NHWC: ``dl_module_space_to_depth.hpp`` puts input channel c of block offset (bh, bw) at output channel
    ``c * block^2 + bh * block + bw`` (ONNX orders it ``(bh * block + bw) * C + c``)."""
    block = int(node.attributes.get("blocksize", 2))

    def run(x):
        if x.ndim != 4:
            raise EngineError(f"SpaceToDepth {node.name!r} takes [N, H, W, C], got {list(x.shape)}",
                              "re-export with esp-ppq")
        n, h, w, c = x.shape
        y = x.reshape(n, h // block, block, w // block, block, c)  # n, oh, bh, ow, bw, c
        y = y.transpose(0, 1, 3, 5, 2, 4)  # n, oh, ow, c, bh, bw
        return [np.ascontiguousarray(y.reshape(n, h // block, w // block, c * block * block))]

    return Plan(node, (node.inputs[0],), node.outputs, run)




@builds("ReverseSequence")
def build_reverse_sequence(eng: Engine, node: Node) -> Plan:
    """``dl_module_reverse_sequence.hpp``: for each batch index b, the first ``lens[b]`` steps along the time axis
    swapped end for end, each step a run of ``prod(shape[2:])`` contiguous elements (as the C loop copies them)."""
    lens_t = eng.input_const(node, 1)
    lens_const = None if lens_t is None else np.asarray(lens_t.data)
    batch_axis = int(node.attributes.get("batch_axis", 1))
    time_axis = int(node.attributes.get("time_axis", 0))
    acts = (node.inputs[0],) if lens_const is not None else tuple(node.inputs[:2])

    def run(x, *rest):
        lens = lens_const if lens_const is not None else rest[0]
        strides = [int(np.prod(x.shape[i + 1:])) for i in range(x.ndim)]
        feature = int(np.prod(x.shape[2:]))
        out = x.copy().reshape(-1)
        for b in range(x.shape[batch_axis]):
            n = int(lens.reshape(-1)[b])
            base = b * strides[batch_axis]
            for t in range(n // 2):
                p1, p2 = base + t * strides[time_axis], base + (n - 1 - t) * strides[time_axis]
                out[p1:p1 + feature], out[p2:p2 + feature] = out[p2:p2 + feature].copy(), out[p1:p1 + feature].copy()
        return [out.reshape(x.shape)]

    return Plan(node, acts, node.outputs, run)


@builds("ScatterND")
def build_scatter_nd(eng: Engine, node: Node) -> Plan:
    """``dl_module_scatter_nd.hpp``: the raw integers of each update slice written (or combined: add and mul
    saturated, max, min, on the raw integers whatever their exponents) at the flat offset of its index."""
    reduction = node.attributes.get("reduction") or "none"
    fixed = [None if (t := eng.input_const(node, k)) is None else np.asarray(t.data) for k in range(3)]
    acts = tuple(name for name, value in zip(node.inputs[:3], fixed) if value is None)

    def run(*args):
        it = iter(args)
        data, indices, updates = (f if f is not None else next(it) for f in fixed)
        out = data.copy().reshape(-1)
        nd = indices.shape[-1]
        strides = [int(np.prod(data.shape[i + 1:])) for i in range(data.ndim)]
        slice_size = int(np.prod(data.shape[nd:]))
        flat_updates = updates.reshape(-1)
        lo, hi = (-128, 127) if data.dtype == np.int8 else (-32768, 32767)
        for k, index in enumerate(indices.reshape(-1, nd).astype(np.int64)):
            at = int(sum(int(i) * s for i, s in zip(index, strides)))
            if at < 0 or at + slice_size > out.size:
                raise EngineError(f"ScatterND {node.name!r}: index {index.tolist()} is outside {list(data.shape)} "
                                  "(ESP-DL does not wrap negative indices)", "use indices within the data's shape")
            cur = out[at:at + slice_size].astype(np.int64)
            upd = flat_updates[k * slice_size:(k + 1) * slice_size].astype(np.int64)
            new = {"add": cur + upd, "mul": cur * upd, "max": np.maximum(cur, upd),
                   "min": np.minimum(cur, upd)}.get(reduction, upd)
            out[at:at + slice_size] = np.clip(new, lo, hi)
        return [out.reshape(data.shape)]

    return Plan(node, acts, node.outputs, run)


@builds("InsertZeros")
def build_insert_zeros(eng: Engine, node: Node) -> Plan:
    """``dl_module_insert_zeros.hpp`` (the first half of an exported ConvTranspose): the NHWC input spread over a
    zero tensor with ``stride - 1`` zeros between neighbours and ``output_padding`` zeros after the last."""
    stride = [int(v) for v in (node.attributes.get("strides") or node.attributes.get("stride") or [1])]
    padding = [int(v) for v in (node.attributes.get("output_padding") or [0])]

    def run(x):
        spatial = x.ndim - 2
        s = stride * spatial if len(stride) == 1 else stride
        op = padding * spatial if len(padding) == 1 else padding
        shape = [x.shape[0], *(d + (k - 1) * (d - 1) + o for d, k, o in zip(x.shape[1:-1], s, op)), x.shape[-1]]
        out = np.zeros(shape, dtype=x.dtype)
        out[(slice(None), *(slice(0, (d - 1) * k + 1, k) for d, k in zip(x.shape[1:-1], s)), slice(None))] = x
        return [out]

    return Plan(node, (node.inputs[0],), node.outputs, run)
