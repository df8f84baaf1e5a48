"""Stage 2: the offline reference, i.e. what the quantized model computes on whole sequences.

The offline quantized graphs run in order with ESP-PPQ's simulator on the
CPU, on all sequences at once when the graphs keep sequences apart (else one
sequence at a time); every sub-model's output is returned as the chip holds
it: integers in NWC with the exponent read from the graph.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import numpy as np

from harness.model.frames import Frames
from harness.ppq.env import DEVICE, import_ppq
from harness.tensors import QTensor


def to_graph_input(q: np.ndarray, exponent: int):
    """Integer NWC frames ``[T, C]`` (a batch: ``[S, T, C]``) -> the float ``[1, C, T]`` (``[S, C, T]``) tensor
    ESP-PPQ's graph takes."""
    import torch

    q = q[None] if q.ndim == 2 else q
    return torch.from_numpy(np.ascontiguousarray(q.transpose(0, 2, 1).astype(np.float32) * np.float32(2.0**exponent)))


def to_chip_outputs(y, exponent: int, bits: int, per_window: bool = False) -> np.ndarray:
    """A graph output ``[S, C, T]`` (already on its quantization grid) -> integers ``[S, T, C]``.

    A per-window output becomes one row per sequence, ``[S, 1, values]``: ``[S, C, F]`` time-major (as the
    chip's NWC frames), any other shape in its own element order.
    """
    from harness.targets import int_dtype, int_range

    lo, hi = int_range(bits)
    y = y.detach().numpy()
    if per_window:
        y = (y.transpose(0, 2, 1) if y.ndim == 3 else y).reshape(y.shape[0], 1, -1)
    else:  # each row's axes reversed: [C, T] -> [T, C]
        y = y.transpose(0, *range(y.ndim - 1, 0, -1))
    q = np.rint(y.astype(np.float64) * 2.0**-exponent)
    return np.clip(q, lo, hi).astype(int_dtype(bits))


def to_chip_output(y, exponent: int, bits: int, per_window: bool = False) -> np.ndarray:
    """A graph output ``[1, C, T]`` -> integers ``[T, C]`` (a per-window output: ``[1, values]``)."""
    return to_chip_outputs(y, exponent, bits, per_window)[0]


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Torch on one thread while the simulator runs.

    Its ops see a few thousand values each: handing them to a thread pool costs more than the work, and
    on a busy machine (a virtual board computing beside it) each op can wait milliseconds for a core.
    The sums are exact (int8 in float32, int16 in float64), so the thread count cannot change a result.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


_BATCHABLE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def batchable(graph, shapes: dict[str, tuple[int, ...]]) -> bool:
    """Whether ``graph`` keeps axis 0 a batch of independent sequences (checked once per graph).

    A graph is traced with one sequence, so an op may fold the batch axis into another (a Reshape to a
    traced ``[1, -1]``, a reduction over axis 0). Two random inputs of ``shapes`` (without their batch
    axis) are run together and alone: every tensor the graph computes must have the batch axis in front
    and hold exactly what each input gives alone.
    """
    if graph in _BATCHABLE:
        return _BATCHABLE[graph]
    import torch

    from harness.ppq.quantize import computed_tensors

    import_ppq()
    from esp_ppq.executor import TorchExecutor

    gen = torch.Generator().manual_seed(0)
    pair = {name: torch.randint(-64, 64, (2, *shape), generator=gen).float() * _input_scale(graph, name)
            for name, shape in shapes.items()}
    names = computed_tensors(graph)
    executor = TorchExecutor(graph, device=DEVICE)
    try:
        with one_thread():
            both = executor.forward(pair, output_names=names)
            alone = [executor.forward({n: v[i : i + 1] for n, v in pair.items()}, output_names=names) for i in (0, 1)]
        verdict = all(
            (b is None and a0 is None and a1 is None)
            or (b is not None and a0 is not None and a1 is not None and b.dim() > 0 and b.shape[0] == 2
                and a0.shape[0] == 1 and torch.equal(b[0:1], a0) and torch.equal(b[1:2], a1))
            for b, a0, a1 in zip(both, *alone)
        )
    except Exception:  # the batch broke an op (a Reshape to traced sizes): one sequence at a time
        verdict = False
    _BATCHABLE[graph] = verdict
    return verdict


def _input_scale(graph, name: str) -> float:
    """The scale a graph input is read at (1.0 when no quantized op reads it)."""
    from harness.ppq.quantize import var_config

    try:
        return float(var_config(graph, name).scale.flatten()[0])
    except Exception:  # an input no quantized op reads: any scale probes it
        return 1.0


def offline_reference(qm, frames: Frames, graphs: list | None = None) -> list[QTensor]:
    """Each sub-model's offline output for every sequence: ``QTensor([S, T, C])`` per module.

    A per-window output is ``[S, 1, values]``: the model's one output for each whole sequence.

    ``graphs`` replaces the modules' offline graphs (e.g. by copies that compute in float64).
    """
    import_ppq()
    from esp_ppq.executor import TorchExecutor

    graphs = graphs or [m.offline_graph for m in qm.modules]
    executors = [TorchExecutor(g, device=DEVICE) for g in graphs]
    values = frames.values
    shapes = [(m.in_channels, frames.sequence_length) for m in qm.modules]
    together = len(values) == 1 or all(batchable(g, {"input": s}) for g, s in zip(graphs, shapes))
    batches = [values] if together else [seq[None] for seq in values]
    per_module: list[list[np.ndarray]] = [[] for _ in qm.modules]
    with one_thread():
        for batch in batches:
            x = to_graph_input(batch, frames.exponent)
            for m, ex, out in zip(qm.modules, executors, per_module):
                x = ex.forward({"input": x}, output_names=["output"])[0]
                out.append(to_chip_outputs(x, m.out_exponent, qm.bits, m.output.per_window))
    return [QTensor(np.concatenate(out), m.out_exponent) for m, out in zip(qm.modules, per_module)]
