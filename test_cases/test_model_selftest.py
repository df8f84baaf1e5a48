"""``dl::Model::test()`` on the host, for every exported offline model.

ESP-PPQ embeds test inputs and outputs (every tensor) in the offline
``.espdl``; the chip's self-test feeds the inputs and requires exponents to be
equal, int8 exact and int16 within one LSB. The integer engine runs the same
check with the target's arithmetic, operator by operator (each op on
ESP-PPQ's values of its inputs, so int16's ±1 per op does not pile up). An op
may only differ where the lint, from the file alone, names that op as one the
chip computes differently from ESP-PPQ's simulation.
"""

import pytest

from harness.emulator.check import check


def test_embedded_test_values_match_the_chip_arithmetic(hil_model, hil_session, quantized_model):
    qm = quantized_model
    for module in qm.modules:
        model = hil_session.parsed(module.offline_espdl)
        if hil_model.spec.exports is not None and not model.test_outputs:
            pytest.skip(f"{module.offline_espdl} embeds no test values (export it with export_test_values=True)")
        report = check(model, hil_model.target)
        assert report.compared, f"module {module.index}: no embedded test values"
        bad = [r.line() for r in report.unexplained]
        assert not bad, f"module {module.index}: {report.summary}; first unexplained: {bad[0]}"
