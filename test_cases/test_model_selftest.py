"""``dl::Model::test()`` on the host, for every exported offline model.

ESP-PPQ embeds test inputs and outputs (every tensor) in the offline
``.espdl``; the chip's self-test feeds the inputs and requires exponents to be
equal, int8 exact and int16 within one LSB. The integer engine runs the same
check with the target's arithmetic. A tensor may only differ where the lint
names a place the chip computes differently from ESP-PPQ's simulation.
"""

from harness.emulator import MATCH, check


def test_embedded_test_values_match_the_chip_arithmetic(hil_model, hil_session):
    qm = hil_session.quantizer.model(hil_model.spec, hil_model.target)
    for module in qm.modules:
        report = check(module.offline_espdl, hil_model.target)
        unexplained = [r.name for r in report.compared if r.verdict != MATCH and r.name not in report.attributed]
        assert report.compared, f"module {module.index}: no embedded test values"
        assert not unexplained, f"module {module.index}: {report.summary}; first diverging: {report.first_divergence}"
