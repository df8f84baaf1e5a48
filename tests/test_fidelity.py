"""Which ops ``fidelity_bound`` moves by one LSB, and at what width: ESP-DL's ±1 LSB is per int16 operator.

An int8 model is exact unless the lint marks an op, or its ``quant_setting`` dispatches layers to int16
(``tests/specs/hooks_auto.py``, ``tests/specs/hooks_explicit.py``): those layers are int16 operators on the chip
and are measured like an int16 model's, each at its own width. Pure int8 and int16 models keep their bounds.
"""

from __future__ import annotations

import pytest

from harness.model.frames import generate_frames
from harness.ppq import fidelity
from harness.ppq.fidelity import EXACT_OPS, fidelity_bound


@pytest.fixture
def nudged(monkeypatch):
    """Bit widths of the one-LSB hooks ``fidelity_bound`` builds, in order: (op name, bits) per hook."""
    built: list[tuple[str, int]] = []
    original = fidelity._nudge_hook_class

    def recording():
        class Recording(original()):
            def __init__(self, operation, bits: int):
                super().__init__(operation, bits)
                built.append((operation.name, bits))
        return Recording

    monkeypatch.setattr(fidelity, "_nudge_hook_class", recording)
    return built


def computing_ops(qm) -> list:
    """The quantized ops of every sub-model that compute (names repeat across sub-models)."""
    from esp_ppq.IR.quantize import QuantableOperation

    return [op for m in qm.modules for op in m.offline_graph.operations.values()
            if isinstance(op, QuantableOperation) and op.type not in EXACT_OPS]


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
@pytest.mark.parametrize("name, dispatched", [("hooks_auto", "/hidden/Conv"),
                                              ("hooks_explicit", "/depthwise/depthwise.0/Conv")])
def test_int16_layers_of_an_int8_model_are_measured_at_one_lsb(tiny, nudged, name, dispatched, target):
    qm = tiny(name, target)
    assert qm.bits == 8
    int16 = {op.name for op in computing_ops(qm) if op.platform.name.endswith("INT16")}
    assert dispatched in int16 and len(int16) < len(computing_ops(qm))
    bound = fidelity_bound(qm, generate_frames(qm))
    assert sorted(nudged) == sorted((op, 16) for op in int16)
    count = f"{len(int16)} int16 operator{'s' if len(int16) != 1 else ''}"
    assert bound.reason.startswith(f"mixed precision: {count} measured at ±1 LSB each"), bound.reason
    assert all(f"module 0 {op}" in bound.reason for op in int16), bound.reason
    assert len(bound.per_module) == len(qm.modules) and all(b >= 1 for b in bound.per_module)
    assert bound.reason.endswith(f"at most {', '.join(map(str, bound.per_module))} LSB on these frames (at least 1 where an int16 op runs)")


def test_a_pure_int8_model_stays_exact_without_measuring(tiny, nudged):
    qm = tiny("tiny_auto")
    bound = fidelity_bound(qm, generate_frames(qm))
    assert bound == fidelity.FidelityBound((0,) * len(qm.modules),
                                           "int8: ESP-DL computes exactly what ESP-PPQ simulates")
    assert nudged == []


def test_a_pure_int16_model_moves_every_computing_op_at_16_bits(tiny, nudged):
    qm = tiny("tiny_auto16")
    bound = fidelity_bound(qm, generate_frames(qm))
    assert nudged == [(op.name, 16) for op in computing_ops(qm)]
    assert bound.reason.startswith(f"int16: ESP-DL allows ±1 LSB per operator; ±1 LSB at each of the "
                                   f"{len(nudged)} computing operators"), bound.reason
    assert all(b >= 1 for b in bound.per_module), bound
