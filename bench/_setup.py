"""Shared set-up for the benchmarks: a quantized shipped model and its streaming exports (from the cache)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from harness.ppq.quantize import Quantizer  # noqa: E402
from harness.model.spec import load_specs  # noqa: E402
from harness.targets import get_target  # noqa: E402


def quantized(model: str = "tcn_auto", target: str = "esp32p4", cache: Path = ROOT / ".hil-cache"):
    """(Quantizer, QuantizedModel) for a shipped model; calibrates only on a cold cache."""
    quantizer = Quantizer(cache)
    spec = next(s for s in load_specs() if s.name == model)
    return quantizer, quantizer.model(spec, get_target(target))


def connect(target: str, baud: int | None = None):
    """A started virtual board (optionally throttled to ``baud``) and a DeviceLink on its pty, after HELLO."""
    import serial

    from harness.device.dut import DeviceLink
    from harness.emulator.virtual_board import VirtualBoard

    board = VirtualBoard(target, ROOT / "artifacts" / "logs" / f"bench-virtual-{target}.log", baud=baud).start()
    port = serial.serial_for_url(board.port, baudrate=baud or 921600, timeout=0.05)
    link = DeviceLink(port, f"virtual {target} board", liveness=board.exit_reason)
    board.reset()
    link.wait_boot()
    link.hello()
    return board, port, link


def stream_joined(link, quantizer, qm, window: int, sequences: int):
    """Upload, configure as the harness does by default, stream ``sequences`` back to back.

    Returns (frames, seconds, link stats before streaming, after) -- uploads excluded.
    """
    import copy
    import dataclasses
    import time

    from harness.device.dut import default_output_batch, load_pipeline, queue_depth_for, run_sequences
    from harness.model.frames import generate_frames

    frames = generate_frames(qm, sequences=sequences)
    joined = dataclasses.replace(frames, values=frames.values.reshape(1, -1, frames.values.shape[2]))
    exports = quantizer.streaming_exports(qm, window)
    t = joined.values.shape[1]
    last = exports[-1]
    batch = default_output_batch(link, last.out_frames, last.out_channels, qm.bits, len(exports), t // window)
    # round-robin runs one module per frame step: with fewer frames per window than modules it cannot keep up
    schedule = "round-robin" if window >= len(exports) else "sequential"
    load_pipeline(link, exports, window, schedule, False, batch, queue_depth_for(window, len(exports), t))
    before = copy.copy(link.stats)
    start = time.perf_counter()
    run_sequences(link, joined, window, exports, all_modules=False)
    return joined, time.perf_counter() - start, before, copy.copy(link.stats)
