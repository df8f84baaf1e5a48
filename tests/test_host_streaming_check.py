"""Host streaming-equivalence: it passes on correct models and catches broken streaming ones."""

import dataclasses

import numpy as np
import pytest

from harness.verdict.compare import compare, streaming_verdict
from harness.errors import StreamingError
from harness.model.frames import generate_frames
from harness.ppq.reference import offline_reference
from harness.ppq.streaming import HostStreamer, offline_on_host, stream_on_host
from harness.tensors import QTensor


@pytest.mark.parametrize("name", ["tiny_explicit", "tiny_auto", "tiny_auto16", "residual_input_auto", "gated_auto"])
@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
def test_streamed_equals_offline_at_every_window(tiny, quantizer, name, target):
    qm = tiny(name, target)
    frames = generate_frames(qm)
    offline = offline_on_host(qm, frames)
    assert [r.exponent for r in offline] == [m.out_exponent for m in qm.modules]
    for window in (1, 2, 3, 4, 6, 12):
        streamed = stream_on_host(qm, frames, window, quantizer.streaming_exports(qm, window))
        for k, (e, s) in enumerate(zip(offline, streamed)):
            result = compare(e, s, window)
            assert result.passed and result.differing == 0, (window, k, result.summary())


def test_reference_is_not_trivial(tiny):
    qm = tiny("tiny_auto")
    out = offline_reference(qm, generate_frames(qm))[-1].data
    assert out.dtype == np.int8 and np.count_nonzero(out) > out.size // 2 and out.std() > 3


def test_stale_cache_is_caught_after_the_first_window(tiny):
    qm = tiny("stale_cache")
    frames = generate_frames(qm)
    reference = offline_reference(qm, frames)
    streamed = stream_on_host(qm, frames, 3)
    result = compare(reference[-1], streamed[-1], 3)
    assert not result.passed
    assert result.first_divergence["window"] == 1  # window 0 starts from a zero cache on both sides
    assert streaming_verdict(reference, streamed, 3, 0).failing_module == 0


def test_reset_gives_the_same_outputs_as_a_fresh_start(tiny, quantizer):
    qm = tiny("tiny_auto")
    seq = generate_frames(qm).values[0]
    streamer = HostStreamer(qm, quantizer.streaming_exports(qm, 3))
    first = [streamer.step(seq[i : i + 3], qm.input_exponent)[-1] for i in range(0, 12, 3)]
    again = [streamer.step(seq[i : i + 3], qm.input_exponent)[-1] for i in range(0, 12, 3)]
    streamer.reset()
    after_reset = [streamer.step(seq[i : i + 3], qm.input_exponent)[-1] for i in range(0, 12, 3)]
    assert all(np.array_equal(a, b) for a, b in zip(first, after_reset))
    assert not all(np.array_equal(a, b) for a, b in zip(first, again))  # state really is carried


def test_non_causal_conv_cannot_stream(tiny, quantizer):
    qm = tiny("noncausal_auto")
    with pytest.raises(StreamingError, match=r"time padding \[1, 1\] but sees 3 frames.*make it causal") as info:
        quantizer.streaming_exports(qm, 3)
    assert "\n" not in str(info.value)


def test_an_auto_model_streams_only_as_its_export_wires_it(tiny):
    with pytest.raises(StreamingError, match="pass the streaming exports"):
        HostStreamer(tiny("tiny_auto"))


def test_ignored_cache_input_is_one_clear_error(tiny):
    from harness.errors import HarnessError

    with pytest.raises(HarnessError, match=r"module 0 of 'ignored_cache': streaming_forward does not use its cache") as info:
        tiny("ignored_cache")
    assert "\n" not in str(info.value)


def test_an_op_esp_ppq_cannot_stream_is_refused_at_export_with_the_table_entry_to_add(tiny, quantizer):
    """ESP-PPQ refuses a channel Slice (a gated unit's split) in auto-streaming: the error names the exact entry."""
    qm = tiny("fused_gate_auto16")
    with pytest.raises(StreamingError, match=r"cannot stream Slice '/1/Slice_1' \(it reads '/1/filter_gate/Conv_output_0'\)"
                                             r".*add insert_streaming_cache_on_var\('/1/filter_gate/Conv_output_0', 1, "
                                             r"'/1/Slice_1'\) to the spec's streaming_table\(\)") as info:
        quantizer.streaming_exports(qm, 3)
    assert "\n" not in str(info.value)



def test_the_named_table_entries_make_that_model_stream_exactly(tiny, quantizer):
    """The same model with the entries the refusal named: it exports, and streams bit for bit on the host."""
    qm = tiny("fused_gate_table16")
    frames = generate_frames(qm)
    offline = offline_on_host(qm, frames)
    for window in (1, 3):
        exports = quantizer.streaming_exports(qm, window)
        assert all("-table-" in e.path.parent.name for e in exports)  # the table is part of the cache key
        result = streaming_verdict(offline, stream_on_host(qm, frames, window, exports), window, 0)
        assert result.passed and all(c.differing == 0 for c in result.comparisons), result.summary()

def test_a_cache_packing_tensors_of_different_exponents_is_refused_in_one_line(tiny):
    """One cache tensor holding two layers' pasts that esp32p4's offline graph quantizes at -5 and -6: the chip keeps
    one exponent per tensor, so it could not stream what the offline model computes (esp32s3 gives both -5)."""
    with pytest.raises(StreamingError, match=r"copies tensors the offline graph quantizes at different exponents "
                                             r"through Slice /Slice_1 \(cache -5, /Slice_1_output_0 -6\)") as info:
        tiny("packed_cache_explicit", "esp32p4")
    assert "\n" not in str(info.value) and "its own cache input and output" in str(info.value)
    assert tiny("packed_cache_explicit", "esp32s3").tolerance_lsb == 0


def _one_at_a_time(frames, run) -> list[QTensor]:
    """``run`` on each sequence alone, stacked: what stepping one sequence at a time gives."""
    alone = [run(dataclasses.replace(frames, values=frames.values[i : i + 1])) for i in range(len(frames.values))]
    return [QTensor(np.concatenate([a[k].data for a in alone]), alone[0][k].exponent) for k in range(len(alone[0]))]


@pytest.mark.parametrize("name, windows", [
    ("tiny_explicit", (1, 4)), ("unlockable", (1, 3)), ("tiny_auto", (1, 3)), ("tiny_auto16", (2, 6)),
    ("head_table_auto", (1, 4)), ("head_reshape_auto", (4,)),
])
def test_all_sequences_at_once_give_what_each_gives_alone(tiny, quantizer, name, windows):
    """Sequences stepped as one batch (each row its own state) give the integers of one sequence at a time;
    a graph that folds the batch into another axis (a Reshape to the traced [1, -1]) is stepped one at a time."""
    qm = tiny(name)
    frames = generate_frames(qm, sequences=3)
    for window in windows:
        exports = quantizer.streaming_exports(qm, window) if qm.spec.streaming == "auto" else None
        assert HostStreamer(qm, exports).batchable(window) == (name != "head_reshape_auto")
        together = stream_on_host(qm, frames, window, exports)
        alone = _one_at_a_time(frames, lambda f: stream_on_host(qm, f, window, exports))
        for k, (t, a) in enumerate(zip(together, alone)):
            assert t.exponent == a.exponent and t.data.dtype == a.data.dtype, (window, k)
            assert np.array_equal(t.data, a.data), (window, k)
    for offline in (offline_reference, offline_on_host):
        for t, a in zip(offline(qm, frames), _one_at_a_time(frames, lambda f: offline(qm, f))):
            assert t.exponent == a.exponent and np.array_equal(t.data, a.data)
