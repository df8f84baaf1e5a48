"""Streamed on the device under test (a board or the virtual board) vs the offline quantized reference.

The device receives the same streaming ``.espdl`` files a deployment would,
frames arrive one by one over the serial protocol, and every module runs as
the runner schedules it (round-robin, one module per frame step, as in the
seed). What comes back must equal the offline reference.
"""

import dataclasses

import numpy as np

from harness.compare import compare, first_diverging_module
from harness.dut import default_output_batch, load_pipeline, queue_depth_for, run_sequences
from harness.reference import offline_reference


def configure(device, exports, frames, window, schedule="round-robin", all_modules=False, batched=True):
    """Upload and configure as a deployment test would: outputs batched to fill OUTPUT messages."""
    n = len(exports)
    windows = frames.sequence_length // window
    batch = default_output_batch(device, window, frames.values.shape[2], frames.values.dtype.itemsize * 8, n, windows)
    load_pipeline(device, exports, window, schedule, all_modules, output_batch=batch if batched else 1,
                  queue_depth=queue_depth_for(window, n, frames.sequence_length))


def test_streamed_matches_offline(hil_case, quantized_model, streaming_exports, frames, reference, device, record_case):
    n, w = len(streaming_exports), hil_case.window
    configure(device, streaming_exports, frames, w, all_modules=True)
    result = run_sequences(device, frames, w, n, all_modules=True)
    tolerance = quantized_model.tolerance_lsb
    comparison = compare(reference[-1], result.outputs[-1], w, tolerance)
    record_case(
        comparison,
        expected=reference[-1],
        streamed=result.outputs[-1],
        first_diverging_module=first_diverging_module(reference, result.outputs, w, tolerance),
        latency_us=[round(x, 1) for x in result.latency_us],
        cycles=[round(x) for x in result.cycles],
    )
    assert comparison.passed, comparison.summary()


def test_round_robin_equals_sequential(hil_case, streaming_exports, frames, device):
    n, w = len(streaming_exports), hil_case.window
    runs = {}
    for schedule in ("round-robin", "sequential"):
        configure(device, streaming_exports, frames, w, schedule, all_modules=True, batched=False)
        runs[schedule] = run_sequences(device, frames, w, n, all_modules=True)
    for rr, seq in zip(runs["round-robin"].outputs, runs["sequential"].outputs):
        assert rr.exponent == seq.exponent and np.array_equal(rr.data, seq.data)
    windows = frames.sequence_length // w
    assert runs["sequential"].output_steps[0] == [j * w + w - 1 for j in range(windows)]
    if w >= n:  # the seed's schedule: module k of window j at step j*W + W-1 + k
        assert runs["round-robin"].output_steps[0] == [j * w + w - 1 + n - 1 for j in range(windows)]
    else:  # one module per step, windows back up: window j's last module runs at step j*N + N-1
        assert runs["round-robin"].output_steps[0] == [j * n + n - 1 for j in range(windows)]


def test_reset_matches_a_fresh_start(hil_case, quantized_model, streaming_exports, frames, device):
    w = hil_case.window
    configure(device, streaming_exports, frames, w)
    first, second = frames.values[0], frames.values[-1]
    collected = {}

    def stream(name, values, first_frame=0):
        outputs = []
        device.stream(values, outputs.append, first_frame)
        collected[name] = np.concatenate([o.array() for o in sorted(outputs, key=lambda o: o.window)])

    device.reset()
    stream("first", first)
    stream("continued", second, first_frame=len(first))  # no reset: the caches still hold `first`
    device.reset()
    stream("after_reset", second)
    fresh = offline_reference(quantized_model, dataclasses.replace(frames, values=second[None]))[-1].data[0]
    assert np.array_equal(collected["after_reset"], fresh)
    assert not np.array_equal(collected["continued"], fresh)  # the state was really carried


def test_sequences_back_to_back(hil_case, quantized_model, streaming_exports, frames, device, record_case):
    """All sequences streamed as one, without a reset: state must carry across the joins."""
    n, w = len(streaming_exports), hil_case.window
    joined = dataclasses.replace(frames, values=frames.values.reshape(1, -1, frames.values.shape[2]))
    expected = offline_reference(quantized_model, joined)
    configure(device, streaming_exports, joined, w)
    result = run_sequences(device, joined, w, n, all_modules=False)
    comparison = compare(expected[-1], result.outputs[-1], w, quantized_model.tolerance_lsb)
    record_case(comparison)
    assert comparison.passed, comparison.summary()
