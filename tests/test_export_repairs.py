"""A graph input read at another exponent than the file gives it gets its RequantizeLinear.

ESP-PPQ inserts a RequantizeLinear where a reader's quantization differs from
its producer's, but a graph input has no producer: a residual Add aligned to
its output then reads the raw input and the chip adds integers of different
exponents. With the harness's repair the same quantized graph exports with
the requantization, and the chip's own self-test passes end to end.
"""

from __future__ import annotations

from engine_models.fixtures import TARGETS, engine_dir, residual_exports  # noqa: F401
from engine_models.zoo import RESIDUAL, export

from harness.emulator.check import check
from harness.espdl.reader import load_espdl


def test_a_residual_graph_input_is_requantized_for_its_add(residual_exports, engine_dir):
    seed, broken = residual_exports
    for target in TARGETS:
        assert not check(broken[target], target).passed or target == "esp32s3"  # the defect, as ESP-PPQ exports it
        path = export(RESIDUAL, seed, target, 8, engine_dir, suffix="-repaired", repaired=True)
        model = load_espdl(path)
        add = next(n for n in model.nodes if n.op_type == "Add")
        exponents = {model.tensor_info(n).exponents[0] for n in (*add.inputs, *add.outputs)}
        assert len(exponents) == 1, f"{target}: Add operands still at {exponents}"
        requant = [n for n in model.nodes if n.op_type == "RequantizeLinear" and n.inputs[0] == model.inputs[0].name]
        assert requant or target == "esp32s3"
        report = check(path, target)
        assert not [f for f in report.findings if f.kind == "exponent-mismatch"], report.lines()
        # what is left is ESP-PPQ reading the input unrounded (its test values even come from the float input);
        # the lint names that Add, and its difference shrinks from a doubled operand to a rounding
        before = check(broken[target], target).result(add.outputs[0])
        after = report.result(add.outputs[0])
        assert after.max_diff <= max(1, before.max_diff // 4), (before.line(), after.line())
        assert not report.unexplained and (not requant or report.result(add.outputs[0]).excuse.kind == "input-requantized")
