"""The virtual board: a separate process that behaves like an ESP32 running the streaming runner.

It owns the device side of a pseudo-terminal, speaks ``docs/protocol.md``
exactly as the firmware does, and executes the uploaded ``.espdl`` bytes with
the integer engine (``harness.emulator.engine``: ESP-DL's arithmetic for the selected
target) under the runner's scheduler (``harness.emulator.scheduler``). The host opens
the pty path like any serial port. A reset ("EN pin") comes over the control
channel (the process's stdin): it drops everything a reset clears on a chip —
models, configuration, state — and sends the BOOT banner, after the host has
opened the port (pyserial flushes input on open).

Run standalone: ``python -m harness.emulator.virtual_board --target esp32p4`` prints
``PTY /dev/pts/N`` and serves until stdin closes. Control lines on stdin:
``reset`` (EN pin), ``flash <build id>`` (what flashing a build does: the
board then reports that build ID, and reboots), ``quit``; the first two are
confirmed with a ``done ...`` line on stdout once they have happened.
``--psram-bytes N`` bounds what the uploaded models may take together (MODEL_BEGIN answers OUT_OF_MEMORY
beyond it, as a board with that much free PSRAM does). ``--max-payload N`` makes it announce (and keep to) another INFO max_payload
than the firmware's default 4096, e.g. to compare OUTPUT parts with whole windows. ``--model-cache DIR`` keeps
parsed models there for the next process (the harness passes its cache directory's ``parsed/``).
"""

from __future__ import annotations

import argparse
import difflib
import errno
import hashlib
import os
import pickle
import pty
import queue
import select
import signal
import subprocess
import sys
import threading
import time
import traceback
import tty
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.device import protocol as p
from harness.emulator.scheduler import BacklogFull, Scheduler, Task
from harness.resources import PACKAGE, code_digest
from harness.targets import Target, get_target, int_dtype

MAX_SLOTS = 16
CREDITS = 256  # frames the board buffers: enough to keep the link busy while it computes
PSRAM_BYTES = 32 << 20
INTERNAL_BYTES = 512 << 10
ESP_DL_SEMANTICS = "esp-dl 3.3.9 integer semantics (emulated)"


def build_id() -> str:
    """Identifies the emulator build: a digest of the code that decides what it computes."""
    from harness.emulator.engine import SOURCES

    h = hashlib.sha256(code_digest(*SOURCES, "harness.emulator.scheduler", "harness.emulator.virtual_board",
                                   "harness.device.protocol", "harness.targets").encode())
    return "virtual-" + h.hexdigest()[:16]


class ParsedModels:
    """Parsed models kept by content, in memory and (with ``directory``) on disk across processes.

    A reset board is given the same files again, and every run of a job uploads the files the last run did;
    parsing FlatBuffers in Python again would only slow the emulator down (nothing changes a parsed model).
    A disk entry is named by the SHA-256 of the bytes and of the reader's code; one that cannot be read is
    parsed again and replaced.
    """

    def __init__(self, directory: Path | None = None, keep: int = 64):
        self.directory = directory
        self._memory: dict[bytes, object] = {}
        self._keep = keep
        self._reader = code_digest("harness.espdl.reader")[:16] if directory is not None else ""

    def get(self, data: bytes, sha256: bytes, name: str | None, path: Path | None = None):
        """The model in ``data`` (read from ``path`` as ``load_espdl`` reads a file, when given)."""
        model = self._memory.pop(sha256, None) or self._from_disk(sha256)
        if model is None:
            from harness.espdl.reader import load_espdl

            model = load_espdl(path) if path is not None else load_espdl(data, name=name)
            self._to_disk(sha256, model)
        self._memory[sha256] = model  # most recently used last
        while len(self._memory) > self._keep:
            del self._memory[next(iter(self._memory))]
        return model

    def _path(self, sha256: bytes) -> Path:
        return self.directory / f"{sha256.hex()}-{self._reader}.pickle"

    def _from_disk(self, sha256: bytes):
        if self.directory is None:
            return None
        try:
            return pickle.loads(self._path(sha256).read_bytes())
        except Exception:  # noqa: BLE001 - missing, or damaged since it was written: parse again
            return None

    def _to_disk(self, sha256: bytes, model) -> None:
        if self.directory is None:
            return
        path = self._path(sha256)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
            staging.write_bytes(pickle.dumps(model, protocol=pickle.HIGHEST_PROTOCOL))
            os.replace(staging, path)
        except OSError:
            pass  # a read-only or full cache only costs the next run a parse


class BoardError(Exception):
    """A request the runner refuses: becomes an ERROR message."""

    def __init__(self, code: p.ErrorCode, text: str):
        super().__init__(text)
        self.code, self.text = code, text


def _board_error(exc: Exception, message) -> BoardError:
    """What the runner answers when a model cannot run the way a request needs: ESP-DL refuses, or a bug."""
    from harness.errors import HarnessError

    if isinstance(exc, HarnessError):  # the engine refuses the model or its shapes
        code = p.ErrorCode.BAD_CONFIG if isinstance(message, p.Configure) else p.ErrorCode.MODEL_LOAD_FAILED
        return BoardError(code, str(exc))
    traceback.print_exc(file=sys.stderr)  # into the board's log
    return BoardError(p.ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")


@dataclass
class Upload:
    size: int
    sha256: bytes
    name: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class ModuleRuntime:
    """One configured module: its engine, tensor names and carried cache."""

    engine: object
    config: p.ModuleConfig
    input_shape: tuple[int, ...]
    output_frames: int  # F of one window's output: W before the last module; FLAT: 1
    output_channels: int  # FLAT: the output's element count
    output_bits: int
    cache: np.ndarray | None = None

    def reset(self) -> None:
        self.engine.reset()
        if self.config.cache_input:
            info = next(i for i in self.engine.inputs if i.name == self.config.cache_input)
            self.cache = np.zeros(info.shape, dtype=info.dtype)


@dataclass
class Batch:
    """Outputs of one module waiting to go out together (CONFIGURE.output_batch)."""

    first_window: int
    blocks: list[bytes] = field(default_factory=list)
    cycles: list[int] = field(default_factory=list)  # per module 0..k, summed over the windows
    microseconds: list[int] = field(default_factory=list)
    step: int = 0


class Board:
    """The runner's state machine, transport-free: ``handle(packet) -> messages to send``."""

    def __init__(self, target: Target, max_payload: int = p.DEFAULT_MAX_PAYLOAD, psram_bytes: int = PSRAM_BYTES,
                 parsed: ParsedModels | None = None):
        self.target = target
        self.parsed = parsed or ParsedModels()
        self.max_payload = max_payload  # INFO's; bounds every OUTPUT (a larger window goes in parts)
        self.psram_bytes = psram_bytes  # what uploads and loaded models may take together
        self.build_id = build_id()  # what INFO reports; a side-channel "flash" replaces it
        self.reboot()

    def reboot(self) -> list:
        self.greeted = False  # nothing but HELLO is served before HELLO
        self.expected_seq: int | None = None
        self.models: dict[int, tuple] = {}  # slot -> (EspdlModel, size in bytes, SHA-256, its Engine)
        self.uploads: dict[int, Upload] = {}
        self._unconfigure()
        return [p.Boot(f"espdl-hil streaming runner (virtual {self.target.name}) ready")]

    def _unconfigure(self) -> None:
        self.modules: list[ModuleRuntime] = []
        self.scheduler: Scheduler | None = None
        self.configure: p.Configure | None = None
        self._restart_stream()

    def _restart_stream(self) -> None:
        self._timings: dict[int, list[p.Timing]] = {}
        self._batches: dict[int, Batch] = {}
        self._runs = [0] * len(self.modules)  # module k's runs since RESET/CONFIGURE: its next is on window runs[k]
        self._probe: p.Probe | None = None  # the armed probe (protocol.md 7.8); RESET and CONFIGURE discard it
        for runtime in self.modules:
            runtime.reset()
        if self.scheduler is not None:
            self.scheduler.reset()

    # --------------------------------------------------------------- dispatch
    def handle(self, packet: p.Packet) -> list:
        message = packet.message
        self._out: list = []
        if isinstance(message, p.Hello):
            self.expected_seq = (packet.seq + 1) & 0xFFFF
        else:
            if self.expected_seq is not None and packet.seq != self.expected_seq:
                self._out.append(p.Log(p.LogLevel.WARNING, f"seq gap: expected {self.expected_seq}, got {packet.seq}"))
            self.expected_seq = (packet.seq + 1) & 0xFFFF
        handler = {
            p.Hello: self._hello,
            p.ModelBegin: self._model_begin,
            p.ModelChunk: self._model_chunk,
            p.ModelEnd: self._model_end,
            p.Configure: self._configure,
            p.Reset: self._reset,
            p.Frames: self._frames,
            p.Flush: self._flush,
            p.Probe: self._probe_request,
        }.get(type(message))
        try:
            if handler is None:
                raise BoardError(p.ErrorCode.UNKNOWN_MESSAGE, f"{type(message).__name__} is not a host request")
            if not self.greeted and not isinstance(message, p.Hello):
                raise BoardError(p.ErrorCode.NOT_CONFIGURED, "send HELLO first")
            detail = handler(message)
            if detail is not None:
                self._out.append(p.Ack(message.TYPE, packet.seq, detail))
        except Exception as exc:  # noqa: BLE001 - a runner answers ERROR; it does not reboot on a bad request
            error = exc if isinstance(exc, BoardError) else _board_error(exc, message)
            self._out.append(p.Error(error.code, message.TYPE, packet.seq, error.text))
            if isinstance(message, p.Frames) and error.code != p.ErrorCode.CREDIT_EXCEEDED:
                self._out.append(p.Credit(message.count))  # dropped frames are credited back
        return self._out

    def frame_error(self, error: p.FrameError) -> list:
        if error.reason in p.FrameError.FRAMING:
            return [p.Error(p.ErrorCode.BAD_FRAME, 0, p.BAD_FRAME_REF_SEQ, str(error))]
        return [p.Error(error.error_code, error.msg_type or 0, error.seq or 0, str(error))]

    # --------------------------------------------------------------- requests
    def _hello(self, m: p.Hello):
        if not m.min_version <= p.PROTOCOL_VERSION <= m.max_version:
            raise BoardError(p.ErrorCode.VERSION_UNSUPPORTED, f"supported versions: {p.PROTOCOL_VERSION}")
        self.greeted = True
        used = sum(len(u.data) for u in self.uploads.values()) + sum(held[1] for held in self.models.values())
        self._out.append(
            p.Info(
                version=p.PROTOCOL_VERSION,
                max_payload=self.max_payload,
                credits=CREDITS,  # every frame is stepped as it arrives: all of them are free again
                free_internal_bytes=INTERNAL_BYTES,
                free_psram_bytes=self.psram_bytes - used,
                target=self.target.name,
                build_id=self.build_id,
                esp_dl_version=ESP_DL_SEMANTICS,
                idf_version="none (host process)",
                device_kind="virtual",
            )
        )

    def _model_begin(self, m: p.ModelBegin):
        if m.slot >= MAX_SLOTS:
            raise BoardError(p.ErrorCode.BAD_PAYLOAD, f"slot {m.slot} >= {MAX_SLOTS}")
        used = sum(u.size for u in self.uploads.values()) + sum(held[1] for held in self.models.values())
        if used + m.size > self.psram_bytes:  # allocated before the slot's old model goes, as on the chip
            raise BoardError(p.ErrorCode.OUT_OF_MEMORY, f"model of {m.size} bytes does not fit in PSRAM "
                                                        f"({self.psram_bytes - used} of {self.psram_bytes} bytes free)")
        held = self.models.get(m.slot)
        if held is not None:
            self._unconfigure()  # a configuration may use the model: CONFIGURE again in either case
            if held[1:3] == (m.size, m.sha256):  # already loaded: no chunks, no MODEL_END
                return p.MODEL_KEPT
            del self.models[m.slot]
        self.uploads[m.slot] = Upload(m.size, m.sha256, m.name)
        return b""

    def _model_chunk(self, m: p.ModelChunk):
        upload = self.uploads.get(m.slot)
        if upload is None:
            raise BoardError(p.ErrorCode.BAD_PAYLOAD, f"no MODEL_BEGIN for slot {m.slot}")
        if m.offset != len(upload.data) or m.offset + len(m.data) > upload.size:
            self.uploads.pop(m.slot)
            raise BoardError(p.ErrorCode.BAD_PAYLOAD, f"chunk at {m.offset} (+{len(m.data)}), have {len(upload.data)} of {upload.size}")
        upload.data += m.data
        return b""

    def _model_end(self, m: p.ModelEnd):
        from harness.errors import HarnessError

        upload = self.uploads.pop(m.slot, None)
        if upload is None:
            raise BoardError(p.ErrorCode.BAD_PAYLOAD, f"no MODEL_BEGIN for slot {m.slot}")
        data = bytes(upload.data)
        if len(data) != upload.size:
            raise BoardError(p.ErrorCode.BAD_PAYLOAD, f"slot {m.slot}: received {len(data)} of {upload.size} bytes")
        if hashlib.sha256(data).digest() != upload.sha256:
            raise BoardError(p.ErrorCode.MODEL_SHA_MISMATCH, f"slot {m.slot}: SHA-256 of the {len(data)} bytes differs")
        from harness.emulator.engine import Engine

        try:  # checked like dl::Model's load: unknown ops refused now, not mid-stream
            model = self.parsed.get(data, upload.sha256, upload.name)
            engine = Engine(model, self.target)
        except HarnessError as exc:
            raise BoardError(p.ErrorCode.MODEL_LOAD_FAILED, f"{upload.name}: {exc}") from None
        self.models[m.slot] = (model, len(data), upload.sha256, engine)
        return b""

    def _configure(self, m: p.Configure):
        from harness.emulator.engine import Engine

        self._unconfigure()  # a failed CONFIGURE leaves the device unconfigured
        if m.flags & ~p.CONFIGURE_FLAG_ALL_OUTPUTS:
            raise BoardError(p.ErrorCode.BAD_CONFIG, f"reserved flag bits set: {m.flags:#04x}")
        if not m.modules or m.window < 1:
            raise BoardError(p.ErrorCode.BAD_CONFIG, "need at least one module and a window of at least one frame")
        runtimes, acks = [], []
        last = len(m.modules) - 1
        for k, mc in enumerate(m.modules):
            if mc.slot not in self.models:
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: slot {mc.slot} holds no model")
            if mc.input_layout == p.Layout.FLAT:
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: input_layout FLAT: a module's input is NWC or NCW")
            if mc.output_layout == p.Layout.FLAT and k < last:
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: output '{mc.output}' is FLAT: only the last module's output (module {last}) may be")
            model = self.models[mc.slot][0]
            names = {"input": [i.name for i in model.inputs], "output": [o.name for o in model.outputs]}
            for role, name in (("input", mc.input), ("output", mc.output), ("input", mc.cache_input), ("output", mc.cache_output)):
                if name and name not in names[role]:
                    raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: model {model.name} has no {role} '{name}' ({', '.join(names[role])})")
            if bool(mc.cache_input) != bool(mc.cache_output):
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: give both cache tensors or neither")
            if mc.cache_input:
                cin, cout = model.input(mc.cache_input), model.output(mc.cache_output)
                if cin.shape != cout.shape or cin.exponents != cout.exponents:
                    raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: cache '{mc.cache_output}' {list(cout.shape)} exp {list(cout.exponents)} cannot be copied into '{mc.cache_input}' {list(cin.shape)} exp {list(cin.exponents)}")
            info_in, info_out = model.input(mc.input), model.output(mc.output)
            if len(info_in.shape) != 3 or info_in.shape[0] != 1 or _frames_of(info_in.shape, mc.input_layout) != m.window:
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: input '{mc.input}' is {list(info_in.shape)}, not {p.Layout(mc.input_layout).name} with {m.window} frames")
            # the slot's own engine for its first module (CONFIGURE zeroes it); another module on the slot gets its own
            first = all(other.slot != mc.slot for other in m.modules[:k])
            engine = self.models[mc.slot][3] if first else Engine(model, self.target)
            # like ESP-DL at load: infer every shape from the input (an export's value_info may be stale)
            probe = engine.run({i.name: np.zeros(i.shape, dtype=i.dtype) for i in engine.inputs})[mc.output]
            engine.reset()
            frames, channels = _output_geometry(k, k == last, mc, probe.shape, m.window)
            if probe.dtype not in (np.int8, np.int16):  # as the firmware's element_bits(): int8/int16 only
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: output '{mc.output}' is {probe.dtype}: the runner "
                                 f"streams int8/int16 outputs only (end the module before a Softmax, or quantize it)")
            runtime = ModuleRuntime(engine, mc, tuple(info_in.shape), frames, channels, 8 if probe.dtype == np.int8 else 16)
            runtimes.append(runtime)
            bits = 8 if info_in.dtype == "int8" else 16
            acks.append(p.ConfigureAckModule(info_in.exponents[0], info_out.exponents[0], bits, _channels(info_in.shape, mc.input_layout), runtime.output_channels))
        for k in range(1, len(runtimes)):
            if runtimes[k - 1].output_channels != acks[k].input_channels:
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k - 1} gives {runtimes[k - 1].output_channels} channels, module {k} takes {acks[k].input_channels}")
        batch = max(1, m.output_batch)
        reporting = runtimes if m.flags & p.CONFIGURE_FLAG_ALL_OUTPUTS else runtimes[-1:]
        for k, runtime in enumerate(reporting, start=len(runtimes) - len(reporting)):
            fit = p.max_windows_per_output(self.max_payload, runtime.output_frames, runtime.output_channels, runtime.output_bits, k + 1)
            if fit == 0 and runtime.config.output_layout == p.Layout.FLAT:
                size = runtime.output_channels * runtime.output_bits // 8
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: FLAT output of {runtime.output_channels} x int{runtime.output_bits} ({size} bytes) does not fit one OUTPUT of {self.max_payload} bytes and cannot be sent in parts")
            if batch > 1 and batch > fit:  # a single window that does not fit goes in parts (protocol.md 7.7)
                parts = " (one window goes in parts with output_batch 1)" if fit == 0 else ""
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: {batch} windows of {runtime.output_frames} x {runtime.output_channels} do not fit one OUTPUT of {self.max_payload} bytes{parts}")
            if fit == 0 and p.max_frames_per_part(self.max_payload, runtime.output_channels, runtime.output_bits, k + 1) == 0:
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: one frame of {runtime.output_channels} x int{runtime.output_bits} does not fit an OUTPUT part of {self.max_payload} bytes")
        self.modules, self.configure = runtimes, m
        self.scheduler = Scheduler(len(runtimes), m.window, m.schedule, m.queue_depth, (acks[0].input_channels,), int_dtype(acks[0].bits))
        self._restart_stream()
        return p.pack_configure_ack(acks)

    def _reset(self, m: p.Reset):
        if self.scheduler is None:
            raise BoardError(p.ErrorCode.NOT_CONFIGURED, "RESET before CONFIGURE")
        self._restart_stream()
        return b""

    def _frames(self, m: p.Frames):
        if self.scheduler is None:
            raise BoardError(p.ErrorCode.NOT_CONFIGURED, "FRAMES before CONFIGURE")
        if m.count == 0:
            raise BoardError(p.ErrorCode.BAD_PAYLOAD, "FRAMES with no frame")
        if m.count > CREDITS:
            raise BoardError(p.ErrorCode.CREDIT_EXCEEDED, f"{m.count} frames with {CREDITS} credits")
        if self.scheduler.stopped:
            raise BoardError(p.ErrorCode.BACKLOG_FULL, self.scheduler.stopped)
        if m.first_frame != self.scheduler.frames:
            raise BoardError(p.ErrorCode.FRAME_OUT_OF_ORDER, f"first_frame {m.first_frame}, expected {self.scheduler.frames}")
        channels, dtype = self.scheduler.frame_shape[0], self.scheduler.dtype
        if m.frame_bytes != channels * dtype.itemsize:
            raise BoardError(p.ErrorCode.BAD_PAYLOAD, f"frames of {m.frame_bytes} bytes, the model takes {channels} x {dtype}")
        frames = np.frombuffer(m.data, dtype=dtype.newbyteorder("<")).reshape(m.count, channels)
        try:
            for frame in frames:
                self.scheduler.push(frame, self._run)
        except BacklogFull as exc:
            raise BoardError(p.ErrorCode.BACKLOG_FULL, str(exc)) from None
        self._out.append(p.Credit(m.count))  # the virtual board steps frames as they arrive
        return None

    def _flush(self, m: p.Flush):
        if self.scheduler is None:
            raise BoardError(p.ErrorCode.NOT_CONFIGURED, "FLUSH before CONFIGURE")
        self.scheduler.flush(self._run)
        for module in sorted(self._batches):
            self._send_batch(module)
        return b""

    def _probe_request(self, m: p.Probe):
        """PROBE (protocol.md 0x0A): the checks in the document's order; the capture happens in ``_run``."""
        self._probe = None  # at most one probe: a new PROBE discards the armed one, a failed one leaves none
        if self.scheduler is None:
            raise BoardError(p.ErrorCode.NOT_CONFIGURED, "PROBE before CONFIGURE")
        k = m.module
        if k >= len(self.modules):
            raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: the configuration has {len(self.modules)} modules")
        if m.window < self._runs[k]:
            raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k} has already run window {m.window} ({self._runs[k]} "
                                                     f"runs since RESET): arm a probe before its window runs")
        engine = self.modules[k].engine
        model = engine.model
        # a graph input, or the output of a node the engine runs (what ESP-DL's context holds)
        known = [i.name for i in engine.inputs] + sorted(engine.produced - {""})
        for name in m.names:
            if name not in known:
                close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: no tensor '{name}' in model {model.name}"
                                                         + (f"; close: {', '.join(close)}" if close else ""))
            info = model.tensor_info(name)
            dtype = info.dtype if info is not None else ""
            bits = {"int8": 8, "int16": 16, "float32": 32}.get(dtype)
            if bits is None or (bits != 32 and not info.exponents):
                what = dtype or "of a type the model does not give"
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: tensor '{name}' is {what}: PROBE takes int8, "
                                                         f"int16 and float32 tensors")
            if p.max_elements_per_tensor(self.max_payload, len(info.shape), name, bits) == 0:
                raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: tensor '{name}' does not fit a TENSOR of "
                                                         f"{self.max_payload} bytes")
        self._probe = m
        return b""

    def _captured(self, task: Task, step: int, env: dict[str, np.ndarray]) -> list:
        """The armed probe's TENSORs of this run (protocol.md 7.8): graph inputs as fed, every other tensor as its
        node wrote it (the engine keeps every value of the run), each whole or in parts."""
        runtime, probe = self.modules[task.module], self._probe
        messages = []
        for index, name in enumerate(probe.names):
            value = np.ascontiguousarray(env[name])
            if value.dtype not in (np.int8, np.int16, np.float32):
                raise BoardError(p.ErrorCode.INTERNAL, f"module {task.module}: tensor '{name}' came out {value.dtype}")
            exponent = 0 if value.dtype == np.float32 else runtime.engine.exponent(name)
            whole = p.Tensor.from_array(task.module, task.window, step, index, name, value, exponent)
            messages.extend(p.split_tensor(whole, self.max_payload))
        return messages

    # -------------------------------------------------------------- execution
    def _run(self, task: Task, step: int):
        runtime = self.modules[task.module]
        x = task.data
        if task.module == 0:  # the window buffer is [W, C] frames
            x = x if runtime.config.input_layout == p.Layout.NWC else x.T
        feeds = {runtime.config.input: np.ascontiguousarray(x).reshape(runtime.input_shape)}
        if runtime.cache is not None:
            feeds[runtime.config.cache_input] = runtime.cache
        probed = self._probe is not None and (self._probe.module, self._probe.window) == (task.module, task.window)
        start = time.perf_counter_ns()
        outputs = runtime.engine.run(feeds, keep=probed)  # probed: every tensor of the run, graph inputs included
        elapsed_us = (time.perf_counter_ns() - start) // 1000
        self._runs[task.module] += 1
        if probed:  # right after the run, before its OUTPUT and the step's CREDIT
            self._out.extend(self._captured(task, step, outputs))
            self._probe = None
        if runtime.cache is not None:
            runtime.cache = outputs[runtime.config.cache_output].reshape(runtime.cache.shape)
        y = outputs[runtime.config.output]
        timings = self._timings.setdefault(task.window, [])
        timings.append(p.Timing(cycles=0, microseconds=int(elapsed_us)))  # cycles are not modelled
        last = task.module == len(self.modules) - 1
        if last or self.configure.flags & p.CONFIGURE_FLAG_ALL_OUTPUTS:
            self._add_to_batch(task, step, y, timings)
        if last:
            del self._timings[task.window]
            return None
        return self._to_next(task.module, y)

    def _add_to_batch(self, task: Task, step: int, y: np.ndarray, timings: list) -> None:
        batch = self._batches.setdefault(task.module, Batch(task.window, cycles=[0] * (task.module + 1), microseconds=[0] * (task.module + 1)))
        # the tensor's memory order: [1, F, C] NWC and [1, C, F] NCW as on the wire; FLAT row-major, ESP-DL's order
        batch.blocks.append(np.ascontiguousarray(y).reshape(-1).astype(y.dtype.newbyteorder("<")).tobytes())
        for k, timing in enumerate(timings[: task.module + 1]):
            batch.cycles[k] += timing.cycles
            batch.microseconds[k] += timing.microseconds
        batch.step = step
        if len(batch.blocks) >= max(1, self.configure.output_batch):
            self._send_batch(task.module)

    def _send_batch(self, module: int) -> None:
        """The batch as one OUTPUT, or a window too large for one as its parts, in frame order (protocol.md 7.7)."""
        batch = self._batches.pop(module)
        runtime = self.modules[module]
        self._out.extend(p.split_output(
            p.Output(
                window=batch.first_window, windows=len(batch.blocks), module=module, step=batch.step,
                layout=runtime.config.output_layout,
                bits=runtime.output_bits,
                exponent=runtime.engine.exponent(runtime.config.output), frames=runtime.output_frames,
                channels=runtime.output_channels,
                timings=tuple(p.Timing(c, us) for c, us in zip(batch.cycles, batch.microseconds)),
                data=b"".join(batch.blocks),
            ),
            self.max_payload,
        ))

    def _to_next(self, k: int, y: np.ndarray) -> np.ndarray:
        """Module k's output as module k+1's input: transposed if layouts differ, requantized if exponents do."""
        src, dst = self.modules[k], self.modules[k + 1]
        if src.config.output_layout != dst.config.input_layout:
            y = y.transpose(0, 2, 1)
        shift = dst.engine.exponent(dst.config.input) - src.engine.exponent(src.config.output)
        bits = next(8 if i.dtype == "int8" else 16 for i in dst.engine.inputs if i.name == dst.config.input)
        return np.ascontiguousarray(self.target.requantize(y, shift, bits))  # into the receiver's range


def _frames_of(shape, layout) -> int:
    return shape[1] if layout == p.Layout.NWC else shape[2]


def _output_geometry(k: int, last: bool, mc: p.ModuleConfig, shape: tuple[int, ...], window: int) -> tuple[int, int]:
    """(frames, channels) of module k's output of ``shape`` for one window, or BAD_CONFIG (protocol.md section 5):
    NWC/NCW a 3-D [1, F, C] / [1, C, F] tensor with F = W before the last module and any F >= 1 in it;
    FLAT (the last module only) any other tensor, as 1 frame of its element count."""
    what = f"module {k}: output '{mc.output}' is {list(shape)}"
    if mc.output_layout == p.Layout.FLAT:
        if len(shape) == 3:
            raise BoardError(p.ErrorCode.BAD_CONFIG, f"{what}, 3-D: its layout is NWC or NCW, not FLAT")
        elements = int(np.prod(shape, dtype=np.int64))
        if not 1 <= elements <= 0xFFFF:
            raise BoardError(p.ErrorCode.BAD_CONFIG, f"{what}: a FLAT output has 1..65535 elements")
        return 1, elements
    if len(shape) != 3 or shape[0] != 1:
        fix = "make its layout FLAT (2)" if last else "only the last module's output may be FLAT"
        raise BoardError(p.ErrorCode.BAD_CONFIG, f"{what}, not 3-D [1, ., .]: {fix}")
    frames, channels = _frames_of(shape, mc.output_layout), _channels(shape, mc.output_layout)
    if not (1 <= frames <= 0xFFFF and 1 <= channels <= 0xFFFF):
        raise BoardError(p.ErrorCode.BAD_CONFIG, f"{what}: NWC and NCW take 1..65535 frames and channels")
    if frames != window and not last:
        raise BoardError(p.ErrorCode.BAD_CONFIG, f"module {k}: output '{mc.output}' has {frames} frames per window, not {window}: only the last module's may differ")
    return frames, channels


def _channels(shape, layout) -> int:
    return shape[2] if layout == p.Layout.NWC else shape[1]


# ------------------------------------------------------------------ transport
class Wire:
    """The serial line: moves bytes between the pty and the board in its own thread, at UART speed if asked.

    Like a chip's UART driver it receives and transmits while the CPU computes,
    so link time and compute time overlap. With ``baud`` it paces both
    directions independently at baud / 10 bytes per second (8N1).
    """

    def __init__(self, master: int, baud: int | None, on_receive):
        self.master = master
        self.rate = baud / 10 if baud else None
        self.on_receive = on_receive
        self._tx = bytearray()
        self._lock = threading.Lock()
        self._wake_r, self._wake_w = os.pipe()
        self._stop = False
        self._thread = threading.Thread(target=self._pump, name="wire", daemon=True)
        self._thread.start()

    def write(self, data: bytes) -> None:
        with self._lock:
            self._tx += data
        os.write(self._wake_w, b"w")

    def clear(self) -> None:
        with self._lock:
            self._tx.clear()

    def stop(self) -> None:
        self._stop = True
        os.write(self._wake_w, b"s")
        self._thread.join(timeout=5)

    def _pump(self) -> None:
        budget_rx = budget_tx = 0.0
        last = time.monotonic()
        while not self._stop:
            now = time.monotonic()
            if self.rate:  # bytes the line carried since the last turn, at most 20 ms worth
                budget_rx = min(self.rate * 0.02, budget_rx + (now - last) * self.rate)
                budget_tx = min(self.rate * 0.02, budget_tx + (now - last) * self.rate)
            last = now
            can_rx = 65536 if not self.rate else int(budget_rx)
            with self._lock:
                pending = len(self._tx)
            can_tx = pending if not self.rate else min(pending, int(budget_tx))
            readers = [self._wake_r] + ([self.master] if can_rx > 0 else [])
            writers = [self.master] if can_tx > 0 else []
            paced = self.rate and ((pending and can_tx == 0) or can_rx == 0)
            readable, writable, _ = select.select(readers, writers, [], 0.002 if paced else 0.5)
            if self._wake_r in readable:
                os.read(self._wake_r, 4096)
            if self.master in writable:
                with self._lock:
                    chunk = bytes(self._tx[:can_tx])
                try:
                    written = os.write(self.master, chunk)
                except BlockingIOError:
                    written = 0
                with self._lock:
                    del self._tx[:written]
                budget_tx -= written
            if self.master in readable:
                try:
                    data = os.read(self.master, can_rx)
                except (BlockingIOError, OSError) as exc:
                    if isinstance(exc, BlockingIOError) or exc.errno == errno.EIO:
                        continue
                    raise
                budget_rx -= len(data)
                self.on_receive(data)


class PtyServer:
    """Serves a Board on the master side of a pty; the control fd carries reset/quit (the EN pin)."""

    def __init__(self, board: Board, control_fd: int, baud: int | None = None):
        self.board = board
        self.control_fd = control_fd
        self.master, self.slave = pty.openpty()
        tty.setraw(self.slave)  # no echo, no CR/LF translation, before anyone opens it
        self.path = os.ttyname(self.slave)  # the slave stays open here so the master never reads EIO
        os.set_blocking(self.master, False)
        self.decoder = p.FrameDecoder(board.max_payload)  # the device's own max_payload bounds what it takes
        self.seq = 0
        self.inbox: queue.Queue = queue.Queue()
        self.wire = Wire(self.master, baud, lambda data: self.inbox.put(("rx", data)))

    def send(self, messages: list, restart_numbering: bool = False) -> None:
        """Transmit messages; BOOT and the reply to HELLO restart the numbering at 0."""
        out = bytearray()
        for message in messages:
            if isinstance(message, p.Boot):
                out += b"\x00"  # ends whatever half-frame the host may hold (ROM text on a chip)
                self.seq = 0
            elif restart_numbering:
                self.seq, restart_numbering = 0, False
            out += p.encode(message, self.seq)
            self.seq = (self.seq + 1) & 0xFFFF
        if out:
            self.wire.write(bytes(out))

    def _control(self) -> None:
        """Reads the control fd in its own thread: a line per command."""
        with os.fdopen(self.control_fd, "rb", buffering=0, closefd=False) as control:
            for line in iter(control.readline, b""):
                self.inbox.put(("control", line.strip()))
        self.inbox.put(("control", b"quit"))  # the parent went away: power off

    def serve(self) -> None:
        threading.Thread(target=self._control, name="control", daemon=True).start()
        try:
            while True:
                kind, data = self.inbox.get()
                if kind == "control":
                    if data == b"quit":
                        return
                    if data.startswith(b"flash "):  # a flash tool wrote another build: report its ID
                        self.board.build_id = data[6:].decode()
                        data = b"reset"  # and flashing ends with a reset, as esptool's --after hard_reset does
                    if data == b"reset":
                        self.wire.clear()
                        self.decoder = p.FrameDecoder(self.board.max_payload)
                        self.send(self.board.reboot())
                        # like the EN pin, the reset has happened when the caller continues
                        print("done reset", flush=True)
                    continue
                for item in self.decoder.feed(data):
                    if isinstance(item, p.FrameError):
                        self.send(self.board.frame_error(item))
                    else:
                        self.send(self.board.handle(item), restart_numbering=isinstance(item.message, p.Hello))
        finally:
            self.wire.stop()


def _last_line(path: Path, start: int) -> str:
    """The last non-empty line written to ``path`` after byte ``start`` (a dying process's exception)."""
    try:
        with open(path, "rb") as log:
            log.seek(start)
            lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    except OSError:
        return ""
    return lines[-1] if lines else ""


class VirtualBoard:
    """Parent-side handle of a virtual board process (one per target in use)."""

    def __init__(self, target: str, log_path: Path, baud: int | None = None, command: list[str] | None = None,
                 max_payload: int | None = None, model_cache: Path | None = None):
        self.target = target
        self.log_path = log_path
        self.baud = baud
        self.max_payload = max_payload  # None: the device's default (--max-payload, which runner_host takes too)
        self.command = command  # another device process with the same stdin/stdout contract (default: this one)
        self.model_cache = model_cache  # this process's --model-cache
        self.process: subprocess.Popen | None = None
        self.port = ""

    def launch(self) -> "VirtualBoard":
        """Start the process and return at once (it powers up while the caller goes on); ``start`` waits for it."""
        if self.process is not None and self.process.poll() is None:
            return self
        self.port = ""  # a board that died (or was stopped) powers up as a new process, on a new pty
        if getattr(self, "_log", None) is not None:
            self._log.close()
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = list(self.command or [sys.executable, "-m", "harness.emulator.virtual_board", "--target", self.target])
        if self.model_cache is not None and self.command is None:
            command += ["--model-cache", str(self.model_cache)]
        if self.baud:
            command += ["--baud", str(self.baud)]
        if self.max_payload:
            command += ["--max-payload", str(self.max_payload)]
        self._log = open(self.log_path, "ab")
        self._log_start = self._log.tell()  # this process's part of the log
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._log,
            cwd=PACKAGE.parent,  # where `harness` is importable from
        )
        return self

    def start(self, timeout: float = 30.0) -> "VirtualBoard":
        """The running board, its pty known (launched now unless ``launch`` did it before)."""
        if self.port and self.process.poll() is None:
            return self
        self.launch()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline().decode().strip() if ready else ""
        if not line.startswith("PTY "):
            self.stop()
            raise RuntimeError(f"virtual board for {self.target} did not start (see {self.log_path})")
        self.port = line[4:]
        return self

    def reset(self) -> None:
        """Press EN: the board drops its state and sends the BOOT banner (returns once it has)."""
        self._control("reset")

    def _control(self, line: str, timeout: float = 10.0) -> None:
        """Send a control line and wait for the process to confirm it (``done ...`` on its stdout)."""
        try:
            self.process.stdin.write(line.encode() + b"\n")
            self.process.stdin.flush()
        except OSError:
            return  # the process is gone: the link reports it (exit_reason)
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        answer = self.process.stdout.readline().decode().strip() if ready else ""
        if not answer.startswith("done") and self.exit_reason() is None:
            raise RuntimeError(f"{self.target} device did not confirm '{line}' within {timeout:g} s (see {self.log_path})")

    def flash(self, build_id: str) -> None:
        """What flashing a build does on a pty: the board reports that build's ID and reboots."""
        self._control(f"flash {build_id}")

    def exit_reason(self) -> str | None:
        """Why the board is gone, or None while it runs."""
        if self.process is None:
            return "virtual board not started"
        code = self.process.poll()
        if code is None:
            return None
        if code < 0:  # a signal: nothing of its own to say
            return f"virtual board process was killed by {signal.Signals(-code).name} (log {self.log_path})"
        last = _last_line(self.log_path, self._log_start)
        return f"virtual board process exited with code {code}" + (f": {last}" if last else "") + f" (log {self.log_path})"

    def kill(self) -> None:
        self.process.kill()
        self.process.wait()

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            try:
                self.process.stdin.write(b"quit\n")
                self.process.stdin.close()
                self.process.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                self.process.kill()
                self.process.wait()
        if hasattr(self, "_log"):
            self._log.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True)
    parser.add_argument("--baud", type=int, default=None, help="throttle the link like a UART at this baud rate")
    parser.add_argument("--max-payload", type=int, default=p.DEFAULT_MAX_PAYLOAD,
                        help="INFO max_payload, 256..65535 (default %(default)s, the firmware's)")
    parser.add_argument("--model-cache", type=Path, default=None,
                        help="keep parsed models in this directory for the next process (default: memory only)")
    parser.add_argument("--psram-bytes", type=int, default=PSRAM_BYTES,
                        help="memory the uploaded models may take together (default %(default)s)")
    args = parser.parse_args(argv)
    if not 256 <= args.max_payload <= p.MAX_PAYLOAD_LIMIT:
        parser.error(f"--max-payload {args.max_payload} is not within 256..{p.MAX_PAYLOAD_LIMIT}")
    sys.setswitchinterval(0.0005)  # let the wire thread move bytes promptly while the engine computes
    server = PtyServer(Board(get_target(args.target), args.max_payload, args.psram_bytes,
                             ParsedModels(args.model_cache)), sys.stdin.fileno(), args.baud)
    print(f"PTY {server.path}", flush=True)
    server.serve()
    return 0


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # powered off: the interpreter's teardown would only keep the parent waiting
