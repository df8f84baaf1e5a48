"""Model-level check users run before touching hardware: is my streaming model right?

The streaming sub-models (the same quantized graphs the chip gets, wired as
the exported files wire them) are stepped window by window on the host in
ESP-PPQ's simulator with their state carried, and must reproduce the same
simulator run on whole sequences: streaming exactness, without a device.
"""

from harness.compare import streaming_verdict
from harness.streaming import offline_on_host, stream_on_host


def test_host_streaming_matches_offline(hil_case, quantized_model, streaming_exports, frames, record_case):
    offline = offline_on_host(quantized_model, frames)
    streamed = stream_on_host(quantized_model, frames, hil_case.window, streaming_exports)
    streaming = streaming_verdict(offline, streamed, hil_case.window, quantized_model.tolerance_lsb,
                                  quantized_model.tolerance_reason)
    record_case(streaming.comparisons[-1], streaming, arrays={"offline": offline[-1], "streamed": streamed[-1]},
                exports=[str(e.path) for e in streaming_exports])
    assert streaming.passed, streaming.summary()
