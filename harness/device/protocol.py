"""Wire protocol between the harness and a streaming runner (board or virtual board).

Binary over a serial console loses, splits and merges bytes (USB-Serial-JTAG
drops input the app does not drain in time; ROM boot text precedes the app),
so every message travels as one self-delimiting, checked frame:
``COBS(type | seq | len | payload | crc32) 0x00``. A receiver resynchronises
at the next ``0x00`` and reports a damaged frame as a ``FrameError``, never
as a value. Input frames are flow-controlled by credits. ``docs/protocol.md``
is the specification; ``docs/protocol-vectors.json`` holds the shared test
vectors the C firmware is tested against.
"""

from __future__ import annotations

import struct
import zlib
import dataclasses
from dataclasses import dataclass
from enum import IntEnum
from typing import ClassVar, Union

import numpy as np
from cobs import cobs

from harness.errors import HarnessError

PROTOCOL_VERSION = 1
DEFAULT_MAX_PAYLOAD = 4096  # what the firmware and the virtual board advertise unless built otherwise
MAX_PAYLOAD_LIMIT = 0xFFFF  # `len` is a u16
DEFAULT_QUEUE_DEPTH = 4  # windows a device holds when CONFIGURE.queue_depth is 0

HEADER = struct.Struct("<BHH")  # type, seq, len
CRC = struct.Struct("<I")
MIN_BODY_SIZE = HEADER.size + CRC.size  # 9
FRAMES_HEADER_SIZE = 8  # first_frame u32, count u16, frame_bytes u16
OUTPUT_HEADER_SIZE = 19  # window u32 ... timing_count u8; then 16 bytes per timing, then the data
OUTPUT_PART_SIZE = 4  # a part (windows 0): part_first_frame u16, part_frames u16 after the timings
MODEL_CHUNK_HEADER_SIZE = 5  # slot u8, offset u32
CONFIGURE_FLAG_ALL_OUTPUTS = 0x01
MODEL_SLOTS = 16  # slots 0..15 of every runner (docs/protocol.md MODEL_BEGIN)
MODEL_KEPT = b"\x01"  # ACK detail of MODEL_BEGIN: the slot already holds this model; no chunks or MODEL_END follow
BAD_FRAME_REF_SEQ = 0xFFFF
PROBE_HEADER_SIZE = 6  # module u8, window u32, name_count u8; then the names
MAX_PROBE_NAMES = 255  # name_count is a u8
TENSOR_HEADER_SIZE = 19  # module .. rank (13), first_element u32, the name's u16 length; + 4 x rank + the name
MAX_TENSOR_RANK = 8
TENSOR_BITS = (8, 16, 32)  # int8, int16, float32 (IEEE 754 binary32, exponent 0)


class MessageType(IntEnum):
    HELLO = 0x01
    MODEL_BEGIN = 0x02
    MODEL_CHUNK = 0x03
    MODEL_END = 0x04
    CONFIGURE = 0x05
    RESET = 0x06
    FRAMES = 0x07
    FLUSH = 0x08
    PROBE = 0x0A  # 0x09 stays unassigned
    ACK = 0x80
    INFO = 0x81
    OUTPUT = 0x82
    CREDIT = 0x83
    LOG = 0x84
    BOOT = 0x85
    TENSOR = 0x87  # 0x86 stays unassigned
    ERROR = 0x8F

    @property
    def from_device(self) -> bool:
        return bool(self & 0x80)


class ErrorCode(IntEnum):
    BAD_FRAME = 1
    UNKNOWN_MESSAGE = 2
    VERSION_UNSUPPORTED = 3
    BAD_PAYLOAD = 4
    MODEL_SHA_MISMATCH = 5
    MODEL_LOAD_FAILED = 6
    OUT_OF_MEMORY = 7
    BAD_CONFIG = 8
    NOT_CONFIGURED = 9
    CREDIT_EXCEEDED = 10
    FRAME_OUT_OF_ORDER = 11
    BACKLOG_FULL = 12
    INTERNAL = 13


class Layout(IntEnum):
    NWC = 0  # frame axis 1: [1, frames, channels]
    NCW = 1  # frame axis 2: [1, channels, frames]
    FLAT = 2  # the last module's output that is not 3-D ([1, 16], rank 1 or 4): frames 1, channels = its elements,
    #           in the tensor's memory order (row-major); never a module's input, never split into parts


class Schedule(IntEnum):
    ROUND_ROBIN = 0
    SEQUENTIAL = 1


class LogLevel(IntEnum):
    ERROR = 1
    WARNING = 2
    INFO = 3
    DEBUG = 4
    VERBOSE = 5


class FrameError(Exception):
    """A frame that cannot be used: damaged on the wire, or well framed but not a valid message.

    ``reason`` is one of ``cobs``, ``short``, ``length``, ``crc``, ``oversize`` (framing:
    the device answers ERROR BAD_FRAME) or ``unknown-type`` / ``payload`` (a good frame
    whose content is wrong: UNKNOWN_MESSAGE / BAD_PAYLOAD, with ``msg_type`` and ``seq`` set).
    """

    FRAMING = frozenset({"cobs", "short", "length", "crc", "oversize"})

    def __init__(self, reason: str, detail: str = "", *, data: bytes = b"",
                 msg_type: int | None = None, seq: int | None = None):
        self.reason = reason
        self.detail = detail
        self.data = bytes(data[:64])  # the start of the discarded chunk, for diagnostics
        self.msg_type = msg_type
        self.seq = seq
        super().__init__(f"bad frame ({reason})" + (f": {detail}" if detail else ""))

    @property
    def error_code(self) -> ErrorCode:
        """The ERROR code a device answers this with."""
        if self.reason in self.FRAMING:
            return ErrorCode.BAD_FRAME
        return ErrorCode.UNKNOWN_MESSAGE if self.reason == "unknown-type" else ErrorCode.BAD_PAYLOAD


class ProtocolError(HarnessError):
    """The device or the link broke the protocol (lost frame, ERROR reply, version mismatch)."""


# --------------------------------------------------------------------------- payload helpers

class _Reader:
    """Cursor over a payload; every shortfall is a FrameError('payload')."""

    def __init__(self, payload: bytes, name: str):
        self.buf = memoryview(payload)
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> FrameError:
        return FrameError("payload", f"{self.name}: {what}")

    def take(self, st: struct.Struct) -> tuple:
        if self.pos + st.size > len(self.buf):
            raise self.fail(f"payload ends at byte {len(self.buf)}, needs {self.pos + st.size}")
        values = st.unpack_from(self.buf, self.pos)
        self.pos += st.size
        return values

    def bytes(self, n: int) -> bytes:
        if self.pos + n > len(self.buf):
            raise self.fail(f"payload ends at byte {len(self.buf)}, needs {self.pos + n}")
        out = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return out

    def str(self) -> str:
        (n,) = self.take(_U16)
        try:
            return self.bytes(n).decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.fail(f"string is not UTF-8 ({e.reason})") from None

    def rest(self) -> bytes:
        out = bytes(self.buf[self.pos:])
        self.pos = len(self.buf)
        return out

    def enum(self, cls, value: int):
        try:
            return cls(value)
        except ValueError:
            raise self.fail(f"{value} is not a valid {cls.__name__}") from None

    def done(self) -> None:
        if self.pos != len(self.buf):
            raise self.fail(f"{len(self.buf) - self.pos} trailing byte(s)")


_U16 = struct.Struct("<H")


def _pack(st: struct.Struct, *values) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as e:
        raise ValueError(f"cannot pack {values}: {e}") from None


def _str(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _pack(_U16, len(raw)) + raw


# --------------------------------------------------------------------------- messages
# Each message: TYPE, pack() -> payload, unpack(payload) -> message. Layouts: docs/protocol.md.

@dataclass(frozen=True)
class Hello:
    min_version: int
    max_version: int
    TYPE: ClassVar[MessageType] = MessageType.HELLO
    _S: ClassVar = struct.Struct("<HH")

    def pack(self) -> bytes:
        return _pack(self._S, self.min_version, self.max_version)

    @classmethod
    def unpack(cls, payload: bytes) -> Hello:
        r = _Reader(payload, "HELLO")
        msg = cls(*r.take(cls._S))
        r.done()
        return msg


@dataclass(frozen=True)
class ModelBegin:
    slot: int
    size: int
    sha256: bytes  # 32 bytes
    name: str
    TYPE: ClassVar[MessageType] = MessageType.MODEL_BEGIN
    _S: ClassVar = struct.Struct("<BI32s")

    def pack(self) -> bytes:
        if len(self.sha256) != 32:
            raise ValueError(f"sha256 must be 32 bytes, got {len(self.sha256)}")
        return _pack(self._S, self.slot, self.size, self.sha256) + _str(self.name)

    @classmethod
    def unpack(cls, payload: bytes) -> ModelBegin:
        r = _Reader(payload, "MODEL_BEGIN")
        slot, size, sha = r.take(cls._S)
        msg = cls(slot, size, sha, r.str())
        r.done()
        return msg


@dataclass(frozen=True)
class ModelChunk:
    slot: int
    offset: int
    data: bytes
    TYPE: ClassVar[MessageType] = MessageType.MODEL_CHUNK
    _S: ClassVar = struct.Struct("<BI")

    def pack(self) -> bytes:
        return _pack(self._S, self.slot, self.offset) + bytes(self.data)

    @classmethod
    def unpack(cls, payload: bytes) -> ModelChunk:
        r = _Reader(payload, "MODEL_CHUNK")
        slot, offset = r.take(cls._S)
        return cls(slot, offset, r.rest())


@dataclass(frozen=True)
class ModelEnd:
    slot: int
    TYPE: ClassVar[MessageType] = MessageType.MODEL_END
    _S: ClassVar = struct.Struct("<B")

    def pack(self) -> bytes:
        return _pack(self._S, self.slot)

    @classmethod
    def unpack(cls, payload: bytes) -> ModelEnd:
        r = _Reader(payload, "MODEL_END")
        msg = cls(*r.take(cls._S))
        r.done()
        return msg


@dataclass(frozen=True)
class ModuleConfig:
    slot: int
    input_layout: Layout
    output_layout: Layout
    input: str
    output: str
    cache_input: str = ""  # "" = no cache
    cache_output: str = ""
    _S: ClassVar = struct.Struct("<BBB")

    def pack(self) -> bytes:
        if self.input_layout == Layout.FLAT:
            raise ValueError("input_layout FLAT: a module's input is NWC or NCW (FLAT is for the last module's output)")
        return (_pack(self._S, self.slot, self.input_layout, self.output_layout)
                + b"".join(_str(s) for s in (self.input, self.output, self.cache_input, self.cache_output)))

    @classmethod
    def read(cls, r: _Reader) -> ModuleConfig:
        slot, lin, lout = r.take(cls._S)
        lin, lout = r.enum(Layout, lin), r.enum(Layout, lout)
        if lin == Layout.FLAT:
            raise r.fail("input_layout 2 (FLAT): a module's input is NWC or NCW")
        return cls(slot, lin, lout, r.str(), r.str(), r.str(), r.str())


@dataclass(frozen=True)
class Configure:
    window: int
    schedule: Schedule
    flags: int  # bit0 CONFIGURE_FLAG_ALL_OUTPUTS; other bits reserved (0)
    queue_depth: int  # 0 = device default
    output_batch: int  # windows per OUTPUT of each reported module; 0 = 1
    modules: tuple[ModuleConfig, ...]
    TYPE: ClassVar[MessageType] = MessageType.CONFIGURE
    _S: ClassVar = struct.Struct("<HBBHHB")

    def pack(self) -> bytes:
        head = _pack(self._S, self.window, self.schedule, self.flags, self.queue_depth, self.output_batch,
                     len(self.modules))
        return head + b"".join(m.pack() for m in self.modules)

    @classmethod
    def unpack(cls, payload: bytes) -> Configure:
        r = _Reader(payload, "CONFIGURE")
        window, schedule, flags, depth, batch, count = r.take(cls._S)
        schedule = r.enum(Schedule, schedule)
        modules = tuple(ModuleConfig.read(r) for _ in range(count))
        r.done()
        return cls(window, schedule, flags, depth, batch, modules)


@dataclass(frozen=True)
class Reset:
    TYPE: ClassVar[MessageType] = MessageType.RESET

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, payload: bytes) -> Reset:
        _Reader(payload, "RESET").done()
        return cls()


_INT_DTYPES = {1: np.dtype("<i1"), 2: np.dtype("<i2")}


@dataclass(frozen=True)
class Frames:
    first_frame: int
    count: int
    frame_bytes: int
    data: bytes  # count x frame_bytes; one frame = C values, int8 or int16 LE
    TYPE: ClassVar[MessageType] = MessageType.FRAMES
    _S: ClassVar = struct.Struct("<IHH")

    def pack(self) -> bytes:
        if len(self.data) != self.count * self.frame_bytes:
            raise ValueError(f"FRAMES data is {len(self.data)} bytes, count x frame_bytes = "
                             f"{self.count * self.frame_bytes}")
        return _pack(self._S, self.first_frame, self.count, self.frame_bytes) + bytes(self.data)

    @classmethod
    def unpack(cls, payload: bytes) -> Frames:
        r = _Reader(payload, "FRAMES")
        first, count, frame_bytes = r.take(cls._S)
        data = r.rest()
        if len(data) != count * frame_bytes:
            raise r.fail(f"{len(data)} data bytes, count {count} x frame_bytes {frame_bytes} = {count * frame_bytes}")
        return cls(first, count, frame_bytes, data)

    @classmethod
    def from_array(cls, first_frame: int, array: np.ndarray) -> Frames:
        """``array`` is int8 or int16 ``[frames, channels]`` (NWC, time-major)."""
        a = np.asarray(array)
        if a.ndim != 2 or a.dtype not in (np.int8, np.int16):
            raise ValueError(f"frames must be a 2-D int8/int16 array [frames, channels], got {a.dtype} {a.shape}")
        return cls(first_frame, a.shape[0], a.shape[1] * a.itemsize, a.astype(a.dtype.newbyteorder("<")).tobytes())

    def array(self, dtype=np.int8) -> np.ndarray:
        """The frames as ``[count, channels]`` of ``dtype`` (int8 or int16)."""
        dt = _INT_DTYPES[np.dtype(dtype).itemsize]
        if self.frame_bytes % dt.itemsize:
            raise ValueError(f"frame_bytes {self.frame_bytes} is not a multiple of {dt.itemsize}")
        values = np.frombuffer(self.data, dtype=dt).reshape(self.count, self.frame_bytes // dt.itemsize)
        return values.astype(dt.newbyteorder("="))


@dataclass(frozen=True)
class Flush:
    TYPE: ClassVar[MessageType] = MessageType.FLUSH

    def pack(self) -> bytes:
        return b""

    @classmethod
    def unpack(cls, payload: bytes) -> Flush:
        _Reader(payload, "FLUSH").done()
        return cls()


@dataclass(frozen=True)
class Ack:
    ref_type: int
    ref_seq: int
    detail: bytes = b""  # CONFIGURE: pack_configure_ack(); MODEL_BEGIN: empty or MODEL_KEPT; otherwise empty
    TYPE: ClassVar[MessageType] = MessageType.ACK
    _S: ClassVar = struct.Struct("<BH")

    def pack(self) -> bytes:
        return _pack(self._S, self.ref_type, self.ref_seq) + bytes(self.detail)

    @classmethod
    def unpack(cls, payload: bytes) -> Ack:
        r = _Reader(payload, "ACK")
        ref_type, ref_seq = r.take(cls._S)
        return cls(ref_type, ref_seq, r.rest())


@dataclass(frozen=True)
class ConfigureAckModule:
    input_exponent: int
    output_exponent: int
    bits: int
    input_channels: int
    output_channels: int
    _S: ClassVar = struct.Struct("<bbBHH")


def pack_configure_ack(modules: list[ConfigureAckModule]) -> bytes:
    s = ConfigureAckModule._S
    return b"".join(_pack(s, m.input_exponent, m.output_exponent, m.bits, m.input_channels, m.output_channels)
                    for m in modules)


def unpack_configure_ack(detail: bytes) -> list[ConfigureAckModule]:
    s = ConfigureAckModule._S
    if len(detail) % s.size:
        raise FrameError("payload", f"ACK(CONFIGURE) detail is {len(detail)} bytes, not a multiple of {s.size}")
    return [ConfigureAckModule(*v) for v in s.iter_unpack(detail)]


@dataclass(frozen=True)
class Info:
    version: int
    max_payload: int
    credits: int
    free_internal_bytes: int
    free_psram_bytes: int
    target: str  # "esp32p4" / "esp32s3"
    build_id: str
    esp_dl_version: str
    idf_version: str
    device_kind: str  # "board" / "virtual"
    TYPE: ClassVar[MessageType] = MessageType.INFO
    _S: ClassVar = struct.Struct("<HHHII")

    def pack(self) -> bytes:
        head = _pack(self._S, self.version, self.max_payload, self.credits,
                     self.free_internal_bytes, self.free_psram_bytes)
        return head + b"".join(_str(s) for s in (self.target, self.build_id, self.esp_dl_version,
                                                 self.idf_version, self.device_kind))

    @classmethod
    def unpack(cls, payload: bytes) -> Info:
        r = _Reader(payload, "INFO")
        head = r.take(cls._S)
        msg = cls(*head, r.str(), r.str(), r.str(), r.str(), r.str())
        r.done()
        return msg


@dataclass(frozen=True)
class Timing:
    """One module's run time in an OUTPUT, summed over the batch's windows: u64 each, so neither a run of
    more than 2^32 CPU cycles nor a batch's sum wraps."""

    cycles: int
    microseconds: int
    _S: ClassVar = struct.Struct("<QQ")


@dataclass(frozen=True)
class Output:
    """One module's outputs of ``windows`` consecutive windows (CONFIGURE.output_batch), from ``window`` on;
    or, with ``windows`` 0, a *part* of window ``window``: its frames ``part_first_frame`` ..
    ``part_first_frame + part_frames - 1`` (protocol.md section 7.7, a window too large for one OUTPUT).

    ``frames`` is the frame count F of one window's output: W for a module before the last, any F >= 1 for the
    last module (a per-window output, e.g. its last F frames), and 1 for ``Layout.FLAT`` (an output that is not
    3-D, ``channels`` its element count)."""

    window: int  # the batch's first window; a part: its window
    windows: int  # consecutive windows in this message, >= 1; 0: this message is a part of one window
    module: int
    step: int  # the step at which `module` ran on the batch's last window (a part: on its window)
    layout: Layout  # NWC, NCW, or FLAT (frames 1, never a part)
    bits: int  # 8 or 16
    exponent: int
    frames: int  # frame-axis size F of ONE window's tensor (a part too: the whole window's); FLAT: 1
    channels: int  # FLAT: the tensor's element count
    timings: tuple[Timing, ...]  # modules 0..module, each summed over the batch's windows (a part: its window's)
    data: bytes  # `windows` tensors of frames x channels values, each in `layout`, in window order, LE; a part:
    #              part_frames x channels values in `layout` (NCW: per channel, its values of the part's frames)
    part_first_frame: int = 0  # a part: its first frame within the window; 0 otherwise
    part_frames: int = 0  # a part: frames it carries, >= 1; 0 otherwise
    TYPE: ClassVar[MessageType] = MessageType.OUTPUT
    _S: ClassVar = struct.Struct("<IHBIBBbHHB")
    _PART: ClassVar = struct.Struct("<HH")

    @property
    def is_part(self) -> bool:
        """A part of one window (``windows`` 0), not whole windows."""
        return self.windows == 0

    @property
    def window_bytes(self) -> int:
        """Bytes of one (whole) window's tensor."""
        return self.frames * self.channels * self.bits // 8

    @property
    def data_frames(self) -> int:
        """Frames ``data`` holds: ``windows`` x ``frames``, or a part's ``part_frames``."""
        return self.part_frames if self.is_part else self.windows * self.frames

    def _data_size(self) -> int:
        return self.data_frames * self.channels * self.bits // 8

    def pack(self) -> bytes:
        if self.bits not in (8, 16):
            raise ValueError(f"bits must be 8 or 16, got {self.bits}")
        if self.layout == Layout.FLAT and (self.frames != 1 or self.is_part):
            raise ValueError(f"a FLAT OUTPUT is whole windows of frames 1, got frames {self.frames}, "
                             f"windows {self.windows}")
        if self.is_part:
            if self.part_frames < 1 or self.part_first_frame + self.part_frames > self.frames:
                raise ValueError(f"OUTPUT part of frames {self.part_first_frame} + {self.part_frames} does not lie "
                                 f"within a window of {self.frames} frames")
        elif self.windows < 1 or self.part_first_frame or self.part_frames:
            raise ValueError(f"an OUTPUT carries at least 1 window and no part fields (or windows 0 for a part), "
                             f"got windows {self.windows}, part {self.part_first_frame} + {self.part_frames}")
        if len(self.data) != self._data_size():
            raise ValueError(f"OUTPUT data is {len(self.data)} bytes, {self.data_frames} frames x channels x bits/8 "
                             f"= {self._data_size()}")
        head = _pack(self._S, self.window, self.windows, self.module, self.step, self.layout, self.bits,
                     self.exponent, self.frames, self.channels, len(self.timings))
        part = _pack(self._PART, self.part_first_frame, self.part_frames) if self.is_part else b""
        return (head + b"".join(_pack(Timing._S, t.cycles, t.microseconds) for t in self.timings) + part
                + bytes(self.data))

    @classmethod
    def unpack(cls, payload: bytes) -> Output:
        r = _Reader(payload, "OUTPUT")
        window, windows, module, step, layout, bits, exponent, frames, channels, n = r.take(cls._S)
        layout = r.enum(Layout, layout)
        if bits not in (8, 16):
            raise r.fail(f"bits {bits} is not 8 or 16")
        if layout == Layout.FLAT and frames != 1:
            raise r.fail(f"layout FLAT with frames {frames}: a FLAT output is one row of channels values per window")
        if layout == Layout.FLAT and windows == 0:
            raise r.fail("layout FLAT in a part (windows 0): a FLAT output is never split into parts")
        timings = tuple(Timing(*r.take(Timing._S)) for _ in range(n))
        first = count = 0
        if windows == 0:  # a part: its frame range follows the timings
            first, count = r.take(cls._PART)
            if count == 0:
                raise r.fail("part_frames 0: an OUTPUT part carries at least 1 frame")
            if first + count > frames:
                raise r.fail(f"part of frames {first}..{first + count - 1} lies beyond a window of {frames} frames")
        data = r.rest()
        size = (count if windows == 0 else windows * frames) * channels * bits // 8
        if len(data) != size:
            what = f"part_frames {count}" if windows == 0 else f"windows {windows} x frames {frames}"
            raise r.fail(f"{len(data)} data bytes, {what} x channels {channels} x {bits // 8} = {size}")
        return cls(window, windows, module, step, layout, bits, exponent, frames, channels, timings, data, first,
                   count)

    def array(self) -> np.ndarray:
        """The tensors as int8/int16 ``[windows * frames, channels]`` (NWC, whatever the wire layout):
        each window's block converted from ``layout``, the blocks concatenated along time in window order.
        FLAT (frames 1): ``[windows, channels]``, one row per window, its elements in the tensor's memory order.
        A part: its frames of the window, ``[part_frames, channels]`` (row i is frame
        ``part_first_frame + i`` of window ``window``); ``join_parts`` assembles a window from its parts."""
        values = np.frombuffer(self.data, dtype=_INT_DTYPES[self.bits // 8])
        blocks, frames = (1, self.part_frames) if self.is_part else (self.windows, self.frames)
        if self.layout in (Layout.NWC, Layout.FLAT):
            values = values.reshape(blocks * frames, self.channels)
        else:
            values = values.reshape(blocks, self.channels, frames).transpose(0, 2, 1)
            values = values.reshape(blocks * frames, self.channels)
        return np.ascontiguousarray(values, dtype=values.dtype.newbyteorder("="))

    @classmethod
    def from_array(cls, window: int, module: int, step: int, array: np.ndarray, exponent: int,
                   timings: tuple[Timing, ...] = (), layout: Layout = Layout.NWC, windows: int = 1) -> Output:
        """``array`` is int8/int16 NWC ``[windows * frames, channels]``: ``windows`` blocks of equal frames,
        first window first; each block is sent in ``layout``. FLAT: ``[windows, channels]``, one row per window."""
        a = np.asarray(array)
        if a.ndim != 2 or a.dtype not in (np.int8, np.int16):
            raise ValueError(f"output must be a 2-D int8/int16 array [frames, channels], got {a.dtype} {a.shape}")
        if windows < 1 or a.shape[0] % windows:
            raise ValueError(f"{a.shape[0]} frames cannot be split into {windows} windows of equal frames")
        frames, channels = a.shape[0] // windows, a.shape[1]
        if layout == Layout.FLAT and frames != 1:
            raise ValueError(f"a FLAT output is one row per window: [windows, channels], got {a.shape} for "
                             f"{windows} window(s)")
        blocks = a.reshape(windows, frames, channels)
        wire = blocks.transpose(0, 2, 1) if layout == Layout.NCW else blocks
        data = np.ascontiguousarray(wire, dtype=a.dtype.newbyteorder("<")).tobytes()
        return cls(window, windows, module, step, Layout(layout), a.itemsize * 8, exponent, frames, channels,
                   tuple(timings), data)

    def part(self, first_frame: int, frames: int) -> Output:
        """Frames ``first_frame`` .. ``first_frame + frames - 1`` of this one-window OUTPUT as a part: the same
        header and timings, ``windows`` 0, the range's data in ``layout`` (NCW: per channel)."""
        if self.windows != 1:
            raise ValueError(f"only a one-window OUTPUT is sent in parts, this one has windows {self.windows}")
        if self.layout == Layout.FLAT:
            raise ValueError("a FLAT output is never sent in parts")
        if frames < 1 or first_frame < 0 or first_frame + frames > self.frames:
            raise ValueError(f"frames {first_frame} + {frames} do not lie within a window of {self.frames} frames")
        rows = self.array()[first_frame:first_frame + frames]
        wire = rows if self.layout == Layout.NWC else rows.T
        data = np.ascontiguousarray(wire, dtype=rows.dtype.newbyteorder("<")).tobytes()
        return dataclasses.replace(self, windows=0, data=data, part_first_frame=first_frame, part_frames=frames)

@dataclass(frozen=True)
class Credit:
    frames: int
    TYPE: ClassVar[MessageType] = MessageType.CREDIT

    def pack(self) -> bytes:
        return _pack(_U16, self.frames)

    @classmethod
    def unpack(cls, payload: bytes) -> Credit:
        r = _Reader(payload, "CREDIT")
        msg = cls(*r.take(_U16))
        r.done()
        return msg


@dataclass(frozen=True)
class Log:
    level: LogLevel
    text: str
    TYPE: ClassVar[MessageType] = MessageType.LOG
    _S: ClassVar = struct.Struct("<B")

    def pack(self) -> bytes:
        return _pack(self._S, self.level) + _str(self.text)

    @classmethod
    def unpack(cls, payload: bytes) -> Log:
        r = _Reader(payload, "LOG")
        (level,) = r.take(cls._S)
        msg = cls(r.enum(LogLevel, level), r.str())
        r.done()
        return msg


@dataclass(frozen=True)
class Boot:
    banner: str
    TYPE: ClassVar[MessageType] = MessageType.BOOT

    def pack(self) -> bytes:
        return _str(self.banner)

    @classmethod
    def unpack(cls, payload: bytes) -> Boot:
        r = _Reader(payload, "BOOT")
        msg = cls(r.str())
        r.done()
        return msg


@dataclass(frozen=True)
class Error:
    code: ErrorCode
    ref_type: int  # 0 for BAD_FRAME
    ref_seq: int  # 0xFFFF for BAD_FRAME
    text: str
    TYPE: ClassVar[MessageType] = MessageType.ERROR
    _S: ClassVar = struct.Struct("<HBH")

    def pack(self) -> bytes:
        return _pack(self._S, self.code, self.ref_type, self.ref_seq) + _str(self.text)

    @classmethod
    def unpack(cls, payload: bytes) -> Error:
        r = _Reader(payload, "ERROR")
        code, ref_type, ref_seq = r.take(cls._S)
        msg = cls(r.enum(ErrorCode, code), ref_type, ref_seq, r.str())
        r.done()
        return msg


@dataclass(frozen=True)
class Probe:
    """Arm a capture (protocol.md 0x0A PROBE): when module ``module`` next runs window ``window`` (its run number
    ``window`` since RESET/CONFIGURE, counted from 0), the device sends the tensors ``names`` of that run as TENSOR
    messages, in this order."""

    module: int
    window: int
    names: tuple[str, ...]  # 1..255 distinct, non-empty tensor names of the module's model
    TYPE: ClassVar[MessageType] = MessageType.PROBE
    _S: ClassVar = struct.Struct("<BIB")

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", tuple(self.names))

    def pack(self) -> bytes:
        problem = _probe_names_problem(self.names)
        if problem:
            raise ValueError(f"PROBE {problem}")
        return _pack(self._S, self.module, self.window, len(self.names)) + b"".join(_str(n) for n in self.names)

    @classmethod
    def unpack(cls, payload: bytes) -> Probe:
        r = _Reader(payload, "PROBE")
        module, window, count = r.take(cls._S)
        names = tuple(r.str() for _ in range(count))
        r.done()
        problem = _probe_names_problem(names)
        if problem:
            raise r.fail(problem)
        return cls(module, window, names)


def _probe_names_problem(names: tuple[str, ...]) -> str:
    """Why ``names`` cannot be PROBE's list ("" when it can)."""
    if not 1 <= len(names) <= MAX_PROBE_NAMES:
        return f"name_count {len(names)}: a PROBE names 1..{MAX_PROBE_NAMES} tensors"
    if any(not n for n in names):
        return f"name {names.index('')} is empty"
    seen: set[str] = set()
    for n in names:
        if n in seen:
            return f"name {n!r} appears twice"
        seen.add(n)
    return ""


_TENSOR_DTYPES = {8: np.dtype("<i1"), 16: np.dtype("<i2"), 32: np.dtype("<f4")}


@dataclass(frozen=True)
class Tensor:
    """One tensor a PROBE captured (protocol.md 0x87 TENSOR), or a part of it: its elements ``first_element`` ..
    ``first_element + count - 1`` in memory (row-major) order, where ``count`` follows from the data's length.

    ``shape`` is the tensor's on-chip shape in that run (NWC / NHWC as ESP-DL holds it); ``bits`` 8 and 16 are
    int8/int16 with value = integer x 2^exponent, 32 is float32 (exponent 0)."""

    module: int
    window: int
    step: int  # the step at which `module` ran `window`
    index: int  # the name's position in PROBE's list
    bits: int  # 8, 16 or 32 (float32)
    exponent: int
    shape: tuple[int, ...]
    first_element: int
    name: str
    data: bytes
    TYPE: ClassVar[MessageType] = MessageType.TENSOR
    _S: ClassVar = struct.Struct("<BIIBBbB")  # module, window, step, index, bits, exponent, rank
    _FIRST: ClassVar = struct.Struct("<I")

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))

    @property
    def elements(self) -> int:
        """Elements of the whole tensor (1 for rank 0)."""
        return int(np.prod(self.shape, dtype=object)) if self.shape else 1

    @property
    def element_size(self) -> int:
        return self.bits // 8

    @property
    def count(self) -> int:
        """Elements this message carries."""
        return len(self.data) // self.element_size

    @property
    def is_part(self) -> bool:
        """Only some of the tensor's elements."""
        return self.count != self.elements

    def _problem(self) -> str:
        """Why these fields are no valid TENSOR ("" when they are)."""
        if self.bits not in TENSOR_BITS:
            return f"bits {self.bits} is not 8, 16 or 32"
        if self.bits == 32 and self.exponent != 0:
            return f"a float32 tensor has exponent 0, not {self.exponent}"
        if len(self.shape) > MAX_TENSOR_RANK:
            return f"rank {len(self.shape)}: a TENSOR has at most {MAX_TENSOR_RANK} dimensions"
        if not self.name:
            return "the name is empty"
        if self.elements > 0xFFFFFFFF:
            return f"shape {list(self.shape)} has {self.elements} elements, more than 2^32 - 1"
        if len(self.data) % self.element_size:
            return f"{len(self.data)} data bytes are not whole {self.bits}-bit elements"
        if self.count == 0 and self.elements > 0:
            return "no data: a TENSOR carries at least one element of a tensor that has some"
        if self.first_element + self.count > self.elements:
            return (f"elements {self.first_element}..{self.first_element + self.count - 1} lie beyond a tensor of "
                    f"{self.elements} elements {list(self.shape)}")
        return ""

    def pack(self) -> bytes:
        problem = self._problem()
        if problem:
            raise ValueError(f"TENSOR {problem}")
        head = _pack(self._S, self.module, self.window, self.step, self.index, self.bits, self.exponent,
                     len(self.shape))
        dims = b"".join(_pack(self._FIRST, d) for d in self.shape)
        return head + dims + _pack(self._FIRST, self.first_element) + _str(self.name) + bytes(self.data)

    @classmethod
    def unpack(cls, payload: bytes) -> Tensor:
        r = _Reader(payload, "TENSOR")
        module, window, step, index, bits, exponent, rank = r.take(cls._S)
        if bits not in TENSOR_BITS:
            raise r.fail(f"bits {bits} is not 8, 16 or 32")
        if rank > MAX_TENSOR_RANK:
            raise r.fail(f"rank {rank}: a TENSOR has at most {MAX_TENSOR_RANK} dimensions")
        shape = tuple(r.take(cls._FIRST)[0] for _ in range(rank))
        (first,) = r.take(cls._FIRST)
        msg = cls(module, window, step, index, bits, exponent, shape, first, r.str(), r.rest())
        problem = msg._problem()
        if problem:
            raise r.fail(problem)
        return msg

    def values(self) -> np.ndarray:
        """This message's elements, 1-D: int8, int16 or float32."""
        return np.frombuffer(self.data, dtype=_TENSOR_DTYPES[self.bits]).astype(
            _TENSOR_DTYPES[self.bits].newbyteorder("="))

    def array(self) -> np.ndarray:
        """The whole tensor in its shape (ValueError for a part: join the parts first, TensorAssembler)."""
        if self.is_part:
            last = self.first_element + self.count - 1
            raise ValueError(f"TENSOR '{self.name}' holds elements {self.first_element}..{last} of {self.elements}: "
                             f"join its parts first")
        return self.values().reshape(self.shape)

    @classmethod
    def from_array(cls, module: int, window: int, step: int, index: int, name: str, array: np.ndarray,
                   exponent: int = 0) -> Tensor:
        """The whole tensor ``array`` (int8, int16 or float32, any shape) as one TENSOR."""
        a = np.asarray(array)
        bits = {np.dtype(np.int8): 8, np.dtype(np.int16): 16, np.dtype(np.float32): 32}.get(a.dtype)
        if bits is None:
            raise ValueError(f"a TENSOR holds int8, int16 or float32 values, not {a.dtype}")
        data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
        return cls(module, window, step, index, bits, exponent if bits != 32 else 0, a.shape, 0, name, data)

    def part(self, first_element: int, count: int) -> Tensor:
        """Elements ``first_element`` .. ``first_element + count - 1`` of this whole tensor as a part."""
        if self.is_part:
            raise ValueError("only a whole tensor is split into parts")
        if count < 1 or first_element < 0 or first_element + count > self.elements:
            raise ValueError(f"elements {first_element} + {count} do not lie within {self.elements}")
        e = self.element_size
        return dataclasses.replace(self, first_element=first_element,
                                   data=self.data[first_element * e:(first_element + count) * e])


Message = Union[Hello, ModelBegin, ModelChunk, ModelEnd, Configure, Reset, Frames, Flush, Probe,
                Ack, Info, Output, Credit, Log, Boot, Tensor, Error]
MESSAGE_CLASSES: dict[MessageType, type] = {
    cls.TYPE: cls for cls in (Hello, ModelBegin, ModelChunk, ModelEnd, Configure, Reset, Frames, Flush, Probe,
                              Ack, Info, Output, Credit, Log, Boot, Tensor, Error)
}


# --------------------------------------------------------------------------- framing

def crc32(data: bytes) -> int:
    """CRC-32/ISO-HDLC (zlib): reflected poly 0x04C11DB7, init and xorout 0xFFFFFFFF."""
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_body(message: Message, seq: int) -> bytes:
    """``type | seq | len | payload | crc`` (before COBS)."""
    payload = message.pack()
    if len(payload) > MAX_PAYLOAD_LIMIT:
        raise ValueError(f"{message.TYPE.name} payload is {len(payload)} bytes, the limit is {MAX_PAYLOAD_LIMIT}")
    if not 0 <= seq <= 0xFFFF:
        raise ValueError(f"seq {seq} is not a u16")
    head = HEADER.pack(message.TYPE, seq, len(payload)) + payload
    return head + CRC.pack(crc32(head))


def encode(message: Message, seq: int) -> bytes:
    """Wire bytes of one frame: COBS(body) followed by the 0x00 delimiter."""
    return cobs.encode(encode_body(message, seq)) + b"\x00"


@dataclass(frozen=True)
class Packet:
    seq: int
    message: Message


def check_body(body: bytes) -> tuple[int, int, bytes]:
    """Framing checks of a COBS-decoded body: ``(type, seq, payload)`` or FrameError."""
    if len(body) < MIN_BODY_SIZE:
        raise FrameError("short", f"{len(body)} byte body, the minimum is {MIN_BODY_SIZE}", data=body)
    msg_type, seq, length = HEADER.unpack_from(body)
    if length != len(body) - MIN_BODY_SIZE:
        raise FrameError("length", f"len field {length}, payload is {len(body) - MIN_BODY_SIZE} bytes", data=body)
    (crc,) = CRC.unpack_from(body, len(body) - CRC.size)
    if crc != crc32(body[:-CRC.size]):
        raise FrameError("crc", f"crc {crc:08x}, computed {crc32(body[:-CRC.size]):08x}", data=body)
    return msg_type, seq, body[HEADER.size:-CRC.size]


def decode_body(body: bytes) -> Packet:
    """One COBS-decoded body -> Packet; any defect raises FrameError."""
    msg_type, seq, payload = check_body(bytes(body))
    try:
        cls = MESSAGE_CLASSES[MessageType(msg_type)]
    except ValueError:
        raise FrameError("unknown-type", f"type 0x{msg_type:02x}", data=body, msg_type=msg_type, seq=seq) from None
    try:
        message = cls.unpack(payload)
    except FrameError as e:
        raise FrameError(e.reason, e.detail, data=body, msg_type=msg_type, seq=seq) from None
    return Packet(seq, message)


def max_wire_size(max_payload: int = MAX_PAYLOAD_LIMIT) -> int:
    """Largest COBS-encoded frame (without its delimiter) for payloads up to ``max_payload``."""
    return cobs.max_encoded_length(MIN_BODY_SIZE + max_payload)


def max_frames_per_message(max_payload: int, frame_bytes: int) -> int:
    """Most input frames one FRAMES message can carry within ``max_payload``."""
    if frame_bytes <= 0:
        raise ValueError(f"frame_bytes must be positive, got {frame_bytes}")
    return max(0, min(0xFFFF, (max_payload - FRAMES_HEADER_SIZE) // frame_bytes))


def max_windows_per_output(max_payload: int, frames: int, channels: int, bits: int, modules: int) -> int:
    """Most windows one OUTPUT can carry within ``max_payload`` (0: not even one fits; at most 0xFFFF).

    ``frames`` x ``channels`` values of ``bits`` (8 or 16) per window, where ``frames`` is the frame count F of
    one window's output (OUTPUT.frames: W for a module before the last, F for the last, 1 for FLAT);
    ``modules`` timing records (the reported module's index + 1). CONFIGURE is refused with BAD_CONFIG when
    ``output_batch`` (0 = 1) exceeds this for a reported module, except that when this is 0 an
    ``output_batch`` of 1 is served in parts (``part_ranges``; a FLAT output never is: BAD_CONFIG).
    """
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if frames < 0 or channels < 0 or not 0 <= modules <= 0xFF:
        raise ValueError(f"bad OUTPUT shape: frames {frames}, channels {channels}, modules {modules}")
    room = max_payload - OUTPUT_HEADER_SIZE - Timing._S.size * modules
    if room < 0:
        return 0
    window_bytes = frames * channels * bits // 8
    return 0xFFFF if window_bytes == 0 else min(0xFFFF, room // window_bytes)


def max_frames_per_part(max_payload: int, channels: int, bits: int, modules: int) -> int:
    """Most frames of one window an OUTPUT part carries within ``max_payload`` (0: not even one frame fits; at
    most 0xFFFF): ``(max_payload - 19 - 16 x modules - 4) // (channels x bits / 8)``."""
    if bits not in (8, 16):
        raise ValueError(f"bits must be 8 or 16, got {bits}")
    if channels < 1 or not 0 <= modules <= 0xFF:
        raise ValueError(f"bad OUTPUT part shape: channels {channels}, modules {modules}")
    room = max_payload - OUTPUT_HEADER_SIZE - Timing._S.size * modules - OUTPUT_PART_SIZE
    return max(0, min(0xFFFF, room // (channels * bits // 8)))


def part_ranges(max_payload: int, frames: int, channels: int, bits: int, modules: int) -> list[tuple[int, int]]:
    """``(part_first_frame, part_frames)`` of every part a device sends for one window of module k
    (``modules`` = k + 1) whose output has ``frames`` frames (F, as in ``max_windows_per_output``), in order:
    ``[]`` when the window fits one OUTPUT (no parts), else parts of ``max_frames_per_part`` frames, the last
    one the rest. ValueError when not even one frame fits a part (CONFIGURE answers BAD_CONFIG)."""
    if max_windows_per_output(max_payload, frames, channels, bits, modules) > 0:
        return []
    per_part = max_frames_per_part(max_payload, channels, bits, modules)
    if per_part == 0:
        raise ValueError(f"one frame of {channels} x int{bits} does not fit an OUTPUT part of {max_payload} bytes "
                         f"with {modules} timing records")
    return [(first, min(per_part, frames - first)) for first in range(0, frames, per_part)]


def split_output(output: Output, max_payload: int) -> list[Output]:
    """What a device sends for ``output``: itself if it fits ``max_payload``, else its window's parts
    (``output`` must then hold one window: CONFIGURE refuses a batch > 1 that does not fit, and a FLAT output
    that does not fit: ValueError)."""
    if output.layout == Layout.FLAT and max_windows_per_output(max_payload, 1, output.channels, output.bits,
                                                               len(output.timings)) == 0:
        raise ValueError(f"a FLAT output of {output.channels} x int{output.bits} does not fit one OUTPUT of "
                         f"{max_payload} bytes and is never sent in parts")
    ranges = part_ranges(max_payload, output.frames, output.channels, output.bits, len(output.timings))
    if not ranges or output.windows > 1:
        return [output]
    return [output.part(first, count) for first, count in ranges]


class OutputPartError(ProtocolError):
    """The OUTPUT parts of a window arrived incomplete, out of order, overlapping or inconsistent.

    ``reason``: ``missing`` (a part does not start where the window's previous part ended, or the first part
    not at frame 0), ``overlap`` (a part repeats frames already received), ``incomplete`` (another OUTPUT, or the
    end of the stream, came before the window's last frame), ``mismatch`` (a part's header or timings differ
    from the window's first part). ``frames`` is the range ``(first, last)`` concerned.
    """

    def __init__(self, reason: str, device: str, module: int, window: int, frames: tuple[int, int], detail: str):
        self.reason, self.module, self.window, self.frames = reason, module, window, frames
        super().__init__(f"{device} sent the OUTPUT parts of module {module}, window {window} {detail}",
                         "the runner broke protocol.md section 7.7; see the device log")


_PART_HEADER = ("window", "module", "step", "layout", "bits", "exponent", "frames", "channels", "timings")


class _Parts:
    """What joining a message sent in parts checks, for OUTPUT (frames) and TENSOR (elements) alike: each part
    repeats the first part's header and starts where the previous one ended. A subclass names its unit and header
    fields, how many units a whole has (``_total``) and the error it raises (``_make_error``)."""

    UNIT = ""
    HEADER: tuple[str, ...] = ()

    def __init__(self, device: str = "the device"):
        self.device = device
        self._parts: list = []
        self._next = 0  # the unit the next part of the pending whole must start at

    @property
    def pending(self):
        """The first part of the whole being assembled, if any."""
        return self._parts[0] if self._parts else None

    def _total(self, first) -> int:
        raise NotImplementedError

    def _make_error(self, reason: str, item, span: tuple[int, int], detail: str) -> ProtocolError:
        raise NotImplementedError

    def _error(self, reason: str, item, span: tuple[int, int], detail: str) -> ProtocolError:
        self._parts, self._next = [], 0
        return self._make_error(reason, item, span, detail)

    def _incomplete(self, why: str) -> ProtocolError:
        first, unit = self._parts[0], self.UNIT
        total = self._total(first)
        return self._error("incomplete", first, (self._next, total - 1),
                           f"incomplete: {unit} {self._next}..{total - 1} of {total} are missing ({why})")

    def _check(self, item, start: int, last: int) -> None:
        """``item``, a part covering units ``start..last``, may come next: else the error saying why not."""
        unit = self.UNIT
        if self._parts:
            first = self._parts[0]
            differs = [name for name in self.HEADER if getattr(item, name) != getattr(first, name)]
            if differs:
                raise self._error("mismatch", item, (start, last),
                                  f"inconsistently: the part of {unit} {start}..{last} differs from the first part "
                                  f"in {', '.join(differs)}")
        if start > self._next:
            raise self._error("missing", item, (self._next, start - 1),
                              f"out of order: {unit} {self._next}..{start - 1} are missing (the next part has "
                              f"{unit} {start}..{last})")
        if start < self._next:
            raise self._error("overlap", item, (start, min(last, self._next - 1)),
                              f"overlapping: the part of {unit} {start}..{last} repeats {unit} "
                              f"{start}..{min(last, self._next - 1)}, already received")


class PartAssembler(_Parts):
    """Joins OUTPUT parts into whole-window OUTPUTs (protocol.md section 7.7), checking their order.

    ``add(output)`` returns ``output`` itself when it is not a part, the window's whole OUTPUT (``windows`` 1,
    the parts' header and timings, counted once) when its last part arrives, and None while a window is still
    incomplete; ``finish()`` at the end of the stream (the ACK of FLUSH). Either raises ``OutputPartError``.
    The parts of a window come one after the other: any other OUTPUT before the window's last frame is an error.
    """

    UNIT, HEADER = "frames", _PART_HEADER

    def _total(self, first: Output) -> int:
        return first.frames

    def _make_error(self, reason: str, out: Output, frames: tuple[int, int], detail: str) -> OutputPartError:
        return OutputPartError(reason, self.device, out.module, out.window, frames, detail)

    def add(self, out: Output) -> Output | None:
        if self._parts and (not out.is_part or (out.module, out.window) != (self._parts[0].module,
                                                                          self._parts[0].window)):
            what = (f"a part of module {out.module}, window {out.window}" if out.is_part
                    else f"an OUTPUT of module {out.module}, window {out.window}")
            raise self._incomplete(f"{what} came next")
        if not out.is_part:
            return out
        last = out.part_first_frame + out.part_frames - 1
        self._check(out, out.part_first_frame, last)
        self._parts.append(out)
        self._next = last + 1
        if self._next < out.frames:
            return None
        parts, self._parts, self._next = self._parts, [], 0
        whole = np.concatenate([part.array() for part in parts])
        return Output.from_array(out.window, out.module, out.step, whole, out.exponent, out.timings, out.layout)

    def finish(self) -> None:
        """End of the stream: a window still incomplete is an error."""
        if self._parts:
            raise self._incomplete("the stream ended")


def join_parts(outputs, device: str = "the device") -> list[Output]:
    """The OUTPUTs of a stream with every window's parts joined into its whole OUTPUT (PartAssembler)."""
    assembler = PartAssembler(device)
    joined = [whole for whole in map(assembler.add, outputs) if whole is not None]
    assembler.finish()
    return joined


# --------------------------------------------------------------------------- PROBE and TENSOR (protocol.md 7.8)

def max_elements_per_tensor(max_payload: int, rank: int, name: str, bits: int) -> int:
    """Most elements one TENSOR of a tensor of ``rank`` dimensions named ``name`` carries within ``max_payload``:
    ``(max_payload - 19 - 4 x rank - len(name in UTF-8)) // (bits / 8)`` (0: not even one)."""
    if bits not in TENSOR_BITS:
        raise ValueError(f"bits must be 8, 16 or 32, got {bits}")
    room = max_payload - TENSOR_HEADER_SIZE - 4 * rank - len(name.encode("utf-8"))
    return max(0, min(0xFFFFFFFF, room // (bits // 8)))


def tensor_ranges(max_payload: int, shape, name: str, bits: int) -> list[tuple[int, int]]:
    """``(first_element, count)`` of every TENSOR a device sends for one captured tensor, in order: one message
    when the whole tensor fits ``max_payload``, else parts of ``max_elements_per_tensor`` elements, the last the
    rest. ValueError when not even one element fits (the device refuses such a PROBE)."""
    elements = int(np.prod(tuple(shape), dtype=object)) if len(tuple(shape)) else 1
    per = max_elements_per_tensor(max_payload, len(tuple(shape)), name, bits)
    if elements == 0:
        return [(0, 0)]
    if per == 0:
        raise ValueError(f"not one element of tensor '{name}' ({bits}-bit, rank {len(tuple(shape))}) fits a TENSOR "
                         f"of {max_payload} bytes")
    return [(first, min(per, elements - first)) for first in range(0, elements, per)]


def split_tensor(tensor: Tensor, max_payload: int) -> list[Tensor]:
    """What a device sends for the whole ``tensor``: itself if it fits ``max_payload``, else its parts."""
    ranges = tensor_ranges(max_payload, tensor.shape, tensor.name, tensor.bits)
    if len(ranges) == 1:
        return [tensor]
    return [tensor.part(first, count) for first, count in ranges]


class TensorPartError(ProtocolError):
    """The TENSOR parts of a captured tensor arrived incomplete, out of order, overlapping or inconsistent.

    ``reason``: ``missing``, ``overlap``, ``incomplete`` or ``mismatch`` (as OutputPartError); ``elements`` is
    the range ``(first, last)`` concerned."""

    def __init__(self, reason: str, device: str, tensor: Tensor, elements: tuple[int, int], detail: str):
        self.reason, self.name, self.module, self.window, self.elements = (reason, tensor.name, tensor.module,
                                                                           tensor.window, elements)
        super().__init__(f"{device} sent tensor '{tensor.name}' of module {tensor.module}, window {tensor.window} "
                         f"{detail}", "the runner broke protocol.md section 7.8; see the device log")


_TENSOR_HEADER = ("module", "window", "step", "index", "bits", "exponent", "shape", "name")


class TensorAssembler(_Parts):
    """Joins TENSOR parts into whole tensors (protocol.md section 7.8), checking their order.

    ``add(tensor)`` returns the whole tensor (a TENSOR with every element) once its last part is in, else None;
    ``finish()`` when no more may come. Either raises ``TensorPartError``. A tensor's parts come one after the
    other: another tensor before its last element is an error."""

    UNIT, HEADER = "elements", _TENSOR_HEADER

    def _total(self, first: Tensor) -> int:
        return first.elements

    def _make_error(self, reason: str, t: Tensor, elements: tuple[int, int], detail: str) -> TensorPartError:
        return TensorPartError(reason, self.device, t, elements, detail)

    def add(self, t: Tensor) -> Tensor | None:
        last = t.first_element + t.count - 1
        if self._parts:
            first = self._parts[0]
            if (t.module, t.window, t.index, t.name) != (first.module, first.window, first.index, first.name):
                raise self._incomplete(f"tensor '{t.name}' (index {t.index}) came next")
        self._check(t, t.first_element, last)
        if not t.is_part:
            return t
        self._parts.append(t)
        self._next = last + 1
        if self._next < t.elements:
            return None
        parts, self._parts, self._next = self._parts, [], 0
        return dataclasses.replace(parts[0], first_element=0, data=b"".join(p.data for p in parts))

    def finish(self) -> None:
        if self._parts:
            raise self._incomplete("no more came")


def max_chunk_size(max_payload: int) -> int:
    """Most model bytes one MODEL_CHUNK can carry within ``max_payload``."""
    return max(0, max_payload - MODEL_CHUNK_HEADER_SIZE)


class FrameDecoder:
    """Incremental receiver: bytes in any chunking -> Packets and FrameErrors, in wire order.

    Splits at 0x00, COBS-decodes and checks each chunk; empty chunks (stray or leading
    delimiters) are skipped silently. A run of more than ``max_wire_size(max_payload)``
    bytes without a delimiter is reported once as FrameError('oversize'), and everything up
    to the next 0x00 is dropped, so memory stays bounded whatever arrives.
    """

    def __init__(self, max_payload: int = MAX_PAYLOAD_LIMIT):
        self.limit = max_wire_size(max_payload)
        self._buf = bytearray()
        self._skipping = False  # inside an oversize run: drop until the next delimiter
        self.frames_ok = 0
        self.frames_bad = 0
        self.garbage_bytes = 0  # bytes of discarded chunks and stray delimiters

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> list[Packet | FrameError]:
        out: list[Packet | FrameError] = []
        parts = bytes(data).split(b"\x00")
        for part in parts[:-1]:
            if self._skipping:
                self.garbage_bytes += len(part) + 1
                self._skipping = False
                continue
            if self._buf:
                self._buf += part
                chunk = bytes(self._buf)
                self._buf.clear()
            else:
                chunk = part
            item = self._chunk(chunk)
            if item is not None:
                out.append(item)
        self._tail(parts[-1], out)
        return out

    def _tail(self, part: bytes, out: list) -> None:
        if self._skipping:
            self.garbage_bytes += len(part)
            return
        self._buf += part
        if len(self._buf) > self.limit:
            out.append(self._bad(FrameError("oversize", f"no delimiter within {self.limit} bytes",
                                            data=self._buf), len(self._buf)))
            self._buf.clear()
            self._skipping = True

    def _bad(self, error: FrameError, size: int) -> FrameError:
        self.frames_bad += 1
        self.garbage_bytes += size
        return error

    def _chunk(self, chunk: bytes) -> Packet | FrameError | None:
        if not chunk:
            self.garbage_bytes += 1  # a stray delimiter: ignored silently
            return None
        if len(chunk) > self.limit:
            return self._bad(FrameError("oversize", f"{len(chunk)} byte frame, the limit is {self.limit}",
                                        data=chunk), len(chunk) + 1)
        try:
            packet = decode_body(cobs.decode(chunk))
        except cobs.DecodeError as e:
            return self._bad(FrameError("cobs", str(e), data=chunk), len(chunk) + 1)
        except FrameError as e:
            return self._bad(e, len(chunk) + 1)
        self.frames_ok += 1
        return packet

