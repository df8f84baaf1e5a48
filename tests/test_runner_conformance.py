"""Protocol conformance of a streaming runner, per docs/protocol.md.

Every runner implementation is held to the same behaviour here: framing and
CRC rejection, resynchronisation after garbage, version negotiation, request
errors, credits, the schedule (steps of every module run), backlog, batching,
OUTPUT parts of windows too large for one message, per-window outputs of the last module (fewer frames than the
window, FLAT), reset and disconnects. Values are checked elsewhere (the device cases compare
them with the offline reference); here only protocol behaviour counts, and the values of per-window outputs
(their frames and their elements' order).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import re
import struct
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import serial

from harness.device import protocol as p
from harness.device.dut import DeviceError, DeviceLink, run_sequences
from harness.model.frames import Frames
from harness.emulator.scheduler import plan_schedule

TARGET = "esp32p4"
DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"

Module = tuple[str, bytes, p.ModuleConfig]  # (name, blob, config) of one module

# The per-window pipelines (protocol.md section 5, the output of a window): a body that keeps the window's W frames
# of CHANNELS channels, then a head. NWC/NCW heads keep the last HEAD_FRAMES frames of HEAD_CHANNELS int8 channels
# ([1, F, C] / [1, C, F]); FLAT heads give FLAT_ELEMENTS int8 values per window, as a rank-2 ("FLAT") or a rank-4
# ("FLAT4") tensor. Sized so that one window's output fits an OUTPUT of 4096 bytes but not of 256 (parts, or
# BAD_CONFIG for FLAT), and so that output batches sized by W instead of F would be far smaller.
HEAD_WINDOW, HEAD_FRAMES, HEAD_CHANNELS, FLAT_ELEMENTS, CHANNELS = 6, 2, 120, 240, 8
HEAD_KINDS = ("NWC", "NCW", "FLAT", "FLAT4")


@dataclass
class Heads:
    """A runner's models for per-window outputs, W = HEAD_WINDOW."""

    body: Module  # NWC in and out, W frames
    heads: dict[str, Module]  # HEAD_KINDS -> the head, input NWC W x CHANNELS, output in the kind's layout
    # kind -> (one window of input frames [W, CHANNELS] for the head alone, the Output.array() it must give)
    values: Callable[[str], tuple[np.ndarray, np.ndarray]]

    def pipeline(self, kind: str, layout: p.Layout | None = None) -> list[Module]:
        """[body, head of ``kind``], the head's output_layout replaced by ``layout`` if given."""
        name, blob, config = self.heads[kind]
        config = config if layout is None else dataclasses.replace(config, output_layout=layout)
        return [self.body, (name, blob, config)]


@dataclass
class Runner:
    """A runner under test, connected, booted and greeted."""

    name: str
    link: DeviceLink
    press_reset: Callable[[], None]  # the EN pin
    kill: Callable[[], None]
    modules: Callable[[int], list[tuple[str, bytes, p.ModuleConfig]]]  # per window: (name, blob, config)
    channels: int
    # (window, modules) of a pipeline whose every module's window needs >= 3 OUTPUT parts at max_payload 4096,
    # the last module's output in the given layout; None: the runner's models have no such output
    large: Callable[[p.Layout], tuple[int, list[tuple[str, bytes, p.ModuleConfig]]] | None]
    command: list[str] | None  # the device process (None: the virtual board), for a twin with another max_payload
    heads: Callable[[], Heads]  # built on first use

    def reboot(self) -> p.Info:
        self.press_reset()
        self.link.wait_boot()
        return self.link.hello()

    def load(self, window: int, schedule=p.Schedule.ROUND_ROBIN, flags=p.CONFIGURE_FLAG_ALL_OUTPUTS,
             queue_depth: int = 0, output_batch: int = 1, modules=None) -> int:
        return load_into(self.link, window, modules or self.modules(window), schedule, flags, queue_depth,
                         output_batch)

    def frames(self, count: int, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(-128, 128, (count, self.channels), dtype=np.int8)


def load_into(link: DeviceLink, window: int, modules, schedule=p.Schedule.ROUND_ROBIN,
              flags=p.CONFIGURE_FLAG_ALL_OUTPUTS, queue_depth: int = 0, output_batch: int = 1) -> int:
    for slot, (name, blob, _) in enumerate(modules):
        link.upload(slot, name, blob)
    configs = tuple(dataclasses.replace(c, slot=slot) for slot, (_, _, c) in enumerate(modules))
    link.configure(p.Configure(window=window, schedule=schedule, flags=flags, queue_depth=queue_depth,
                               output_batch=output_batch, modules=configs))
    return len(modules)


@pytest.fixture(scope="module")
def virtual_runner_parts(tmp_path_factory, tiny, quantizer):
    from harness.emulator.virtual_board import VirtualBoard

    qm = tiny("tiny_auto", TARGET)
    board = VirtualBoard(TARGET, tmp_path_factory.mktemp("vb") / "board.log").start()

    def blobs(exports):
        return [
            (e.path.name, e.path.read_bytes(),
             p.ModuleConfig(0, p.Layout[e.layouts["input"]], p.Layout[e.layouts["output"]], e.input, e.output, "", ""))
            for e in exports
        ]

    def modules(window: int):
        return blobs(quantizer.streaming_exports(qm, window))

    def large(layout: p.Layout):
        # the offline (cache-free) exports run any window: 1200 frames x 8 int8 channels = 9600 bytes per module,
        # 3 parts of at most 507 frames each; esp-ppq exports these models' outputs in NWC only
        window = 1200
        modules = blobs(quantizer.offline_exports(qm, window))
        return (window, modules) if modules[-1][2].output_layout == layout else None

    yield board, modules, qm.spec.channels, large, None, functools.cache(
        lambda: virtual_heads(tmp_path_factory.mktemp("heads")))
    board.stop()


def virtual_heads(directory: Path) -> Heads:
    """esp-ppq exports (like tests/engine_models) of a conv body and of heads that end like users' models: a slice
    of the last frames, a Gemm after Slice and Flatten (ESP-DL's streaming tutorial), a reshape to rank 4. Each is
    exported with ESP-PPQ's test values, what ESP-DL itself checks a model against: the head alone on its test
    input must give them, in the tensor's memory order."""
    import torch
    from torch import nn

    from engine_models.zoo import Spec, export
    from harness.espdl.reader import load_espdl

    w, f, c, wide = HEAD_WINDOW, HEAD_FRAMES, CHANNELS, HEAD_CHANNELS

    class Body(nn.Module):  # Conv1d: esp-ppq puts it on chip as NWC [1, W, C] in and out
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv1d(c, c, 1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    class LastFrames(nn.Module):  # [1, W, C] -> [1, F, wide] (NWC) or [1, wide, F] (NCW)
        def __init__(self, ncw: bool):
            super().__init__()
            self.dense, self.ncw = nn.Linear(c, wide), ncw

        def forward(self, x):
            y = self.dense(x)
            return y.transpose(1, 2)[:, :, -f:] if self.ncw else y[:, -f:, :]

    class Classifier(nn.Module):  # conv, the last F frames, Flatten, Gemm: [1, FLAT_ELEMENTS]
        def __init__(self):
            super().__init__()
            self.conv, self.dense = nn.Conv1d(c, 16, 1), nn.Linear(16 * f, FLAT_ELEMENTS)

        def forward(self, x):
            return self.dense(torch.flatten(torch.relu(self.conv(x))[:, :, -f:], 1))

    class Rank4(nn.Module):  # the last F frames reshaped to [1, F, 2, wide / 2]
        def __init__(self):
            super().__init__()
            self.dense = nn.Linear(c, wide)

        def forward(self, x):
            return self.dense(x)[:, -f:, :].reshape(1, f, 2, wide // 2)

    specs = {"body": Spec("body", Body, (1, c, w)), "NWC": Spec("head-nwc", lambda: LastFrames(False), (1, w, c)),
             "NCW": Spec("head-ncw", lambda: LastFrames(True), (1, w, c)),
             "FLAT": Spec("head-flat", Classifier, (1, c, w)), "FLAT4": Spec("head-flat4", Rank4, (1, w, c))}
    layouts = {"body": p.Layout.NWC, "NWC": p.Layout.NWC, "NCW": p.Layout.NCW, "FLAT": p.Layout.FLAT,
               "FLAT4": p.Layout.FLAT}
    modules, models = {}, {}
    for kind, spec in specs.items():
        path = export(spec, 0, TARGET, 8, directory)
        model = models[kind] = load_espdl(path)
        [x], [y] = model.inputs, model.outputs
        assert x.shape == (1, w, c), (kind, x.shape)  # on chip: NWC, W frames
        modules[kind] = (path.name, path.read_bytes(), p.ModuleConfig(0, p.Layout.NWC, layouts[kind], x.name, y.name))
    assert models["NCW"].outputs[0].shape == (1, wide, f) and models["FLAT"].outputs[0].shape == (1, FLAT_ELEMENTS)

    def values(kind: str) -> tuple[np.ndarray, np.ndarray]:
        model = models[kind]
        x = np.asarray(model.test_inputs[model.inputs[0].name].data)
        y = np.asarray(model.test_outputs[model.outputs[0].name].data).reshape(model.outputs[0].shape)
        expected = {"NWC": lambda: y[0], "NCW": lambda: y[0].T}.get(kind, lambda: y.reshape(1, -1))()
        return x.reshape(w, c), expected

    return Heads(modules.pop("body"), modules, values)


@pytest.fixture(scope="module")
def host_runner_parts(tmp_path_factory):
    """The firmware's portable core built for the host (firmware/host), with its deterministic HCM1 backend."""
    from harness.emulator.virtual_board import VirtualBoard
    from tests.test_firmware_core import CHANNELS, hcm1_pipeline, host_build_dir

    runner_host = host_build_dir(tmp_path_factory) / "runner_host"
    command = [str(runner_host), "--target", TARGET]
    board = VirtualBoard(TARGET, tmp_path_factory.mktemp("host-core") / "runner.log", command=command).start()

    def large(layout: p.Layout):
        # 1400 frames: module 0 (8 x int8) in 3 parts, module 1 (8 x int16) in 6, module 2 (6 x int8) in 3
        window = 1400
        modules = hcm1_pipeline(window)
        name, blob, config = modules[-1]
        return window, modules[:-1] + [(name, blob, dataclasses.replace(config, output_layout=layout))]

    yield board, hcm1_pipeline, CHANNELS, large, command, host_heads
    board.stop()


def host_heads() -> Heads:
    """HCM1 models (firmware/host/README.md) with the shapes of virtual_heads: ``oframes`` keeps the last frames,
    ``orank`` gives the FLAT shapes [1, 240] and [1, 1, 2, 120]."""
    from tests.test_firmware_core import Hcm1, input_frames, reference

    w, f = HEAD_WINDOW, HEAD_FRAMES
    body = Hcm1(cin=CHANNELS, cout=CHANNELS, ein=-5, eout=-4, mul=3, add=1, shift=1, context=2)
    wide = dict(cin=CHANNELS, cout=HEAD_CHANNELS, ein=-4, eout=-3, mul=-2, add=5, shift=1, oframes=f)
    models = {"NWC": Hcm1(**wide), "NCW": Hcm1(**wide), "FLAT": Hcm1(**wide, orank=2), "FLAT4": Hcm1(**wide, orank=4)}
    layouts = {"NWC": p.Layout.NWC, "NCW": p.Layout.NCW, "FLAT": p.Layout.FLAT, "FLAT4": p.Layout.FLAT}

    def values(kind: str) -> tuple[np.ndarray, np.ndarray]:
        x = input_frames(w, CHANNELS, 8, seed=7)
        return x, reference([models[kind]], x, w, TARGET)[0]

    return Heads(("body.hcm1", body.blob(), body.config(0)),
                 {k: (f"head-{k}.hcm1", m.blob(), m.config(0, p.Layout.NWC, layouts[k])) for k, m in models.items()},
                 values)


RUNNERS = {"virtual": ("virtual_runner_parts", f"virtual {TARGET} board"),
           "host-core": ("host_runner_parts", f"host-core {TARGET} runner")}


@pytest.fixture(params=list(RUNNERS))
def runner(request):
    parts, device = RUNNERS[request.param]
    board, modules, channels, large, command, heads = request.getfixturevalue(parts)
    if board.exit_reason():  # a test killed it: power it up again
        board.start()
    port = serial.serial_for_url(board.port, baudrate=921600, timeout=0.05)
    link = DeviceLink(port, device, liveness=board.exit_reason)
    r = Runner(request.param, link, board.reset, board.kill, modules, channels, large, command, heads)
    r.reboot()
    yield r
    port.close()


def per_frame_exports(window: int, modules: int) -> list:
    """What harness.device.dut.run_sequences needs to know of ``modules`` modules whose outputs have a frame per input
    frame: W rows of Output.array() per window, no per-window output."""
    from types import SimpleNamespace

    return [SimpleNamespace(out_frames=window, per_window=False) for _ in range(modules)]


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


def test_a_model_already_in_its_slot_is_kept_and_a_new_session_streams_as_the_first(runner):
    runner.load(3)
    frames = runner.frames(9, seed=4)
    first = stream_collect(runner, frames)
    stream_collect(runner, runner.frames(9, seed=5), first_frame=9)  # the stream moves on

    runner.link.hello()  # the next case on the kept session: every model is kept, the stream starts afresh
    before = dataclasses.replace(runner.link.stats)
    runner.load(3)
    assert runner.link.stats.models_kept - before.models_kept == len(runner.modules(3))
    assert runner.link.stats.models_uploaded == before.models_uploaded
    again = stream_collect(runner, frames)
    assert [(o.window, o.module, o.data) for o in first] == [(o.window, o.module, o.data) for o in again]

    name, blob, _ = runner.modules(3)[0]
    other = blob[:-1] + bytes([blob[-1] ^ 1])  # another model for slot 0: not kept
    ack = runner.link.request(p.ModelBegin(0, len(other), hashlib.sha256(other).digest(), name))
    assert ack.detail == b""
    ack = runner.link.request(p.ModelBegin(0, len(blob), hashlib.sha256(blob).digest(), name))
    assert ack.detail == b"", "an upload in progress is not a loaded model"
    with pytest.raises(DeviceError, match="NOT_CONFIGURED"):  # any MODEL_BEGIN discards the configuration
        runner.link.reset()
    runner.link.hello()
    kept = runner.link.request(p.ModelBegin(1, *[(len(b), hashlib.sha256(b).digest(), n) for n, b, _ in
                                                   runner.modules(3)[1:2]][0]))
    assert kept.detail == p.MODEL_KEPT  # slot 1 still holds its model
    ack = runner.link.request(p.ModelBegin(1, len(blob), hashlib.sha256(blob).digest(), name))
    assert ack.detail == b"", "the same bytes in another slot are uploaded there"

    runner.reboot()  # a reboot empties every slot
    assert all(runner.link.upload(slot, name, blob) for slot, (name, blob, _) in enumerate(runner.modules(3)))


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

    with pytest.raises(p.ProtocolError, match="died: .* process was killed by SIGKILL") as info:
        runner.link.stream(runner.frames(60), die)
    assert time.monotonic() - started < 15  # a bound on the failure, not a speed goal: it must not hang
    assert "\n" not in str(info.value) and "cable" not in str(info.value)  # a process died, not a wire


# --------------------------------------------------------------------------- OUTPUT parts (protocol.md 7.7)

WIDE_PAYLOAD = 65535  # a twin device whose every window fits one OUTPUT: what the parts must add up to


@contextmanager
def twin_device(runner: Runner, tmp_path, max_payload: int = WIDE_PAYLOAD):
    """The same kind of device as ``runner``, in its own process, announcing ``max_payload``: a DeviceLink."""
    from harness.emulator.virtual_board import VirtualBoard

    board = VirtualBoard(TARGET, tmp_path / f"twin-{max_payload}.log", command=runner.command,
                         max_payload=max_payload).start()
    port = serial.serial_for_url(board.port, baudrate=921600, timeout=0.05)
    link = DeviceLink(port, f"{runner.name} twin", liveness=board.exit_reason)
    try:
        board.reset()
        link.wait_boot()
        assert link.hello().max_payload == max_payload
        yield link
    finally:
        port.close()
        board.stop()


def _without_wall_time(outputs: list[p.Output]) -> list:
    """What two devices must agree on: everything but the measured microseconds."""
    return [(o.window, o.windows, o.module, o.step, o.layout, o.bits, o.exponent, o.frames, o.channels,
             [t.cycles for t in o.timings], o.data) for o in outputs]


@pytest.mark.parametrize("layout", [p.Layout.NWC, p.Layout.NCW], ids=lambda layout: f"last-module-{layout.name}")
@pytest.mark.parametrize("all_modules", [True, False], ids=["all-modules", "last-module-only"])
def test_a_window_too_large_for_one_output_arrives_in_parts(runner, all_modules, layout, tmp_path):
    large = runner.large(layout)
    if large is None:
        pytest.skip(f"the {runner.name} suite's models give no {layout.name} output")
    window, modules = large
    flags = p.CONFIGURE_FLAG_ALL_OUTPUTS if all_modules else 0
    assert runner.link.max_payload == p.DEFAULT_MAX_PAYLOAD == 4096
    n = runner.load(window, flags=flags, output_batch=0, modules=modules)  # output_batch 0 = 1: served in parts
    frames = runner.frames(2 * window, seed=11)  # two windows
    outputs = stream_collect(runner, frames)
    acks = runner.link.configure(p.Configure(window, p.Schedule.ROUND_ROBIN, flags, 0, 1, tuple(
        dataclasses.replace(c, slot=slot) for slot, (_, _, c) in enumerate(modules))))

    reported = list(range(n)) if all_modules else [n - 1]
    assert {o.module for o in outputs} == set(reported)
    assert all(o.is_part for o in outputs)  # each of these windows is too large for one OUTPUT
    for k in reported:
        bits = 16 if k == 1 and runner.name == "host-core" else 8  # the HCM1 pipeline's module 1 gives int16
        ranges = p.part_ranges(p.DEFAULT_MAX_PAYLOAD, window, acks[k].output_channels, bits, k + 1)
        assert len(ranges) >= 3
        for j in (0, 1):
            mine = [o for o in outputs if (o.module, o.window) == (k, j)]
            assert [(o.part_first_frame, o.part_frames) for o in mine] == ranges, (k, j)  # the required split
            assert {(o.step, o.timings, o.bits) for o in mine} == {(mine[0].step, mine[0].timings, bits)}
    assert max(len(o.pack()) for o in outputs) <= p.DEFAULT_MAX_PAYLOAD
    if not all_modules:
        assert {o.layout for o in outputs} == {layout}
    joined = p.join_parts(outputs, runner.link.name)  # in frame order, one window after the other
    plan = plan_schedule(n, window, p.Schedule.ROUND_ROBIN, 2 * window, flush=True)
    assert sorted((o.window, o.module, o.step) for o in joined) == sorted(
        (r.window, r.module, r.step) for r in plan.runs if r.module in reported)

    # the same stream from a device whose max_payload takes every window whole
    with twin_device(runner, tmp_path) as wide:
        load_into(wide, window, modules, flags=flags, output_batch=1)
        whole: list[p.Output] = []
        wide.stream(frames, whole.append)
        assert whole and not any(o.is_part for o in whole)
        assert _without_wall_time(joined) == _without_wall_time(whole)

    # the host's run_sequences joins the parts into the same tensors
    runner.link.hello()
    runner.load(window, flags=flags, output_batch=1, modules=modules)
    result = run_sequences(runner.link, Frames(frames[None], 0, TARGET, None, "test"), window,
                           per_frame_exports(window, n), all_modules)
    for k, tensor in zip(reported, result.outputs):
        expected = np.concatenate([o.array() for o in sorted(whole, key=lambda o: o.window) if o.module == k])
        assert np.array_equal(tensor.data[0], expected), k
    if runner.name == "host-core":  # deterministic cycles: each window's timings counted once, not once per part
        assert result.cycles == [w.timings[k].cycles for w in whole[-1:] for k in range(n)]


def test_only_a_batch_of_windows_too_large_for_one_output_is_refused(runner):
    window, modules = runner.large(p.Layout.NWC)
    with pytest.raises(DeviceError, match=r"BAD_CONFIG.*module 0: 2 windows of \d+ x \d+ do not fit one OUTPUT of 4096"):
        runner.load(window, output_batch=2, modules=modules)
    runner.link.hello()
    runner.load(window, output_batch=1, modules=modules)  # one window: served in parts
    runner.load(window, flags=0, output_batch=1, modules=modules)


# --------------------------------------------------------------------------- the host joining parts

class ScriptedDevice:
    """A pyserial-like port with a scripted runner behind it: INFO for HELLO, ACK for RESET/CONFIGURE/FLUSH,
    CREDIT for FRAMES, and after each sequence's first FRAMES the OUTPUT frames of ``outputs`` (one list per
    sequence): a device that breaks the part rules in exactly the way a test asks."""

    def __init__(self, outputs: list[list[p.Output]]):
        self.timeout = 0.05
        self.outputs = list(outputs)
        self._decoder = p.FrameDecoder()
        self._rx = bytearray()
        self._seq = 0
        self._pending: list[p.Output] = []

    def _send(self, message) -> None:
        self._rx += p.encode(message, self._seq)
        self._seq = (self._seq + 1) & 0xFFFF

    def write(self, data: bytes) -> int:
        for packet in self._decoder.feed(data):
            m = packet.message
            if isinstance(m, p.Hello):
                self._seq = 0
                self._send(p.Info(1, 4096, 256, 0, 0, TARGET, "scripted", "-", "-", "scripted"))
            elif isinstance(m, p.Frames):
                for out in self._pending:
                    self._send(out)
                self._pending = []
                self._send(p.Credit(m.count))
            else:
                if isinstance(m, p.Reset):
                    self._pending = self.outputs.pop(0)
                self._send(p.Ack(m.TYPE, packet.seq))
        return len(data)

    @property
    def in_waiting(self) -> int:
        return len(self._rx)

    def read(self, n: int = 1) -> bytes:
        out = bytes(self._rx[:n])
        del self._rx[:n]
        return out


def _scripted_window(j: int) -> p.Output:
    values = (np.arange(10 * 3, dtype=np.int16).reshape(10, 3) + 100 * j) * (-1) ** j
    return p.Output.from_array(j, 0, 10 * j + 9, values.astype(np.int16), -7, (p.Timing(1000 + j, 50 + j),),
                               p.Layout.NCW)


def _scripted_parts(j: int) -> list[p.Output]:
    whole = _scripted_window(j)
    return [whole.part(0, 4), whole.part(4, 4), whole.part(8, 2)]


def _run_scripted(outputs: list[list[p.Output]]):
    link = DeviceLink(ScriptedDevice(outputs), "scripted board")
    link.hello()
    frames = Frames(np.zeros((len(outputs), 20, 3), dtype=np.int16), 0, TARGET, None, "test")
    return run_sequences(link, frames, 10, per_frame_exports(10, 1), all_modules=False)


def test_host_joins_parts_into_windows_and_counts_their_timings_once():
    ok = [_scripted_parts(0) + _scripted_parts(1), [_scripted_window(0), *_scripted_parts(1)]]
    result = _run_scripted(ok)
    expected = np.concatenate([_scripted_window(0).array(), _scripted_window(1).array()])
    assert np.array_equal(result.outputs[0].data[0], expected)
    assert np.array_equal(result.outputs[0].data[1], expected)  # whole and parted windows mix
    assert result.outputs[0].exponent == -7
    assert result.latency_us == [50.5] and result.cycles == [1000.5]  # once per window, not once per part
    assert result.output_steps == [[9, 19], [9, 19]]


@pytest.mark.parametrize("outputs, match", [
    ([_scripted_parts(0)[0], _scripted_parts(0)[2], *_scripted_parts(1)],
     r"module 0, window 0 out of order: frames 4\.\.7 are missing"),
    ([_scripted_parts(0)[1], _scripted_parts(0)[0], _scripted_parts(0)[2], *_scripted_parts(1)],
     r"module 0, window 0 out of order: frames 0\.\.3 are missing"),
    ([*_scripted_parts(0)[:2], _scripted_parts(0)[1], _scripted_parts(0)[2], *_scripted_parts(1)],
     r"module 0, window 0 overlapping: the part of frames 4\.\.7 repeats frames 4\.\.7"),
    ([_scripted_parts(0)[0], _scripted_parts(1)[0], *_scripted_parts(0)[1:], *_scripted_parts(1)[1:]],
     r"module 0, window 0 incomplete: frames 4\.\.9 of 10 are missing \(a part of module 0, window 1 came next\)"),
    ([*_scripted_parts(0), *_scripted_parts(1)[:2]],
     r"module 0, window 1 incomplete: frames 8\.\.9 of 10 are missing \(the stream ended\)"),
    ([*_scripted_parts(0)[:2], dataclasses.replace(_scripted_parts(0)[2], step=8), *_scripted_parts(1)],
     r"module 0, window 0 inconsistently: the part of frames 8\.\.9 differs from the first part in step"),
], ids=["gap", "out-of-order", "repeated", "interleaved", "unfinished", "mismatch"])
def test_host_refuses_parts_that_do_not_make_a_window(outputs, match):
    with pytest.raises(p.ProtocolError, match=r"^scripted board sent the OUTPUT parts of " + match) as e:
        _run_scripted([outputs])
    assert isinstance(e.value, p.OutputPartError) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- per-window outputs (protocol.md 5)

def output_check_text(row: str, k: int, name: str, shape=None, frames=None, window=None, last=None, channels=None,
                      bits=8, max_payload=None) -> str:
    """The BAD_CONFIG text protocol.md's table of output checks gives for the row whose first cell starts with
    ``row``, filled in: the one spelling both runners are held to."""
    text = DOC.read_text()
    table = text[text.index("| module k's `output` | text |"):].split("\n\n")[0].splitlines()[2:]
    [template] = [re.search(r"`([^`]+)`", line.split(" | ")[1])[1] for line in table if line.startswith(f"| {row}")]
    size = f"{channels} x int{bits} ({channels * bits // 8} bytes)" if channels else None
    filled = template
    for token, value in (("module k:", f"module {k}:"), ("'y'", f"'{name}'"), ("is S", f"is {shape}"),
                         ("(module N−1)", f"(module {last})"), ("has F frames", f"has {frames} frames"),
                         ("not W:", f"not {window}:"), ("C x int8 (n bytes)", size),
                         ("of M bytes", f"of {max_payload} bytes")):
        if token in filled:
            assert value is not None and "None" not in value, (row, token)
            filled = filled.replace(token, value)
    return filled


def refused(match_text: str, call, code=p.ErrorCode.BAD_CONFIG) -> None:
    """``call()`` is answered with ERROR ``code`` whose text is exactly ``match_text``."""
    with pytest.raises(DeviceError) as e:
        call()
    assert e.value.code == code and e.value.cause.endswith(f": {match_text}"), e.value.cause


def _configure(link: DeviceLink, modules: list[Module], flags=p.CONFIGURE_FLAG_ALL_OUTPUTS, output_batch: int = 1):
    """Upload and configure ``modules`` for windows of HEAD_WINDOW frames: the ACK's module records."""
    for slot, (name, blob, _) in enumerate(modules):
        link.upload(slot, name, blob)
    return link.configure(p.Configure(HEAD_WINDOW, p.Schedule.ROUND_ROBIN, flags, 0, output_batch, tuple(
        dataclasses.replace(c, slot=slot) for slot, (_, _, c) in enumerate(modules))))


def _frames(windows: int, seed: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).integers(-128, 128, (windows * HEAD_WINDOW, CHANNELS), dtype=np.int8)


@pytest.mark.parametrize("layout", [p.Layout.NWC, p.Layout.NCW], ids=lambda layout: layout.name)
@pytest.mark.parametrize("all_modules", [True, False], ids=["all-modules", "last-module-only"])
def test_the_last_module_may_give_fewer_frames_than_the_window(runner, layout, all_modules):
    """Module N-1's [1, F, C] / [1, C, F] output with F < W: OUTPUT.frames is F, a window's data F x C values;
    module 0, whose output feeds module 1, keeps its W frames."""
    flags = p.CONFIGURE_FLAG_ALL_OUTPUTS if all_modules else 0
    acks = _configure(runner.link, runner.heads().pipeline(layout.name), flags)
    assert [a.output_channels for a in acks] == [CHANNELS, HEAD_CHANNELS]
    outputs = stream_collect(runner, _frames(4))
    heads = [o for o in outputs if o.module == 1]
    assert [(o.window, o.windows, o.layout, o.frames, o.channels) for o in heads] == [
        (j, 1, layout, HEAD_FRAMES, HEAD_CHANNELS) for j in range(4)]
    assert all(o.array().shape == (HEAD_FRAMES, HEAD_CHANNELS) for o in heads)
    assert {(o.frames, o.channels) for o in outputs if o.module == 0} == ({(HEAD_WINDOW, CHANNELS)} if all_modules
                                                                          else set())
    plan = plan_schedule(2, HEAD_WINDOW, p.Schedule.ROUND_ROBIN, 4 * HEAD_WINDOW, flush=True)
    assert sorted((o.window, o.module, o.step) for o in outputs) == sorted(
        (r.window, r.module, r.step) for r in plan.runs if all_modules or r.module == 1)


@pytest.mark.parametrize("kind", ["FLAT", "FLAT4"])
def test_a_flat_last_module_gives_one_row_per_window(runner, kind):
    """A last module whose output is not 3-D ([1, 240], [1, 2, 2, 60] / [1, 1, 2, 120]), configured FLAT: frames 1,
    channels its element count (the ACK's output_channels too), Output.array() one row per window."""
    acks = _configure(runner.link, runner.heads().pipeline(kind), flags=0, output_batch=3)
    assert acks[1].output_channels == FLAT_ELEMENTS
    outputs = stream_collect(runner, _frames(4))
    assert [(o.module, o.window, o.windows, o.layout, o.frames, o.channels) for o in outputs] == [
        (1, 0, 3, p.Layout.FLAT, 1, FLAT_ELEMENTS), (1, 3, 1, p.Layout.FLAT, 1, FLAT_ELEMENTS)]
    assert [o.array().shape for o in outputs] == [(3, FLAT_ELEMENTS), (1, FLAT_ELEMENTS)]


@pytest.mark.parametrize("kind", HEAD_KINDS)
def test_per_window_outputs_carry_the_models_values_in_memory_order(runner, kind):
    """The head alone on one window: its OUTPUT is what the model computes (the virtual board: ESP-PPQ's test
    values, which ESP-DL checks the model against; host-core: the HCM1 reference), F frames in the configured
    layout or the FLAT tensor's elements in row-major order."""
    heads = runner.heads()
    x, expected = heads.values(kind)
    _configure(runner.link, [heads.heads[kind]], flags=0)
    [out] = stream_collect(runner, x)
    assert out.frames == (1 if kind.startswith("FLAT") else HEAD_FRAMES)
    assert np.array_equal(out.array(), expected)


@pytest.mark.parametrize("kind", ["NWC", "NCW", "FLAT"])
def test_per_window_outputs_are_batched_by_their_own_frames(runner, kind):
    """output_batch up to max_windows_per_output(max_payload, F, C, ...): F frames of the last module's output, not
    the W of its input window (with W the same batch would not fit one OUTPUT)."""
    frames, channels = (1, FLAT_ELEMENTS) if kind == "FLAT" else (HEAD_FRAMES, HEAD_CHANNELS)
    batch = p.max_windows_per_output(4096, frames, channels, 8, 2)
    assert runner.link.max_payload == 4096 and batch > p.max_windows_per_output(4096, HEAD_WINDOW, channels, 8, 2)
    pipeline = runner.heads().pipeline(kind)
    refused(f"module 1: {batch + 1} windows of {frames} x {channels} do not fit one OUTPUT of 4096 bytes",
            lambda: _configure(runner.link, pipeline, flags=0, output_batch=batch + 1))
    runner.link.hello()
    _configure(runner.link, pipeline, flags=0, output_batch=batch)
    stream = _frames(batch + 1)
    batched = stream_collect(runner, stream)
    assert [(o.window, o.windows, o.frames) for o in batched] == [(0, batch, frames), (batch, 1, frames)]
    assert max(len(o.pack()) for o in batched) <= 4096
    _configure(runner.link, pipeline, flags=0, output_batch=1)
    single = stream_collect(runner, stream)
    assert np.array_equal(np.concatenate([o.array() for o in batched]), np.concatenate([o.array() for o in single]))


@pytest.mark.parametrize("layout", [p.Layout.NWC, p.Layout.NCW], ids=lambda layout: layout.name)
def test_a_per_window_output_too_large_for_one_output_arrives_in_parts_of_its_frames(runner, layout, tmp_path):
    """At max_payload 256 the head's F x C = 240 bytes do not fit one OUTPUT: the window goes in parts that split
    its F frames (not W), and joined they are what a 4096-byte device sends whole."""
    pipeline = runner.heads().pipeline(layout.name)
    stream = _frames(3)
    _configure(runner.link, pipeline)
    whole = stream_collect(runner, stream)
    assert not any(o.is_part for o in whole)
    with twin_device(runner, tmp_path, max_payload=256) as small:
        _configure(small, pipeline)
        received: list[p.Output] = []
        small.stream(stream, received.append)
    ranges = p.part_ranges(256, HEAD_FRAMES, HEAD_CHANNELS, 8, 2)
    assert ranges == [(0, 1), (1, 1)]
    heads = [o for o in received if o.module == 1]
    assert [(o.window, o.part_first_frame, o.part_frames, o.frames) for o in heads] == [
        (j, first, count, HEAD_FRAMES) for j in range(3) for first, count in ranges]
    assert not any(o.is_part for o in received if o.module == 0)  # the body's 6 x 8 bytes fit
    assert _without_wall_time(p.join_parts(received, small.name)) == _without_wall_time(whole)


@pytest.mark.parametrize("case", ["flat-before-last", "frames-before-last", "flat-on-3-d", "3-d-layout-on-rank-2",
                                  "3-d-layout-on-rank-4"])
def test_configure_refuses_an_output_only_the_last_module_may_give(runner, case):
    """The BAD_CONFIG texts of protocol.md's table of output checks, exactly, on both runners."""
    heads = runner.heads()
    body, flat, nwc = heads.body, heads.heads["FLAT"], heads.heads["NWC"]
    shape = {"FLAT": [1, FLAT_ELEMENTS], "FLAT4": ([1, HEAD_FRAMES, 2, HEAD_CHANNELS // 2] if runner.name == "virtual"
                                                   else [1, 1, HEAD_FRAMES, HEAD_CHANNELS])}
    if case == "flat-before-last":  # a FLAT head first: refused before its model is looked at
        modules = [flat, body]
        text = output_check_text("FLAT, and k < N − 1", 0, flat[2].output, last=1)
    elif case == "frames-before-last":
        modules = [nwc, body]
        text = output_check_text("NWC/NCW, k < N − 1 and F ≠ W", 0, nwc[2].output, frames=HEAD_FRAMES,
                                 window=HEAD_WINDOW)
    elif case == "flat-on-3-d":
        modules = heads.pipeline("NWC", p.Layout.FLAT)
        text = output_check_text("FLAT, and 3-D", 1, nwc[2].output, shape=[1, HEAD_FRAMES, HEAD_CHANNELS])
    else:
        kind = "FLAT" if case.endswith("rank-2") else "FLAT4"
        modules = heads.pipeline(kind, p.Layout.NCW)
        text = output_check_text("NWC/NCW, and not 3-D", 1, heads.heads[kind][2].output, shape=shape[kind])
    refused(text, lambda: _configure(runner.link, modules))
    runner.link.hello()
    with pytest.raises(DeviceError, match="NOT_CONFIGURED"):  # a refused CONFIGURE leaves none
        runner.link.reset()


def test_flat_is_never_an_input_layout(runner):
    """A CONFIGURE whose module has input_layout 2 (the Python codec does not even pack one) is a payload error."""
    name, blob, config = runner.heads().body
    runner.link.upload(0, name, blob)
    record = bytes([0, p.Layout.FLAT, p.Layout.NWC]) + b"".join(
        struct.pack("<H", len(s.encode())) + s.encode() for s in (config.input, config.output, config.cache_input,
                                                                   config.cache_output))
    payload = struct.pack("<HBBHHB", HEAD_WINDOW, 0, 0, 0, 1, 1) + record
    seq = runner.link._tx_seq
    head = bytes([p.MessageType.CONFIGURE]) + struct.pack("<HH", seq, len(payload)) + payload
    runner.link.port.write(cobs_frame(head + struct.pack("<I", zlib.crc32(head))))
    runner.link._tx_seq += 1
    reply = runner.link.receive().message
    assert (reply.code, reply.ref_type, reply.ref_seq) == (p.ErrorCode.BAD_PAYLOAD, p.MessageType.CONFIGURE, seq)
    assert "input_layout 2 (FLAT)" in reply.text


def cobs_frame(body: bytes) -> bytes:
    from cobs import cobs

    return cobs.encode(body) + b"\x00"


@pytest.mark.parametrize("kind", ["FLAT", "FLAT4"])
def test_a_flat_output_too_large_for_one_output_is_refused(runner, kind, tmp_path):
    """One frame cannot be split: a FLAT output of 240 int8 values does not fit an OUTPUT of 256 bytes."""
    pipeline = runner.heads().pipeline(kind)
    assert p.max_windows_per_output(256, 1, FLAT_ELEMENTS, 8, 2) == 0 < p.max_windows_per_output(4096, 1,
                                                                                                  FLAT_ELEMENTS, 8, 2)
    with twin_device(runner, tmp_path, max_payload=256) as small:
        text = output_check_text("reported, FLAT", 1, "", channels=FLAT_ELEMENTS, max_payload=256)
        for flags in (0, p.CONFIGURE_FLAG_ALL_OUTPUTS):
            refused(text, lambda: _configure(small, pipeline, flags=flags))
            small.hello()


def test_a_kept_device_short_of_memory_for_stale_models_is_reset_and_loaded_again(tmp_path, tiny, quantizer):
    """Models of earlier cases stay in their slots; when they leave no room for a pipeline's models, the host
    resets the device (every slot emptied) and loads the pipeline once more, instead of failing the case."""
    import sys

    from harness.device.dut import configure_pipeline
    from harness.emulator.virtual_board import VirtualBoard
    from harness.model.frames import generate_frames

    qm = tiny("tiny_auto", TARGET)
    first, second = quantizer.streaming_exports(qm, 1), quantizer.streaming_exports(qm, 3)
    largest = max(sum(e.path.stat().st_size for e in pipeline) for pipeline in (first, second))
    command = [sys.executable, "-m", "harness.emulator.virtual_board", "--target", TARGET,
               "--psram-bytes", str(largest + 64)]  # room for one pipeline's models, not for two
    board = VirtualBoard(TARGET, tmp_path / "board.log", command=command).start()
    try:
        with serial.serial_for_url(board.port, baudrate=921600, timeout=0.05) as port:
            link = DeviceLink(port, "small board", liveness=board.exit_reason, reset=board.reset)
            board.reset()
            link.wait_boot()
            link.hello()
            frames = generate_frames(qm)
            configure_pipeline(link, first, frames, 1, all_modules=False)
            held = dict(link.loaded)
            configure_pipeline(link, second, frames, 3, all_modules=False)  # OUT_OF_MEMORY, reset, loaded again
            assert set(link.loaded.values()) == {hashlib.sha256(e.path.read_bytes()).digest() for e in second}
            assert not set(held.values()) & set(link.loaded.values())
            assert link.stats.models_uploaded == len(first) + len(second)

            assert link.stats.boots == 2
            with pytest.raises(DeviceError, match="OUT_OF_MEMORY"):  # too large for the empty board: it stands
                configure_pipeline(link, second + first, frames, 3, all_modules=False)
            assert link.stats.boots == 2  # the device held nothing this pipeline does not need: no reset
    finally:
        board.stop()


def test_slots_keep_alternating_pipelines_side_by_side():
    link = DeviceLink(None, "no port")
    a, b, c = [bytes([k]) * 8 for k in range(3)]
    assert link.slots_for([a, b]) == [0, 1]
    link.loaded.update({0: hashlib.sha256(a).digest(), 1: hashlib.sha256(b).digest()})
    assert link.slots_for([b, c]) == [1, 2]  # b where it is, c in a free slot
    assert link.slots_for([a, a]) == [0, 2]  # the same model twice: two slots
    others = [bytes([100 + s]) * 8 for s in range(2, p.MODEL_SLOTS)]
    link.loaded.update({s: hashlib.sha256(blob).digest() for s, blob in enumerate(others, start=2)})
    assert link.slots_for(others) == list(range(2, p.MODEL_SLOTS))  # every slot full, each where it is
    assert link.slots_for([a]) == [0]
    assert link.slots_for([c]) == [1]  # the longest unused slot goes first
