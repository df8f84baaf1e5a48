"""Stage 2: the offline reference, i.e. what the quantized model computes on whole sequences.

The offline quantized graphs run in order with ESP-PPQ's simulator on the
CPU, each on a whole sequence; every sub-model's output is returned as the
chip holds it: integers in NWC with the exponent read from the graph.
"""

from __future__ import annotations

import numpy as np

from harness.frames import Frames
from harness.ppq_env import DEVICE, import_ppq
from harness.tensors import QTensor


def to_graph_input(q: np.ndarray, exponent: int):
    """Integer NWC frames ``[T, C]`` -> the float ``[1, C, T]`` tensor ESP-PPQ's graph takes."""
    import torch

    return torch.from_numpy(np.ascontiguousarray(q.T[None].astype(np.float32) * np.float32(2.0**exponent)))


def to_chip_output(y, exponent: int, bits: int, per_window: bool = False) -> np.ndarray:
    """A graph output ``[1, C, T]`` (already on its quantization grid) -> integers ``[T, C]``.

    A per-window output becomes one row ``[1, values]``: ``[1, C, F]`` time-major (as the chip's NWC
    frames), any other shape in its own element order.
    """
    from harness.targets import int_dtype, int_range

    lo, hi = int_range(bits)
    y = y.detach().numpy()[0]
    y = (y.T.reshape(1, -1) if y.ndim == 2 else y.reshape(1, -1)) if per_window else y.T
    q = np.rint(y.astype(np.float64) * 2.0**-exponent)
    return np.clip(q, lo, hi).astype(int_dtype(bits))


def offline_reference(qm, frames: Frames, graphs: list | None = None) -> list[QTensor]:
    """Each sub-model's offline output for every sequence: ``QTensor([S, T, C])`` per module.

    A per-window output is ``[S, 1, values]``: the model's one output for each whole sequence.

    ``graphs`` replaces the modules' offline graphs (e.g. by copies that compute in float64).
    """
    import_ppq()
    from esp_ppq.executor import TorchExecutor

    executors = [TorchExecutor(g, device=DEVICE) for g in (graphs or [m.offline_graph for m in qm.modules])]
    per_module: list[list[np.ndarray]] = [[] for _ in qm.modules]
    for seq in frames.values:
        x = to_graph_input(seq, frames.exponent)
        for m, ex, out in zip(qm.modules, executors, per_module):
            x = ex.forward({"input": x}, output_names=["output"])[0]
            out.append(to_chip_output(x, m.out_exponent, qm.bits, m.output.per_window))
    return [QTensor(np.stack(out), m.out_exponent) for m, out in zip(qm.modules, per_module)]
