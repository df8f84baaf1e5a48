"""User-style models nobody here wrote the harness for: every one streams exactly on both chips.

``tests/zoo/`` holds small models as users write them (residual blocks fed by
the sub-model input, BatchNorm before the activation, Hardswish/ReLU6/Sigmoid/
Tanh, kernels 5-7, dilations up to 8, gated WaveNet units, classifier heads,
sub-models without state; auto and explicit streaming, int8 and int16). Each
is quantized for each target and run on a virtual board: the offline export
as one window must be within ESP-DL's contract of ESP-PPQ's simulation
(fidelity), and the streaming export at W = 1, an odd W and the largest
divisor below the sequence length must equal that offline run bit for bit
(streaming exactness); the host check and the per-operator self-test agree.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from harness.verdict.compare import fidelity_verdict, streaming_verdict
from harness.device.dut import stream_pipeline
from harness.emulator.check import check
from harness.ppq.fidelity import fidelity_bound
from harness.model.frames import generate_frames
from harness.plugin.boards import open_virtual_board
from harness.ppq.reference import offline_reference
from harness.model.spec import load_spec
from harness.ppq.streaming import offline_on_host, stream_on_host
from harness.targets import get_target

ZOO = sorted(p for p in (Path(__file__).parent / "zoo").glob("*.py") if p.name != "blocks.py")


def windows_for(length: int) -> list[int]:
    """W = 1, the smallest odd divisor above 1 (if any) and the largest divisor below the length."""
    divisors = [d for d in range(2, length) if length % d == 0]
    odd = [d for d in divisors if d % 2]
    return sorted({1, *(odd[:1]), *(divisors[-1:])})


def test_the_zoo_covers_what_users_write():
    specs = [load_spec(p) for p in ZOO]
    assert len(specs) >= 6
    assert {s.streaming for s in specs} == {"auto", "explicit"} and {s.bits for s in specs} == {8, 16}
    text = "\n".join(p.read_text() for p in [*ZOO, Path(__file__).parent / "zoo" / "blocks.py"])
    for feature in ("Hardswish", "ReLU6", "Sigmoid", "Tanh", "BatchNorm1d", "dilation"):
        assert feature.lower() in text.lower(), feature


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
@pytest.mark.parametrize("path", ZOO, ids=lambda p: p.stem)
def test_zoo_model_streams_exactly_and_within_the_contract(quantizer, boards, path, target):
    spec = load_spec(path)
    qm = quantizer.model(spec, get_target(target))
    frames = generate_frames(qm)
    t = frames.sequence_length
    bound = fidelity_bound(qm, frames)
    for module in qm.modules:
        report = check(module.offline_espdl, target)
        assert not report.unexplained, report.lines()
    host_offline = offline_on_host(qm, frames)
    with open_virtual_board(boards(target)) as link:
        offline = stream_pipeline(link, quantizer.offline_exports(qm, t), frames, t)
        fidelity = fidelity_verdict(offline_reference(qm, frames), offline.outputs, bound.per_module, bound.reason)
        assert fidelity.passed, fidelity.summary()
        for w in windows_for(t):
            exports = quantizer.streaming_exports(qm, w)
            streamed = stream_pipeline(link, exports, frames, w)
            verdict = streaming_verdict(offline.outputs, streamed.outputs, w, qm.tolerance_lsb)
            assert verdict.passed and qm.tolerance_lsb == 0, f"W={w}: {verdict.summary()}"
            host = streaming_verdict(host_offline, stream_on_host(qm, frames, w, exports), w, 0)
            assert host.passed, f"host, W={w}: {host.summary()}"
