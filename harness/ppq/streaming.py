"""Host streaming-equivalence: step the streaming sub-models window by window on the host.

This is the model-level check to run before touching hardware ("is my
streaming model right?"): the quantized graphs the chip gets, fed one window
of frames at a time with state carried, in ESP-PPQ's simulator, against the
same simulator on whole sequences.

* explicit caches: the locked streaming graph runs per window; each module's
  ``cache_out`` is fed back as its ``cache`` on the next window (zeros first).
* auto streaming: the wiring is read from the exported streaming ``.espdl``,
  so the check sees what the chip will see: every ``StreamingCache`` node of
  the file becomes a cache (zero-initialised, last ``window - 1`` frames
  kept) in front of exactly the ops that read it, and those ops take the
  file's padding.

int16 graphs run in float64 on both sides (ESP-PPQ's high-precision mode):
ESP-PPQ's float32 sums of int16 products are inexact and depend on how many
frames a conv sees at once, which is arithmetic, not streaming.

All sequences of a case step together, one batch row each with its own
state, when the graphs keep batch rows apart (``harness.ppq.reference.batchable``);
otherwise one sequence at a time. Both give the same integers.
"""

from __future__ import annotations

import weakref

import numpy as np

from harness.errors import StreamingError
from harness.espdl.reader import load_espdl
from harness.model.frames import Frames
from harness.espdl.lint import TEMPORAL_OPS
from harness.ppq.env import DEVICE, import_ppq, precise_copy
from harness.ppq.reference import batchable, offline_reference, one_thread, to_chip_outputs, to_graph_input
from harness.tensors import QTensor

TIME_AXIS = 2  # ESP-PPQ graphs are NCW


class _Cache:
    """One ``StreamingCache`` node: out = [cache, x] on the time axis; cache = the last window-1 frames."""

    def __init__(self, name: str, window: int):
        self.name, self.keep = name, window - 1
        self.state = None
        self.step = -1
        self.full = None

    def extend(self, x, step: int):
        import torch

        if self.step != step:  # the first reader in a step runs the cache; later readers share its output
            if self.state is None:
                shape = list(x.shape)
                shape[TIME_AXIS] = self.keep
                self.state = torch.zeros(shape, dtype=x.dtype)
            self.full = torch.cat([self.state, x], dim=TIME_AXIS)
            self.state = self.full.narrow(TIME_AXIS, self.full.shape[TIME_AXIS] - self.keep, self.keep).clone()
            self.step = step
        return self.full


def _reader_hook_class():
    from esp_ppq.executor import QuantOPRuntimeHook

    class CacheReaderHook(QuantOPRuntimeHook):
        """Feeds one op the output of the StreamingCache nodes it reads in the exported file."""

        def __init__(self, operation, streamer):
            super().__init__(operation)
            self.reads: list[tuple[int, _Cache]] = []
            self.streamer = streamer

        def pre_forward_hook(self, inputs, quant_inputs, quant_configs):
            out = list(quant_inputs)
            for index, cache in self.reads:
                out[index] = cache.extend(out[index], self.streamer.steps)
            return out

    return CacheReaderHook


def exported_wiring(graph, espdl_path, streamer):
    """Copy of ``graph`` wired like its exported streaming file: caches in front of the ops that read them."""
    model = load_espdl(espdl_path)
    hook_class = _reader_hook_class()
    streaming = graph.copy()
    hooks, caches = {}, []
    readers: dict[str, list] = {}
    for node in model.nodes:
        for k, name in enumerate(node.inputs):
            readers.setdefault(name, []).append((node, k))
    for node in (n for n in model.nodes if n.op_type == "StreamingCache"):
        cache = _Cache(node.name, int(node.attributes.get("window_size", 1)))
        caches.append(cache)
        for reader, index in readers.get(node.outputs[0], []):
            op = streaming.operations.get(reader.name)
            if op is None:
                raise StreamingError(
                    f"{espdl_path}: op '{reader.name}' reads StreamingCache '{node.name}' but the quantized graph "
                    f"has no op of that name",
                    "report this: the export renamed an op the host check cannot map back",
                )
            if op.type in TEMPORAL_OPS and "pads" in reader.attributes:
                op.attributes["pads"] = list(reader.attributes["pads"])  # the file's (zeroed) time padding
            hooks.setdefault(op.name, hook_class(op, streamer)).reads.append((index, cache))
    return streaming, hooks, caches


class HostStreamer:
    """The streaming sub-models of one quantized model, ready to step window by window.

    ``step`` takes one window of one sequence ``[W, C]`` or of a batch of sequences ``[S, W, C]``; each
    batch row carries its own state. Step a batch only when ``batchable`` says the graphs keep rows apart.
    """

    def __init__(self, qm, exports=None):
        import_ppq()
        from esp_ppq.executor import TorchExecutor

        self.qm = qm
        self.steps = 0
        self._steps = []
        self._caches: list = []
        self._probes = []  # per module: the graph that decides whether batch rows stay apart, and its inputs
        for m, export in zip(qm.modules, exports or [None] * len(qm.modules)):
            hooks = {}
            offline = _precise(qm, m.offline_graph)
            if qm.spec.streaming == "auto":
                if export is None:
                    raise StreamingError(f"'{qm.spec.name}' streams as ESP-PPQ exports it",
                                         "pass the streaming exports of this window")
                graph, hooks, caches = exported_wiring(offline, export.path, self)
                self._caches += caches
            else:
                graph = _precise(qm, m.streaming_graph) if m.streaming_graph is not None else offline
            if m.streaming_graph is not None:
                self._probes.append((graph, lambda w, m=m: {"input": (m.in_channels, w),
                                                            "cache": tuple(m.cache_shape)}))
            else:  # the cache-free graph, or the one the auto caches are wired into
                self._probes.append((offline, lambda w, m=m: {"input": (m.in_channels, qm.spec.sequence_length)}))
            self._steps.append((m, TorchExecutor(graph, device=DEVICE), hooks))
        self.reset()

    def batchable(self, window: int) -> bool:
        """Whether every module's graph keeps batch rows apart at this window size."""
        return all(batchable(graph, shapes(window)) for graph, shapes in self._probes)

    def reset(self) -> None:
        """Zero every cache, like ``Model::reset()`` on the chip (sized by the next step's batch)."""
        self._state = [None] * len(self._steps)
        for cache in self._caches:
            cache.state = None

    def step(self, window_frames: np.ndarray, exponent: int) -> list[np.ndarray]:
        """Run one window ``[W, C]`` (or ``[S, W, C]``) through every module; return each module's ``[W, C]``
        (``[S, W, C]``) output (per window: ``[1, values]``, ``[S, 1, values]``)."""
        import torch

        single = window_frames.ndim == 2
        batch = window_frames[None] if single else window_frames
        frames = batch.shape[1]
        self.steps += 1
        x = to_graph_input(batch, exponent)
        outputs = []
        with one_thread():
            for k, (m, executor, hooks) in enumerate(self._steps):
                if m.streaming_graph is not None:
                    state = self._state[k]
                    if state is None:
                        state = torch.zeros(len(batch), *m.cache_shape)
                    x, self._state[k] = executor.forward(
                        {"input": x, "cache": state}, output_names=["output", "cache_out"]
                    )
                else:
                    x = executor.forward({"input": x}, output_names=["output"], hooks=hooks)[0]
                if m.output.per_window:  # a head with one output per window: its shape is the offline one
                    outputs.append(to_chip_outputs(x, m.out_exponent, self.qm.bits, per_window=True))
                    continue
                if x.shape[TIME_AXIS] != frames:
                    raise StreamingError(
                        f"module {k} of '{self.qm.spec.name}' turns {frames} frames into {x.shape[TIME_AXIS]}",
                        "streaming sub-models must keep the frame rate (one output frame per input frame)",
                    )
                outputs.append(to_chip_outputs(x, m.out_exponent, self.qm.bits))
        return [o[0] for o in outputs] if single else outputs


_PRECISE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _precise(qm, graph):
    """The float64 copy of an int16 graph (made once per graph), else the graph."""
    if qm.bits != 16:
        return graph
    if graph not in _PRECISE:
        _PRECISE[graph] = precise_copy(graph)
    return _PRECISE[graph]


def stream_on_host(qm, frames: Frames, window: int, exports=None) -> list[QTensor]:
    """Stream every sequence window by window (caches reset per sequence); outputs per module ``[S, T, C]``
    (a per-window output: ``[S, windows, values]``)."""
    t = frames.sequence_length
    if t % window:
        raise StreamingError(
            f"window size {window} does not divide the {t} frames of each sequence", "choose a divisor of the sequence length"
        )
    streamer = HostStreamer(qm, exports)
    values = frames.values
    batches = [values] if len(values) == 1 or streamer.batchable(window) else [seq[None] for seq in values]
    per_module: list[list[np.ndarray]] = [[] for _ in qm.modules]
    for batch in batches:
        streamer.reset()
        chunks = [streamer.step(batch[:, i : i + window], frames.exponent) for i in range(0, t, window)]
        for k in range(len(qm.modules)):
            per_module[k].append(np.concatenate([c[k] for c in chunks], axis=1))
    return [QTensor(np.concatenate(out), m.out_exponent) for m, out in zip(qm.modules, per_module)]


def offline_on_host(qm, frames: Frames) -> list[QTensor]:
    """The same simulator on whole sequences, in the precision ``stream_on_host`` uses."""
    return offline_reference(qm, frames, graphs=[_precise(qm, m.offline_graph) for m in qm.modules])
