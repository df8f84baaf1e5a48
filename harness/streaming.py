"""Host streaming-equivalence: step the streaming sub-models window by window on the host.

This is the model-level check to run before touching hardware ("is my
``streaming_forward`` right?"): the same quantized graphs the chip gets, fed
one window of frames at a time with state carried, in ESP-PPQ's simulator.

* explicit caches: the locked streaming graph runs per window; each module's
  ``cache_out`` is fed back as its ``cache`` on the next window (zeros first).
* auto streaming: ESP-DL's ``StreamingCache`` is emulated on a copy of the
  offline graph exactly as ESP-PPQ's exporter places it: every Conv/AveragePool/
  MaxPool whose window ``dilation*(kernel-1)+1`` exceeds one frame loses its
  time padding and gets the last ``window-1`` input frames (zeros at the
  start) prepended.
"""

from __future__ import annotations

import numpy as np

from harness.errors import StreamingError
from harness.frames import Frames
from harness.lint import TEMPORAL_OPS, receptive_window
from harness.ppq_env import DEVICE, import_ppq
from harness.reference import to_chip_output, to_graph_input
from harness.tensors import QTensor



def _op_window(op) -> int:
    """Frames a temporal ESP-PPQ op looks at (first spatial axis)."""
    if op.type == "Conv":
        return receptive_window(op.inputs[1].value.shape[2], op.attributes.get("dilations", [1])[0])
    return receptive_window(op.attributes["kernel_shape"][0])


def _cache_hook_class():
    from esp_ppq.executor.base import QuantOPRuntimeHook

    class StreamingCacheHook(QuantOPRuntimeHook):
        """ESP-DL StreamingCache in front of one op: out = [cache, x]; cache = last window-1 frames."""

        def __init__(self, operation, window: int):
            super().__init__(operation)
            self.keep = window - 1
            self.cache = None

        def reset(self) -> None:
            self.cache = None

        def pre_forward_hook(self, inputs, quant_inputs, quant_configs):
            import torch

            x = quant_inputs[0]
            if self.cache is None:
                self.cache = torch.zeros(*x.shape[:2], self.keep, dtype=x.dtype)
            full = torch.cat([self.cache, x], dim=2)
            self.cache = full[:, :, -self.keep :].clone()
            return [full, *quant_inputs[1:]]

    return StreamingCacheHook


def auto_streaming_graph(graph):
    """Copy of an offline graph with its temporal ops made causal-streaming, and their cache hooks."""
    hook_class = _cache_hook_class()
    streaming = graph.copy()
    hooks = {}
    for op in streaming.operations.values():
        if op.type not in TEMPORAL_OPS:
            continue
        window = _op_window(op)
        if window <= 1:
            continue
        pads = list(op.attributes.get("pads", [0, 0]))
        begin, end = pads[0], pads[len(pads) // 2]
        if end != 0 or begin != window - 1:
            raise StreamingError(
                f"op {op.name} ({op.type}) has time padding [{begin}, {end}] but sees {window} frames",
                f"make it causal: left padding {window - 1}, right padding 0 (F.pad(x, ({window - 1}, 0)))",
            )
        if op.attributes.get("strides", [1])[0] != 1:
            raise StreamingError(f"op {op.name} has a time stride", "the host streaming check supports stride 1 only")
        pads[0] = 0
        op.attributes["pads"] = pads
        hooks[op.name] = hook_class(op, window)
    return streaming, hooks


class HostStreamer:
    """The streaming sub-models of one quantized model, ready to step window by window."""

    def __init__(self, qm):
        import_ppq()
        from esp_ppq.executor import TorchExecutor

        self.qm = qm
        self._steps = []
        for m in qm.modules:
            if qm.spec.streaming == "auto":
                graph, hooks = auto_streaming_graph(m.offline_graph)
            else:
                graph = m.streaming_graph if m.streaming_graph is not None else m.offline_graph
                hooks = {}
            self._steps.append((m, TorchExecutor(graph, device=DEVICE), hooks))
        self.reset()

    def reset(self) -> None:
        """Zero every cache, like ``Model::reset()`` on the chip."""
        import torch

        self._caches = [torch.zeros(1, *m.cache_shape) if m.streaming_graph is not None else None for m, _, _ in self._steps]
        for _, _, hooks in self._steps:
            for hook in hooks.values():
                hook.reset()

    def step(self, window_frames: np.ndarray, exponent: int) -> list[np.ndarray]:
        """Run one window ``[W, C]`` through every module; return each module's ``[W, C]`` output."""
        x = to_graph_input(window_frames, exponent)
        outputs = []
        for k, (m, executor, hooks) in enumerate(self._steps):
            if self._caches[k] is not None:
                x, self._caches[k] = executor.forward(
                    {"input": x, "cache": self._caches[k]}, output_names=["output", "cache_out"]
                )
            else:
                x = executor.forward({"input": x}, output_names=["output"], hooks=hooks)[0]
            if x.shape[2] != window_frames.shape[0]:
                raise StreamingError(
                    f"module {k} of '{self.qm.spec.name}' turns {window_frames.shape[0]} frames into {x.shape[2]}",
                    "streaming sub-models must keep the frame rate (one output frame per input frame)",
                )
            outputs.append(to_chip_output(x, m.out_exponent, self.qm.bits))
        return outputs


def stream_on_host(qm, frames: Frames, window: int) -> list[QTensor]:
    """Stream every sequence window by window (caches reset per sequence); outputs per module ``[S, T, C]``."""
    streamer = HostStreamer(qm)
    t = frames.sequence_length
    if t % window:
        raise StreamingError(
            f"window size {window} does not divide the {t} frames of each sequence", "choose a divisor of the sequence length"
        )
    per_module: list[list[np.ndarray]] = [[] for _ in qm.modules]
    for seq in frames.values:
        streamer.reset()
        chunks = [streamer.step(seq[i : i + window], frames.exponent) for i in range(0, t, window)]
        for k in range(len(qm.modules)):
            per_module[k].append(np.concatenate([c[k] for c in chunks]))
    return [QTensor(np.stack(out), m.out_exponent) for m, out in zip(qm.modules, per_module)]
