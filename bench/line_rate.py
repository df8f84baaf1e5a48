"""Frame rate through a pty throttled to a UART's speed, as a fraction of line rate (goal: >= 90 %).

The virtual board paces both directions like an 8N1 UART at ``--baud``
(default 921600: 92160 bytes/s each way). Line rate = the frames/s the link
could carry if every byte were frame payload: (baud / 10) / bytes per frame.

    python bench/line_rate.py [--baud 921600] [--windows 1,3,6]
"""

from __future__ import annotations

import argparse

from _setup import connect, quantized, stream_joined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tcn_auto")
    parser.add_argument("--target", default="esp32p4")
    parser.add_argument("--windows", default="1,3,6")
    parser.add_argument("--baud", type=int, default=921600)
    parser.add_argument("--sequences", type=int, default=64, help="streamed back to back: long enough for a steady state")
    args = parser.parse_args()
    quantizer, qm = quantized(args.model, args.target)
    board, port, link = connect(args.target, baud=args.baud)
    try:
        for window in (int(w) for w in args.windows.split(",")):
            joined, seconds, _, _ = stream_joined(link, quantizer, qm, window, args.sequences)
            frames, channels = joined.values.shape[1:]
            line_rate = args.baud / 10 / (channels * joined.values.dtype.itemsize)
            achieved = frames / seconds
            verdict = "meets" if achieved / line_rate >= 0.90 else "MISSES"
            print(f"W={window}: {achieved:7.0f} frames/s of {line_rate:5.0f} line rate at {args.baud} baud: "
                  f"{achieved / line_rate:6.1%} ({verdict} the 90 % goal)")
    finally:
        port.close()
        board.stop()


if __name__ == "__main__":
    main()
