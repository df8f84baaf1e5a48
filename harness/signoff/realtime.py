"""Real-time figures of a streamed run: per-module run times, the worst frame step, and the real-time factor.

Samples are the device's own timings per OUTPUT message (``StreamResult.timings``); with output batching off,
each is one run of a module on one window. On the virtual board they are host microseconds of the emulator
(and its cycles are 0): marked ``host_time``, they say nothing of the chip.
"""

from __future__ import annotations

import numpy as np


def _spread(values: np.ndarray) -> dict:
    if values.size == 0:
        return {"p50": None, "p99": None, "max": None}
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)), "max": float(values.max())}


def realtime_figures(result, window: int, schedule: str, frame_period_ms: float | None, host_time: bool,
                     model_bytes: list[int]) -> dict:
    """Per module p50/p99/max microseconds and cycles per run; the worst frame step; RTF against the frame period.

    Round-robin runs one module per frame step, so the worst step is the slowest single run; sequential runs
    every module on a window's last frame, so its worst step is the slowest window's sum over modules. The
    real-time factor is that worst step over the time it may take (one frame period, or the window's frames
    for sequential): above 1 the device falls behind. ``load`` is the mean compute per frame over the period.
    """
    modules = []
    per_run = []
    for k, samples in enumerate(result.timings):
        us = np.array([s[0] / max(s[2], 1) for s in samples], dtype=np.float64)
        cycles = np.array([s[1] / max(s[2], 1) for s in samples], dtype=np.float64)
        per_run.append(us)
        modules.append({"module": k, "runs": int(sum(s[2] for s in samples)), "us": _spread(us),
                        "cycles": _spread(cycles), "model_bytes": model_bytes[k] if k < len(model_bytes) else None})
    if not per_run or any(r.size == 0 for r in per_run):
        worst = None
    elif schedule == "sequential":
        n = min(r.size for r in per_run)
        worst = float(np.max(np.sum([r[:n] for r in per_run], axis=0)))
    else:
        worst = float(max(r.max() for r in per_run))
    mean_per_window = sum(float(r.mean()) for r in per_run if r.size) if per_run else None
    figures = {"schedule": schedule, "window": window, "host_time": host_time, "modules": modules,
               "worst_step_us": worst, "frame_period_ms": frame_period_ms, "rtf": None, "load": None,
               "batched_samples": any(s[2] > 1 for samples in result.timings for s in samples)}
    if frame_period_ms and worst is not None:
        budget_us = frame_period_ms * 1000.0 * (window if schedule == "sequential" else 1)
        figures["rtf"] = worst / budget_us
        figures["load"] = mean_per_window / (window * frame_period_ms * 1000.0)
    return figures
