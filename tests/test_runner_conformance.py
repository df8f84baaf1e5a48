"""Protocol conformance of a streaming runner, per docs/protocol.md.

Every runner implementation is held to the same behaviour here: framing and
CRC rejection, resynchronisation after garbage, version negotiation, request
errors, credits, the schedule (steps of every module run), backlog, batching,
reset and disconnects. Values are checked elsewhere (the device cases compare
them with the offline reference); here only protocol behaviour counts.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pytest
import serial

from harness import protocol as p
from harness.dut import DeviceError, DeviceLink
from harness.scheduler import plan_schedule

TARGET = "esp32p4"


@dataclass
class Runner:
    """A runner under test, connected, booted and greeted."""

    name: str
    link: DeviceLink
    press_reset: Callable[[], None]  # the EN pin
    kill: Callable[[], None]
    modules: Callable[[int], list[tuple[str, bytes, p.ModuleConfig]]]  # per window: (name, blob, config)
    channels: int

    def reboot(self) -> p.Info:
        self.press_reset()
        self.link.wait_boot()
        return self.link.hello()

    def load(self, window: int, schedule=p.Schedule.ROUND_ROBIN, flags=p.CONFIGURE_FLAG_ALL_OUTPUTS,
             queue_depth: int = 0, output_batch: int = 1) -> int:
        modules = self.modules(window)
        for slot, (name, blob, _) in enumerate(modules):
            self.link.upload(slot, name, blob)
        configs = tuple(dataclasses.replace(c, slot=slot) for slot, (_, _, c) in enumerate(modules))
        self.link.configure(p.Configure(window=window, schedule=schedule, flags=flags, queue_depth=queue_depth,
                                        output_batch=output_batch, modules=configs))
        return len(modules)

    def frames(self, count: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(-128, 128, (count, self.channels), dtype=np.int8)


@pytest.fixture(scope="module")
def virtual_runner_parts(tmp_path_factory, tiny, quantizer):
    from harness.virtual_board import VirtualBoard

    qm = tiny("tiny_auto", TARGET)
    board = VirtualBoard(TARGET, tmp_path_factory.mktemp("vb") / "board.log").start()

    def modules(window: int):
        return [
            (e.path.name, e.path.read_bytes(),
             p.ModuleConfig(0, p.Layout[e.layouts["input"]], p.Layout[e.layouts["output"]], e.input, e.output, "", ""))
            for e in quantizer.streaming_exports(qm, window)
        ]

    yield board, modules, qm.spec.channels
    board.stop()


@pytest.fixture(scope="module")
def host_runner_parts(tmp_path_factory):
    """The firmware's portable core built for the host (firmware/host), with its deterministic HCM1 backend."""
    from harness.virtual_board import VirtualBoard
    from tests.test_firmware_core import CHANNELS, hcm1_pipeline, host_build_dir

    runner_host = host_build_dir(tmp_path_factory) / "runner_host"
    board = VirtualBoard(TARGET, tmp_path_factory.mktemp("host-core") / "runner.log",
                         command=[str(runner_host), "--target", TARGET]).start()
    yield board, hcm1_pipeline, CHANNELS
    board.stop()


RUNNERS = {"virtual": ("virtual_runner_parts", f"virtual {TARGET} board"),
           "host-core": ("host_runner_parts", f"host-core {TARGET} runner")}


@pytest.fixture(params=list(RUNNERS))
def runner(request):
    parts, device = RUNNERS[request.param]
    board, modules, channels = request.getfixturevalue(parts)
    if board.exit_reason():  # a test killed it: power it up again
        board.start()
    port = serial.serial_for_url(board.port, baudrate=921600, timeout=0.05)
    link = DeviceLink(port, device, liveness=board.exit_reason)
    r = Runner(request.param, link, board.reset, board.kill, modules, channels)
    r.reboot()
    yield r
    port.close()


def stream_collect(runner: Runner, frames: np.ndarray, first_frame: int = 0) -> list[p.Output]:
    outputs: list[p.Output] = []
    runner.link.stream(frames, outputs.append, first_frame)
    return outputs


def test_boot_banner_then_hello_gives_info(runner):
    info = runner.reboot()
    assert (info.version, info.target, info.device_kind) == (1, TARGET, runner.name)
    assert info.credits > 0 and info.max_payload >= 256 and info.build_id


def test_version_negotiation(runner):
    runner.link.send(p.Hello(2, 5))
    reply = runner.link.receive().message
    assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.VERSION_UNSUPPORTED and "1" in reply.text
    assert runner.link.hello().version == 1


def test_requests_before_hello_are_refused(runner):
    runner.press_reset()
    runner.link.wait_boot()
    with pytest.raises(DeviceError, match="NOT_CONFIGURED"):
        runner.link.reset()


def test_corrupted_frame_is_an_error_never_a_value_and_the_link_recovers(runner):
    runner.load(3)
    wire = bytearray(p.encode(p.Reset(), 99))
    wire[3] ^= 0x10  # one flipped bit inside the body
    runner.link.port.write(bytes(wire))
    reply = runner.link.receive().message
    assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.BAD_FRAME and reply.ref_seq == 0xFFFF
    runner.link.reset()  # the next good frame is served


def test_garbage_between_frames_costs_only_the_garbage(runner):
    runner.load(3)
    noise = np.random.default_rng(1).integers(1, 256, 300, dtype=np.uint8).tobytes()  # no 0x00 inside
    runner.link.port.write(noise + b"\x00")
    reply = runner.link.receive().message
    assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.BAD_FRAME
    outputs = stream_collect(runner, runner.frames(6))
    assert {o.window for o in outputs} == {0, 1}


def test_upload_is_checked(runner):
    name, blob, _ = runner.modules(3)[0]
    runner.link.request(p.ModelBegin(0, len(blob), hashlib.sha256(blob).digest(), name))
    damaged = blob[:-1] + bytes([blob[-1] ^ 1])
    chunk = p.max_chunk_size(runner.link.max_payload)
    for offset in range(0, len(damaged), chunk):
        runner.link.request(p.ModelChunk(0, offset, damaged[offset : offset + chunk]))
    with pytest.raises(DeviceError, match="MODEL_SHA_MISMATCH"):
        runner.link.request(p.ModelEnd(0))
    runner.link.request(p.ModelBegin(0, len(blob), hashlib.sha256(blob).digest(), name))
    with pytest.raises(DeviceError, match="BAD_PAYLOAD"):
        runner.link.request(p.ModelChunk(0, 16, blob[16:32]))  # not contiguous


def test_bad_configuration_and_frames_before_it(runner):
    with pytest.raises(DeviceError, match="NOT_CONFIGURED"):
        runner.link.stream(runner.frames(3), lambda out: None)
    runner.link.hello()  # after an error the host starts over (protocol.md section 8)
    name, blob, config = runner.modules(3)[0]
    runner.link.upload(0, name, blob)
    wrong = dataclasses.replace(config, input="no_such_tensor")
    with pytest.raises(DeviceError, match="BAD_CONFIG.*no_such_tensor"):
        runner.link.configure(p.Configure(3, p.Schedule.SEQUENTIAL, 0, 0, 1, (wrong,)))


def test_reset_before_configure_and_empty_frames_are_refused(runner):
    with pytest.raises(DeviceError, match="NOT_CONFIGURED"):
        runner.link.reset()
    runner.link.hello()
    runner.load(3)
    runner.link.send(p.Frames(0, 0, runner.channels, b""))
    reply = runner.link.receive().message
    assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.BAD_PAYLOAD
    assert runner.link.receive().message == p.Credit(0)


def test_frames_out_of_order_and_credit_overrun(runner):
    runner.load(3)
    runner.link.send(p.Frames.from_array(5, runner.frames(3)))
    reply = runner.link.receive().message
    assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.FRAME_OUT_OF_ORDER
    assert isinstance(runner.link.receive().message, p.Credit)  # refused frames are credited back
    too_many = runner.link.info.credits + 1
    runner.link.send(p.Frames.from_array(0, runner.frames(too_many)))
    reply = runner.link.receive().message
    assert isinstance(reply, p.Error) and reply.code == p.ErrorCode.CREDIT_EXCEEDED


@pytest.mark.parametrize("window", [1, 2, 3, 4])
@pytest.mark.parametrize("schedule", [p.Schedule.ROUND_ROBIN, p.Schedule.SEQUENTIAL])
def test_every_module_runs_at_the_step_the_spec_says(runner, window, schedule):
    frames = 12
    n = runner.load(window, schedule, queue_depth=frames)
    outputs = stream_collect(runner, runner.frames(frames))
    plan = plan_schedule(n, window, schedule, frames, queue_depth=frames, flush=True)
    assert sorted((o.window, o.module, o.step) for o in outputs) == sorted((r.window, r.module, r.step) for r in plan.runs)
    assert runner.link.credits == runner.link.info.credits  # every frame credited back


def test_backlog_stops_the_stream_until_reset(runner):
    n = runner.load(1, p.Schedule.ROUND_ROBIN, flags=0, queue_depth=2)
    plan = plan_schedule(n, 1, p.Schedule.ROUND_ROBIN, 20, queue_depth=2)
    with pytest.raises(DeviceError, match="BACKLOG_FULL"):
        stream_collect(runner, runner.frames(20))
    runner.link.hello()
    with pytest.raises(DeviceError, match="BACKLOG_FULL"):  # still stopped
        runner.link.stream(runner.frames(1), lambda out: None, first_frame=plan.backlog_full_step + 1)
    runner.link.hello()
    runner.link.reset()
    assert len(stream_collect(runner, runner.frames(2))) == 2


def test_outputs_are_batched_as_configured(runner):
    runner.load(1, p.Schedule.SEQUENTIAL, flags=0, output_batch=4)
    outputs = stream_collect(runner, runner.frames(10))
    assert [(o.window, o.windows) for o in outputs] == [(0, 4), (4, 4), (8, 2)]  # the last two at FLUSH
    assert all(len(o.timings) == 3 for o in outputs)
    unbatched = runner.load(1, p.Schedule.SEQUENTIAL, flags=0) and stream_collect(runner, runner.frames(10))
    assert np.array_equal(np.concatenate([o.array() for o in outputs]), np.concatenate([o.array() for o in unbatched]))


def test_reset_restarts_the_stream_exactly(runner):
    runner.load(3)
    frames = runner.frames(9, seed=4)
    first = stream_collect(runner, frames)
    stream_collect(runner, runner.frames(9, seed=5), first_frame=9)  # state moves on
    runner.link.reset()
    again = stream_collect(runner, frames)
    assert [(o.window, o.module, o.step, o.data) for o in first] == [(o.window, o.module, o.step, o.data) for o in again]


def test_nothing_unframed_reaches_the_host(runner):
    runner.load(3)
    stream_collect(runner, runner.frames(9))
    assert runner.link.stats.garbage_bytes == 0 and runner.link._decoder.frames_bad == 0


def test_device_death_mid_stream_is_a_clear_error_in_bounded_time(runner):
    runner.load(3)
    started = time.monotonic()

    def die(out: p.Output) -> None:
        runner.kill()

    with pytest.raises(p.ProtocolError, match="disconnected.*exited with code") as info:
        runner.link.stream(runner.frames(60), die)
    assert time.monotonic() - started < 15  # a bound on the failure, not a speed goal: it must not hang
    assert "\n" not in str(info.value)
