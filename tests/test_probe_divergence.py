"""The first diverging layer (harness/verdict/divergence.py) and the virtual board's PROBE.

The virtual board captures a run's tensors from its engine's own values (every node's output, graph inputs as
fed): for an offline file they are what running the engine directly gives. The locator is checked with planted
faults: a board that flips one bit of one node's output at one window of the streamed run (a streaming bug in that
layer) must be located at that node; without a fault it finds nothing. The fidelity locator likewise finds a fault
planted in the device's offline run, and nothing on a faithful device."""

from __future__ import annotations

import numpy as np
import pytest
import serial

from harness.device import protocol as p
from harness.device.dut import DeviceLink
from harness.emulator.engine import Engine
from harness.emulator.virtual_board import Board
from harness.espdl.reader import load_espdl
from harness.model.frames import generate_frames
from harness.targets import get_target
from harness.verdict.divergence import (common_layers, first_diverging_layer, first_unfaithful_layer, layers,
                                        window_frames)

TARGET = "esp32p4"
W = 3


class LoopbackPort:
    """A pyserial-like port with a ``Board`` behind it in this process (what PtyServer does over a pty)."""

    def __init__(self, board: Board):
        self.board, self.timeout = board, 0.05
        self._rx, self._seq = bytearray(), 0
        self._decoder = p.FrameDecoder(board.max_payload)

    def _send(self, messages, restart: bool = False) -> None:
        for message in messages:
            if isinstance(message, p.Boot):
                self._rx += b"\x00"
                self._seq = 0
            elif restart:
                self._seq, restart = 0, False
            self._rx += p.encode(message, self._seq)
            self._seq = (self._seq + 1) & 0xFFFF

    def boot(self) -> None:
        self._send(self.board.reboot())

    def write(self, data: bytes) -> int:
        for item in self._decoder.feed(data):
            if isinstance(item, p.FrameError):
                self._send(self.board.frame_error(item))
            else:
                self._send(self.board.handle(item), restart=isinstance(item.message, p.Hello))
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self._rx)

    def read(self, n: int = 1) -> bytes:
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out


class FaultyBoard(Board):
    """A virtual board that flips the lowest bit of the last value of node ``node``'s output when module ``module``
    runs window ``window`` with windows of ``frames`` frames (a fault in one layer of one configuration)."""

    fault: tuple[int, int, str, int] | None = None  # (frames per window, module, node, window)

    def _run(self, task, step):
        fault = self.fault
        if fault is None or (self.configure.window, task.module, task.window) != (fault[0], fault[1], fault[3]):
            return super()._run(task, step)
        plan = next(plan for plan in self.modules[task.module].engine._plans if plan.node.name == fault[2])
        original = plan.fn

        def corrupted(*args):
            results = list(original(*args))
            y = results[0].copy()
            y.flat[-1] ^= 1
            results[0] = y
            return results

        plan.fn = corrupted
        try:
            return super()._run(task, step)
        finally:
            plan.fn = original


@pytest.fixture(scope="module")
def model(tiny, quantizer):
    qm = tiny("tiny_auto", TARGET)
    return qm, quantizer.streaming_exports(qm, W), quantizer.offline_exports(qm, qm.spec.sequence_length), \
        generate_frames(qm)


@pytest.fixture
def device():
    board = FaultyBoard(get_target(TARGET))
    port = LoopbackPort(board)
    link = DeviceLink(port, "in-process virtual board")
    port.boot()
    link.wait_boot()
    link.hello()
    return board, link


def test_the_virtual_board_captures_what_the_engine_computes(model, boards):
    """Every tensor of an offline file (graph input and each node's output), probed on the virtual board process,
    equals running the engine directly on the same window; and an unknown name is refused with the closest names."""
    qm, _, offline, frames = model
    export = offline[0]
    espdl = load_espdl(export.path)
    names = [layer.tensor for layer in layers(espdl)]
    assert len(names) > 10
    board = boards(TARGET)
    with serial.serial_for_url(board.port, baudrate=921600, timeout=0.05) as port:
        link = DeviceLink(port, "virtual board", liveness=board.exit_reason)
        board.reset()
        link.wait_boot()
        link.hello()
        t = qm.spec.sequence_length
        link.upload(0, export.path.name, export.path.read_bytes())
        link.configure(p.Configure(t, p.Schedule.SEQUENTIAL, 0, 0, 1, (p.ModuleConfig(
            0, p.Layout.NWC, p.Layout.NWC, export.input, export.output),)))
        sequence = frames.values[1]
        got = link.probe(0, 0, names, lambda: link.stream(sequence, lambda out: None))
        link.reset()  # window 0 again
        with pytest.raises(p.ProtocolError, match=r"module 0: no tensor '/gate/gate\.0/Conv_output' in model "
                                                  r"m0\.espdl; close: /gate/gate\.0/Conv_output_0"):
            link.arm_probe(0, 0, ["/gate/gate.0/Conv_output"])
    engine = Engine(espdl, get_target(TARGET))
    env = engine.run({export.input: sequence[None]}, keep=True)
    assert list(got) == names
    for name in names:
        assert got[name].data.dtype == env[name].dtype and np.array_equal(got[name].data, env[name]), name
        assert got[name].exponent == engine.exponent(name), name


def test_window_frames_cut_the_offline_run_to_a_window():
    # the window itself (3 of 12 frames, time axis 1), window 2: offline frames 6..8
    assert window_frames((1, 3, 16), (1, 12, 16), 3, 2, 12) == (1, 6, 9, 0)
    # a StreamingCache window of 3 + 4 frames: 4 frames of history before the window
    assert window_frames((1, 7, 16), (1, 12, 16), 3, 2, 12) == (1, 2, 9, 0)
    assert window_frames((1, 7, 16), (1, 12, 16), 3, 0, 12) == (1, 0, 3, 4)  # before frame 0: the cache's zeros
    # half the frame rate after a stride of 2, NCW: window 1 of 4 frames ends at frame 4 of 6
    assert window_frames((1, 16, 2), (1, 16, 6), 4, 1, 12) == (2, 2, 4, 0)
    assert isinstance(window_frames((1, 16), (1, 16), 3, 1, 12), str)  # no time axis: not comparable
    assert window_frames((1, 16), (1, 16), 12, 0, 12) == (1, 0, 16, 0)  # unless the window is the sequence
    assert isinstance(window_frames((1, 3, 4), (1, 12, 8), 3, 0, 12), str)  # two axes differ
    assert isinstance(window_frames((1, 1, 16), (1, 5, 16), 3, 0, 12), str)  # window 0 ends mid-frame (3 x 5/12)


def test_the_streaming_and_offline_graphs_share_their_layers(model):
    _, streaming, offline, _ = model
    for k in range(len(streaming)):
        common = common_layers(load_espdl(streaming[k].path), load_espdl(offline[k].path))
        names = [layer.tensor for layer in common]
        assert names[0] == "input" and common[0].op_type == "input" and names[-1] == "output"
        assert not any(n.startswith("PPQ_Variable") for n in names)  # StreamingCache windows have no offline twin


def test_no_fault_no_diverging_layer(model, device):
    _, streaming, offline, frames = model
    board, link = device
    for k in range(len(streaming)):
        assert first_diverging_layer(link, streaming, offline, frames, W, k, 2, sequence=1) is None


@pytest.mark.parametrize("module, node", [(0, "/gate/gate.0/Conv"), (0, "/Add"), (2, "/depthwise/depthwise.0/Conv")])
def test_a_streaming_fault_is_located_at_its_node(model, device, module, node):
    _, streaming, offline, frames = model
    board, link = device
    board.fault = (W, module, node, 2)
    found = first_diverging_layer(link, streaming, offline, frames, W, module, 2, sequence=1)
    assert found is not None, node
    nodes = {n.name: n for n in load_espdl(streaming[module].path).nodes}
    assert (found.node, found.op_type, found.tensor) == (node, nodes[node].op_type, nodes[node].outputs[0])
    assert (found.module, found.window, found.max_diff, found.differing) == (module, 2, 1, 1)
    assert found.compared and node not in found.compared and "input" in found.compared
    assert f"node '{node}'" in found.line() and "\n" not in found.line()
    assert first_diverging_layer(link, streaming, offline, frames, W, module, 1, sequence=1) is None  # window 1 is fine


def test_a_fault_upstream_shows_as_the_modules_input(model, device):
    _, streaming, offline, frames = model
    board, link = device
    board.fault = (W, 1, "/project/Conv", 3)  # module 1's output of window 3 is what module 2 reads
    found = first_diverging_layer(link, streaming, offline, frames, W, 2, 3)
    assert (found.node, found.op_type, found.tensor, found.compared) == ("", "input", "input", ())
    assert "graph input 'input'" in found.line()


def test_fidelity_finds_nothing_on_a_faithful_device_and_the_planted_layer_otherwise(model, device):
    qm, _, offline, frames = model
    board, link = device
    for k in range(len(offline)):
        assert first_unfaithful_layer(link, qm, offline, frames, k) is None, k
    t = qm.spec.sequence_length
    board.fault = (t, 1, "/project/Conv", 0)  # the offline run (one window of t frames) of module 1
    found = first_unfaithful_layer(link, qm, offline, frames, 1)
    assert (found.module, found.node, found.tensor, found.what) == (1, "/project/Conv", "output", "device vs ESP-PPQ")
    assert found.compared == ("input", "/expand/expand.1/Relu_output_0")
