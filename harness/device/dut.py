"""Stage 4, host side: drive a streaming runner over a serial port.

The same code talks to a board's serial port and to the virtual board's
pseudo-terminal: it speaks ``docs/protocol.md`` on a pyserial port, uploads
the streaming ``.espdl`` files, configures the pipeline, keeps several FRAMES
messages in flight within the device's credits and collects the OUTPUT
messages. Every failure (device error reply, CRC failure, lost frame, reboot,
disconnect, timeout) becomes one ``ProtocolError`` naming the cause and the
fix; nothing waits forever.
"""

from __future__ import annotations

import hashlib
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from harness.device import protocol as p
from harness.model.frames import Frames
from harness.tensors import QTensor

REPLY_TIMEOUT = 10.0  # boot banner and replies to requests
STREAM_TIMEOUT = 30.0  # silence while outputs or credits are due

_FIXES = {
    p.ErrorCode.VERSION_UNSUPPORTED: "flash a runner that speaks protocol version 1",
    p.ErrorCode.MODEL_SHA_MISMATCH: "the upload was corrupted on the link; lower the baud rate or check the cable",
    p.ErrorCode.MODEL_LOAD_FAILED: "the runner's ESP-DL cannot load this .espdl; check the esp-dl/esp-ppq versions",
    p.ErrorCode.OUT_OF_MEMORY: "use a board with more PSRAM or a smaller model",
    p.ErrorCode.BAD_CONFIG: "the configuration does not fit the uploaded models; re-export them",
    p.ErrorCode.BACKLOG_FULL: "round-robin with fewer frames per window than modules backs up; raise queue_depth",
    p.ErrorCode.BAD_FRAME: "bytes were corrupted on the link; lower the baud rate or check the cable",
}
_LINK_FIX = "bytes were lost or changed on the link; lower the baud rate or check the cable"
_PROTOCOL_FIX = "the runner and the harness disagree on the protocol; flash the matching runner"


class DeviceError(p.ProtocolError):
    """The device answered a request with ERROR."""

    def __init__(self, error: p.Error, device: str):
        self.code = error.code
        name = getattr(error.code, "name", str(error.code))
        known = error.ref_type in p.MessageType._value2member_map_
        ref = p.MessageType(error.ref_type).name if known else error.ref_type  # 0: a damaged frame
        super().__init__(f"{device} answered ERROR {name} to {ref} seq {error.ref_seq}: {error.text}",
                         _FIXES.get(error.code, "see the device log"))


@dataclass
class ArmedProbe:
    """A PROBE the device accepted: what it captures and what of it has arrived."""

    module: int
    window: int
    names: tuple[str, ...]
    assembler: p.TensorAssembler
    received: dict[str, p.Tensor] = field(default_factory=dict)


@dataclass
class LinkStats:
    """What went over the link, for the benchmarks."""

    sent_bytes: int = 0
    received_bytes: int = 0
    frame_bytes_sent: int = 0  # input frame values
    output_bytes_received: int = 0  # output tensor values
    garbage_bytes: int = 0  # noise before the boot banner
    boots: int = 0  # boot banners waited for (resets)
    models_uploaded: int = 0
    models_kept: int = 0  # MODEL_BEGINs the device answered "already loaded"


class DeviceLink:
    """Protocol client on a pyserial-like port (``read``, ``write``, ``in_waiting``, ``timeout``)."""

    def __init__(self, port, name: str, on_log: Callable[[int, str], None] | None = None,
                 liveness: Callable[[], str | None] | None = None, reset: Callable[[], None] | None = None):
        self.port = port
        self.name = name
        self.on_log = on_log or (lambda level, text: None)
        self.liveness = liveness or (lambda: None)
        self.reset_device = reset  # the EN pin, where the host has one
        self.loaded: dict[int, bytes] = {}  # slot -> SHA-256 of the model this link put there since the boot
        self._last_use: dict[int, int] = {}  # slot -> when a pipeline last used it
        self._tick = 0
        self.stats = LinkStats()
        self.info: p.Info | None = None
        self.banner: str | None = None  # the last BOOT banner
        self.credits = 0
        self.max_payload = p.DEFAULT_MAX_PAYLOAD
        self._decoder = p.FrameDecoder()
        self._pending: deque[p.Packet] = deque()
        self._tx_seq = 0
        self._rx_seq: int | None = None
        self._synced = False  # frame errors before BOOT/INFO are boot noise, not link failures
        self._awaiting_hello_reply = False  # frames before it carry the device's old numbering
        self._probe: ArmedProbe | None = None  # the PROBE the device holds (protocol.md 7.8), until its TENSORs came

    # ------------------------------------------------------------------ wire
    def send(self, message, prefix: bytes = b"") -> int:
        if isinstance(message, p.Hello):  # both sides restart their numbering (protocol.md section 4)
            self._tx_seq, self._rx_seq, self._awaiting_hello_reply = 0, None, True
            self._pending.clear()
        seq = self._tx_seq
        self._tx_seq = (seq + 1) & 0xFFFF
        wire = prefix + p.encode(message, seq)
        try:
            self.port.write(wire)
        except (OSError, ValueError) as exc:  # pyserial's SerialException is an OSError
            raise self._gone(exc) from exc
        self.stats.sent_bytes += len(wire)
        if isinstance(message, p.Frames):
            self.stats.frame_bytes_sent += len(message.data)
        return seq

    def _gone(self, exc: BaseException | None) -> p.ProtocolError:
        died = self.liveness()
        if died:  # the device's own process ended: its cause, not the cable
            return p.ProtocolError(f"{self.name} died: {died}", "see its log; the next case starts a fresh device")
        why = str(exc) if exc else ""
        return p.ProtocolError(
            f"{self.name} disconnected" + (f" ({why})" if why else ""), "check the board's power and cable, then rerun"
        )

    def _take(self, chunk: bytes) -> None:
        self.stats.received_bytes += len(chunk)
        for item in self._decoder.feed(chunk):
            if isinstance(item, p.FrameError):
                if not self._synced:
                    self.stats.garbage_bytes += len(item.data)
                    continue
                raise p.ProtocolError(f"corrupted frame from {self.name}: {item}", _LINK_FIX)
            self._accept(item)

    def _accept(self, packet: p.Packet) -> None:
        message = packet.message
        if self._awaiting_hello_reply:
            if not (packet.seq == 0 and isinstance(message, (p.Info, p.Error))):
                return
            self._awaiting_hello_reply, self._synced = False, True
            self._rx_seq = 0
        elif isinstance(message, p.Boot):
            self._synced, self._rx_seq = True, packet.seq
        elif self._rx_seq is not None and packet.seq != (self._rx_seq + 1) & 0xFFFF:
            lost = (packet.seq - self._rx_seq - 1) & 0xFFFF
            raise p.ProtocolError(
                f"{lost} frame(s) from {self.name} were lost (sequence {self._rx_seq}, then {packet.seq})", _LINK_FIX
            )
        else:
            self._rx_seq = packet.seq
        if isinstance(message, p.Log):
            self.on_log(message.level, message.text)
        elif isinstance(message, p.Output):
            self.stats.output_bytes_received += len(message.data)
            self._pending.append(packet)
        else:
            self._pending.append(packet)

    def _read(self, timeout: float) -> bytes:
        """Wait up to ``timeout`` for a first byte, then take everything already there."""
        try:
            if self.port.timeout != timeout:
                self.port.timeout = timeout  # pyserial reconfigures the port on every assignment
            data = self.port.read(1)
            waiting = self.port.in_waiting if data else 0
            return data + self.port.read(waiting) if waiting else data
        except (OSError, ValueError) as exc:
            raise self._gone(exc) from exc

    def _poll(self) -> None:
        """Take in whatever the device already sent, without waiting."""
        try:
            waiting = self.port.in_waiting
        except (OSError, ValueError) as exc:
            raise self._gone(exc) from exc
        if waiting:
            self._take(self._read(0))

    def receive(self, timeout: float = REPLY_TIMEOUT) -> p.Packet:
        """The next non-LOG packet; ``ProtocolError`` after ``timeout`` s of silence or if the device died."""
        deadline = time.monotonic() + timeout
        while not self._pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                if self.liveness():
                    raise self._gone(None)
                raise p.ProtocolError(
                    f"{self.name} sent nothing expected for {timeout:g} s",
                    "check that the board runs the streaming runner and that nothing else holds the port",
                )
            chunk = self._read(min(remaining, 0.2))
            if chunk:
                self._take(chunk)
            elif self.liveness():
                raise self._gone(None)
        return self._pending.popleft()

    def _expect_reply(self, seq: int, timeout: float = REPLY_TIMEOUT, on_output=None) -> p.Ack:
        """Wait for the ACK of request ``seq`` (CREDITs and OUTPUTs on the way are taken in)."""
        while True:
            message = self.receive(timeout).message
            if isinstance(message, p.Ack) and message.ref_seq == seq:
                return message
            self._dispatch(message, on_output)

    def _dispatch(self, message, on_output) -> None:
        if isinstance(message, p.Credit):
            self.credits += message.frames
        elif isinstance(message, p.Output) and on_output is not None:
            on_output(message)
        elif isinstance(message, p.Tensor):
            self._take_tensor(message)
        elif isinstance(message, p.Error):
            raise DeviceError(message, self.name)
        elif isinstance(message, p.Boot):
            raise p.ProtocolError(f"{self.name} rebooted unexpectedly: {message.banner}", "see the device log for a crash")
        else:
            raise p.ProtocolError(f"{self.name} sent an unexpected {type(message).__name__}", _PROTOCOL_FIX)

    # -------------------------------------------------------------- requests
    def wait_boot(self, timeout: float = REPLY_TIMEOUT) -> p.Boot:
        """The banner a device sends after its reset; noise before it is ignored (and a HELLO whose reply never
        came no longer holds frames back: the reset superseded it)."""
        self._synced = False
        self._awaiting_hello_reply = False
        self.loaded.clear()
        self.stats.boots += 1
        self._rx_seq = None
        deadline = time.monotonic() + timeout
        while True:
            try:
                packet = self.receive(max(0.0, deadline - time.monotonic()))
            except p.ProtocolError as exc:
                if "sent nothing" not in str(exc):
                    raise
                raise p.ProtocolError(
                    f"{self.name} sent no boot banner within {timeout:g} s",
                    "check that the board runs the streaming runner (flash it) and that the port is right",
                ) from None
            if isinstance(packet.message, p.Boot):
                self.banner = packet.message.banner  # for people: the report shows it (chip, revision, reset)
                return packet.message

    def hello(self, timeout: float = REPLY_TIMEOUT) -> p.Info:
        """Negotiate the version; the device restarts its numbering and grants fresh credits."""
        self.send(p.Hello(p.PROTOCOL_VERSION, p.PROTOCOL_VERSION), prefix=b"\x00")
        message = self.receive(timeout).message
        if isinstance(message, p.Error):
            raise DeviceError(message, self.name)
        self.info, self.credits, self.max_payload = message, message.credits, message.max_payload
        return message

    def request(self, message, timeout: float = REPLY_TIMEOUT) -> p.Ack:
        return self._expect_reply(self.send(message), timeout)

    def slots_for(self, blobs: list[bytes]) -> list[int]:
        """A slot per model of a pipeline: where the device already holds it, else a free one, else the one
        longest unused (of those this pipeline does not need), so that pipelines cases alternate between stay
        loaded side by side."""
        self._tick += 1
        chosen: list[int] = []
        for data in blobs:
            sha256 = hashlib.sha256(data).digest()
            held = [s for s, h in self.loaded.items() if h == sha256 and s not in chosen]
            free = [s for s in range(p.MODEL_SLOTS) if s not in self.loaded and s not in chosen]
            oldest = sorted((s for s in self.loaded if s not in chosen), key=lambda s: self._last_use.get(s, 0))
            chosen.append((held or free or oldest)[0])
        for slot in chosen:
            self._last_use[slot] = self._tick
        return chosen

    def upload(self, slot: int, name: str, data: bytes) -> bool:
        """MODEL_BEGIN, MODEL_CHUNKs and MODEL_END, each acknowledged; the device checks size and SHA-256.

        False when the slot already held these bytes (its SHA-256 checked when they were uploaded): a device
        kept from an earlier case answers MODEL_BEGIN so, and nothing more is sent.
        """
        sha256 = hashlib.sha256(data).digest()
        begin = self.request(p.ModelBegin(slot, len(data), sha256, name))  # refused: the slot is as it was
        if begin.detail == p.MODEL_KEPT:
            self.loaded[slot] = sha256
            self.stats.models_kept += 1
            return False
        self.loaded.pop(slot, None)  # whatever the slot held is gone
        if begin.detail:
            raise p.ProtocolError(f"{self.name} answered MODEL_BEGIN with ACK detail {begin.detail.hex()}",
                                  _PROTOCOL_FIX)
        chunk = p.max_chunk_size(self.max_payload)
        for offset in range(0, len(data), chunk):
            self.request(p.ModelChunk(slot, offset, data[offset : offset + chunk]))
        self.request(p.ModelEnd(slot), timeout=REPLY_TIMEOUT + len(data) / 10_000)
        self.loaded[slot] = sha256
        self.stats.models_uploaded += 1
        return True

    def configure(self, config: p.Configure) -> list[p.ConfigureAckModule]:
        self._probe = None  # CONFIGURE discards an armed probe (protocol.md 7.8)
        return p.unpack_configure_ack(self.request(config).detail)

    def reset(self) -> None:
        self._probe = None  # so does RESET
        self.request(p.Reset())

    # -------------------------------------------------------------- probes (protocol.md 0x0A PROBE, 7.8)
    def arm_probe(self, module: int, window: int, names, timeout: float = REPLY_TIMEOUT) -> None:
        """PROBE: when module ``module`` runs window ``window`` (its run number since the last RESET/CONFIGURE),
        the device captures the tensors ``names`` of that run; they arrive while the frames stream (``probed``).
        Arm it after the RESET that starts the stream (RESET discards it)."""
        names = tuple(names)
        self._probe = None  # any PROBE discards the armed one, also one the device refuses
        try:
            self.request(p.Probe(module, window, names), timeout)
        except DeviceError as exc:
            if exc.code == p.ErrorCode.UNKNOWN_MESSAGE:
                raise p.ProtocolError(f"{self.name} cannot probe tensors: it answered PROBE with UNKNOWN_MESSAGE "
                                      "(a runner older than docs/protocol.md's 0x0A PROBE)",
                                      "flash a current runner") from None
            if exc.code == p.ErrorCode.BAD_CONFIG:
                raise p.ProtocolError(exc.cause, "probe a module of the configuration before its window runs, and name "
                                      "tensors of its .espdl (python -m harness.espdl FILE lists them)") from None
            raise
        self._probe = ArmedProbe(module, window, names, p.TensorAssembler(self.name))

    def _take_tensor(self, t: p.Tensor) -> None:
        probe = self._probe
        if probe is None or (t.module, t.window) != (probe.module, probe.window):
            raise p.ProtocolError(f"{self.name} sent tensor '{t.name}' of module {t.module}, window {t.window}, which "
                                  f"no armed probe asked for", _PROTOCOL_FIX)
        expected = len(probe.received)
        if t.index != expected or expected >= len(probe.names) or t.name != probe.names[expected]:
            wanted = f"'{probe.names[expected]}' (index {expected})" if expected < len(probe.names) else "nothing more"
            raise p.ProtocolError(f"{self.name} sent tensor '{t.name}' (index {t.index}) of module {t.module}, window "
                                  f"{t.window} where {wanted} was due", _PROTOCOL_FIX)
        whole = probe.assembler.add(t)
        if whole is not None:
            probe.received[whole.name] = whole

    def probed(self) -> dict[str, QTensor]:
        """The armed probe's tensors once its run has happened (call it after ``stream``: they come before the
        OUTPUT of that run and FLUSH's ACK): name -> QTensor in ESP-DL's on-chip shape (int8/int16 with their
        exponent, float32 with exponent 0), in PROBE's order. ``ProtocolError`` when the run has not happened."""
        probe = self._probe
        if probe is None:
            raise p.ProtocolError(f"no probe is armed on {self.name}", "call arm_probe() after RESET, then stream")
        self._poll()
        while self._pending:  # what came after the stream (nothing, if the host waited for FLUSH's ACK)
            self._dispatch(self._pending.popleft().message, None)
        if len(probe.received) < len(probe.names):
            pending = probe.assembler.pending
            got = f"{len(probe.received)} of {len(probe.names)} tensors" + (
                f" and part of '{pending.name}'" if pending is not None else "")
            raise p.ProtocolError(
                f"{self.name} sent {got} of the probe of module {probe.module}, window {probe.window}: that run "
                f"never happened", f"stream at least {probe.window + 1} windows of module {probe.module} after arming "
                "the probe (each sequence starts after RESET, which discards it)")
        self._probe = None
        return {name: QTensor(t.array(), t.exponent) for name, t in probe.received.items()}

    def probe(self, module: int, window: int, names, run: Callable[[], object]) -> dict[str, QTensor]:
        """``arm_probe``, ``run()`` (which streams, e.g. ``lambda: link.stream(frames, on_output)``), then
        ``probed()``."""
        self.arm_probe(module, window, names)
        run()
        return self.probed()

    def stream(self, frames: np.ndarray, on_output: Callable[[p.Output], None], first_frame: int = 0) -> None:
        """Send ``frames`` ``[T, C]`` within the device's credits, then FLUSH.

        ``first_frame`` is the number of frames the device has had since its last RESET. Several
        FRAMES messages stay in flight (up to the credits); every OUTPUT goes to ``on_output``.
        """
        frame_bytes = frames.shape[1] * frames.dtype.itemsize
        per_message = max(1, p.max_frames_per_message(self.max_payload, frame_bytes))
        sent = 0
        while sent < len(frames):
            self._poll()
            while self._pending or self.credits == 0:
                self._dispatch(self.receive(STREAM_TIMEOUT).message, on_output)
            count = min(per_message, self.credits, len(frames) - sent)
            self.send(p.Frames.from_array(first_frame + sent, frames[sent : sent + count]))
            self.credits -= count
            sent += count
        self._expect_reply(self.send(p.Flush()), STREAM_TIMEOUT, on_output)


def boot_and_hello(link: DeviceLink, reset: Callable[[], None], timeout: float = REPLY_TIMEOUT) -> p.Info | None:
    """Reset the device and greet it; None when it neither sends a boot banner nor answers HELLO (it runs
    something else).

    A banner can be lost while the port is reopened or flushed around the reset (esptool's connection, a USB
    serial bridge re-enumerating); a runner that booted answers HELLO all the same.
    """
    reset()
    try:
        link.wait_boot(timeout)
    except p.ProtocolError as exc:
        if "no boot banner" not in str(exc):
            raise
        try:
            return link.hello(timeout=min(timeout, 2.0))
        except p.ProtocolError:
            return None
    return link.hello()


@dataclass
class StreamResult:
    """What a device returned for a set of sequences."""

    outputs: list[QTensor]  # per reported module: [S, T, C]; a per-window output: [S, windows, values]
    latency_us: list[float]  # mean per module and window
    cycles: list[float]  # mean per module and window (0 where the device does not count cycles)
    output_steps: list[list[int]] = field(default_factory=list)  # per sequence: step of each last-module OUTPUT
    # per module: (microseconds, cycles, windows) of each OUTPUT message, summed over its windows (with output
    # batching off, one run each): the real-time figures' samples
    timings: list[list[tuple[int, int, int]]] = field(default_factory=list)


def default_output_batch(link: DeviceLink, frames: int, channels: int, bits: int, modules: int, windows: int) -> int:
    """Windows per OUTPUT (each ``frames`` x ``channels``): as many as fit one message, at most a sequence's worth."""
    fit = p.max_windows_per_output(link.max_payload, frames, channels, bits, modules)
    return max(1, min(fit, windows))


def queue_depth_for(window: int, modules: int, frames: int) -> int:
    """Round-robin with fewer frames per window than modules backs up: let a whole sequence wait."""
    return 0 if window >= modules else frames // window


def load_pipeline(link: DeviceLink, exports: list, window: int, schedule: str, all_modules: bool,
                  output_batch: int = 1, queue_depth: int = 0) -> list[p.ConfigureAckModule]:
    """Upload every module's streaming ``.espdl`` and configure the pipeline; check what the device loaded.

    A device kept from earlier cases still holds their models in slots this pipeline does not use; when it runs
    out of memory with them there, it is reset (every slot emptied) and loaded once more.
    """
    args = (window, schedule, all_modules, output_batch, queue_depth)
    try:
        return _load_pipeline(link, exports, *args)
    except DeviceError as exc:
        needed = {hashlib.sha256(e.path.read_bytes()).digest() for e in exports}
        stale = sorted(slot for slot, sha256 in link.loaded.items() if sha256 not in needed)
        if exc.code != p.ErrorCode.OUT_OF_MEMORY or not stale or link.reset_device is None:
            raise
        link.on_log(p.LogLevel.WARNING, f"{exc}; slots {stale} hold models of earlier cases: resetting to free them")
        if boot_and_hello(link, link.reset_device) is None:
            raise
        return _load_pipeline(link, exports, *args)


def _load_pipeline(link: DeviceLink, exports: list, window: int, schedule: str, all_modules: bool,
                   output_batch: int, queue_depth: int) -> list[p.ConfigureAckModule]:
    blobs = [e.path.read_bytes() for e in exports]
    slots = link.slots_for(blobs)
    for e, slot, data in zip(exports, slots, blobs):
        link.upload(slot, e.path.name, data)
    modules = tuple(
        p.ModuleConfig(
            slot=slot,
            input_layout=p.Layout[e.layouts["input"]],
            output_layout=p.Layout[e.layouts["output"]],
            input=e.input,
            output=e.output,
            cache_input=e.cache_input or "",
            cache_output=e.cache_output or "",
        )
        for e, slot in zip(exports, slots)
    )
    kind = p.Schedule.ROUND_ROBIN if schedule == "round-robin" else p.Schedule.SEQUENTIAL
    flags = p.CONFIGURE_FLAG_ALL_OUTPUTS if all_modules else 0
    acks = link.configure(
        p.Configure(window=window, schedule=kind, flags=flags, queue_depth=queue_depth, output_batch=output_batch, modules=modules)
    )
    for e, ack in zip(exports, acks):
        if (ack.input_exponent, ack.output_exponent) != (e.in_exponent, e.out_exponent):
            raise p.ProtocolError(
                f"{link.name} loaded module {e.module} with exponents {ack.input_exponent}/{ack.output_exponent}, "
                f"the export says {e.in_exponent}/{e.out_exponent}",
                "the device runs another model or target; re-upload or flash the right runner",
            )
    return acks


def run_sequences(link: DeviceLink, frames: Frames, window: int, exports: list, all_modules: bool) -> StreamResult:
    """Stream each sequence from a RESET; assemble every reported module's outputs ``[S, T, C]``.

    A per-window output (``export.per_window``: a head with F frames or FLAT values per window) becomes
    ``[S, windows, F x C]``: one row per window, its values in time-major order.

    A window too large for one OUTPUT arrives in parts (protocol.md section 7.7): they are joined into the
    window (its timings counted once); a part missing, repeated, out of order or left incomplete is a
    ``ProtocolError`` (``OutputPartError``) naming the module, the window and the frames.
    """
    s, t = frames.values.shape[:2]
    modules = len(exports)
    rows = [e.out_frames for e in exports]  # rows of Output.array() per window
    reported = list(range(modules)) if all_modules else [modules - 1]
    data: dict[int, np.ndarray] = {}
    exponents: dict[int, int] = {}
    counts: dict[int, int] = {}
    latency, cycles, runs = np.zeros(modules), np.zeros(modules), np.zeros(modules)
    samples: list[list[tuple[int, int, int]]] = [[] for _ in range(modules)]
    steps: list[list[int]] = []
    for seq_index in range(s):
        link.reset()
        seq_steps: list[int] = []
        parts = p.PartAssembler(link.name)

        def collect(received: p.Output, seq_index=seq_index, seq_steps=seq_steps, parts=parts) -> None:
            out = parts.add(received)  # a whole OUTPUT, or a window once its last part is in
            if out is None:
                return
            array = out.array()  # [windows * rows, C]
            if out.module not in data:
                data[out.module] = np.zeros((s, t // window * rows[out.module], array.shape[1]), dtype=array.dtype)
                exponents[out.module] = out.exponent
            start = out.window * rows[out.module]
            data[out.module][seq_index, start : start + len(array)] = array
            counts[out.module] = counts.get(out.module, 0) + out.windows
            if out.module == modules - 1:
                seq_steps.append(out.step)
                for k, timing in enumerate(out.timings):
                    latency[k] += timing.microseconds
                    cycles[k] += timing.cycles
                    runs[k] += out.windows
                    samples[k].append((timing.microseconds, timing.cycles, out.windows))

        link.stream(frames.values[seq_index], collect)
        parts.finish()  # FLUSH's ACK came: no window may be left half sent
        steps.append(seq_steps)
    expected_windows = s * (t // window)
    for k in reported:
        if counts.get(k, 0) != expected_windows:
            raise p.ProtocolError(
                f"{link.name} returned {counts.get(k, 0)} of {expected_windows} window outputs for module {k}",
                "the runner dropped work; see the device log",
            )
    runs[runs == 0] = 1
    outputs = [QTensor(data[k].reshape(s, t // window, -1) if exports[k].per_window else data[k], exponents[k])
               for k in reported]
    return StreamResult(outputs, list(latency / runs), list(cycles / runs), steps, samples)


def configure_pipeline(link: DeviceLink, exports: list, frames: Frames, window: int, schedule: str = "round-robin",
                       all_modules: bool = True, batched: bool = True) -> None:
    """Upload ``exports`` and configure them as a deployment would: outputs batched to fill OUTPUT messages.

    Streaming exports run in windows of ``window`` frames; offline exports run with ``window`` = the
    sequence length, each sequence as one window.
    """
    n = len(exports)
    t = frames.values.shape[1]
    reported = exports if all_modules else exports[-1:]
    widest = max(reported, key=lambda e: e.out_frames * e.out_channels)
    batch = default_output_batch(link, widest.out_frames, widest.out_channels, frames.values.dtype.itemsize * 8, n,
                                 t // window)
    load_pipeline(link, exports, window, schedule, all_modules, output_batch=batch if batched else 1,
                  queue_depth=queue_depth_for(window, n, t))


def stream_pipeline(link: DeviceLink, exports: list, frames: Frames, window: int, schedule: str = "round-robin",
                    all_modules: bool = True, batched: bool = True) -> StreamResult:
    """``configure_pipeline``, then stream every sequence from a RESET."""
    configure_pipeline(link, exports, frames, window, schedule, all_modules, batched)
    return run_sequences(link, frames, window, exports, all_modules)
