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
from harness.espdl import EspdlModel

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


def check_streaming_caches(model: EspdlModel, path) -> None:
    """Every temporal op with a window of more than one frame is fed by a StreamingCache of that window."""
    producers = {out: node for node in model.nodes for out in node.outputs}
    for node in model.nodes:
        if node.op_type not in TEMPORAL_OPS:
            continue
        window = receptive_window(node.attributes["kernel_shape"][0], node.attributes.get("dilations", [1])[0])
        if window <= 1:
            continue
        source = producers.get(node.inputs[0])
        cache = source.attributes.get("window_size") if source is not None and source.op_type == "StreamingCache" else None
        if cache != window:
            got = f"a StreamingCache of {cache} frames" if cache else "no StreamingCache"
            raise QuantizationError(
                f"{path}: {node.op_type} '{node.name}' sees {window} frames but gets {got}",
                "give each temporal op its own input tensor, or set its cache with streaming_table "
                "(ESP-PPQ shares one cache between consumers of the same tensor)",
            )


# ---------------------------------------------------------------- chip vs ESP-PPQ lint
#
# Static checks for what ESP-DL computes differently from ESP-PPQ's simulation (and so from the
# test values ESP-PPQ embeds): one ``Finding`` per node and kind, one line each.

# Raw-integer ops: the chip never looks at operand exponents (verb for the message).
_RAW_VERBS = {
    "Add": "adds", "Sub": "subtracts", "Concat": "concatenates", "Slice": "copies", "Transpose": "copies",
    "Reshape": "copies", "Squeeze": "copies", "Unsqueeze": "copies", "Flatten": "copies", "Pad": "copies",
    "MaxPool": "copies", "StreamingCache": "copies", "Identity": "copies",
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
    "bias-exponent", "grouped-conv", "lut-exponent",
}


def _exponents(model: EspdlModel, name: str) -> tuple[int, ...] | None:
    info = model.tensor_info(name)
    if info is not None and info.exponents:
        return tuple(int(e) for e in info.exponents)
    t = model.initializers.get(name)
    if t is not None and t.exponents:
        return tuple(int(e) for e in t.exponents)
    return None


def _raw_copy_findings(model: EspdlModel, node) -> list[Finding]:
    out = node.outputs[0] if node.outputs else None
    e_out = _exponents(model, out) if out else None
    if e_out is None:
        return []
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
    from harness.engine import unpack_filter

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
        if op in ("AveragePool", "MaxPool"):
            a = node.attributes
            if int(a.get("ceil_mode", 0) or 0):
                findings.append(Finding(
                    node.name, "pool-ceil-mode",
                    f"{op} {node.name}: ceil_mode=1, but ESP-DL sizes the output with floor (fewer frames)",
                ))
            if op == "AveragePool" and any(a.get("pads") or []) and not int(a.get("count_include_pad", 0) or 0):
                findings.append(Finding(
                    node.name, "avgpool-pad",
                    f"AveragePool {node.name}: padded with count_include_pad=0; the chip always divides by the full "
                    f"kernel area, ESP-PPQ by the valid count",
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
