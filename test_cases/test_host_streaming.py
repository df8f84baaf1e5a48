"""Model-level check users run before touching hardware: is my streaming model right?

The streaming sub-models (the same quantized graphs the chip gets) are
stepped window by window on the host with their state carried, and must
reproduce the offline quantized reference.
"""

from harness.compare import compare, first_diverging_module
from harness.streaming import stream_on_host


def test_host_streaming_matches_offline(hil_case, quantized_model, streaming_exports, frames, reference, record_case):
    streamed = stream_on_host(quantized_model, frames, hil_case.window)
    result = compare(reference[-1], streamed[-1], hil_case.window, quantized_model.tolerance_lsb)
    record_case(
        result,
        expected=reference[-1],
        streamed=streamed[-1],
        first_diverging_module=first_diverging_module(reference, streamed, hil_case.window, quantized_model.tolerance_lsb),
        exports=[str(e.path) for e in streaming_exports],
    )
    assert result.passed, result.summary()
