"""Checks on exported ``.espdl`` files: catch a wrong model before it reaches a chip.

ESP-PPQ exports "successfully" in cases where the streaming model is wrong
(e.g. one StreamingCache shared by two temporal convs with different kernels),
so every streaming export is read back and checked: its interface is what the
runner will drive, and every temporal op sees exactly its receptive field.
"""

from __future__ import annotations

from harness.errors import QuantizationError
from harness.espdl import EspdlModel

TEMPORAL_OPS = {"Conv", "AveragePool", "MaxPool"}


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
