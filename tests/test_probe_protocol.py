"""PROBE and TENSOR on the wire (docs/protocol.md 0x0A, 0x87, section 7.8): the field tables, the payload rules,
the required split of a tensor into parts and the host's joining of them, in Python and in the firmware's C codec.

The vectors themselves are checked with every other vector (tests/test_protocol.py: doc == JSON == codec;
tests/test_firmware_core.py: the C codec decodes and re-encodes each one as Python does)."""

from __future__ import annotations

import dataclasses
import random
import struct
import zlib

import numpy as np
import pytest
from cobs import cobs

from harness.device import protocol as p
from harness.emulator.scheduler import plan_schedule
from tests.test_firmware_core import codec_check, host_build, python_items  # noqa: F401 - host_build is a fixture
from tests.test_protocol import DOC, VALID, VECTORS, fixed_header, from_json, to_json


def body(msg_type: int, payload: bytes, seq: int = 3) -> bytes:
    head = bytes([msg_type]) + seq.to_bytes(2, "little") + len(payload).to_bytes(2, "little") + payload
    return head + zlib.crc32(head).to_bytes(4, "little")


def tensor_payload(*, bits=8, exponent=-3, shape=(1, 3, 4), first=0, name=b"y", data=None, rank=None) -> bytes:
    elements = int(np.prod(shape)) if shape else 1
    data = bytes(elements * bits // 8) if data is None else data
    rank = len(shape) if rank is None else rank
    return (struct.pack("<BIIBBbB", 1, 2, 9, 0, bits, exponent, rank) + b"".join(struct.pack("<I", d) for d in shape)
            + struct.pack("<I", first) + struct.pack("<H", len(name)) + name + data)


def probe_payload(names, module=0, window=0, count=None) -> bytes:
    raw = [n.encode() if isinstance(n, str) else n for n in names]
    return struct.pack("<BIB", module, window, len(raw) if count is None else count) + b"".join(
        struct.pack("<H", len(n)) + n for n in raw)


MALFORMED = {  # payloads a receiver must refuse with a `payload` error (docs/protocol.md 0x0A, 0x87)
    "probe: name_count 0": (0x0A, probe_payload([], count=0)),
    "probe: an empty name": (0x0A, probe_payload(["input", ""])),
    "probe: a name twice": (0x0A, probe_payload(["a", "b", "a"])),
    "probe: fewer names than name_count": (0x0A, probe_payload(["a"], count=2)),
    "probe: a trailing byte": (0x0A, probe_payload(["a"]) + b"\x00"),
    "probe: a name that is not UTF-8": (0x0A, probe_payload([b"\xc3\x28"])),
    "tensor: bits 12": (0x87, tensor_payload(bits=12, data=bytes(12))),
    "tensor: bits 64": (0x87, tensor_payload(bits=64)),
    "tensor: float32 with exponent -3": (0x87, tensor_payload(bits=32, exponent=-3)),
    "tensor: rank 9": (0x87, tensor_payload(shape=(1,) * 9)),
    "tensor: the shape cut short": (0x87, tensor_payload(shape=(1, 3, 4))[:13 + 8]),
    "tensor: more than 2^32 - 1 elements": (0x87, tensor_payload(shape=(0x10000, 0x10000), data=b"\x01")),
    "tensor: half an int16": (0x87, tensor_payload(bits=16, data=bytes(23))),
    "tensor: no element": (0x87, tensor_payload(data=b"")),
    "tensor: elements beyond the shape": (0x87, tensor_payload(first=10, data=bytes(4))),
    "tensor: first_element beyond the shape": (0x87, tensor_payload(first=12, data=bytes(1))),
    "tensor: an empty name": (0x87, tensor_payload(name=b"")),
    "tensor: data of a whole tensor and more": (0x87, tensor_payload(data=bytes(13))),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_malformed_probe_and_tensor_payloads_are_payload_errors(case):
    msg_type, payload = MALFORMED[case]
    with pytest.raises(p.FrameError) as e:
        p.decode_body(body(msg_type, payload))
    assert e.value.reason == "payload" and e.value.error_code == p.ErrorCode.BAD_PAYLOAD, e.value
    assert (e.value.msg_type, e.value.seq) == (msg_type, 3)


def test_the_c_codec_refuses_and_accepts_exactly_what_python_does(host_build):
    """Every malformed payload above, the vectors, and random valid and mutated PROBE/TENSOR frames: the C codec's
    items (message fields, re-encoded body and wire, or the error) equal Python's."""
    rng = random.Random(7)
    wires = [cobs.encode(body(t, payload)) + b"\x00" for t, payload in MALFORMED.values()]
    for _ in range(150):
        bits = rng.choice(p.TENSOR_BITS)
        shape = tuple(rng.randrange(0, 5) for _ in range(rng.randrange(0, 5)))
        dtype = {8: np.int8, 16: np.int16, 32: np.float32}[bits]
        values = np.random.default_rng(rng.randrange(1000)).integers(-100, 100, shape).astype(dtype)
        t = p.Tensor.from_array(rng.randrange(8), rng.randrange(1 << 32), rng.randrange(1 << 32), rng.randrange(256),
                                rng.choice(["x", "/conv/Conv_output_0", "é" * 5]), values, rng.randrange(-20, 5))
        message = t if t.elements == 0 or rng.random() < 0.5 else p.split_tensor(t, 64)[-1] if len(
            p.tensor_ranges(64, t.shape, t.name, t.bits)) > 1 else t
        names = tuple(dict.fromkeys(rng.choice(["input", "a", "/b/c", "ü"]) for _ in range(rng.randrange(1, 6))))
        for msg in (message, p.Probe(rng.randrange(256), rng.randrange(1 << 32), names)):
            raw = bytearray(p.encode_body(msg, rng.randrange(1 << 16))[5:-4])
            wires.append(p.encode(msg, 5))
            for _ in range(rng.randrange(1, 3)):  # mutated behind a valid CRC: the payload rules are reached
                raw[rng.randrange(len(raw))] = rng.choice([0, 1, 0x20, 0x80, 0xFF, rng.randrange(256)])
            wires.append(cobs.encode(body(msg.TYPE, bytes(raw))) + b"\x00")
    answers = codec_check(host_build, [f"wire {w.hex()}" for w in wires])
    reasons = set()
    for wire, items in zip(wires, answers):
        assert items == python_items(wire), wire.hex()
        reasons.update(i.get("error", i.get("message", {}).get("type")) for i in items)
    assert {"PROBE", "TENSOR", "payload"} <= reasons


@pytest.mark.parametrize("heading, cls, fixed", [
    ("### 0x0A PROBE", p.Probe, ["module", "window", "name_count"]),
    ("### 0x87 TENSOR", p.Tensor, ["module", "window", "step", "index", "bits", "exponent", "rank"]),
])
def test_doc_field_tables_match_the_codec(heading, cls, fixed):
    rows, offset = fixed_header(heading, cls, fixed)
    names = [r[3] for r in rows]
    if cls is p.Probe:
        assert offset == p.PROBE_HEADER_SIZE and names == fixed + ["names"]
    else:  # then the shape, first_element, the name and the data
        assert names == fixed + ["shape", "first_element", "name", "data"]
        assert offset + 4 + 2 == p.TENSOR_HEADER_SIZE  # + first_element u32 + the name's u16 length
        t = p.Tensor(0, 0, 0, 0, 8, 0, (2, 3), 0, "abc", bytes(6))
        assert len(t.pack()) == p.TENSOR_HEADER_SIZE + 4 * 2 + 3 + 6


def test_type_numbers_are_new_and_old_runners_refuse_probe():
    assert (p.MessageType.PROBE, p.MessageType.TENSOR) == (0x0A, 0x87)
    assert not p.MessageType.PROBE.from_device and p.MessageType.TENSOR.from_device
    assert {0x09, 0x86}.isdisjoint(set(p.MessageType))  # stay unassigned (tests use them as undefined types)
    text = DOC.read_text()
    table = text[text.index("| type | name | direction | reply |"):text.index("Host → device types are below")]
    assert "| 0x0A | PROBE | host → device |" in table and "| 0x87 | TENSOR | device → host |" in table
    assert "answers ERROR UNKNOWN_MESSAGE" in text[text.index("PROBE and TENSOR were added to version 1"):]
    assert p.PROTOCOL_VERSION == VECTORS["protocol_version"] == 1


@pytest.mark.parametrize("max_payload", [256, 300, 4096, 65535])
def test_tensor_parts_fill_max_payload_exactly(max_payload):
    rng = np.random.default_rng(max_payload)
    for bits, shape, name in ((8, (1, 1200, 8), "input"), (16, (1, 72, 64), "/blocks.0/conv/Conv_output_0"),
                              (32, (1, 4000), "/Softmax_output_0"), (16, (1, 8, 16), "input"), (8, (), "s"),
                              (16, (3, 0, 2), "empty"), (8, (1, 2, 2, 2, 2, 2, 2, 2), "é" * 30)):
        dtype = {8: np.int8, 16: np.int16, 32: np.float32}[bits]
        whole = p.Tensor.from_array(1, 4, 20, 2, name, rng.integers(-128, 128, shape).astype(dtype), -5)
        per = p.max_elements_per_tensor(max_payload, len(shape), name, bits)
        ranges = p.tensor_ranges(max_payload, shape, name, bits)
        parts = p.split_tensor(whole, max_payload)
        assert [(t.first_element, t.count) for t in parts] == ranges
        assert sum(n for _, n in ranges) == whole.elements and [f for f, _ in ranges][0] == 0
        assert all(len(t.pack()) <= max_payload for t in parts)
        if len(parts) > 1:
            assert all(n == per for _, n in ranges[:-1])
            header = p.TENSOR_HEADER_SIZE + 4 * len(shape) + len(name.encode())
            assert len(parts[0].pack()) == header + per * bits // 8  # as many elements as fit
            assert header + (per + 1) * bits // 8 > max_payload
        else:
            assert parts == [whole]
        joined = [t for t in map(p.TensorAssembler().add, parts) if t is not None]
        assert joined == [whole] and np.array_equal(joined[0].array(), whole.array())
    assert p.max_elements_per_tensor(256, 3, "input", 16) == 110  # section 7.8's example
    assert "P = ⌊(256 − 19 − 12 − 5) / 2⌋ = 110" in DOC.read_text()
    with pytest.raises(ValueError, match="not one element"):
        p.tensor_ranges(256, (4,), "n" * 240, 8)


def test_part_vectors_join_into_the_tensor_and_steps_follow_the_schedule():
    first, second = (from_json(VALID[n]["message"]) for n in ("tensor_part_1_of_2", "tensor_part_2_of_2"))
    assert (first.first_element, first.count, second.first_element, second.count) == (0, 110, 110, 18)
    assembler = p.TensorAssembler()
    assert assembler.add(first) is None and assembler.pending == first
    whole = assembler.add(second)
    expected = (np.arange(128, dtype=np.int16).reshape(1, 8, 16) * 257 - 16000).astype(np.int16)
    assert whole.array().dtype == np.int16 and np.array_equal(whole.array(), expected) and whole.exponent == -7
    assert p.split_tensor(whole, 256) == [first, second]
    assert p.tensor_ranges(256, whole.shape, whole.name, 16) == [(0, 110), (110, 18)]
    # steps: round-robin, W = 3, two modules: module 1 runs window 2 at step 9 and window 5 at step 18
    runs = {(r.window, r.module): r.step for r in plan_schedule(2, 3, p.Schedule.ROUND_ROBIN, 18, flush=True).runs}
    for name in ("tensor_input_int8", "tensor_conv_int16", "tensor_float32"):
        t = from_json(VALID[name]["message"])
        assert runs[(t.window, t.module)] == t.step, name
    probe = from_json(VALID["probe_2_tensors"]["message"])
    tensors = [from_json(VALID[n]["message"]) for n in ("tensor_input_int8", "tensor_conv_int16")]
    assert [(t.module, t.window, t.index, t.name) for t in tensors] == [
        (probe.module, probe.window, i, n) for i, n in enumerate(probe.names)]
    assert from_json(VALID["tensor_float32"]["message"]).array().tolist() == [[0.125, 0.25, 0.5, 0.125]]
    assert to_json(probe)["names"] == ["input", "/conv/Conv_output_0"]
    error = from_json(VALID["error_probe_unknown_tensor"]["message"])
    assert (error.code, error.ref_type) == (p.ErrorCode.BAD_CONFIG, p.MessageType.PROBE)
    assert error.text.startswith("module 1: no tensor '/conv/Conv_0' in model ")


def _parts():
    whole = p.Tensor.from_array(1, 2, 9, 0, "x", np.arange(30, dtype=np.int16).reshape(1, 10, 3), -7)
    return whole, [whole.part(0, 12), whole.part(12, 12), whole.part(24, 6)]


@pytest.mark.parametrize("case, reason, elements, words", [
    ("gap", "missing", (12, 23), "elements 12..23 are missing"),
    ("one-late", "missing", (12, 12), "elements 12..12 are missing"),
    ("first-missing", "missing", (0, 11), "elements 0..11 are missing"),
    ("repeated", "overlap", (0, 11), "repeats elements 0..11"),
    ("interleaved", "incomplete", (24, 29), "tensor 'y' (index 1) came next"),
    ("unfinished", "incomplete", (24, 29), "no more came"),
    ("mismatch", "mismatch", (12, 23), "differs from the first part in exponent"),
])
def test_tensor_assembler_refuses_parts_that_do_not_make_a_tensor(case, reason, elements, words):
    whole, parts = _parts()
    other = p.Tensor.from_array(1, 2, 9, 1, "y", np.zeros((1, 2), dtype=np.int8), 0)
    stream = {"gap": [parts[0], parts[2]], "one-late": [parts[0], whole.part(13, 11)],
              "first-missing": parts[1:], "repeated": [parts[0], parts[0]],
              "interleaved": [parts[0], parts[1], other], "unfinished": parts[:2],
              "mismatch": [parts[0], dataclasses.replace(parts[1], exponent=-6)]}[case]
    assembler = p.TensorAssembler("scripted board")
    with pytest.raises(p.TensorPartError) as e:
        for t in stream:
            assembler.add(t)
        assembler.finish()
    assert (e.value.reason, e.value.elements, e.value.name) == (reason, elements, "x")
    text = str(e.value)
    assert text.startswith("scripted board sent tensor 'x' of module 1, window 2 ") and words in text
    assert isinstance(e.value, p.ProtocolError) and "\n" not in text
    assert assembler.pending is None  # it starts clean after an error
    assert [t for t in map(assembler.add, parts) if t is not None] == [whole]


def test_probe_and_tensor_refuse_to_pack_what_a_receiver_refuses():
    with pytest.raises(ValueError, match="name_count 0"):
        p.Probe(0, 0, ()).pack()
    with pytest.raises(ValueError, match="appears twice"):
        p.Probe(0, 0, ("a", "a")).pack()
    with pytest.raises(ValueError, match="empty"):
        p.Probe(0, 0, ("a", "")).pack()
    with pytest.raises(ValueError):
        p.Probe(0, 0, tuple(str(i) for i in range(256))).pack()
    for bad in (dict(bits=12), dict(exponent=-1, bits=32, data=bytes(48)), dict(shape=(1,) * 9, data=b"\x01"),
                dict(first_element=5, data=bytes(8)), dict(data=b""), dict(name="")):
        fields = dict(module=0, window=0, step=0, index=0, bits=8, exponent=0, shape=(3, 4), first_element=0,
                      name="x", data=bytes(12))
        fields.update(bad)
        with pytest.raises(ValueError):
            p.Tensor(**fields).pack()
    with pytest.raises(ValueError, match="int8, int16 or float32"):
        p.Tensor.from_array(0, 0, 0, 0, "x", np.zeros(3, dtype=np.int32))
    part = _parts()[1][1]
    with pytest.raises(ValueError, match="join its parts"):
        part.array()
