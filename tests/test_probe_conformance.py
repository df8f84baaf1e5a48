"""PROBE/TENSOR conformance (docs/protocol.md 0x0A, 0x87, section 7.8) of both runner implementations: the virtual
board and the firmware's portable core built for the host (``runner_host``, param ``host-core``), with the
conformance suite's own runners and models (tests/test_runner_conformance.py).

Both runners' models have graph tensors ``input`` and ``output``, so the same checks run on both: which run is
captured, what a graph input and an output hold, where the TENSORs go in the stream, the refusals and their texts,
what discards a probe, parts, and that a probed stream is the unprobed one."""

from __future__ import annotations

import dataclasses
import struct
import zlib

import numpy as np
import pytest

from harness.device import protocol as p
from harness.device.dut import DeviceError
from harness.targets import get_target
from tests.test_firmware_core import (host_build, host_runner, input_frames, load,  # noqa: F401 - fixtures
                                      pipeline_models)
from tests.test_runner_conformance import (TARGET, cobs_frame, host_runner_parts, load_into,  # noqa: F401
                                           runner, stream_collect, twin_device, virtual_runner_parts)


def _in_layout(array_wc: np.ndarray, layout: p.Layout) -> np.ndarray:
    """A window [W, C] as the on-chip [1, W, C] (NWC) or [1, C, W] (NCW) tensor."""
    return (array_wc if layout == p.Layout.NWC else array_wc.T)[None]


def _refused(call, code: p.ErrorCode, text: str) -> None:
    """``call()`` is answered with ERROR ``code`` referencing PROBE, whose text is exactly ``text``."""
    with pytest.raises(DeviceError) as e:
        call()
    assert e.value.code == code and " to PROBE seq " in e.value.cause, e.value.cause
    assert e.value.cause.endswith(f": {text}"), e.value.cause


def _spy(link) -> list[p.Tensor]:
    """Every TENSOR the link takes in, as it arrives (parts too)."""
    seen: list[p.Tensor] = []
    take = link._take_tensor

    def spying(t: p.Tensor) -> None:
        seen.append(t)
        take(t)

    link._take_tensor = spying
    return seen


@pytest.mark.parametrize("module", [0, 1])
def test_a_probe_captures_the_run_of_its_window(runner, module):
    """PROBE(k, 2) with W = 3: module 0's `input` is frames 6..8 in its input layout; module 1's is module 0's output
    of window 2 handed over (requantized to its exponent); `output` is what OUTPUT carries for that run."""
    runner.load(3)  # every module reports its OUTPUT
    modules = runner.modules(3)
    acks = runner.link.configure(p.Configure(3, p.Schedule.ROUND_ROBIN, p.CONFIGURE_FLAG_ALL_OUTPUTS, 0, 1, tuple(
        dataclasses.replace(c, slot=slot) for slot, (_, _, c) in enumerate(modules))))
    frames = runner.frames(12, seed=2)
    outputs: list[p.Output] = []
    got = runner.link.probe(module, 2, ["input", "output"], lambda: runner.link.stream(frames, outputs.append))
    assert list(got) == ["input", "output"]
    of = {(o.module, o.window): o for o in outputs}
    config = modules[module][2]
    if module == 0:
        expected_input = frames[6:9]
    else:  # the hand-over of module 0's output (protocol.md 7.1)
        previous = of[(0, 2)].array()
        shift = acks[1].input_exponent - acks[0].output_exponent
        expected_input = get_target(TARGET).requantize(previous, shift, acks[1].bits)
    assert got["input"].exponent == acks[module].input_exponent
    assert got["input"].data.dtype == expected_input.dtype
    assert np.array_equal(got["input"].data, _in_layout(expected_input, config.input_layout))
    out = of[(module, 2)]
    assert got["output"].exponent == out.exponent and got["output"].data.dtype == out.array().dtype
    assert np.array_equal(got["output"].data, _in_layout(out.array(), config.output_layout))


def test_tensors_come_right_after_their_run_before_its_output_and_credit(runner):
    runner.load(3)
    link = runner.link
    link.reset()
    link.arm_probe(0, 2, ["output", "input"])
    link.send(p.Frames.from_array(0, runner.frames(9, seed=5)))
    packets = []
    while not packets or not isinstance(packets[-1], p.Credit):
        packets.append(link.receive().message)
    tensors = [i for i, m in enumerate(packets) if isinstance(m, p.Tensor)]
    assert tensors == [tensors[0], tensors[0] + 1], packets  # one after the other, nothing between
    first, second = packets[tensors[0]], packets[tensors[1]]
    assert [(t.index, t.name) for t in (first, second)] == [(0, "output"), (1, "input")]  # in PROBE's order
    after = packets[tensors[1] + 1]
    assert isinstance(after, p.Output) and (after.module, after.window) == (0, 2)  # that run's OUTPUT comes next
    assert first.step == second.step == after.step == 8  # round-robin, W = 3: module 0 runs window 2 at step 8
    assert all(not (isinstance(m, p.Output) and m.step > 8) for m in packets[:tensors[0]])
    link.hello()


def test_probes_the_device_refuses(runner):
    link = runner.link
    _refused(lambda: link.request(p.Probe(0, 0, ("input",))), p.ErrorCode.NOT_CONFIGURED, "PROBE before CONFIGURE")
    link.hello()
    n = runner.load(3)
    _refused(lambda: link.request(p.Probe(n, 0, ("input",))), p.ErrorCode.BAD_CONFIG,
             f"module {n}: the configuration has {n} modules")
    link.hello()
    link.stream(runner.frames(6), lambda out: None)
    link.reset()  # runs count from here
    link.stream(runner.frames(6), lambda out: None)  # every module ran windows 0 and 1
    _refused(lambda: link.request(p.Probe(1, 1, ("input",))), p.ErrorCode.BAD_CONFIG,
             "module 1 has already run window 1 (2 runs since RESET): arm a probe before its window runs")
    link.hello()
    with pytest.raises(DeviceError) as e:
        link.request(p.Probe(0, 5, ("input", "nope")))
    assert e.value.code == p.ErrorCode.BAD_CONFIG and ": module 0: no tensor 'nope' in model " in e.value.cause
    link.hello()
    # a PROBE that fails leaves nothing armed, not even the probe armed before it
    link.arm_probe(0, 3, ["input"])
    with pytest.raises(p.ProtocolError, match="no tensor 'nope'"):
        link.arm_probe(0, 3, ["nope"])
    link.hello()
    link.stream(runner.frames(6), lambda out: None, first_frame=6)  # a TENSOR now would be one nobody asked for
    # a PROBE without names is a payload error, answered BAD_PAYLOAD referencing it
    payload = struct.pack("<BIB", 0, 9, 0)
    seq = link._tx_seq
    head = bytes([p.MessageType.PROBE]) + struct.pack("<HH", seq, len(payload)) + payload
    link.port.write(cobs_frame(head + struct.pack("<I", zlib.crc32(head))))
    link._tx_seq += 1
    reply = link.receive().message
    assert (reply.code, reply.ref_type, reply.ref_seq) == (p.ErrorCode.BAD_PAYLOAD, p.MessageType.PROBE, seq)
    # TENSOR is a device-to-host type
    link.send(p.Tensor.from_array(0, 0, 0, 0, "x", np.zeros(2, dtype=np.int8)))
    reply = link.receive().message
    assert (reply.code, reply.ref_type) == (p.ErrorCode.UNKNOWN_MESSAGE, p.MessageType.TENSOR)


def test_reset_discards_a_probe_hello_keeps_it_and_a_new_one_replaces_it(runner):
    runner.load(3)
    link = runner.link
    frames = runner.frames(9, seed=1)
    link.arm_probe(0, 1, ["input"])
    link.reset()  # the device forgets it: a TENSOR of it would fail the stream below (no armed probe asked)
    link.stream(frames, lambda out: None)
    with pytest.raises(p.ProtocolError, match="no probe is armed"):
        link.probed()
    link.reset()
    link.arm_probe(0, 1, ["input"])
    link.arm_probe(0, 2, ["output"])  # replaces the first
    link.hello()  # keeps it
    spied = _spy(link)
    link.stream(frames, lambda out: None)
    got = link.probed()
    assert list(got) == ["output"] and [(t.window, t.name) for t in spied] == [(2, "output")]
    link.reset()
    link.arm_probe(2, 5, ["input"])  # a run that never comes: the host says so in one line
    link.stream(frames, lambda out: None)
    with pytest.raises(p.ProtocolError, match=r"sent 0 of 1 tensors of the probe of module 2, window 5: that run "
                                              r"never happened; stream at least 6 windows"):
        link.probed()


def _without_wall_time(outputs: list[p.Output]) -> list:
    return [(o.window, o.windows, o.module, o.step, o.exponent, [t.cycles for t in o.timings], o.data) for o in outputs]


def test_a_probed_stream_is_the_unprobed_stream(runner):
    runner.load(3)
    frames = runner.frames(15, seed=9)
    plain = stream_collect(runner, frames)
    runner.link.reset()
    probed: list[p.Output] = []
    runner.link.probe(1, 3, ["input", "output"], lambda: runner.link.stream(frames, probed.append))
    assert _without_wall_time(probed) == _without_wall_time(plain)
    runner.link.reset()
    assert _without_wall_time(stream_collect(runner, frames)) == _without_wall_time(plain)  # and nothing lingers


def test_a_tensor_too_large_for_one_tensor_message_arrives_in_parts(runner, tmp_path):
    """Module 0's input of the large pipeline (1200 or 1400 frames x 8 int8 channels) at max_payload 4096: parts of
    max_elements_per_tensor elements, in element order, each with the whole tensor's header; joined they are the
    frames, and what a device of max_payload 65535 sends in one TENSOR."""
    window, modules = runner.large(p.Layout.NWC)
    runner.load(window, output_batch=1, modules=modules)
    frames = runner.frames(window, seed=4)
    spied = _spy(runner.link)
    got = runner.link.probe(0, 0, ["input", "output"], lambda: runner.link.stream(frames, lambda out: None))
    assert np.array_equal(got["input"].data, frames[None])
    for index, name in enumerate(["input", "output"]):
        mine = [t for t in spied if t.name == name]
        bits = mine[0].bits
        ranges = p.tensor_ranges(p.DEFAULT_MAX_PAYLOAD, mine[0].shape, name, bits)
        assert len(ranges) >= 3 and [(t.first_element, t.count) for t in mine] == ranges
        assert {(t.index, t.step, t.shape, t.exponent) for t in mine} == {(index, mine[0].step, mine[0].shape,
                                                                           mine[0].exponent)}
        assert max(len(t.pack()) for t in mine) <= p.DEFAULT_MAX_PAYLOAD
    with twin_device(runner, tmp_path) as wide:  # max_payload 65535: every tensor in one TENSOR
        load_into(wide, window, modules, flags=0, output_batch=1)
        whole = _spy(wide)
        again = wide.probe(0, 0, ["input", "output"], lambda: wide.stream(frames, lambda out: None))
        assert [t.is_part for t in whole] == [False, False]
        for name in got:
            assert np.array_equal(again[name].data, got[name].data) and again[name].exponent == got[name].exponent


def test_host_core_caches_are_captured_before_and_after_the_run(host_build, tmp_path):
    """runner_host's four HCM1 tensors: the cache as the run reads it and as the run leaves it (README.md,
    "Probes"), against the documented function."""
    models, layouts = pipeline_models()
    frames = input_frames(12, models[0].cin, 8, seed=3)
    with host_runner(host_build, TARGET, tmp_path / "runner.log") as (_, link):
        load(link, models, layouts, 3)
        link.reset()
        got = link.probe(0, 2, ["cache", "input", "cache_out", "output"], lambda: link.stream(frames, lambda o: None))
    history = np.zeros((models[0].context, models[0].cin), dtype=np.int64)
    for j in range(3):
        before = history
        y, history = models[0].run(frames[3 * j:3 * j + 3], history, TARGET, runs=j)
    assert np.array_equal(got["cache"].data, before[None]) and got["cache"].exponent == models[0].ein
    assert np.array_equal(got["cache_out"].data, history[None])
    assert np.array_equal(got["output"].data, y.T[None])  # module 0's output layout is NCW
    assert np.array_equal(got["input"].data, frames[6:9][None])
