"""Streamed on the device under test (a board or the virtual board): two verdicts per case.

The device receives the same streaming ``.espdl`` files a deployment would,
frames arrive one by one over the serial protocol, and every module runs as
the runner schedules it (round-robin, one module per frame step, as in the
seed). Each case answers two different questions:

* **streaming exactness**: what the device streams equals what the *same
  device* computes on the offline export of the same quantized graph, each
  sequence as one window -- bit for bit, int8 and int16. This is what catches
  cache, schedule and export-wiring bugs.
* **arithmetic fidelity**: the device's offline result equals ESP-PPQ's
  simulation within ESP-DL's contract (int8 exact, int16 the measured bound of
  ``harness.ppq.fidelity``).
"""

import dataclasses

import numpy as np
import pytest

from harness.verdict.compare import compare, fidelity_verdict, streaming_verdict
from harness.verdict.divergence import locate
from harness.device.dut import configure_pipeline, stream_pipeline
from harness.verdict.per_window import expected_outputs, judged_outputs, judged_windows, prefix, unjudged_note, verdict_rows
from harness.ppq.accuracy import task_figures
from harness.signoff.realtime import realtime_figures
from harness.tensors import QTensor


def test_streamed_matches_offline(hil_case, quantized_model, streaming_exports, frames, reference, fidelity,
                                  device_offline, device, record_case, hil_session):
    w, t = hil_case.window, frames.sequence_length
    result = stream_pipeline(device, streaming_exports, frames, w)
    accuracy = hil_session.accuracy(quantized_model)  # the float model's decisions, for the device's task figures
    last = result.outputs[-1]
    # the device's task figures; a metric that fails is the accuracy case's failure (test_model_accuracy), noted here
    task, task_error = task_figures(quantized_model.spec, getattr(frames, "labels", None),
                                    {"device": last.data.astype(np.float64) * 2.0**last.exponent}, t,
                                    accuracy.float_out if accuracy is not None else None)
    streamed = judged_outputs(quantized_model, w, t, result.outputs)
    rows = verdict_rows(quantized_model, w, t)
    note = unjudged_note(quantized_model, w, t)
    streaming = streaming_verdict(device_offline.outputs, streamed, w, quantized_model.tolerance_lsb,
                                  quantized_model.tolerance_reason, rows)
    if reference is None:  # exported files without embedded test values for these frames
        arithmetic, verdicts = None, (streaming,)
        note = "; ".join(filter(None, [note, "fidelity not judged: the offline file embeds no test output for these frames"]))
    else:
        arithmetic = fidelity_verdict(reference, device_offline.outputs, fidelity.per_module, fidelity.reason, w, rows)
        verdicts = (streaming, arithmetic)
    located = locate(device, quantized_model, streaming_exports, hil_session.quantizer.offline_exports(quantized_model, t),
                     frames, w, streaming, arithmetic)  # a failing case: its first diverging layer, for the report
    record_case(
        streaming.comparisons[-1], *verdicts,
        first_diverging_layer=located,
        arrays={"streamed": result.outputs[-1], "device_offline": device_offline.outputs[-1],
                **({"simulated": reference[-1]} if reference is not None else {})},
        task=task,
        **({"task_error": task_error} if task_error else {}),
        latency_us=[round(x, 1) for x in result.latency_us],
        cycles=[round(x) for x in result.cycles],
        **({"not_judged": note} if note else {}),
        **({"fidelity_verdict": "not judged"} if arithmetic is None else {}),
    )
    assert all(v.passed for v in verdicts), "; ".join(v.summary() for v in verdicts)


def test_round_robin_equals_sequential(hil_case, streaming_exports, frames, device, record_case):
    """Both schedules compute the same; each run's timings (one OUTPUT per window) are the real-time figures."""
    w = hil_case.window
    runs = {s: stream_pipeline(device, streaming_exports, frames, w, s, batched=False) for s in ("round-robin", "sequential")}
    loaded = device.hello()  # INFO after the case's models were loaded: what they leave free
    sizes = [e.path.stat().st_size for e in streaming_exports]
    period = hil_case.spec.config.get("frame_period_ms")
    host = loaded.device_kind == "virtual"
    record_case(realtime={s: realtime_figures(r, w, s, period, host, sizes) for s, r in runs.items()},
                arrays={f"runs_us_m{k}": np.array([us / n for us, _, n in samples], dtype=np.float64)
                        for k, samples in enumerate(runs["round-robin"].timings)},
                device_free_bytes={"internal": loaded.free_internal_bytes, "psram": loaded.free_psram_bytes})
    for rr, seq in zip(runs["round-robin"].outputs, runs["sequential"].outputs):
        assert rr.exponent == seq.exponent and np.array_equal(rr.data, seq.data)
    n, windows = len(streaming_exports), frames.sequence_length // w
    assert runs["sequential"].output_steps[0] == [j * w + w - 1 for j in range(windows)]
    if w >= n:  # the seed's schedule: module k of window j at step j*W + W-1 + k
        assert runs["round-robin"].output_steps[0] == [j * w + w - 1 + n - 1 for j in range(windows)]
    else:  # one module per step, windows back up: window j's last module runs at step j*N + N-1
        assert runs["round-robin"].output_steps[0] == [j * n + n - 1 for j in range(windows)]


def test_reset_matches_a_fresh_start(hil_case, quantized_model, streaming_exports, frames, device_offline, device):
    w = hil_case.window
    configure_pipeline(device, streaming_exports, frames, w, all_modules=False)
    first, second = frames.values[0], frames.values[-1]
    collected = {}

    t = len(second)
    per_window = quantized_model.output.per_window

    def stream(name, values, first_frame=0):
        outputs = []
        device.stream(values, outputs.append, first_frame)
        rows = np.concatenate([o.array() for o in sorted(outputs, key=lambda o: o.window)])
        collected[name] = rows.reshape(t // w, -1) if per_window else rows  # a head: one row per window

    device.reset()
    stream("first", first)
    stream("continued", second, first_frame=len(first))  # no reset: the caches still hold `first`
    device.reset()
    stream("after_reset", second)
    fresh = device_offline.outputs[-1]  # the same device, offline, on `second` from nothing
    expected = QTensor(fresh.data[-1:], fresh.exponent)
    rows = verdict_rows(quantized_model, w, t)
    after_reset = collected["after_reset"][judged_windows(quantized_model, w, t)] if per_window else collected["after_reset"]
    result = compare(expected, QTensor(after_reset[None], fresh.exponent), w, quantized_model.tolerance_lsb, rows)
    assert result.passed, f"after RESET: {result.summary()}"
    # the state was really carried: without the reset, the same frames gave other outputs
    assert not np.array_equal(collected["continued"], collected["after_reset"])


def test_sequences_back_to_back(hil_case, hil_session, quantized_model, streaming_exports, frames, device, record_case):
    """All sequences streamed as one, without a reset: state must carry across the joins."""
    if quantized_model.spec.exports is not None:
        pytest.skip("exported files: no offline file for the joined sequences (one sequence is streamed)")
    w = hil_case.window
    joined = dataclasses.replace(frames, values=frames.values.reshape(1, -1, frames.values.shape[2]))
    t = joined.sequence_length

    def offline(length):
        if length <= frames.sequence_length:  # within the first sequence: its row of the offline run on every one
            first = hil_session.offline_on(device, hil_case, quantized_model, frames, length).outputs[-1]
            return [QTensor(first.data[:1], first.exponent)]
        exports = hil_session.quantizer.offline_exports(quantized_model, length)
        return stream_pipeline(device, exports, prefix(joined, length), length, all_modules=False).outputs

    expected = expected_outputs(quantized_model, w, t, offline(t), offline)
    result = stream_pipeline(device, streaming_exports, joined, w, all_modules=False)
    rows = verdict_rows(quantized_model, w, t)
    streaming = streaming_verdict(expected, judged_outputs(quantized_model, w, t, result.outputs), w,
                                  quantized_model.tolerance_lsb, quantized_model.tolerance_reason, rows)
    record_case(streaming.comparisons[-1], streaming)
    assert streaming.passed, streaming.summary()
