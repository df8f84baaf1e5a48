"""StreamingCache: the frames a streaming model keeps between windows (ESP-PPQ's auto-streaming op)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from harness.espdl.reader import Node
from harness.emulator.common import Plan
from harness.emulator.ops import builds

if TYPE_CHECKING:
    from harness.emulator.engine import Engine


@builds('StreamingCache')
def build_streaming_cache(eng: Engine, node: Node) -> Plan:
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

    return Plan(node, (node.inputs[0],), node.outputs, run, reset=reset)
