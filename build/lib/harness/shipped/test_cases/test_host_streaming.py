"""Model-level check users run before touching hardware: is my streaming model right?

The streaming sub-models (the same quantized graphs the chip gets, wired as
the exported files wire them) are stepped window by window on the host in
ESP-PPQ's simulator with their state carried, and must reproduce the same
simulator run on whole sequences: streaming exactness, without a device.
"""

import pytest

from harness.verdict.compare import streaming_verdict
from harness.ppq.derived import cached_host_reference, cached_host_stream
from harness.verdict.per_window import expected_outputs, judged_outputs, prefix, verdict_rows


def test_host_streaming_matches_offline(hil_case, quantized_model, streaming_exports, frames, record_case):
    if quantized_model.spec.exports is not None:
        pytest.skip("exported files: no ESP-PPQ graph to simulate; the device cases judge the files")
    w, t = hil_case.window, frames.sequence_length
    offline = expected_outputs(quantized_model, w, t, cached_host_reference(quantized_model, frames),
                               lambda length: cached_host_reference(quantized_model, prefix(frames, length)))
    streamed = judged_outputs(quantized_model, w, t, cached_host_stream(quantized_model, frames, w, streaming_exports))
    rows = verdict_rows(quantized_model, w, t)
    streaming = streaming_verdict(offline, streamed, w, quantized_model.tolerance_lsb,
                                  quantized_model.tolerance_reason, rows)
    record_case(streaming.comparisons[-1], streaming, arrays={"offline": offline[-1], "streamed": streamed[-1]},
                exports=[str(e.path) for e in streaming_exports])
    assert streaming.passed, streaming.summary()
