"""Per-window outputs: what a streamed head (one output per window) is compared with.

A model whose last sub-model returns one tensor per call (a classifier over the
last F frames, ``[1, classes]``) has no offline frame to compare each streamed
frame with. Window j's streamed output is instead compared with the offline
model run on the prefix of the sequence that ends with window j -- the same
quantized graph exported (or simulated) for that many frames. A window is
*judged* once its prefix covers the output span (the fewest frames the offline
model accepts); earlier windows are reported, not judged: the offline model
has no answer for them.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from harness.model.frames import Frames
from harness.tensors import QTensor


def judged_windows(qm, window: int, frames: int) -> list[int]:
    """Indices of the windows of ``window`` frames, in sequences of ``frames``, that the verdicts judge."""
    return qm.output.judged(window, frames) if qm.output.per_window else list(range(frames // window))


def verdict_rows(qm, window: int, frames: int) -> list[int] | None:
    """The windows a per-window output's rows stand for (``compare``'s ``rows``), or None for frame outputs."""
    return judged_windows(qm, window, frames) if qm.output.per_window else None


def prefix_lengths(qm, window: int, frames: int) -> list[int]:
    """Frames of the prefix that ends with each judged window."""
    return [(j + 1) * window for j in judged_windows(qm, window, frames)]


def prefix(frames: Frames, length: int) -> Frames:
    """The first ``length`` frames of every sequence."""
    return dataclasses.replace(frames, values=frames.values[:, :length])


def expected_outputs(qm, window: int, frames: int, whole: list[QTensor],
                     on_prefix: Callable[[int], list[QTensor]]) -> list[QTensor]:
    """``whole`` (each module on whole sequences), with a per-window last module's output replaced by
    ``on_prefix(length)``'s (``[S, 1, values]``) for every judged window: ``[S, judged, values]``."""
    if not qm.output.per_window:
        return whole
    rows = [on_prefix(length)[-1] for length in prefix_lengths(qm, window, frames)]
    exponents = {r.exponent for r in rows}
    if len(exponents) != 1:  # one graph, one exponent: anything else is a harness bug, not a verdict
        raise AssertionError(f"prefix outputs of '{qm.spec.name}' have exponents {sorted(exponents)}")
    return [*whole[:-1], QTensor(np.concatenate([r.data for r in rows], axis=1), rows[0].exponent)]


def judged_outputs(qm, window: int, frames: int, streamed: list[QTensor]) -> list[QTensor]:
    """Streamed outputs with a per-window last module restricted to its judged windows."""
    if not qm.output.per_window:
        return streamed
    last = streamed[-1]
    return [*streamed[:-1], QTensor(last.data[:, judged_windows(qm, window, frames)], last.exponent)]


def unjudged_note(qm, window: int, frames: int) -> str:
    """What the report says about the windows left out, or ''."""
    if not qm.output.per_window:
        return ""
    early = frames // window - len(judged_windows(qm, window, frames))
    if not early:
        return ""
    which = "window 0 is" if early == 1 else f"windows 0..{early - 1} are"
    return f"{which} not judged: shorter than the {qm.output.span} frames the offline model needs"
