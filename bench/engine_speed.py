"""Engine frames/s vs ESP-PPQ's TorchExecutor stepping the same streaming model (goal: >= 10x).

Both stream the same frames window by window with state carried: the
TorchExecutor through the harness's host streaming check (ESP-PPQ simulator),
the engine through the streaming .espdl files, module after module.

    python bench/engine_speed.py [--model tcn_auto] [--target esp32p4] [--windows 1,3,6]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _setup import quantized

from harness.emulator.engine import Engine
from harness.espdl.reader import load_espdl
from harness.model.frames import generate_frames
from harness.ppq.streaming import HostStreamer


def engine_chain(exports, target):
    """Per module: (engine, export); explicit caches are carried like the runner carries them."""
    return [(Engine(load_espdl(e.path), target), e) for e in exports]


def run_engines(chain, values, window, caches):
    for start in range(0, len(values), window):
        x = values[start : start + window]
        for engine, e in chain:
            x = x[None] if e.layouts["input"] == "NWC" else x.T[None]
            feeds = {e.input: np.ascontiguousarray(x)}
            if e.cache_input:
                feeds[e.cache_input] = caches[e.module]
            out = engine.run(feeds)
            if e.cache_input:
                caches[e.module] = out[e.cache_output]
            y = out[e.output][0]
            x = y if e.layouts["output"] == "NWC" else y.T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tcn_auto")
    parser.add_argument("--target", default="esp32p4")
    parser.add_argument("--windows", default="1,3,6")
    parser.add_argument("--sequences", type=int, default=8)
    args = parser.parse_args()
    quantizer, qm = quantized(args.model, args.target)
    frames = generate_frames(qm, sequences=args.sequences)
    total = frames.values.shape[0] * frames.values.shape[1]
    print(f"{args.model} on {args.target}: {total} frames of {frames.values.shape[2]} channels per measurement")
    for window in (int(w) for w in args.windows.split(",")):
        exports = quantizer.streaming_exports(qm, window)
        streamer = HostStreamer(qm, exports)
        start = time.perf_counter()
        for seq in frames.values:
            streamer.reset()
            for i in range(0, len(seq), window):
                streamer.step(seq[i : i + window], frames.exponent)
        ppq = total / (time.perf_counter() - start)

        chain = engine_chain(exports, qm.target)
        start = time.perf_counter()
        for seq in frames.values:
            caches = {}
            for engine, e in chain:
                engine.reset()
                if e.cache_input:
                    info = next(i for i in engine.inputs if i.name == e.cache_input)
                    caches[e.module] = np.zeros(info.shape, dtype=info.dtype)
            run_engines(chain, seq, window, caches)
        fast = total / (time.perf_counter() - start)
        verdict = "meets" if fast / ppq >= 10 else "MISSES"
        print(f"W={window}: engine {fast:8.0f} frames/s, TorchExecutor {ppq:7.0f} frames/s, "
              f"ratio {fast / ppq:5.1f}x ({verdict} the 10x goal)")


if __name__ == "__main__":
    main()
