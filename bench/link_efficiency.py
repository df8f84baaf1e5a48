"""Link efficiency at default batching: payload bytes / wire bytes while streaming (goal: >= 95 %).

Payload = input frame values sent + output tensor values received; wire =
every byte both ways while streaming (framing, CRC, COBS, headers, timings,
CREDIT/RESET/FLUSH/ACK messages included). Uploads are not counted.

    python bench/link_efficiency.py [--model tcn_auto] [--target esp32p4] [--windows 1,3,6]
"""

from __future__ import annotations

import argparse

from _setup import connect, quantized, stream_joined


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tcn_auto")
    parser.add_argument("--target", default="esp32p4")
    parser.add_argument("--windows", default="1,3,6")
    parser.add_argument("--sequences", type=int, default=16)
    args = parser.parse_args()
    quantizer, qm = quantized(args.model, args.target)
    board, port, link = connect(args.target)
    try:
        for window in (int(w) for w in args.windows.split(",")):
            _, _, before, after = stream_joined(link, quantizer, qm, window, args.sequences)
            up = (after.frame_bytes_sent - before.frame_bytes_sent) / (after.sent_bytes - before.sent_bytes)
            down = (after.output_bytes_received - before.output_bytes_received) / (after.received_bytes - before.received_bytes)
            payload = (after.frame_bytes_sent - before.frame_bytes_sent) + (after.output_bytes_received - before.output_bytes_received)
            wire = (after.sent_bytes - before.sent_bytes) + (after.received_bytes - before.received_bytes)
            verdict = "meets" if payload / wire >= 0.95 else "MISSES"
            print(f"W={window}: uplink {up:6.1%}, downlink {down:6.1%}, both ways {payload / wire:6.1%} "
                  f"({payload} payload / {wire} wire bytes; {verdict} the 95 % goal)")
    finally:
        port.close()
        board.stop()


if __name__ == "__main__":
    main()
