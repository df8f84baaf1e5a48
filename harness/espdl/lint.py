"""Checks on exported ``.espdl`` files: catch a wrong model before it reaches a chip.

ESP-PPQ exports "successfully" in cases where the streaming model is wrong
(e.g. one StreamingCache shared by two temporal convs with different kernels),
so every streaming export is read back and checked: its interface is what the
runner will drive, and every temporal op sees exactly its receptive field.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.errors import QuantizationError
from harness.espdl.reader import EspdlModel

TEMPORAL_OPS = {"Conv", "AveragePool", "MaxPool"}


class LintWarning(UserWarning):
    """An exported model on which the chip will compute something else than ESP-PPQ's simulation."""


def receptive_window(kernel: int, dilation: int = 1) -> int:
    """Frames a temporal op looks at: ESP-PPQ's streaming cache window is this minus one."""
    return dilation * (kernel - 1) + 1


def check_interface(model: EspdlModel, inputs: dict[str, tuple], outputs: dict[str, int], path) -> None:
    """The file's inputs have these on-chip shapes (None: any) and its tensors these exponents."""
    for name, (shape, exponent) in inputs.items():
        info = model.input(name)
        if (shape is not None and list(info.shape) != list(shape)) or info.exponents[:1] != (exponent,):
            raise QuantizationError(
                f"{path}: input '{name}' is {list(info.shape)} exp {list(info.exponents)}, expected {list(shape or info.shape)} exp [{exponent}]",
                "report this as an exporter problem; the file does not match its quantized graph",
            )
    for name, exponent in outputs.items():
        info = model.output(name)
        if info.exponents[:1] != (exponent,):
            raise QuantizationError(
                f"{path}: output '{name}' has exponent {list(info.exponents)}, the graph says {exponent}",
                "report this as an exporter problem; the file does not match its quantized graph",
            )


def _time_pads(node) -> tuple[int, int]:
    """(begin, end) padding of a temporal op on its first spatial (time) axis."""
    pads = list(node.attributes.get("pads") or [0, 0])
    return pads[0], pads[len(pads) // 2]


def op_window(node) -> int:
    """Frames a temporal node of an ``.espdl`` looks at (first spatial axis)."""
    dilations = node.attributes.get("dilations") or [1]
    return receptive_window(node.attributes["kernel_shape"][0], dilations[0])


_REPAIR = ("the harness gives each temporal consumer its own StreamingCache; if you export yourself, pass "
           "streaming_custom_passes=[harness.ppq.export_repairs.per_consumer_caches] or give the consumer a "
           "streaming_table entry of its own")


def _repair(table: dict[str, int] | None, tensor: str) -> str:
    """The fix for a miswired StreamingCache on ``tensor``, for whoever made the file.

    ``table`` is None for a file exported elsewhere (its author chose the passes and the table); for the
    harness's own export it holds the spec's streaming-table windows that export used, the only part of the
    wiring the user controls: the harness already passes its own repair to ESP-PPQ.
    """
    if table is None:
        return _REPAIR
    if tensor in table:
        return (f"the spec's streaming_table entry for '{tensor}' (window {table[tensor]}) made this cache: correct "
                f"its window, or remove it (the harness caches temporal readers by itself)")
    return ("the harness's export repair (harness.ppq.export_repairs.per_consumer_caches) gives each temporal "
            "consumer its own StreamingCache and did not here: report this as a harness problem, with the spec")


def _last_frames(model: EspdlModel, node, axis: int) -> int | None:
    """F when ``node`` is a Slice that keeps the last F frames of ``axis`` (a classifier's input), else None."""
    if node.op_type != "Slice" or len(node.inputs) < 4 or axis is None:
        return None
    consts = [model.initializers.get(name) for name in node.inputs[1:4]]
    if any(c is None for c in consts):
        return None
    starts, ends, axes = ([int(v) for v in np.asarray(c.data).reshape(-1)] for c in consts)
    axes = [a % 3 for a in axes]
    if axis not in axes:
        return None
    i = axes.index(axis)
    return -starts[i] if starts[i] < 0 and ends[i] >= 2**31 - 1 else None


def _through_transposes(readers: dict, tensor: str, axis: int):
    """(reader, frame axis of what it reads) for every reader of ``tensor``, looking through Transposes.

    A Transpose only reorders axes (ESP-PPQ puts one before a Flatten to restore NCW order): what matters
    is the op that reads the frames after it, and on which axis they then lie.
    """
    for reader in readers.get(tensor, []):
        if reader.op_type == "Transpose" and reader.attributes.get("perm"):
            yield from _through_transposes(readers, reader.outputs[0], list(reader.attributes["perm"]).index(axis))
        elif reader.inputs and reader.inputs[0] == tensor:
            yield reader, axis
        else:
            yield reader, None


def check_streaming_structure(model: EspdlModel, path, frames: int | None = None,
                              table: dict[str, int] | None = None) -> None:
    """The wiring of an auto-streaming export is one the chip can run, or one line says what is wrong.

    Every StreamingCache feeds only temporal ops whose receptive field is its window and whose time padding
    is gone; nothing without time context (an Add, a graph output) reads a cache's ``W + context`` frames; every
    temporal op that looks at more than one frame is fed by such a cache. The one reader without time context
    a cache may have is a Slice of the last F frames (a per-window head) when the cache holds them: F at most
    its cached frames plus the window of ``frames`` (one frame when not known).

    ``table``: for a file the harness exported, the spec's streaming-table windows by tensor (the fix then names
    the entry at fault, not options only someone exporting by hand has); None for a file exported elsewhere.
    """
    producers = {out: node for node in model.nodes for out in node.outputs}
    readers: dict[str, list] = {}
    for node in model.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in model.outputs}
    for cache in (n for n in model.nodes if n.op_type == "StreamingCache"):
        window = int(cache.attributes.get("window_size", 1))
        out = cache.outputs[0]
        fix = _repair(table, cache.inputs[0] if cache.inputs else out)
        if out in outputs:
            raise QuantizationError(
                f"{path}: graph output '{out}' is StreamingCache '{cache.name}' itself ({window - 1} frames of "
                f"context plus the window), not the window",
                fix,
            )
        for reader, axis in _through_transposes(readers, out, int(cache.attributes.get("frame_axis", 1))):
            last = _last_frames(model, reader, axis)
            if last is not None:
                if last > window - 1 + (window_frames := frames or 1):
                    raise QuantizationError(
                        f"{path}: Slice '{reader.name}' keeps the last {last} frames, but its StreamingCache "
                        f"'{cache.name}' holds {window - 1} past frames plus a window of {window_frames}",
                        f"give that tensor a streaming_table entry of window {last} (insert_streaming_cache_on_var(..., {last}))",
                    )
                continue
            if reader.op_type not in TEMPORAL_OPS or reader.inputs[0] != out:
                raise QuantizationError(
                    f"{path}: {reader.op_type} '{reader.name}' reads StreamingCache '{cache.name}' (the window plus "
                    f"{window - 1} cached frames) but has no time context, so it gets {window - 1} frames too many",
                    fix,
                )
            need = op_window(reader)
            if need != window:
                raise QuantizationError(
                    f"{path}: {reader.op_type} '{reader.name}' sees {need} frames but its StreamingCache "
                    f"'{cache.name}' keeps a window of {window}",
                    fix,
                )
            if _time_pads(reader) != (0, 0):
                raise QuantizationError(
                    f"{path}: {reader.op_type} '{reader.name}' is fed by a StreamingCache but still pads time by "
                    f"{list(_time_pads(reader))}, so every window would see zeros instead of its past",
                    "make the op causal (left padding dilation*(kernel-1), right padding 0) and re-export",
                )
    for node in model.nodes:
        if node.op_type not in TEMPORAL_OPS or op_window(node) <= 1:
            continue
        source = producers.get(node.inputs[0])
        if source is None or source.op_type != "StreamingCache":
            raise QuantizationError(
                f"{path}: {node.op_type} '{node.name}' sees {op_window(node)} frames but gets no StreamingCache, "
                f"so every window would see zeros instead of its past",
                _repair(table, node.inputs[0]),
            )


def check_frame_rate(model: EspdlModel, target, window: int, output: str, layout: str, path, form=None,
                     channels: int | None = None) -> None:
    """Run the file on zeros with ESP-DL's shape rules: ``output`` of one window has the frames it should.

    One frame per input frame, or, for a per-window output (``form``, ``harness.ppq.quantize.OutputForm``), the
    offline model's output shape (``channels`` elements when it is FLAT).
    """
    from harness.emulator.engine import Engine, EngineError

    try:
        engine = Engine(model, target)
    except EngineError:
        return  # an op the emulator does not run: the board's CONFIGURE checks the shapes
    try:
        result = engine.run({i.name: np.zeros(i.shape, dtype=i.dtype) for i in engine.inputs})[output]
    except EngineError as exc:
        raise QuantizationError(
            f"{path}: the streaming model cannot run on one window of {window} frames: {exc.cause}",
            "check how the sub-model treats the time axis (strides, slices or reductions over time)",
        ) from None
    shape = list(result.shape)
    if layout == "FLAT":
        if result.size != channels:
            raise QuantizationError(
                f"{path}: output '{output}' is {shape} for a window of {window} frames; the offline model returns "
                f"{channels} values per call", "check the streaming table: the head must see the frames it reads offline",
            )
        return
    frames = shape[1] if layout == "NWC" else shape[-1]
    expected = form.frames(window) if form is not None else window
    if len(shape) != 3 or frames != expected:
        per_window = form is not None and form.per_window
        raise QuantizationError(
            f"{path}: output '{output}' is {shape} ({layout}) for a window of {window} frames; "
            + (f"the offline model returns {expected} frames per call" if per_window
               else "a streaming sub-model must return one frame per input frame"),
            "check the streaming table: the head must see the frames it reads offline" if per_window
            else "remove time strides or slices over time from the sub-model",
        )


# ---------------------------------------------------------------- chip vs ESP-PPQ lint
#
# Static checks for what ESP-DL computes differently from ESP-PPQ's simulation (and so from the
# test values ESP-PPQ embeds): one ``Finding`` per node and kind, one line each.

# Raw-integer ops: the chip never looks at operand exponents (verb for the message).
_RAW_VERBS = {
    "Add": "adds", "Sub": "subtracts", "Concat": "concatenates", "Slice": "copies", "Transpose": "copies",
    "Reshape": "copies", "Squeeze": "copies", "Unsqueeze": "copies", "Flatten": "copies", "Pad": "copies",
    "MaxPool": "copies", "StreamingCache": "copies", "Identity": "copies", "Split": "copies", "Gather": "copies",
    "DepthToSpace": "copies", "SpaceToDepth": "copies", "Neg": "negates", "ReduceMax": "copies the largest of",
    "ReduceMin": "copies the smallest of",
}
_DENSE_OPS = {"Conv", "Gemm", "MatMul"}
_QACC_LIMIT = (1 << 19) - 1


@dataclass(frozen=True)
class Finding:
    """Something the chip computes differently from ESP-PPQ's simulation, found statically."""

    node: str
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


# Kinds that make the chip's result differ from ESP-PPQ's test values (a mismatch downstream is explained).
DISAGREEMENT_KINDS = {
    "exponent-mismatch", "s3-saturation", "avgpool-pad", "pool-ceil-mode", "negative-shift", "s3-bias-range",
    "bias-exponent", "grouped-conv", "lut-exponent", "avgpool-reciprocal", "input-requantized",
    "prelu-slopes", "resize-linear",
}
# Of those, the kinds where the chip's result stays within one LSB of ESP-PPQ's at that op.
ONE_LSB_KINDS = {"avgpool-reciprocal", "input-requantized", "resize-linear"}


def _exponents(model: EspdlModel, name: str) -> tuple[int, ...] | None:
    info = model.tensor_info(name)
    if info is not None and info.exponents:
        return tuple(int(e) for e in info.exponents)
    t = model.initializers.get(name)
    if t is not None and t.exponents:
        return tuple(int(e) for e in t.exponents)
    return None


def _inexact_resize(model: EspdlModel, node) -> bool:
    """Whether a Resize's scales (or sizes over the input's) include one that is not a power of two."""
    scales = model.initializers.get(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    sizes = model.initializers.get(node.inputs[3]) if len(node.inputs) > 3 and node.inputs[3] else None
    info = model.tensor_info(node.inputs[0])
    if scales is not None and scales.data.size:
        factors = [float(v) for v in np.asarray(scales.data).reshape(-1)[2:]]
    elif sizes is not None and info is not None:
        spatial = info.shape[1:-1]
        factors = [float(o) / float(i) for o, i in zip(np.asarray(sizes.data).reshape(-1)[2:], spatial) if i > 0]
    else:
        return True
    return any(f <= 0 or not float(np.log2(f)).is_integer() for f in factors)


def _packing_moves(model: EspdlModel, node) -> bool:
    """Whether reading MatMul ``node``'s right-hand activation as a packed filter moves any of its elements."""
    from harness.emulator.ops.conv import unpack_filter

    info = model.tensor_info(node.inputs[1]) if len(node.inputs) > 1 else None
    if info is None or len(info.shape) < 2 or node.inputs[1] in model.initializers:
        return False
    c, n = info.shape[-2:]
    align = 16 if info.dtype == "int8" else 8
    layout = f"(N/{align})HWC{align}" + ("_UNALIGNED" if n % align else "")
    order = np.arange(c * n).reshape(c, n)  # row-major [C, N]: element k holds the value k
    read = unpack_filter(order, layout, n, c, 1, 1, False, node.name)[:, :, 0, 0].T
    return not np.array_equal(read, order)


def _raw_copy_findings(model: EspdlModel, node) -> list[Finding]:
    outs = [o for o in node.outputs if _exponents(model, o) is not None]
    if not outs:
        return []
    # Split has several outputs: the first whose exponent differs from the input's speaks for the node
    out = next((o for o in outs if _exponents(model, o) != _exponents(model, node.inputs[0])), outs[0])
    e_out = _exponents(model, out)
    operands = node.inputs[:2] if node.op_type in ("Add", "Sub") else (
        node.inputs if node.op_type == "Concat" else node.inputs[:1])
    verb = _RAW_VERBS[node.op_type]
    findings = []
    for name in operands:
        e = _exponents(model, name)
        if e is None or e[0] == e_out[0]:
            continue
        factor = 2.0 ** (e_out[0] - e[0])
        findings.append(Finding(
            node.name, "exponent-mismatch",
            f"{node.op_type} {node.name}: operand {name} has exponent {e[0]} but output {out} has {e_out[0]}; "
            f"the chip {verb} raw integers (the operand counts x{factor:g}) while ESP-PPQ's simulation realigns "
            f"them, so its test values are not what the chip computes",
        ))
    return findings


def _dense_findings(model: EspdlModel, node, target) -> list[Finding]:
    from harness.emulator.ops.conv import unpack_filter

    findings = []
    acts = [n for n in node.inputs if n and n not in model.initializers]
    weight = model.initializers.get(node.inputs[1]) if len(node.inputs) > 1 else None
    if not acts or weight is None:
        return findings
    e_in, e_out = _exponents(model, acts[0]), _exponents(model, node.outputs[0])
    if e_in is None or e_out is None:
        return findings
    dims = list(weight.dims)
    group = int(node.attributes.get("group", 1)) if node.op_type == "Conv" else 1
    depthwise = group != 1
    if node.op_type == "Conv":
        n, c = (dims[-2], dims[-1]) if depthwise else (dims[-1], dims[-2])
        kernel = list(node.attributes.get("kernel_shape") or dims[:-2])
        kh, kw = (kernel + [1])[:2] if len(kernel) == 2 else (1, kernel[0])
        if depthwise and (c != 1 or group != n):
            findings.append(Finding(
                node.name, "grouped-conv",
                f"Conv {node.name}: group={group} with {c} input channels per group; ESP-DL runs every group != 1 "
                f"conv as depthwise (ESP-PPQ simulates the grouped conv)",
            ))
            return findings
    else:
        c, n, kh, kw = dims[-2], dims[-1], 1, 1
    w_exps = np.array(weight.exponents or (0,), dtype=np.int64)
    shifts = e_out[0] - e_in[0] - w_exps
    if np.any(shifts < 0):
        bad = sorted({int(s) for s in shifts[shifts < 0]})
        findings.append(Finding(
            node.name, "negative-shift",
            f"{node.op_type} {node.name}: output shift {bad} < 0 (output exponent {e_out[0]} below input {e_in[0]} + "
            f"weight exponent); ESP-DL's conv kernels only shift right (S3 mistakes a negative per-tensor shift for "
            f"the per-channel path), ESP-PPQ computes it exactly",
        ))
    bias_t = model.initializers.get(node.inputs[2]) if len(node.inputs) > 2 and node.op_type != "MatMul" else None
    bias = np.zeros(n, dtype=np.int64) if bias_t is None else np.asarray(bias_t.data, dtype=np.int64).reshape(-1)
    if bias_t is not None and bias_t.exponents:
        b_exps = np.broadcast_to(np.array(bias_t.exponents, dtype=np.int64), (n,))
        want = np.broadcast_to(e_in[0] + w_exps, (n,))
        if np.any(b_exps != want):
            findings.append(Finding(
                node.name, "bias-exponent",
                f"{node.op_type} {node.name}: bias {node.inputs[2]} has exponent {sorted(set(b_exps.tolist()))}, the "
                f"accumulator is at {sorted(set(want.tolist()))}; the chip adds the raw bias",
            ))
    bits = 8 if np.asarray(weight.data).dtype == np.int8 else 16
    if target.name == "esp32s3" and bits == 8 and n * c * kh * kw == np.asarray(weight.data).size:
        lanes = np.arange(n) < (n if depthwise else n // 16 * 16)
        if np.any(lanes):
            out_of_range = lanes & ((bias > _QACC_LIMIT) | (bias < -_QACC_LIMIT - 1))
            if np.any(out_of_range):
                findings.append(Finding(
                    node.name, "s3-bias-range",
                    f"{node.op_type} {node.name}: {int(out_of_range.sum())} bias values leave 20 bits; the chip keeps "
                    f"bias & 0xfffff in its 20-bit QACC lanes",
                ))
            if node.op_type == "MatMul" and len(dims) > 2:
                return findings
            try:
                w = unpack_filter(weight.data, weight.layout, n, c, kh, kw, depthwise, node.name)
            except Exception:  # noqa: BLE001 - a malformed filter is the engine's error to report
                return findings
            worst = np.abs(bias) + np.abs(w.reshape(n, -1)).sum(axis=1) * 128
            risky = lanes & (worst > _QACC_LIMIT)
            if np.any(risky):
                findings.append(Finding(
                    node.name, "s3-accumulator",
                    f"{node.op_type} {node.name}: {int(risky.sum())} of {n} output channels may saturate the 20-bit "
                    f"QACC (|bias| + sum|w|*128 up to {int(worst[risky].max())} > 2^19); the chip saturates every "
                    f"partial sum, ESP-PPQ does not simulate it",
                ))
    return findings


def _pool_area(model: EspdlModel, node) -> int | None:
    """The divisor of an average pool (ESP-DL: always the full kernel area), or None for MaxPool / unknown."""
    if node.op_type == "AveragePool":
        return int(np.prod(node.attributes.get("kernel_shape") or [1]))
    if node.op_type == "GlobalAveragePool":
        info = model.tensor_info(node.inputs[0])
        return int(np.prod(list(info.shape)[1:-1])) if info is not None and len(info.shape) >= 3 else None
    return None


def lint_model(model: EspdlModel, target) -> list[Finding]:
    """Everything a static look at ``model`` shows the chip ``target`` computes differently from ESP-PPQ."""
    from harness.targets import Target, get_target

    target = target if isinstance(target, Target) else get_target(target)
    findings: list[Finding] = []
    for node in model.nodes:
        op = node.op_type
        if op in _RAW_VERBS:
            findings += _raw_copy_findings(model, node)
        if op in _DENSE_OPS:
            findings += _dense_findings(model, node, target)
        if op == "Mul" and len(node.inputs) == 2:
            e0, e1, eo = (_exponents(model, n) for n in (*node.inputs, node.outputs[0]))
            if None not in (e0, e1, eo) and eo[0] - e0[0] - e1[0] < 0:
                findings.append(Finding(
                    node.name, "negative-shift",
                    f"Mul {node.name}: output exponent {eo[0]} < {e0[0]} + {e1[0]}; the chip's SIMD kernel cannot "
                    f"shift left, ESP-PPQ computes it exactly",
                ))
        if op == "Resize" and node.attributes.get("mode") == "linear" and _inexact_resize(model, node):
            findings.append(Finding(
                node.name, "resize-linear",
                f"Resize {node.name}: linear with a scale whose inverse float32 cannot hold exactly; the chip weighs "
                f"neighbours from (x + 0.5) * fl32(1/scale) - 0.5 in float32, ESP-PPQ (torch) from its own ratio, so "
                f"where a value lies halfway between two integers they may round 1 LSB apart",
            ))
        if op == "PRelu" and not node.attributes.get("lut") and len(node.inputs) > 1:
            info, slope = model.tensor_info(node.inputs[0]), model.initializers.get(node.inputs[1])
            if info is not None and slope is not None and len(info.shape) == 4 and slope.data.size > 1 \
                    and slope.data.size != info.shape[3]:
                findings.append(Finding(
                    node.name, "prelu-slopes",
                    f"PRelu {node.name}: {slope.data.size} slopes but the input's last axis has {info.shape[3]} "
                    f"(channels are not last, {list(info.shape)}); ESP-DL replaces them with copies of the first "
                    f"slope, ESP-PPQ uses each channel's",
                ))
        if op == "MatMul" and node.attributes.get("input1_layout") == "native_kn" and _packing_moves(model, node):
            findings.append(Finding(
                node.name, "matmul-native-kn",
                f"MatMul {node.name}: its right-hand activation is row-major (input1_layout=native_kn, ESP-PPQ "
                f"1.3.12); an ESP-DL that does not read the attribute (3.3.9 and older) takes it as a packed "
                f"(N/align)HWC(align) filter and multiplies by permuted columns; the harness's own exports pack it",
            ))
        if op in ("AveragePool", "MaxPool", "GlobalAveragePool"):
            a = node.attributes
            if int(a.get("ceil_mode", 0) or 0):
                findings.append(Finding(
                    node.name, "pool-ceil-mode",
                    f"{op} {node.name}: ceil_mode=1, but ESP-DL sizes the output with floor (fewer frames)",
                ))
            area = _pool_area(model, node)
            if area is not None and area & (area - 1):
                findings.append(Finding(
                    node.name, "avgpool-reciprocal",
                    f"{op} {node.name}: the chip multiplies each window's sum by float32 1/{area} (not exact), ESP-PPQ "
                    f"divides by {area}; where the mean lies exactly halfway between two integers they may round "
                    f"1 LSB apart",
                ))
            if op == "AveragePool" and any(a.get("pads") or []) and not int(a.get("count_include_pad", 0) or 0):
                findings.append(Finding(
                    node.name, "avgpool-pad",
                    f"AveragePool {node.name}: padded with count_include_pad=0; the chip always divides by the full "
                    f"kernel area, ESP-PPQ by the valid count",
                ))
        if op == "RequantizeLinear" and node.inputs and node.inputs[0] in {i.name for i in model.inputs}:
            e_in, e_out = _exponents(model, node.inputs[0]), _exponents(model, node.outputs[0])
            if e_in and e_out and e_in[0] != e_out[0]:
                findings.append(Finding(
                    node.name, "input-requantized",
                    f"RequantizeLinear {node.name}: graph input {node.inputs[0]} is requantized from exponent {e_in[0]} "
                    f"to {e_out[0]} for a reader quantized differently (the harness inserts it: ESP-PPQ would have the "
                    f"chip read the raw integers); ESP-PPQ's simulation reads the input without this rounding, so "
                    f"the reader's result may differ by 1 LSB",
                ))
        table = node.attributes.get("lut")
        if table and table in model.initializers and node.outputs:
            te, oe = model.initializers[table].exponents, _exponents(model, node.outputs[0])
            if te and oe and te[0] != oe[0]:
                findings.append(Finding(
                    node.name, "lut-exponent",
                    f"{op} {node.name}: table {table} has exponent {te[0]}, output {oe[0]}; ESP-DL asserts they match",
                ))
    return findings
