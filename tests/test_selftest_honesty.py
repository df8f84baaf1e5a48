"""The self-test cannot excuse the engine's own errors.

A mismatch is excused only by a lint finding computed from the file alone and
only for the op that finding is about; what the engine observed while running
(its saturation counts) is reported, never an excuse.
"""

from __future__ import annotations

import numpy as np

from harness.emulator import ops
from harness.emulator.ops.conv import build_conv
from engine_models.fixtures import engine_dir, residual_exports  # noqa: F401
from harness.emulator.check import check
from harness.espdl.reader import load_espdl


def _wrong_and_saturated(monkeypatch, victim: str):
    """Plant an engine whose ``victim`` conv adds 1 to its result and reports one saturation."""
    build = build_conv

    def planted(eng, node):
        plan = build(eng, node)
        if node.name != victim:
            return plan
        fn = plan.fn
        plan.fn = lambda *args: [np.clip(y.astype(np.int64) + 1, -128, 127).astype(y.dtype) for y in fn(*args)]
        plan.saturations = lambda: 1
        return plan

    monkeypatch.setitem(ops.BUILDERS, "Conv", planted)


def test_a_wrong_result_with_a_reported_saturation_fails_the_self_test(tiny, monkeypatch):
    path = tiny("tiny_auto", "esp32s3").modules[0].offline_espdl
    assert not check(path, "esp32s3").unexplained  # the honest engine passes
    model = load_espdl(path)
    conv = next(n for n in model.nodes if n.op_type == "Conv")
    _wrong_and_saturated(monkeypatch, conv.name)
    report = check(path, "esp32s3")
    assert report.saturated == {conv.name: 1}  # reported ...
    assert conv.outputs[0] in {r.name for r in report.unexplained}  # ... and no excuse
    assert any("saturated its 20-bit accumulator" in line for line in report.lines())


def test_a_finding_excuses_only_its_own_op(residual_exports):
    """The exponent-mismatch Add differs; fed ESP-PPQ's values, everything after it matches again."""
    _, paths = residual_exports
    report = check(paths["esp32p4"], "esp32p4")
    excused = [r for r in report.compared if r.op is not None and r.op.verdict == "MISMATCH"]
    assert excused and all(r.excuse is not None and r.excuse.kind == "exponent-mismatch" for r in excused)
    assert not report.unexplained
