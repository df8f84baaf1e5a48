"""ESP-PPQ 1.3.12 export defects that make the chip compute something else, and their repairs.

* **Auto-streaming wiring** (``per_consumer_caches``, a ``streaming_custom_passes`` entry that runs inside
  the exporter before its own cache insertion). ESP-PPQ keys its streaming table by tensor and rewires
  *every* reader of a cached tensor to the cache output: the residual ``Add`` of ``y = f(dw(pad(x))) + x``
  (or a graph output) then reads ``W + context`` frames, and a second temporal op a cache sized for the
  first. Here every temporal reader gets a StreamingCache of its own receptive field (readers of the same
  field share one) and everything else keeps reading the window; the exporter is told the tensors are
  handled (window-1 entries, which it skips). A tensor read by one temporal op only is left to the
  exporter, which gets that case right.
* **A causal Pad shared by several convs** (``fold_shared_pads``, on the ONNX model): onnxsim folds
  ``F.pad`` into a conv only when the conv is its sole reader, and ESP-PPQ cannot stream a Pad op.
* **A graph input read at another exponent** (``RequantGraphInputs``): ESP-PPQ inserts a RequantizeLinear
  where a reader's quantization differs from the tensor's producer, but a graph input has no producer, so
  e.g. a residual Add aligned to its output reads the raw input at the wrong exponent and the chip adds
  the raw integers. The repair treats the config the file binds to the input as its producer's.
"""

from __future__ import annotations

import re

from harness import compat

TEMPORAL_OPS = ("Conv", "AveragePool", "MaxPool", "ConvTranspose")


def _shared(graph, var) -> bool:
    """Does another consumer (or the graph's output list) read ``var`` besides a temporal op?"""
    return len(var.dest_ops) > 1 or var.name in graph.outputs


def per_consumer_caches(graph):
    """Streaming custom pass: give each temporal consumer of a shared tensor its own StreamingCache."""
    from esp_ppq.api import StreamingTable

    table = StreamingTable()
    axis = table.get_input_frame_axis()
    for var in list(graph.variables.values()):
        if var.is_parameter or not _shared(graph, var):
            continue
        by_window: dict[int, list] = {}
        for op in list(var.dest_ops):
            if op.type in TEMPORAL_OPS and op.inputs and op.inputs[0] is var:
                window = compat.conv_cache_window(op)  # logs ESP-PPQ's own error for non-causal padding
                if window > 1:
                    by_window.setdefault(window, []).append(op)
        for window, (first, *others) in by_window.items():  # readers of one receptive field share a cache
            cache = compat.insert_streaming_cache(graph, var.name, {"window_size": window, "op_name": first.name,
                                                                   "frame_axis": axis})
            cached = cache.outputs[0]
            for op in others:
                var.dest_ops.remove(op)
                op.inputs[0] = cached
                cached.dest_ops.append(op)
            table.add(cached.name, None, 1)  # the exporter sees a cached input and only zeroes pads
        if by_window:
            table.add(var.name, None, 1)  # the StreamingCache ops themselves read a handled tensor
    return None


def layout_transposes(original_ops):
    """Streaming custom pass: the Transposes the exporter itself inserts count as handled.

    ESP-PPQ restores NCW order with a Transpose of its own (``PPQ_Operation_*``) before an op that needs it,
    e.g. the Flatten of a classifier head after a cached Slice, then refuses to stream that Transpose: it only
    reorders the frames it is given, so it needs no cache. ``original_ops`` are the quantized graph's op names;
    a user's own Transposes are left to the exporter's rules.
    """
    from esp_ppq.api import StreamingTable

    def mark(graph):
        table = StreamingTable()
        for op in graph.operations.values():
            if op.type == "Transpose" and op.name not in original_ops and op.inputs[0].name not in table:
                table.add(op.inputs[0].name, op.name, 1)  # window 1: nothing inserted, the op is handled
        return None

    return mark


UNSUPPORTED_OP = re.compile(r"Operation (\S+) of type (\S+) is not supported for AutoStreamingPattern\. "
                          r"Please insert manually on variables: \[(.*)\]")


def streaming_table_advice(log_text: str, graph, what: str):
    """ESP-PPQ's "insert manually" error as one ``StreamingError`` naming the table entry to add, or None.

    For a Slice of the last F frames the entry is exact (a cache of F frames on its input); for other ops
    it names the tensor and op, and says how to choose the window.
    """
    from harness.errors import StreamingError

    match = UNSUPPORTED_OP.search(log_text)
    if match is None:
        return None
    name, kind = match.group(1), match.group(2)
    tensors = re.findall(r"'([^']*)'", match.group(3))
    op = graph.operations.get(name)
    data = op.inputs[0].name if op is not None and op.inputs else (tensors[0] if tensors else "?")
    frames = last_frames(op) if op is not None and kind == "Slice" else None
    if frames is not None:
        call, how = f"insert_streaming_cache_on_var({data!r}, {frames})", f"the Slice reads the last {frames} frames"
    elif op is not None and kind == "Slice" and 2 not in _slice_axes(op):
        call = f"insert_streaming_cache_on_var({data!r}, 1, {name!r})"
        how = "the Slice does not cut the time axis, so it needs no past frames: a window of 1 marks it handled"
    else:
        call = f"insert_streaming_cache_on_var({data!r}, N, {name!r})"
        how = "N = the frames the op reads per output (1 when it needs no past frames)"
    return StreamingError(
        f"{what}: ESP-PPQ's auto-streaming cannot stream {kind} '{name}' (it reads {data!r}) without a streaming-table "
        f"entry", f"add {call} to the spec's streaming_table() ({how})",
    )


def _slice_axes(op) -> list[int]:
    """The axes a Slice cuts (ONNX NCW: 2 is time); every axis when they are not constants."""
    values = [v.value for v in op.inputs[1:]]
    rank = len(op.inputs[0].shape or [1, 1, 1])
    if len(values) < 3 or values[2] is None:
        return list(range(rank))
    return [int(a) % rank for a in values[2].reshape(-1).tolist()]


def last_frames(op) -> int | None:
    """F for a Slice that keeps the last F frames of the time axis (ONNX NCW axis 2), else None."""
    values = [v.value for v in op.inputs[1:]]
    if len(values) < 3 or any(v is None for v in values[:3]):
        return None
    starts, ends = ([int(x) for x in v.reshape(-1).tolist()] for v in values[:2])
    axes = _slice_axes(op)
    if 2 not in axes:
        return None
    i = axes.index(2)
    return -starts[i] if starts[i] < 0 and ends[i] >= 2**31 - 1 else None


def check_causal(graph, what: str) -> None:
    """Every temporal op of an auto-streaming graph pads time on the left only, by its context."""
    from harness.errors import StreamingError
    from harness.espdl.lint import receptive_window

    for op in graph.operations.values():
        if op.type not in TEMPORAL_OPS:
            continue
        if op.type in ("Conv", "ConvTranspose"):
            window = receptive_window(op.inputs[1].value.shape[2], (op.attributes.get("dilations") or [1])[0])
        else:
            window = receptive_window(op.attributes["kernel_shape"][0])
        if window <= 1:
            continue
        pads = list(op.attributes.get("pads") or [0, 0])
        begin, end = pads[0], pads[len(pads) // 2]
        if end != 0 or begin != window - 1:
            raise StreamingError(
                f"{what}: op {op.name} ({op.type}) has time padding [{begin}, {end}] but sees {window} frames",
                f"make it causal: left padding {window - 1}, right padding 0 (F.pad(x, ({window - 1}, 0)))",
            )


def fold_shared_pads(model) -> int:
    """Fold a zero ``Pad`` that only pads time on the left into every Conv reading it (ONNX, in place).

    ``F.pad(x, (P, 0))`` before a causal conv is folded into the conv's own padding by onnxsim -- unless the
    padded tensor feeds several convs (a gated WaveNet block: ``tanh(f(p)) * sigmoid(g(p))``; torch's tracer even
    merges two identical ``F.pad`` calls into one). ESP-PPQ's auto-streaming cannot stream a Pad op, so each conv
    gets the padding itself: the same computation, and every conv then takes its own StreamingCache.
    Returns how many Pads were folded.
    """
    from onnx import numpy_helper

    graph = model.graph
    constants = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    outputs = {o.name for o in graph.output}
    folded = []
    for pad in (n for n in graph.node if n.op_type == "Pad"):
        mode = next((a.s.decode() for a in pad.attribute if a.name == "mode"), "constant")
        pads = constants.get(pad.input[1]) if len(pad.input) > 1 else None
        value = constants.get(pad.input[2]) if len(pad.input) > 2 and pad.input[2] else None
        if mode != "constant" or pads is None or (value is not None and value.any()) or len(pad.input) > 3:
            continue
        pads = [int(p) for p in pads.reshape(-1)]
        rank = len(pads) // 2
        if rank != 3 or pads[:2] + pads[3:] != [0] * 5 or pads[2] <= 0:  # [1, C, T]: only T's beginning
            continue
        convs = readers.get(pad.output[0], [])
        if pad.output[0] in outputs or not convs or any(c.op_type != "Conv" or c.input[0] != pad.output[0] for c in convs):
            continue
        for conv in convs:
            attr = next((a for a in conv.attribute if a.name == "pads"), None)
            if attr is None:
                attr = conv.attribute.add()
                attr.name, attr.type = "pads", 7  # INTS
                attr.ints.extend([0, 0])
            attr.ints[0] += pads[2]
            conv.input[0] = pad.input[0]
        folded.append(pad)
    for pad in folded:
        graph.node.remove(pad)
    return len(folded)


def requant_graph_inputs_pattern():
    """ESP-PPQ's RequantizeLinear insertion, extended to readers of a graph input (see the module docstring)."""
    from esp_ppq.IR.quantize import QuantableOperation

    quant_ops = compat.quant_op_types()

    class RequantGraphInputs(compat.requant_pattern()):
        def export(self, op, graph, **kwargs):
            op = super().export(op, graph, **kwargs)
            if op.type in quant_ops or not isinstance(op, QuantableOperation):
                return op
            for config, var in list(zip(op.input_quant_config, op.inputs)):
                if var.is_parameter or var.source_op is not None or var.name not in graph.inputs:
                    continue
                bound = bound_config(graph, var)
                if bound is None or _same(bound, config):
                    continue
                created = compat.insert_requantize_node(graph, var, upstream_config=bound, config=config, op=op)
                perm = compat.pattern_info().get_var_permute(var.name)
                if created is not None and perm:
                    compat.pattern_info().add_var_permute(created.outputs[0].name, perm)
            return op

    return RequantGraphInputs


def rnn_alignment(alignment):
    """ESP-PPQ's alignment pass ``alignment`` as one that also quantizes a GRU/LSTM without ``initial_h``.

    ESP-PPQ 1.3.12 aligns an RNN's Y_h and initial_h to Y by indexing the sixth input's config, which torch 2.13's
    export leaves out: every GRU/LSTM failed with ``IndexError``. Same rule, the absent input skipped; the pass's
    settings are kept (a subclass instance built from the original's attributes).
    """
    from esp_ppq.core import QuantizationProperty, QuantizationStates
    from esp_ppq.quantization.optim import QuantAlignmentPass

    class RnnAlignment(QuantAlignmentPass):
        def align_to_first_output(self, op):
            master = op.config.output_quantization_config[0]
            slaves = op.config.output_quantization_config[1:2] + op.config.input_quantization_config[5:6]
            for slave in slaves:
                if slave.policy.has_property(QuantizationProperty.FLOATING):
                    return master
                if slave.state not in {QuantizationStates.FP32, QuantizationStates.SOI}:
                    slave.master_by = master
            return master

    repaired = RnnAlignment.__new__(RnnAlignment)
    repaired.__dict__.update(alignment.__dict__)
    return repaired


def packed_matmul_pattern():
    """ESP-PPQ 1.3.12 leaves a MatMul's right-hand *activation* row-major (``input1_layout=native_kn``), which ESP-DL
    3.3.9 does not read: its conv kernel takes the operand as a packed ``(N/16)HWC16`` filter. This pattern makes
    ESP-PPQ take its own packing path (Reshape/Transpose before the MatMul, ``input1_layout=packed``), the layout
    every ESP-DL release reads: it hides the fused activation from the native-KN test for the call."""
    from esp_ppq.IR.quantize import QuantableOperation

    class PackedMatMul(compat.matmul_pattern()):
        def export(self, op, graph, **kwargs):
            dynamic = (op.type == "MatMul" and isinstance(op, QuantableOperation) and len(op.inputs) > 1
                       and not op.inputs[1].is_parameter)
            if not dynamic:
                return super().export(op, graph, **kwargs)
            activation = op.attributes.get("activation", "Linear")
            op.attributes["activation"] = "__packed__"  # not "Linear"/"Relu": the native-KN branch is skipped
            try:
                return super().export(op, graph, **kwargs)
            finally:
                op.attributes["activation"] = activation

    return PackedMatMul


def _same(a, b) -> bool:
    """Two quantization configs the chip cannot tell apart (bits and power-of-two scale)."""
    return a is b or (a.num_of_bits == b.num_of_bits and a.scale is not None and b.scale is not None
                      and float((a.scale - b.scale).abs().max()) < 1e-12)


def bound_config(graph, var):
    """The quantization config an export binds to a graph input: that of its first quantized reader."""
    from esp_ppq.IR.quantize import QuantableOperation

    for op in graph.topological_sort():
        if isinstance(op, QuantableOperation) and var in op.inputs:
            return op.input_quant_config[op.inputs.index(var)]
    return None
