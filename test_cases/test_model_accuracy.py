"""What quantization costs, on the frames the cases stream: the float model against ESP-PPQ's quantized one.

Per target and model: SNR and cosine of every sub-model on its own (fed the float model's input to it) and
cumulated to its output, end to end at the last one; with labels (``--frames`` ``.npz``), top-1 accuracy (or the
spec's ``metric``) of the float and the quantized model; ESP-PPQ's per-operator error table of the sub-model
that loses most. The device's own task figures are recorded by each streamed case (``test_device_streaming``).
"""

import math

import pytest

from harness.ppq.accuracy import task_figures


def test_quantization_accuracy(hil_model, hil_session, quantized_model, record_case):
    if hil_model.spec.exports is not None:
        pytest.skip("exported files: there is no float model to compare the quantized one with")
    qm = quantized_model
    frames = hil_session.frames(qm)
    run = hil_session.accuracy(qm)
    labels = getattr(frames, "labels", None)
    # a spec's metric that fails is reported with the figures, then fails this case (and only this one)
    task, task_error = task_figures(qm.spec, labels, {"float": run.float_out, "quantized": run.quantized_out},
                                    frames.sequence_length, run.float_out)
    record_case(accuracy={"per_module": run.per_module, "end_to_end": run.end_to_end, "worst_module": run.worst_module,
                          "layers": run.layers, "task": task, "labels": None if labels is None else list(labels.shape),
                          **({"task_error": task_error} if task_error else {})},
                arrays={"float": run.float_out, "quantized": run.quantized_out})
    broken = [m["module"] for m in run.per_module
              if any(math.isnan(v) for side in ("isolated", "cumulative") for v in m[side].values())]
    assert not broken, f"sub-model(s) {broken}: the float or the quantized output is not a number (NaN)"
    assert task_error is None, task_error
