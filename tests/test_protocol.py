"""Wire protocol: the codec, docs/protocol.md and docs/protocol-vectors.json agree byte for byte;
the receiver survives any chunking, corruption, truncation and garbage without ever yielding a wrong message."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import struct
import typing
import zlib
from pathlib import Path

import numpy as np
import pytest
from cobs import cobs

from harness.device import protocol as p
from harness.errors import HarnessError
from harness.emulator.scheduler import plan_schedule

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "protocol.md"
VECTORS = json.loads((ROOT / "docs" / "protocol-vectors.json").read_text())


# --------------------------------------------------------------------------- JSON <-> message

def to_json(obj) -> dict:
    """A message (or nested record) as JSON: bytes as hex, enums as ints, tuples as lists."""
    out = {"type": obj.TYPE.name} if hasattr(obj, "TYPE") else {}
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, bytes):
            v = v.hex()
        elif isinstance(v, tuple):
            v = [to_json(x) if dataclasses.is_dataclass(x) else x for x in v]  # records, or names/dims
        elif isinstance(v, int):
            v = int(v)
        out[f.name] = v
    return out


_NESTED = {"modules": p.ModuleConfig, "timings": p.Timing}


def from_json(d: dict):
    cls = p.MESSAGE_CLASSES[p.MessageType[d["type"]]]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        v = d[f.name]
        if hints[f.name] is bytes:
            v = bytes.fromhex(v)
        elif f.name in _NESTED:
            v = tuple(_NESTED[f.name](**x) for x in v)
        kwargs[f.name] = v
    return cls(**kwargs)


# --------------------------------------------------------------------------- docs/protocol.md parsing

def doc_blocks(kind: str) -> dict[str, str]:
    """``#### <kind>: name`` followed by a fenced block -> {name: block text}."""
    text = DOC.read_text()
    pattern = re.compile(rf"^#### {kind}: (\S+)[ \t]*\n(?:(?!####|```).*\n)*?```\w*\n((?:(?!```).*\n)*)```", re.M)
    blocks: dict[str, str] = {}
    for name, body in pattern.findall(text):
        assert name not in blocks, f"{kind} {name} appears twice in {DOC.name}"
        blocks[name] = body
    return blocks


def parse_hex_block(block: str) -> dict[str, bytes]:
    """``body:`` / ``wire:`` sections of hex bytes; ``#`` starts a comment."""
    sections: dict[str, str] = {}
    current = None
    for line in block.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.endswith(":") and " " not in line:
            current = line[:-1]
            sections[current] = ""
        elif line:
            assert current, f"hex outside a section: {line!r}"
            sections[current] += line.replace(" ", "")
    return {k: bytes.fromhex(v) for k, v in sections.items()}


def _windows(ws: list[int]) -> str:
    return f"window {ws[0]}" if len(ws) == 1 else f"windows {ws[0]}..{ws[-1]}"


def format_timeline(modules: int, window: int, schedule: p.Schedule, frames: int, *,
                    queue_depth: int = 0, flush: bool = False, output_batch: int = 1) -> str:
    """The step table docs/protocol.md shows for one schedule (flags bit0 = 0: OUTPUT of the last module only).

    With ``output_batch`` > 1 "OUTPUT sent" names the windows of each OUTPUT at the step its batch fills, and a
    last row ``-  FLUSH`` the partial batch FLUSH sends after its tasks, before its ACK (OUTPUT.step: the step
    of the batch's last window).
    """
    t = plan_schedule(modules, window, schedule, frames, queue_depth=queue_depth, flush=flush)
    rows = ["step  frame   completes  runs (window,module)       OUTPUT sent"]
    held: list[int] = []  # windows of module N - 1 in the current batch
    last_step = None
    for step in range(t.steps):
        frame = str(step) if step < frames else "FLUSH"
        done = str(step // window) if step < frames and step % window == window - 1 else "-"
        runs = [r for r in t.runs if r.step == step]
        text = " ".join(f"({r.window},{r.module})" for r in runs) or "-"
        sent = []
        for r in runs:
            if r.module == modules - 1:
                held.append(r.window)
                last_step = step
                if len(held) == max(1, output_batch):
                    sent.append(_windows(held))
                    held = []
        outs = ", ".join(sent) or "-"
        if step == t.backlog_full_step:
            text, outs = "ERROR BACKLOG_FULL", "- (stream stopped)"
        rows.append(f"{step:>4}  {frame:>5}   {done:<9}  {text:<25}  {outs}".rstrip())
    if flush and held:
        rows.append(f"{'-':>4}  {'FLUSH':>5}   {'-':<9}  {'-':<25}  {_windows(held)} (step {last_step})")
    return "\n".join(rows) + "\n"


TIMELINES = {
    "round-robin-n3-w3": dict(modules=3, window=3, schedule=p.Schedule.ROUND_ROBIN, frames=9, flush=True),
    "round-robin-n3-w4": dict(modules=3, window=4, schedule=p.Schedule.ROUND_ROBIN, frames=8, flush=True),
    "round-robin-n3-w1-backlog": dict(modules=3, window=1, schedule=p.Schedule.ROUND_ROBIN, frames=8),
    "sequential-n3-w3": dict(modules=3, window=3, schedule=p.Schedule.SEQUENTIAL, frames=6, flush=True),
    "sequential-n3-w1-batch4": dict(modules=3, window=1, schedule=p.Schedule.SEQUENTIAL, frames=10, flush=True,
                                    output_batch=4),
}


def wire(message, seq: int = 0) -> bytes:
    return p.encode(message, seq)


def packets(items) -> list:
    return [i for i in items if isinstance(i, p.Packet)]


def errors(items) -> list:
    return [i for i in items if isinstance(i, p.FrameError)]


VALID = {v["name"]: v for v in VECTORS["vectors"]}
FRAME_LAYOUTS = (p.Layout.NWC, p.Layout.NCW)  # the layouts of 3-D outputs (FLAT has tests of its own)
SAMPLE_WIRES = [  # short, with many 0x00 in the body, and with a COBS block longer than 254 bytes
    p.encode(p.Hello(1, 1), 0),
    p.encode(p.Configure(3, p.Schedule.ROUND_ROBIN, 0, 0, 4, (
        p.ModuleConfig(0, p.Layout.NWC, p.Layout.NCW, "x", "y", "cache", "new_cache"),
        p.ModuleConfig(1, p.Layout.NCW, p.Layout.NWC, "x", "y"))), 4),
    p.encode(p.ModelChunk(0, 4096, bytes((i % 255) + 1 for i in range(300))), 11),
]


# --------------------------------------------------------------------------- vectors: codec == JSON == doc

def test_crc_parameters_and_check_value():
    assert p.crc32(b"123456789") == 0xCBF43926 == VECTORS["crc"]["check"]
    assert VECTORS["crc"]["name"] == "CRC-32/ISO-HDLC"
    body = bytes.fromhex(VALID["hello"]["body_hex"])
    assert int.from_bytes(body[-4:], "little") == zlib.crc32(body[:-4])
    assert "0xCBF43926" in DOC.read_text()


def test_vector_set_covers_every_message_type_and_the_cobs_edge_cases():
    types = {v["message"]["type"] for v in VECTORS["vectors"]}
    assert types == {t.name for t in p.MessageType}
    bodies = [bytes.fromhex(v["body_hex"]) for v in VECTORS["vectors"]]
    assert any(len(max(b.split(b"\x00"), key=len)) > 254 for b in bodies), "no COBS block longer than 254"
    assert any(len(b) % 254 == 0 and 0 not in b for b in bodies), "no body ending on a full 0xFF block"
    assert all(v["direction"] == ("device-to-host" if p.MessageType[v["message"]["type"]].from_device
                                  else "host-to-device") for v in VECTORS["vectors"])
    assert VECTORS["protocol_version"] == p.PROTOCOL_VERSION


@pytest.mark.parametrize("name", sorted(VALID))
def test_vector_encodes_and_decodes(name):
    v = VALID[name]
    message = from_json(v["message"])
    assert to_json(message) == v["message"]
    assert p.encode_body(message, v["seq"]).hex() == v["body_hex"]
    assert p.encode(message, v["seq"]).hex() == v["wire_hex"]
    assert cobs.encode(bytes.fromhex(v["body_hex"])) + b"\x00" == bytes.fromhex(v["wire_hex"])
    assert p.decode_body(bytes.fromhex(v["body_hex"])) == p.Packet(v["seq"], message)
    decoder = p.FrameDecoder()
    assert decoder.feed(bytes.fromhex(v["wire_hex"])) == [p.Packet(v["seq"], message)]
    assert (decoder.frames_ok, decoder.frames_bad, decoder.garbage_bytes) == (1, 0, 0)


def test_doc_examples_equal_the_json_vectors():
    blocks = doc_blocks("vector")
    assert set(blocks) == set(VALID), "docs/protocol.md and protocol-vectors.json list different vectors"
    for name, block in blocks.items():
        parsed = parse_hex_block(block)
        assert parsed["body"].hex() == VALID[name]["body_hex"], name
        assert parsed["wire"].hex() == VALID[name]["wire_hex"], name


def test_doc_invalid_examples_equal_the_json_vectors():
    blocks = doc_blocks("invalid")
    assert set(blocks) == {v["name"] for v in VECTORS["invalid"]}
    for v in VECTORS["invalid"]:
        assert parse_hex_block(blocks[v["name"]])["wire"].hex() == v["wire_hex"], v["name"]


@pytest.mark.parametrize("v", VECTORS["invalid"], ids=lambda v: v["name"])
def test_invalid_vector_gives_its_reason(v):
    items = p.FrameDecoder().feed(bytes.fromhex(v["wire_hex"]))
    assert len(items) == 1 and isinstance(items[0], p.FrameError), items
    assert items[0].reason == v["reason"]
    assert items[0].error_code.name == v["error_code"]


def test_stream_vector_decodes_as_listed():
    for v in VECTORS["streams"]:
        items = p.FrameDecoder().feed(bytes.fromhex(v["wire_hex"]))
        got = [{"error": i.reason} if isinstance(i, p.FrameError) else {"vector": _vector_name(i)} for i in items]
        assert got == v["expected"], v["name"]


def _vector_name(packet: p.Packet) -> str:
    return next(n for n, v in VALID.items() if p.Packet(v["seq"], from_json(v["message"])) == packet)


def test_doc_timelines_follow_the_scheduling_rules():
    blocks = doc_blocks("timeline")
    assert set(blocks) == set(TIMELINES)
    for name, params in TIMELINES.items():
        assert blocks[name] == format_timeline(**params), name


# --------------------------------------------------------------------------- round trips

EDGE_MESSAGES = [
    p.Hello(0, 0), p.Hello(0xFFFF, 0xFFFF),
    p.ModelBegin(255, 0xFFFFFFFF, bytes(range(32)), ""), p.ModelBegin(0, 0, b"\xff" * 32, "mödel ✓ " * 10),
    p.ModelChunk(0, 0, b""), p.ModelChunk(255, 0xFFFFFFFF, bytes(range(256)) * 3),
    p.ModelEnd(0), p.ModelEnd(255),
    p.Configure(0xFFFF, p.Schedule.SEQUENTIAL, 0xFF, 0xFFFF, 0xFFFF, ()),
    p.Configure(1, p.Schedule.ROUND_ROBIN, 0, 0, 0, tuple(
        p.ModuleConfig(k, p.Layout(k % 2), p.Layout(1 - k % 2), f"in{k}", "", "c" * 200, "é") for k in range(255))),
    p.Reset(), p.Flush(),
    p.Frames(0, 0, 0, b""), p.Frames(0xFFFFFFFF, 3, 5, bytes(15)),
    p.Ack(0, 0), p.Ack(255, 0xFFFF, b"\x00\xff" * 10),
    p.Info(0, 0, 0, 0, 0, "", "", "", "", ""),
    p.Info(0xFFFF, 0xFFFF, 0xFFFF, 0xFFFFFFFF, 0xFFFFFFFF, "esp32s3", "b" * 1000, "3.1", "v5.4", "virtual"),
    p.Output(0, 1, 0, 0, p.Layout.NWC, 8, -128, 0, 0, (), b""),
    p.Output(0xFFFFFFFF, 1, 255, 0xFFFFFFFF, p.Layout.NCW, 16, 127, 2, 3,
             tuple(p.Timing(0xFFFFFFFF, i) for i in range(255)), bytes(range(12))),
    p.Output(0xFFFFFFFF, 0xFFFF, 255, 0xFFFFFFFF, p.Layout.NWC, 8, 0, 0, 0xFFFF, (), b""),
    p.Output(7, 5, 1, 9, p.Layout.NCW, 16, -1, 2, 3, (p.Timing(1, 2), p.Timing(3, 4)), bytes(range(60))),
    p.Output(3, 0, 1, 9, p.Layout.NCW, 16, -1, 5, 3, (p.Timing(1, 2), p.Timing(3, 4)), bytes(range(12)), 3, 2),
    p.Output(0xFFFFFFFF, 0, 255, 0xFFFFFFFF, p.Layout.NWC, 8, 0, 0xFFFF, 1, (), b"\x07", 0xFFFE, 1),
    p.Output(0, 0, 0, 0, p.Layout.NWC, 8, 0, 0xFFFF, 1, (), bytes(60000), 5535, 60000),
    p.Output(4, 1, 1, 15, p.Layout.FLAT, 8, -3, 1, 16, (p.Timing(1, 2), p.Timing(3, 4)), bytes(range(16))),
    p.Output(0, 2, 0, 0, p.Layout.FLAT, 16, 0, 1, 16000, (), bytes(64000)),
    p.Configure(6, p.Schedule.SEQUENTIAL, 0, 0, 16, (p.ModuleConfig(0, p.Layout.NCW, p.Layout.NWC, "x", "y"),
                                                      p.ModuleConfig(1, p.Layout.NWC, p.Layout.FLAT, "x", "y"))),
    p.Credit(0), p.Credit(0xFFFF),
    p.Probe(0, 0, ("x",)), p.Probe(255, 0xFFFFFFFF, tuple(f"t{i} ✓" for i in range(p.MAX_PROBE_NAMES))),
    p.Tensor(0, 0, 0, 0, 8, -128, (), 0, "s", b"\x80"), p.Tensor(7, 3, 12, 1, 16, 127, (1, 0, 5), 0, "empty", b""),
    p.Tensor(255, 0xFFFFFFFF, 0xFFFFFFFF, 255, 32, 0, (2, 3), 0, "/f", bytes(24)),
    p.Tensor(1, 2, 9, 0, 16, -9, (1,) * p.MAX_TENSOR_RANK, 0, "é" * 100, b"\x01\x02"),
    p.Tensor(0, 0, 0, 3, 16, 0, (4, 0xFFFF, 2), 0xFFFF * 8 - 3, "part", bytes(6)),
    *(p.Log(level, "") for level in p.LogLevel), p.Log(p.LogLevel.VERBOSE, "x" * 0xFFF0),
    p.Boot(""), p.Boot("runner\n\x00 ünïcode"),
    *(p.Error(code, 0, 0xFFFF, "") for code in p.ErrorCode),
]


def test_every_message_type_has_edge_cases():
    assert {m.TYPE for m in EDGE_MESSAGES} == set(p.MessageType)
    assert {cls.TYPE for cls in p.MESSAGE_CLASSES.values()} == set(p.MessageType)


@pytest.mark.parametrize("message", EDGE_MESSAGES, ids=lambda m: type(m).__name__)
def test_round_trip(message):
    for seq in (0, 1, 0xFFFF):
        data = p.encode(message, seq)
        assert data.endswith(b"\x00") and 0 not in data[:-1]
        assert p.FrameDecoder().feed(data) == [p.Packet(seq, message)]
        assert type(message).unpack(message.pack()) == message


def test_encode_rejects_values_that_do_not_fit():
    with pytest.raises(ValueError):
        p.encode(p.Credit(0x10000), 0)
    with pytest.raises(ValueError):
        p.encode(p.Credit(1), 0x10000)
    with pytest.raises(ValueError):
        p.encode(p.Error(p.ErrorCode.INTERNAL, 0, 0, "x" * 0x10000), 0)
    with pytest.raises(ValueError):
        p.ModelBegin(0, 1, b"short", "m").pack()
    with pytest.raises(ValueError):
        p.Frames(0, 2, 4, b"1234567").pack()
    with pytest.raises(ValueError):
        p.Output(0, 1, 0, 0, p.Layout.NWC, 12, 0, 1, 1, (), b"\x00\x00").pack()
    with pytest.raises(ValueError):
        p.Output(0, 0, 0, 0, p.Layout.NWC, 8, 0, 0, 0, (), b"").pack()  # windows 0
    with pytest.raises(ValueError):
        p.Output(0, 2, 0, 0, p.Layout.NWC, 8, 0, 1, 2, (), b"\x01\x02").pack()  # data of 1 window, 2 announced
    with pytest.raises(ValueError):
        p.Output(0, 0x10000, 0, 0, p.Layout.NWC, 8, 0, 0, 0, (), b"").pack()
    with pytest.raises(ValueError):  # a part of 0 frames
        p.Output(0, 0, 0, 0, p.Layout.NWC, 8, 0, 4, 1, (), b"", 1, 0).pack()
    with pytest.raises(ValueError):  # a part beyond its window
        p.Output(0, 0, 0, 0, p.Layout.NWC, 8, 0, 4, 1, (), b"\x01\x02", 3, 2).pack()
    with pytest.raises(ValueError):  # a part's data of the wrong size
        p.Output(0, 0, 0, 0, p.Layout.NWC, 8, 0, 4, 1, (), b"\x01", 2, 2).pack()
    with pytest.raises(ValueError):  # part fields on whole windows
        p.Output(0, 1, 0, 0, p.Layout.NWC, 8, 0, 1, 1, (), b"\x01", 0, 1).pack()
    with pytest.raises(ValueError):
        p.Configure(1, p.Schedule.SEQUENTIAL, 0, 0, 0x10000, ()).pack()
    with pytest.raises(ValueError):
        p.encode(p.ModelChunk(0, 0, bytes(p.MAX_PAYLOAD_LIMIT - 4)), 0)
    p.encode(p.ModelChunk(0, 0, bytes(p.MAX_PAYLOAD_LIMIT - 5)), 0)  # exactly the limit


def test_timings_are_u64_and_never_wrap():
    """OUTPUT timings: u64 cycles and u64 microseconds (a run may exceed 2^32 cycles, a batch sums many)."""
    assert p.Timing._S.format == "<QQ" and p.Timing._S.size == 16
    big = (p.Timing(2**64 - 1, 2**40 + 3), p.Timing(7_212_345_678, 18_030_864))
    o = p.Output(0, 1, 1, 5, p.Layout.NWC, 8, 0, 1, 1, big, b"\x05")
    assert len(o.pack()) == p.OUTPUT_HEADER_SIZE + 2 * 16 + 1
    assert p.Output.unpack(o.pack()).timings == big
    assert o.pack()[p.OUTPUT_HEADER_SIZE:p.OUTPUT_HEADER_SIZE + 16] == (2**64 - 1).to_bytes(8, "little") + (
        2**40 + 3).to_bytes(8, "little")
    with pytest.raises((ValueError, struct.error)):
        p.Output(0, 1, 0, 0, p.Layout.NWC, 8, 0, 1, 1, (p.Timing(2**64, 0),), b"\x05").pack()
    row = next(r for r in doc_table("### 0x82 OUTPUT") if r[3] == "timings")
    assert row[1] == "16 × timing_count" and "u64 cycles, u64 microseconds" in row[4]
    # the batch vector carries a sum beyond 2^32 cycles
    assert VALID["output_batch_3_windows"]["message"]["timings"][0]["cycles"] > 2**32


def test_configure_ack_detail_round_trip():
    mods = [p.ConfigureAckModule(-128, 127, 8, 0, 0xFFFF), p.ConfigureAckModule(0, -7, 16, 64, 128)]
    detail = p.pack_configure_ack(mods)
    assert len(detail) == 14
    assert p.unpack_configure_ack(detail) == mods
    assert p.unpack_configure_ack(b"") == []
    with pytest.raises(p.FrameError) as e:
        p.unpack_configure_ack(detail[:-1])
    assert e.value.reason == "payload"


def test_frames_and_output_arrays():
    rng = np.random.default_rng(1)
    for dtype in (np.int8, np.int16):
        info = np.iinfo(dtype)
        a = rng.integers(info.min, info.max, size=(5, 3), endpoint=True).astype(dtype)
        f = p.Frames.from_array(7, a)
        assert (f.first_frame, f.count, f.frame_bytes) == (7, 5, 3 * a.itemsize)
        assert f.data == a.astype(np.dtype(dtype).newbyteorder("<")).tobytes()
        assert np.array_equal(p.Frames.unpack(f.pack()).array(dtype), a)
        for layout in FRAME_LAYOUTS:
            o = p.Output.from_array(1, 2, 3, a, -5, (p.Timing(1, 2),), layout)
            back = p.Output.unpack(o.pack())
            assert back.bits == a.itemsize * 8 and (back.frames, back.channels) == (5, 3)
            assert back.array().dtype == dtype and np.array_equal(back.array(), a)
            expected_wire = a if layout == p.Layout.NWC else a.T
            assert back.data == np.ascontiguousarray(expected_wire).astype(np.dtype(dtype).newbyteorder("<")).tobytes()
    # NCW on the wire is channel-major: channel 0's frames first
    o = p.Output(0, 1, 0, 0, p.Layout.NCW, 8, 0, 2, 3, (), bytes([1, 2, 3, 4, 5, 6]))
    assert o.array().tolist() == [[1, 3, 5], [2, 4, 6]]
    with pytest.raises(ValueError):
        p.Frames.from_array(0, np.zeros((2, 2), dtype=np.float32))


def test_batched_output_arrays():
    rng = np.random.default_rng(2)
    for dtype in (np.int8, np.int16):
        info = np.iinfo(dtype)
        for windows, frames in ((1, 4), (3, 2), (4, 1), (5, 0)):
            a = rng.integers(info.min, info.max, size=(windows * frames, 3), endpoint=True).astype(dtype)
            for layout in FRAME_LAYOUTS:
                o = p.Output.from_array(8, 1, 20, a, -3, (p.Timing(1, 2), p.Timing(3, 4)), layout, windows=windows)
                assert (o.window, o.windows, o.frames, o.channels) == (8, windows, frames, 3)
                back = p.Output.unpack(o.pack())
                assert back == o and back.array().dtype == dtype and np.array_equal(back.array(), a)
                # the data is `windows` blocks, window after window, each block in `layout`
                le = np.dtype(dtype).newbyteorder("<")
                blocks = [a[w * frames:(w + 1) * frames] for w in range(windows)]
                expected = b"".join(np.ascontiguousarray(b if layout == p.Layout.NWC else b.T).astype(le).tobytes()
                                    for b in blocks)
                assert back.data == expected
    # two NCW windows of 2 frames x 3 channels: window 0 channel-major, then window 1
    o = p.Output(0, 2, 0, 0, p.Layout.NCW, 8, 0, 2, 3, (), bytes(range(1, 13)))
    assert o.array().tolist() == [[1, 3, 5], [2, 4, 6], [7, 9, 11], [8, 10, 12]]
    o = p.Output(0, 2, 0, 0, p.Layout.NWC, 8, 0, 2, 3, (), bytes(range(1, 13)))
    assert o.array().tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9], [10, 11, 12]]
    with pytest.raises(ValueError):
        p.Output.from_array(0, 0, 0, np.zeros((5, 2), dtype=np.int8), 0, windows=2)  # 5 frames, 2 windows
    with pytest.raises(ValueError):
        p.Output.from_array(0, 0, 0, np.zeros((4, 2), dtype=np.int8), 0, windows=0)


def test_output_batch_vector_pins_the_block_order():
    v = VALID["output_batch_3_windows"]
    o = from_json(v["message"])
    assert (o.window, o.windows, o.layout, o.frames, o.channels) == (3, 3, p.Layout.NCW, 2, 3)
    nwc = [[1, -2, 3], [4, -5, 6], [7, -8, 9], [10, -11, 0], [-128, 127, 13], [14, -15, 16]]
    assert o.array().tolist() == nwc
    assert bytes.fromhex(v["message"]["data"]) == bytes([1, 4, 0xFE, 0xFB, 3, 6, 7, 10, 0xF8, 0xF5, 9, 0,
                                                          0x80, 14, 0x7F, 0xF1, 13, 16])
    assert p.Output.from_array(3, o.module, o.step, np.array(nwc, dtype=np.int8), o.exponent, o.timings,
                               p.Layout.NCW, windows=3) == o
    # round-robin, W = 2, N = 2: module 1 ran on window 5, the batch's last, at step 12
    runs = plan_schedule(2, 2, p.Schedule.ROUND_ROBIN, 14).runs
    assert next(r.step for r in runs if (r.window, r.module) == (5, 1)) == o.step
    assert VALID["output_3_timings"]["message"]["windows"] == 1
    assert VALID["configure_3_modules"]["message"]["output_batch"] == 1


def test_max_windows_per_output_fills_max_payload_exactly():
    for max_payload, frames, channels, bits, modules in (
            (4096, 1, 64, 8, 3), (4096, 3, 16, 16, 1), (4096, 64, 64, 8, 1), (256, 1, 1, 8, 1), (65535, 1, 1, 8, 255),
            (4096, 7, 5, 16, 255), (300, 4, 2, 8, 10)):
        n = p.max_windows_per_output(max_payload, frames, channels, bits, modules)
        window = np.zeros((frames, channels), dtype=np.int8 if bits == 8 else np.int16)
        timings = tuple(p.Timing(0, 0) for _ in range(modules))

        def size(windows):
            return len(p.Output.from_array(0, 0, 0, np.concatenate([window] * windows), 0, timings,
                                           windows=windows).pack())
        assert 0 <= n <= 0xFFFF
        if n:
            assert size(n) <= max_payload
            assert size(n) == p.OUTPUT_HEADER_SIZE + 16 * modules + n * frames * channels * bits // 8
        if n < 0xFFFF:
            assert size(n + 1) > max_payload
    assert p.max_windows_per_output(4096, 1, 64, 8, 3) == 62  # W = 1, 64 int8 channels, 3 timings
    assert p.max_windows_per_output(4096, 64, 64, 8, 1) == 0  # one window alone is too big: BAD_CONFIG
    assert p.max_windows_per_output(4096, 0, 64, 8, 1) == 0xFFFF
    assert p.max_windows_per_output(10, 1, 1, 8, 1) == 0
    with pytest.raises(ValueError):
        p.max_windows_per_output(4096, 1, 1, 12, 1)


def test_batching_efficiency_claims_in_the_doc():
    """Section 1: OUTPUT efficiency at W = 1, 64 int8 channels, 3 modules, max_payload 4096 (worst-case COBS)."""
    def wire_bytes(windows):
        data = np.full((windows, 64), 1, dtype=np.int8)  # no 0x00 anywhere: the most COBS code bytes
        timings = tuple(p.Timing(0x0101010101010101, 0x0101010101010101) for _ in range(3))
        return len(p.encode(p.Output.from_array(0x01010101, 2, 0x01010101, data, 1, timings, windows=windows), 1))
    per_message = wire_bytes(1) - 64
    assert per_message == 5 + 4 + p.OUTPUT_HEADER_SIZE + 3 * 16 + 2 == 78
    best = p.max_windows_per_output(p.DEFAULT_MAX_PAYLOAD, 1, 64, 8, 3)
    stated = {1: (142, "45.1"), 25: (1684, "95.0"), best: (4061, "97.7")}
    doc = DOC.read_text()
    for windows, (size, percent) in stated.items():
        assert wire_bytes(windows) == size
        assert f"{100 * 64 * windows / size:.1f}" == percent
        assert f"{percent} %" in doc, percent
        assert f"{size} wire bytes" in doc or windows != best
    assert f"the {best} windows that fit" in doc and f"{per_message} bytes" in doc
    assert wire_bytes(24) * 95 > 100 * 64 * 24  # 25 is the smallest batch that reaches 95 %


def test_max_frames_and_chunk_helpers_fill_max_payload_exactly():
    for max_payload, frame_bytes in ((4096, 64), (4096, 128), (4096, 4088), (4096, 4089), (512, 7), (65535, 1)):
        n = p.max_frames_per_message(max_payload, frame_bytes)
        assert 0 <= n <= 0xFFFF and (n > 0) == (frame_bytes <= max_payload - p.FRAMES_HEADER_SIZE)
        assert len(p.Frames(0, n, frame_bytes, bytes(n * frame_bytes)).pack()) <= max_payload
        if n < 0xFFFF:
            assert len(p.Frames(0, n + 1, frame_bytes, bytes((n + 1) * frame_bytes)).pack()) > max_payload
    assert p.max_frames_per_message(8, 1) == 0
    c = p.max_chunk_size(4096)
    assert len(p.ModelChunk(0, 0, bytes(c)).pack()) == 4096
    full = p.encode(p.ModelChunk(0, 0, b"\x01" * p.max_chunk_size(300)), 0)
    assert len(full) - 1 <= p.max_wire_size(300)


OUT1 = bytes(4) + bytes([1, 0]) + bytes(5)  # OUTPUT window 0, windows 1, module 0, step 0
PART = bytes(4) + bytes([0, 0]) + bytes(5) + bytes([0, 8, 0, 3, 0, 1, 0, 0])  # a part of a 3 x 1 int8 NWC window


def doc_table(heading: str) -> list[list[str]]:
    """The rows of the first table after ``heading`` in docs/protocol.md, cells stripped."""
    text = DOC.read_text()
    lines = text[text.index(heading):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|---"))
    rows = []
    for line in lines[start + 1:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip().strip("`") for c in line.strip().strip("|").split("|")])
    return rows


_STRUCT_CODE = {"u8": "B", "u16": "H", "u32": "I", "i8": "b"}


def fixed_header(heading: str, cls, fixed: list[str]) -> tuple[list[list[str]], int]:
    """The field table under ``heading`` in docs/protocol.md against ``cls``'s packed header: the first rows are
    ``fixed``, at the offsets and sizes their types give, in ``cls._S``'s format. Returns (rows, header size)."""
    rows = doc_table(heading)
    head = rows[:len(fixed)]
    assert [r[3] for r in head] == fixed
    offset = 0
    for r in head:
        size = struct.calcsize("<" + _STRUCT_CODE[r[2]])
        assert (int(r[0]), int(r[1])) == (offset, size), r
        offset += size
    assert cls._S.format == "<" + "".join(_STRUCT_CODE[r[2]] for r in head) and cls._S.size == offset
    return rows, offset


@pytest.mark.parametrize("heading, cls, fixed", [
    ("### 0x05 CONFIGURE", p.Configure, ["window", "schedule", "flags", "queue_depth", "output_batch",
                                         "module_count"]),
    ("### 0x82 OUTPUT", p.Output, ["window", "windows", "module", "step", "layout", "bits", "exponent", "frames",
                                   "channels", "timing_count"]),
])
def test_doc_field_tables_match_the_codec(heading, cls, fixed):
    rows, offset = fixed_header(heading, cls, fixed)
    assert int(rows[len(fixed)][0]) == offset
    names = [f.name for f in dataclasses.fields(cls)]
    assert names[:len(fixed) - 1] == fixed[:-1]  # the dataclass fields in wire order (the count is implicit)
    if cls is p.Output:
        assert offset == p.OUTPUT_HEADER_SIZE


def test_decode_body_rejects_malformed_content():
    def body(type_, payload, seq=3):
        head = bytes([type_]) + seq.to_bytes(2, "little") + len(payload).to_bytes(2, "little") + payload
        return head + zlib.crc32(head).to_bytes(4, "little")

    cases = {
        "unknown-type": [body(0x00, b""), body(0x09, b""), body(0x7F, b""), body(0x86, b""), body(0xFF, b"")],
        "payload": [
            body(0x01, b"\x01\x00\x01"),  # short HELLO
            body(0x01, b"\x01\x00\x01\x00\x00"),  # trailing byte
            body(0x05, bytes([3, 0, 2, 0, 0, 0, 1, 0, 0])),  # schedule 2
            body(0x05, bytes([3, 0, 0, 0, 0, 0, 1, 0])),  # header cut short: no module_count
            body(0x05, bytes([3, 0, 0, 0, 0, 0, 0])),  # the header without output_batch
            body(0x05, bytes([3, 0, 0, 0, 0, 0, 1, 0, 1, 0, 2, 0]) + b"\x00\x00" * 4),  # input_layout 2 (FLAT)
            body(0x05, bytes([3, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 3]) + b"\x00\x00" * 4),  # output_layout 3
            body(0x05, bytes([3, 0, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0]) + b"\x00\x00" * 3),  # module cut short
            body(0x05, bytes([3, 0, 0, 0, 0, 0, 1, 0, 0]) + bytes(1)),  # 0 modules, 1 trailing byte
            body(0x07, bytes([0, 0, 0, 0, 2, 0, 4, 0]) + bytes(7)),  # 7 data bytes for 2 x 4
            body(0x82, OUT1 + bytes([0, 8, 0, 1, 0, 1, 0, 0])),  # layout 0, 1x1 frame, data missing
            body(0x82, OUT1 + bytes([0, 8, 0, 1, 0, 1, 0, 0]) + bytes(2)),  # 1x1 frame, 2 data bytes
            body(0x82, OUT1 + bytes([2, 8, 0, 0, 0, 0, 0, 0])),  # layout 2 (FLAT) with frames 0
            body(0x82, OUT1 + bytes([2, 8, 0, 2, 0, 1, 0, 0]) + bytes(2)),  # FLAT with frames 2, 2 x 1 data bytes
            body(0x82, bytes(11) + bytes([2, 8, 0, 1, 0, 2, 0, 0, 0, 0, 1, 0]) + bytes(2)),  # a FLAT part
            body(0x82, OUT1 + bytes([3, 8, 0, 1, 0, 1, 0, 0]) + bytes(1)),  # layout 3
            body(0x82, OUT1 + bytes([0, 32, 0, 0, 0, 0, 0, 0])),  # bits 32
            body(0x82, OUT1 + bytes([0, 8, 0, 0, 0, 0, 0, 2]) + bytes(8)),  # 2 timings announced, 1 sent
            body(0x82, bytes(11) + bytes([0, 8, 0, 0, 0, 0, 0, 0])),  # windows 0 (and no data)
            body(0x82, bytes(11) + bytes([0, 8, 0, 1, 0, 1, 0, 0])),  # windows 0, 1x1 frame, no data
            body(0x82, bytes(4) + bytes([3, 0]) + bytes(5) + bytes([0, 8, 0, 1, 0, 2, 0, 0]) + bytes(4)),  # 4 of 6
            body(0x82, bytes(4) + bytes([2, 0]) + bytes(5) + bytes([1, 16, 0, 1, 0, 1, 0, 0]) + bytes(2)),  # 2 of 4
            body(0x82, OUT1[:-1]),  # header cut short
            body(0x82, PART + bytes([0, 0])),  # a part cut short: no part_frames
            body(0x82, PART + bytes([0, 0, 0, 0])),  # part_frames 0
            body(0x82, PART + bytes([2, 0, 2, 0, 1, 2])),  # frames 2..3 of a window of 3
            body(0x82, PART + bytes([0xFF, 0xFF, 1, 0, 1])),  # part_first_frame 65535 of a window of 3
            body(0x82, PART + bytes([1, 0, 2, 0, 1])),  # frames 1..2, 1 data byte of 2
            body(0x82, PART + bytes([1, 0, 1, 0, 1, 2])),  # frame 1, 2 data bytes of 1
            body(0x82, PART[:-1] + bytes([1]) + bytes([0, 0, 1, 0, 1])),  # 1 timing announced, a part's 4 bytes sent
            body(0x84, bytes([0, 0, 0])),  # log level 0
            body(0x84, bytes([6, 0, 0])),  # log level 6
            body(0x84, bytes([3, 5, 0, 0x61])),  # string longer than the payload
            body(0x85, bytes([2, 0, 0xC3, 0x28])),  # invalid UTF-8
            body(0x8F, bytes([14, 0, 0, 0, 0, 0, 0])),  # error code 14
            body(0x8F, bytes([0, 0, 0, 0, 0, 0, 0])),  # error code 0
            body(0x83, b""),  # CREDIT without frames
            body(0x06, b"\x00"), body(0x08, b"\x00"),  # RESET / FLUSH carry nothing
        ],
    }
    for reason, bodies in cases.items():
        for b in bodies:
            with pytest.raises(p.FrameError) as e:
                p.decode_body(b)
            assert e.value.reason == reason, (b.hex(), e.value)
            assert (e.value.msg_type, e.value.seq) == (b[0], 3)
            assert e.value.error_code == (p.ErrorCode.UNKNOWN_MESSAGE if reason == "unknown-type"
                                          else p.ErrorCode.BAD_PAYLOAD)
            assert str(e.value).startswith(f"bad frame ({reason})")


def test_framing_checks_in_order():
    good = bytes.fromhex(VALID["hello"]["body_hex"])
    for n in range(p.MIN_BODY_SIZE):
        with pytest.raises(p.FrameError, match=r"\(short\)"):
            p.decode_body(good[:n])
    with pytest.raises(p.FrameError, match=r"\(length\)"):
        p.decode_body(good[:-5] + good[-4:])  # one payload byte gone, CRC not even looked at
    with pytest.raises(p.FrameError, match=r"\(crc\)"):
        p.decode_body(good[:-1] + bytes([good[-1] ^ 0x80]))
    assert p.FrameError("crc").error_code == p.ErrorCode.BAD_FRAME


# --------------------------------------------------------------------------- the receiver

def stream_of(n: int, seed: int) -> tuple[list[p.Packet], bytes]:
    rng = random.Random(seed)
    msgs = [p.Credit(rng.randrange(0x10000)), p.Log(p.LogLevel.INFO, "x" * rng.randrange(600)),
            p.Frames(rng.randrange(100), 2, 4, bytes(rng.randrange(256) for _ in range(8))),
            p.ModelChunk(0, 0, bytes(rng.randrange(3) for _ in range(rng.randrange(700))))]
    pkts = [p.Packet(i, msgs[i % len(msgs)]) for i in range(n)]
    return pkts, b"".join(p.encode(k.message, k.seq) for k in pkts)


def test_decoder_any_chunking():
    pkts, data = stream_of(40, seed=7)
    one = p.FrameDecoder()
    assert [x for i in range(len(data)) for x in one.feed(data[i:i + 1])] == pkts
    assert (one.frames_ok, one.frames_bad, one.garbage_bytes, one.buffered) == (40, 0, 0, 0)
    rng = random.Random(11)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randrange(1, 60)))
        d = p.FrameDecoder()
        got = [x for a, b in zip([0, *cuts], [*cuts, len(data)]) for x in d.feed(data[a:b])]
        assert got == pkts
    d = p.FrameDecoder()
    assert d.feed(b"") == [] and d.feed(bytearray(data)) == pkts
    assert d.feed(memoryview(data)) == pkts


def test_stray_delimiters_are_ignored_silently():
    pkts, data = stream_of(5, seed=3)
    frames = data.split(b"\x00")[:-1]
    d = p.FrameDecoder()
    assert d.feed(b"\x00\x00" + b"\x00\x00".join(frames) + b"\x00\x00\x00") == pkts
    assert (d.frames_ok, d.frames_bad) == (5, 0)


@pytest.mark.parametrize("index", range(len(SAMPLE_WIRES)))
def test_every_single_bit_flip_is_caught(index):
    target = SAMPLE_WIRES[index]
    after = [p.encode(p.Credit(5), 1), p.encode(p.Credit(6), 2)]
    tail = [p.Packet(1, p.Credit(5)), p.Packet(2, p.Credit(6))]
    for bit in range(len(target) * 8):
        corrupted = bytearray(target)
        corrupted[bit // 8] ^= 1 << (bit % 8)
        items = p.FrameDecoder().feed(bytes(corrupted) + b"".join(after))
        assert errors(items), f"bit {bit}: no error reported"
        got = packets(items)
        if bit // 8 == len(target) - 1:  # the delimiter is gone: this frame swallows the next one
            assert got == tail[1:], f"bit {bit}: {got}"
        else:
            assert got == tail, f"bit {bit}: {got}"


def test_truncated_frames_are_errors_and_the_next_frame_survives():
    nxt = p.encode(p.Credit(9), 4)
    for target in SAMPLE_WIRES:
        for n in range(1, len(target) - 1):
            items = p.FrameDecoder().feed(target[:n] + b"\x00" + nxt)
            assert len(items) == 2 and isinstance(items[0], p.FrameError), n
            assert items[1] == p.Packet(4, p.Credit(9))


def test_garbage_never_hides_the_frames_around_it():
    rng = random.Random(1234)
    pkts, _ = stream_of(30, seed=5)
    for trial in range(200):
        data = bytearray()
        for k in pkts:
            data += p.encode(k.message, k.seq)
            n = rng.randrange(0, 300)
            garbage = bytes(rng.randrange(256) for _ in range(n))
            if trial % 2:
                garbage = garbage.replace(b"\x00", b"\x01")  # garbage without any delimiter
            data += garbage + b"\x00"  # ... but terminated before the next frame starts
        d = p.FrameDecoder()
        items = d.feed(bytes(data))
        assert packets(items) == pkts
        assert d.frames_ok == len(pkts)
        assert all(isinstance(i, (p.Packet, p.FrameError)) for i in items)


def test_garbage_glued_to_a_frame_loses_only_that_frame():
    pkts, _ = stream_of(3, seed=9)
    a, b, c = (p.encode(k.message, k.seq) for k in pkts)
    items = p.FrameDecoder().feed(a + b"ESP-ROM:esp32s3-20210327\r\n" + b + c)
    assert packets(items) == [pkts[0], pkts[2]] and len(errors(items)) == 1


def test_boot_noise_before_a_leading_delimiter_is_one_error():
    boot = p.encode(p.Boot("runner"), 0)
    noise = b"ESP-ROM:esp32p4-eco2-20240710\r\nBuild:Jul 10 2024\r\n"
    d = p.FrameDecoder()
    items = d.feed(noise + b"\x00" + boot)
    assert len(errors(items)) == 1 and packets(items) == [p.Packet(0, p.Boot("runner"))]
    assert d.frames_bad == 1 and d.garbage_bytes == len(noise) + 1


def test_oversize_input_is_bounded_and_reported_once():
    d = p.FrameDecoder(max_payload=256)
    limit = p.max_wire_size(256)
    rng = random.Random(2)
    items = []
    for _ in range(200):
        items += d.feed(bytes(rng.randrange(1, 256) for _ in range(1000)))
        assert d.buffered <= limit
    assert [e.reason for e in items] == ["oversize"]
    assert d.frames_bad == 1 and d.garbage_bytes == 200_000
    frame = p.encode(p.Credit(3), 0)
    assert d.feed(b"\x01\x02" + b"\x00" + frame) == [p.Packet(0, p.Credit(3))]
    assert d.buffered == 0
    # a complete chunk longer than the limit is rejected without decoding
    big = p.encode(p.ModelChunk(0, 0, b"\x01" * 400), 1)
    items = d.feed(big + frame)
    assert [type(i) for i in items] == [p.FrameError, p.Packet] and items[0].reason == "oversize"
    # the default accepts the largest legal frame
    largest = p.encode(p.ModelChunk(0, 0, b"\x01" * (p.MAX_PAYLOAD_LIMIT - 5)), 0)
    assert packets(p.FrameDecoder().feed(largest))[0].message.data == b"\x01" * (p.MAX_PAYLOAD_LIMIT - 5)


def test_counters():
    d = p.FrameDecoder()
    good = p.encode(p.Credit(1), 0)
    body = bytearray(p.encode_body(p.Credit(1), 0))
    body[-1] ^= 0x01
    bad = cobs.encode(bytes(body)) + b"\x00"
    assert [type(i) for i in d.feed(b"\x00" + good + bad + good)] == [p.Packet, p.FrameError, p.Packet]
    assert (d.frames_ok, d.frames_bad, d.garbage_bytes) == (2, 1, 1 + len(bad))


# --------------------------------------------------------------------------- scheduling

def test_round_robin_runs_module_k_at_jW_plus_W_minus_1_plus_k_when_W_at_least_N():
    for n in range(1, 5):
        for w in range(n, 8):
            t = plan_schedule(n, w, p.Schedule.ROUND_ROBIN, 5 * w, queue_depth=1, flush=True)
            assert t.backlog_full_step is None
            assert sorted((r.window, r.module, r.step) for r in t.runs) == [
                (j, k, j * w + w - 1 + k) for j in range(5) for k in range(n)]
            assert t.steps == 5 * w + n - 1


def test_round_robin_backlog_and_sequential():
    t = plan_schedule(3, 1, p.Schedule.ROUND_ROBIN, 100, queue_depth=4)
    assert t.backlog_full_step == 5
    assert plan_schedule(3, 1, p.Schedule.ROUND_ROBIN, 100, queue_depth=2).backlog_full_step == 2
    assert p.DEFAULT_QUEUE_DEPTH == 4
    assert plan_schedule(3, 1, p.Schedule.ROUND_ROBIN, 100).backlog_full_step == 5  # 0 = the default, 4
    assert plan_schedule(3, 1, p.Schedule.ROUND_ROBIN, 5).backlog_full_step is None
    flushed = plan_schedule(3, 2, p.Schedule.ROUND_ROBIN, 4, flush=True)  # W < N, within the queue
    assert [(r.window, r.module, r.step) for r in flushed.runs] == [
        (0, 0, 1), (0, 1, 2), (0, 2, 3), (1, 0, 4), (1, 1, 5), (1, 2, 6)]
    seq = plan_schedule(3, 2, p.Schedule.SEQUENTIAL, 5, flush=True)
    assert [(r.window, r.module, r.step) for r in seq.runs] == [(0, 0, 1), (0, 1, 1), (0, 2, 1),
                                                                 (1, 0, 3), (1, 1, 3), (1, 2, 3)]
    assert seq.steps == 5  # nothing pending: FLUSH adds no step; the incomplete window is not run


def test_protocol_error_is_a_harness_error():
    e = p.ProtocolError("device answered ERROR CREDIT_EXCEEDED to FRAMES seq 7", "keep FRAMES within the credits")
    assert isinstance(e, HarnessError)
    assert str(e) == "device answered ERROR CREDIT_EXCEEDED to FRAMES seq 7; keep FRAMES within the credits."


def test_model_sha_in_vector_matches_its_name():
    v = VALID["model_begin"]["message"]
    assert v["sha256"] == hashlib.sha256(b"example model").hexdigest()


# --------------------------------------------------------------------------- OUTPUT parts (section 7.7)

PARTS = [VALID[f"output_part_{i}_of_3"] for i in (1, 2, 3)]


def test_part_vectors_pin_the_layout_of_a_part():
    parts = [from_json(v["message"]) for v in PARTS]
    assert [(o.windows, o.part_first_frame, o.part_frames) for o in parts] == [(0, 0, 2), (0, 2, 2), (0, 4, 1)]
    assert all(o.is_part and o.frames == 5 and o.layout == p.Layout.NCW for o in parts)
    # NCW: per channel, its values of the part's frames; array() gives the part's frames in NWC
    assert bytes.fromhex(PARTS[0]["message"]["data"]) == bytes([1, 4, 0xFE, 0xFB, 3, 6])
    assert parts[0].array().tolist() == [[1, -2, 3], [4, -5, 6]]
    assert parts[2].array().tolist() == [[-128, 127, 0]]
    nwc = [[1, -2, 3], [4, -5, 6], [7, -8, 9], [10, -11, 12], [-128, 127, 0]]
    [whole] = p.join_parts(parts)
    assert (whole.window, whole.windows, whole.module, whole.step, whole.timings) == (2, 1, 1, 15, parts[0].timings)
    assert whole.array().tolist() == nwc and not whole.is_part
    # what a device with room for two frames per part sends for that window
    assert p.split_output(whole, 62) == parts
    assert p.part_ranges(62, 5, 3, 8, 2) == [(0, 2), (2, 2), (4, 1)] and p.max_frames_per_part(62, 3, 8, 2) == 2
    # runs at step 15: round-robin, W = 5, N = 2, module 1 of window 2
    runs = plan_schedule(2, 5, p.Schedule.ROUND_ROBIN, 15, flush=True).runs
    assert next(r.step for r in runs if (r.window, r.module) == (2, 1)) == whole.step
    last16 = from_json(VALID["output_part_nwc_int16"]["message"])
    assert (last16.part_first_frame, last16.part_frames, last16.bits) == (38, 2, 16)
    assert last16.array().tolist() == [[1000, -1000], [32767, -32768]]


def _joined_items(outputs):
    """What the host's receiver yields for ``outputs``: whole OUTPUTs, or the OutputPartError."""
    assembler = p.PartAssembler("dev")
    items = []
    try:
        for out in outputs:
            whole = assembler.add(out)
            if whole is not None:
                items.append(whole)
        assembler.finish()
    except p.OutputPartError as e:
        items.append(e)
    return items


@pytest.mark.parametrize("case", VECTORS["part_sequences"], ids=lambda c: c["name"])
def test_part_sequences_join_or_fail_as_listed(case):
    items = _joined_items([from_json(VALID[name]["message"]) for name in case["outputs"]])
    got = []
    for item in items:
        if isinstance(item, p.OutputPartError):
            got.append({"error": item.reason, "module": item.module, "window": item.window,
                        "frames": list(item.frames)})
            assert isinstance(item, p.ProtocolError)
            text = str(item)
            assert f"module {item.module}, window {item.window}" in text
            assert f"frames {item.frames[0]}..{item.frames[1]}" in text
        else:
            whole = [n for n in case["outputs"] if not n.startswith("output_part_")
                     and from_json(VALID[n]["message"]) == item]  # passed through untouched
            got.append({"vector": whole[0]} if whole else {"joined": to_json(item)})
    assert got == case["expected"]


def test_doc_lists_the_part_sequences():
    text = DOC.read_text()
    table = text[text.index("| case | OUTPUTs received (vectors) |"):]
    rows = [r for r in table.splitlines()[2:] if r.startswith("|")][:len(VECTORS["part_sequences"])]
    assert len(rows) == len(VECTORS["part_sequences"])
    for row, case in zip(rows, VECTORS["part_sequences"]):
        assert row.startswith(f"| `{case['name']}` |")
        for item in case["expected"]:
            if "error" in item:
                assert f"error `{item['error']}`, frames {item['frames'][0]}..{item['frames'][1]}" in row


@pytest.mark.parametrize("max_payload", [256, 300, 4096, 5000, 65535])
def test_part_sizes_fill_max_payload_exactly(max_payload):
    for frames, channels, bits, modules in ((72, 64, 16, 3), (36, 64, 16, 1), (1200, 8, 8, 3), (5, 100, 16, 8),
                                            (4097, 1, 8, 1), (3, 2000, 16, 2), (1, 5000, 8, 1), (700, 6, 8, 3)):
        fit = p.max_windows_per_output(max_payload, frames, channels, bits, modules)
        per_part = p.max_frames_per_part(max_payload, channels, bits, modules)
        if fit == 0 and per_part == 0:
            with pytest.raises(ValueError):
                p.part_ranges(max_payload, frames, channels, bits, modules)
            continue
        ranges = p.part_ranges(max_payload, frames, channels, bits, modules)
        assert (ranges == []) == (fit > 0)  # parts exactly when not even one window fits
        if not ranges:
            continue
        assert [first for first, _ in ranges] == list(range(0, frames, per_part))
        assert sum(n for _, n in ranges) == frames and all(n == per_part for _, n in ranges[:-1])
        assert len(ranges) == -(-frames // per_part)
        window = np.ones((frames, channels), dtype=np.int8 if bits == 8 else np.int16)
        timings = tuple(p.Timing(0, 0) for _ in range(modules))
        whole = p.Output.from_array(0, modules - 1, 0, window, 0, timings)
        parts = p.split_output(whole, max_payload)
        assert [(o.part_first_frame, o.part_frames) for o in parts] == ranges
        sizes = [len(o.pack()) for o in parts]
        assert max(sizes) <= max_payload
        assert sizes[0] == p.OUTPUT_HEADER_SIZE + 16 * modules + p.OUTPUT_PART_SIZE + per_part * channels * bits // 8
        one_more = p.OUTPUT_HEADER_SIZE + 16 * modules + p.OUTPUT_PART_SIZE + (per_part + 1) * channels * bits // 8
        assert one_more > max_payload  # a part holds as many frames as fit
    assert p.max_frames_per_part(4096, 64, 16, 3) == 31 and p.part_ranges(4096, 72, 64, 16, 3) == [
        (0, 31), (31, 31), (62, 10)]  # the example of section 7.7
    assert "P = ⌊(4096 − 19 − 48 − 4) / 128⌋ = 31" in DOC.read_text()
    assert p.max_frames_per_part(100, 64, 16, 3) == 0


def test_split_and_join_round_trip_every_shape_and_layout():
    rng = np.random.default_rng(7)
    for dtype in (np.int8, np.int16):
        info = np.iinfo(dtype)
        for frames, channels, modules in ((600, 8, 3), (130, 17, 1), (64, 64, 2), (1000, 3, 8)):
            a = rng.integers(info.min, info.max, size=(frames, channels), endpoint=True).astype(dtype)
            timings = tuple(p.Timing(k, 10 * k) for k in range(modules))
            for layout in FRAME_LAYOUTS:
                whole = p.Output.from_array(9, modules - 1, 77, a, -4, timings, layout)
                parts = p.split_output(whole, 512)
                assert len(parts) >= 2 and all(o.is_part for o in parts)
                decoded = [packet.message for packet in p.FrameDecoder(512).feed(
                    b"".join(p.encode(o, i) for i, o in enumerate(parts)))]
                assert decoded == parts
                assert np.array_equal(np.concatenate([o.array() for o in decoded]), a)
                assert p.join_parts(decoded) == [whole]
                assert all(o.timings == timings and o.step == 77 for o in decoded)  # every part: the same
    small = p.Output.from_array(0, 0, 0, np.zeros((2, 2), dtype=np.int8), 0, (p.Timing(0, 0),))
    assert p.split_output(small, 256) == [small] and p.join_parts([small]) == [small]


def test_part_assembler_errors_name_module_window_and_frames():
    a = np.arange(40 * 3, dtype=np.int16).reshape(40, 3)
    whole = p.Output.from_array(4, 2, 50, a, -8, (p.Timing(1, 1), p.Timing(2, 2), p.Timing(3, 3)), p.Layout.NCW)
    parts = p.split_output(whole, 256)  # (256 - 19 - 48 - 4) // 6 = 30: frames 0..29 and 30..39
    assert [(o.part_first_frame, o.part_frames) for o in parts] == [(0, 30), (30, 10)]
    other = p.Output.from_array(4, 1, 49, a[:, :2], -8, (p.Timing(1, 1), p.Timing(2, 2)))

    def fails(outputs, reason, frames, *words):
        with pytest.raises(p.OutputPartError) as e:
            p.join_parts(outputs, "virtual esp32p4 board")
        assert (e.value.reason, e.value.module, e.value.window, e.value.frames) == (reason, 2, 4, frames)
        text = str(e.value)
        assert text.startswith("virtual esp32p4 board sent the OUTPUT parts of module 2, window 4")
        assert all(w in text for w in words), text
        assert "\n" not in text

    fails(parts[1:], "missing", (0, 29), "frames 0..29 are missing")
    fails(parts[:1], "incomplete", (30, 39), "frames 30..39 of 40 are missing", "the stream ended")
    fails([parts[0], other, parts[1]], "incomplete", (30, 39), "an OUTPUT of module 1, window 4 came next")
    fails([parts[0], *p.split_output(dataclasses.replace(whole, window=5), 256)], "incomplete", (30, 39),
          "a part of module 2, window 5 came next")
    fails([parts[0], parts[0]], "overlap", (0, 29), "repeats frames 0..29")
    shifted = dataclasses.replace(parts[1], part_first_frame=25, part_frames=15, data=bytes(15 * 3 * 2))
    fails([parts[0], shifted], "overlap", (25, 29))
    one_late = dataclasses.replace(parts[1], part_first_frame=31, part_frames=9, data=bytes(9 * 3 * 2))
    fails([parts[0], one_late], "missing", (30, 30), "frames 30..30 are missing")  # a gap of a single frame
    fails([parts[0], dataclasses.replace(parts[1], step=51)], "mismatch", (30, 39), "differs", "step")
    fails([parts[0], dataclasses.replace(parts[1], timings=whole.timings[:2] + (p.Timing(3, 4),))], "mismatch",
          (30, 39), "timings")
    fails([parts[0], dataclasses.replace(parts[1], exponent=-7)], "mismatch", (30, 39), "exponent")
    # the assembler starts clean after an error, and whole OUTPUTs pass through untouched
    assembler = p.PartAssembler()
    with pytest.raises(p.OutputPartError):
        assembler.add(parts[1])
    assert assembler.pending is None
    assert assembler.add(other) is other and assembler.add(parts[0]) is None and assembler.pending == parts[0]
    assert assembler.add(parts[1]) == whole and assembler.pending is None
    assembler.finish()


# --------------------------------------------------------------------------- per-window outputs (section 5)

def test_flat_outputs_are_one_row_per_window():
    """FLAT: frames 1, channels the element count, data each window's elements in memory order; array() gives
    [windows, channels]; never a part, never an input layout."""
    rng = np.random.default_rng(5)
    for dtype in (np.int8, np.int16):
        info = np.iinfo(dtype)
        for windows in (1, 3):
            rows = rng.integers(info.min, info.max, size=(windows, 16), endpoint=True).astype(dtype)
            o = p.Output.from_array(7, 1, 20, rows, -4, (p.Timing(1, 2), p.Timing(3, 4)), p.Layout.FLAT, windows)
            assert (o.layout, o.windows, o.frames, o.channels) == (p.Layout.FLAT, windows, 1, 16)
            assert o.data == rows.astype(np.dtype(dtype).newbyteorder("<")).tobytes()  # row after row, row-major
            back = p.Output.unpack(o.pack())
            assert back == o and back.array().dtype == dtype and np.array_equal(back.array(), rows)
            assert p.split_output(o, 4096) == [o] and p.join_parts([o]) == [o]
    # a [1, 2, 3] tensor's elements in memory order are one FLAT row, whatever its rank
    tensor = np.arange(6, dtype=np.int8).reshape(1, 2, 3)
    o = p.Output.from_array(0, 0, 0, tensor.reshape(1, -1), 0, layout=p.Layout.FLAT)
    assert o.data == bytes(range(6)) and o.array().tolist() == [[0, 1, 2, 3, 4, 5]]
    with pytest.raises(ValueError, match="one row per window"):
        p.Output.from_array(0, 0, 0, np.zeros((2, 4), dtype=np.int8), 0, layout=p.Layout.FLAT)  # 2 rows, 1 window
    with pytest.raises(ValueError, match="frames 1"):
        p.Output(0, 1, 0, 0, p.Layout.FLAT, 8, 0, 2, 2, (), bytes(4)).pack()
    with pytest.raises(ValueError, match="frames 1"):
        p.Output(0, 0, 0, 0, p.Layout.FLAT, 8, 0, 1, 2, (), bytes(2), 0, 1).pack()  # a part
    with pytest.raises(ValueError, match="never sent in parts"):
        o.part(0, 1)
    big = p.Output.from_array(0, 1, 0, np.zeros((1, 300), dtype=np.int8), 0, (p.Timing(0, 0),) * 2, p.Layout.FLAT)
    with pytest.raises(ValueError, match="FLAT output of 300 x int8 does not fit one OUTPUT of 256 bytes"):
        p.split_output(big, 256)
    with pytest.raises(ValueError, match="input_layout FLAT"):
        p.ModuleConfig(0, p.Layout.FLAT, p.Layout.NWC, "x", "y").pack()
    assert [int(v) for v in p.Layout] == [0, 1, 2] and p.Layout(2).name == "FLAT"


def test_per_window_output_vectors():
    flat = from_json(VALID["output_flat_16_int8"]["message"])
    assert (flat.layout, flat.windows, flat.frames, flat.channels) == (p.Layout.FLAT, 1, 1, 16)
    assert flat.array().tolist() == [[21, -7, 0, 33, -128, 127, 2, -2, 9, 0, -45, 64, 1, -1, 100, -100]]
    runs = plan_schedule(2, 3, p.Schedule.ROUND_ROBIN, 15, flush=True).runs  # module 1 of 2, W = 3
    assert next(r.step for r in runs if (r.window, r.module) == (4, 1)) == flat.step
    tail = from_json(VALID["output_batch_2_windows_3_frames"]["message"])
    assert (tail.layout, tail.window, tail.windows, tail.frames, tail.channels) == (p.Layout.NWC, 2, 2, 3, 2)
    assert tail.array().tolist() == [[1, -1], [2, 0], [3, -3], [-4, 4], [0, 5], [127, -128]]
    runs = plan_schedule(1, 6, p.Schedule.SEQUENTIAL, 24).runs  # one module, W = 6: window 3 runs at step 23
    assert next(r.step for r in runs if r.window == 3) == tail.step
    # section 7.6: keeping F = 3 of W = 6 frames fits twice as many windows in one OUTPUT
    assert p.max_windows_per_output(4096, 3, 2, 8, 1) == 2 * p.max_windows_per_output(4096, 6, 2, 8, 1)
    configure = from_json(VALID["configure_flat_head"]["message"])
    assert [(m.input_layout, m.output_layout) for m in configure.modules] == [(p.Layout.NWC, p.Layout.NWC),
                                                                               (p.Layout.NWC, p.Layout.FLAT)]
    ack = from_json(VALID["ack_configure_flat_head"]["message"])
    assert (ack.ref_type, ack.ref_seq) == (p.MessageType.CONFIGURE, VALID["configure_flat_head"]["seq"])
    assert [m.output_channels for m in p.unpack_configure_ack(ack.detail)] == [32, 16]
    invalid = {v["name"]: v for v in VECTORS["invalid"]}
    assert {"output_flat_frames", "output_flat_part", "configure_flat_input"} <= set(invalid)


def test_doc_specifies_the_output_of_a_window_once():
    """Section 5 holds the table of output layouts and the table of output checks; the sections that size
    outputs (7.6, 7.7) and the Python API refer to F, not W."""
    text = DOC.read_text()
    assert text.count("| output_layout | module k's output tensor |") == 1
    assert text.count("| module k's `output` | text |") == 1
    parts = text[text.index("### 7.7 Output parts"):text.index("## 8. Error handling")]
    assert "max_windows_per_output(max_payload, F, C, 8 × e, k + 1)" in parts and "⌈F / P⌉" in parts
    assert "W × C" not in parts and "⌈W / P⌉" not in parts
    configure = text[text.index("### 0x05 CONFIGURE"):text.index("### 0x06 RESET")]
    assert "B × F × C × e" in configure and "B × W × C" not in configure
