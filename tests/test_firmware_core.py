"""The firmware's portable C core (firmware/streaming_runner/components/runner_core), built for the host.

The build itself is the warning check (``-std=c99 -Wall -Wextra -Werror -pedantic``); ``codec_check`` proves
that the C codec and harness/device/protocol.py agree on every shared vector and on fuzzed frames, field for field and
byte for byte; ``runner_host`` (the core behind a pty, with the deterministic HCM1 backend of
firmware/host/README.md) must give exactly what a Python model of that backend computes, through caches,
RESET, layouts, exponent hand-over with both targets' rounding and int16. The whole conformance suite runs
against ``runner_host`` as well (tests/test_runner_conformance.py, param ``host-core``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import serial
from cobs import cobs

from harness.device import protocol as p
from harness.device.dut import DeviceError, DeviceLink
from harness.emulator.scheduler import plan_schedule
from harness.targets import get_target, int_dtype, int_range
from harness.emulator.virtual_board import VirtualBoard
from tests.test_protocol import to_json

ROOT = Path(__file__).resolve().parent.parent
HOST_DIR = ROOT / "firmware" / "host"
VECTORS = json.loads((ROOT / "docs" / "protocol-vectors.json").read_text())
VALID = {v["name"]: v for v in VECTORS["vectors"]}
CHANNELS = 8  # the conformance pipeline's input channels


# --------------------------------------------------------------------------- building

def build_host(out_dir: Path, sanitize: bool = False) -> Path:
    """``make -C firmware/host BUILD=out_dir``; incremental, so a second caller finds the build done."""
    missing = [tool for tool in ("make", "gcc", "sha256sum") if shutil.which(tool) is None]
    if missing:
        why = (f"{', '.join(missing)} not found: the host build of the firmware core needs them "
               "(Debian: apt-get install build-essential)")
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    command = ["make", "-C", str(HOST_DIR), f"BUILD={out_dir}"] + (["SANITIZE=1"] if sanitize else [])
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout}{result.stderr}"
    return out_dir


def host_build_dir(tmp_path_factory) -> Path:
    """The build the tests share; RC_HOST_SANITIZE=1 makes it the ASan/UBSan one (see firmware/host/README.md)."""
    sanitize = os.environ.get("RC_HOST_SANITIZE") == "1"
    return build_host(tmp_path_factory.getbasetemp() / ("firmware-host-asan" if sanitize else "firmware-host"),
                      sanitize)


@pytest.fixture(scope="session")
def host_build(tmp_path_factory) -> Path:
    return host_build_dir(tmp_path_factory)


@pytest.fixture(scope="session")
def asan_build(tmp_path_factory) -> Path:
    return build_host(tmp_path_factory.getbasetemp() / "firmware-host-asan", sanitize=True)


# --------------------------------------------------------------------------- the HCM1 backend in Python

@dataclass(frozen=True)
class Hcm1:
    """One HCM1 model (firmware/host/README.md): its text blob and, in ``run``, the function it computes."""

    cin: int = 8
    cout: int = 8
    bits: int = 8
    obits: int = 8
    ein: int = -5
    eout: int = -5
    mul: int = 3
    add: int = 1
    shift: int = 2
    context: int = 0
    window: int = 0  # 0: any window
    oframes: int = 0  # the output holds the window's last oframes frames (0: all W)
    orank: int = 3  # the output tensor's rank: 3 is [1, F, cout] / [1, cout, F]; 1, 2, 4 are FLAT shapes
    input: str = "input"
    output: str = "output"
    cycles: int = 0  # 0: the formula (firmware/host/README.md)
    first_cycles: int = 0  # extra cycles of the first run after bind
    counter: int = 0  # 1: acc += runs since the last reset

    @property
    def cache_input(self) -> str:
        return "cache" if self.context else ""

    @property
    def cache_output(self) -> str:
        return "cache_out" if self.context else ""

    def blob(self) -> bytes:
        return (f"HCM1\ninput={self.input} output={self.output} cache_input={self.cache_input or '-'} "
                f"cache_output={self.cache_output or '-'}\ncin={self.cin} cout={self.cout} bits={self.bits} "
                f"obits={self.obits} ein={self.ein} eout={self.eout} mul={self.mul} add={self.add} "
                f"shift={self.shift} context={self.context} window={self.window}\n"
                + "".join(f"{k}={getattr(self, k)}\n" for k in ("cycles", "first_cycles", "counter", "oframes")
                          if getattr(self, k))
                + (f"orank={self.orank}\n" if self.orank != 3 else "")).encode()

    def run_cycles(self, window: int) -> int:
        """The cycles one run reports (after the first, which the warm-up takes)."""
        return self.cycles or window * self.cout * (self.context + 1)

    def config(self, slot: int, input_layout=p.Layout.NWC, output_layout=p.Layout.NWC) -> p.ModuleConfig:
        return p.ModuleConfig(slot, input_layout, output_layout, self.input, self.output, self.cache_input,
                              self.cache_output)

    def run(self, x: np.ndarray, history: np.ndarray, target: str, runs: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """One window ``x`` [W, cin] after ``history`` [context, cin], the module's run number ``runs`` since
        its last reset -> (y [W, cout], the next history)."""
        w = len(x)
        ext = np.concatenate([history, x]).astype(np.int64)  # the input stream, carried on through the cache
        acc = self.mul * ext[self.context:] + self.add + self.counter * runs
        for d in range(1, self.context + 1):
            acc = acc + ext[self.context - d:self.context - d + w]
        acc = acc[:, np.arange(self.cout) % self.cin]
        lo, hi = int_range(self.obits)
        y = np.clip(get_target(target).shifter(self.shift)(acc), lo, hi).astype(int_dtype(self.obits))
        return y, ext[w:]

    def sent(self, y: np.ndarray) -> np.ndarray:
        """What OUTPUT.array() gives for one window's ``y`` [W, cout]: its last ``oframes`` frames [F, cout], or,
        for a FLAT output (orank != 3), those frames' values in memory order (frame-major) as one row."""
        y = y[-self.oframes:] if self.oframes else y
        return y if self.orank == 3 else y.reshape(1, -1)


def reference(models: list[Hcm1], frames: np.ndarray, window: int, target: str) -> list[np.ndarray]:
    """Every module's outputs as OUTPUT.array() gives them, concatenated over the windows (``[windows * F,
    cout]``, FLAT ``[windows, F * cout]``) for ``frames`` streamed from a RESET (protocol.md 7.1: module k+1 gets
    module k's output requantized to its exponent, saturated to its own integer range)."""
    histories = [np.zeros((m.context, m.cin), dtype=np.int64) for m in models]
    outputs: list[list[np.ndarray]] = [[] for _ in models]
    for j in range(len(frames) // window):
        x = frames[j * window:(j + 1) * window]
        for k, m in enumerate(models):
            y, histories[k] = m.run(x, histories[k], target, runs=j)
            outputs[k].append(m.sent(y))
            if k + 1 < len(models):
                nxt = models[k + 1]
                x = get_target(target).requantize(y, nxt.ein - m.eout, nxt.bits)
    return [np.concatenate(o) for o in outputs]


def hcm1_pipeline(window: int) -> list[tuple[str, bytes, p.ModuleConfig]]:
    """The conformance suite's 3-module pipeline with caches, for ``window`` frames: (name, blob, config)."""
    models, layouts = pipeline_models(window)
    return [(f"m{k}.hcm1", m.blob(), m.config(k, *layouts[k])) for k, m in enumerate(models)]


def pipeline_models(window: int = 0) -> tuple[list[Hcm1], list[tuple[p.Layout, p.Layout]]]:
    """Three modules with caches: every layout change, exponent hand-overs with ties, int8 -> int16 -> int8."""
    models = [
        Hcm1(cin=CHANNELS, cout=CHANNELS, ein=-5, eout=-4, mul=3, add=1, shift=1, context=2, window=window),
        Hcm1(cin=CHANNELS, cout=CHANNELS, obits=16, ein=-3, eout=-10, mul=-5, add=7, shift=-3, context=1),
        Hcm1(cin=CHANNELS, cout=6, bits=8, ein=-8, eout=-6, mul=2, add=-3, shift=3, context=3),
    ]
    layouts = [(p.Layout.NWC, p.Layout.NCW), (p.Layout.NCW, p.Layout.NWC), (p.Layout.NWC, p.Layout.NCW)]
    return models, layouts


# --------------------------------------------------------------------------- codec_check

def codec_check(build: Path, lines: list[str]) -> list:
    """One JSON answer per command line (firmware/host/codec_check.c)."""
    result = subprocess.run([str(build / "codec_check")], input="\n".join(lines) + "\n", capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0 and not result.stderr, result.stderr
    answers = [json.loads(line) for line in result.stdout.splitlines()]
    assert len(answers) == len(lines)
    return answers


def python_items(data: bytes, max_payload: int = p.MAX_PAYLOAD_LIMIT) -> list[dict]:
    """What the Python receiver makes of ``data``, in codec_check's format."""
    items = []
    for item in p.FrameDecoder(max_payload).feed(data):
        if isinstance(item, p.FrameError):
            error = {"error": item.reason}
            if item.reason in ("unknown-type", "payload"):
                error.update(type=item.msg_type, seq=item.seq)
            items.append(error)
        else:
            items.append({"seq": item.seq, "message": to_json(item.message),
                          "body": p.encode_body(item.message, item.seq).hex(),
                          "wire": p.encode(item.message, item.seq).hex()})
    return items


def reframe(msg_type: int, seq: int, payload: bytes) -> bytes:
    """A well-framed body around any payload: it reaches the payload parser."""
    head = bytes([msg_type]) + seq.to_bytes(2, "little") + len(payload).to_bytes(2, "little") + payload
    return cobs.encode(head + zlib.crc32(head).to_bytes(4, "little")) + b"\x00"


def fuzzed_streams(seed: int, count: int) -> list[bytes]:
    """Damaged and odd streams built from the vectors: flipped bits, cut and glued frames, noise, payloads
    mutated behind a valid CRC (so the payload rules are reached), random and device-to-host types."""
    rng = random.Random(seed)
    wires = [bytes.fromhex(v["wire_hex"]) for v in VECTORS["vectors"]]
    bodies = [bytes.fromhex(v["body_hex"]) for v in VECTORS["vectors"]]
    streams = []
    for _ in range(count):
        kind = rng.randrange(6)
        wire = bytearray(rng.choice(wires))
        body = rng.choice(bodies)
        payload = bytearray(body[5:-4])
        if kind == 0:
            for _ in range(rng.randrange(1, 4)):
                wire[rng.randrange(len(wire))] ^= 1 << rng.randrange(8)
            streams.append(bytes(wire))
        elif kind == 1:
            cut = rng.randrange(len(wire))
            streams.append(bytes(wire[:cut]) + rng.choice(wires))
        elif kind == 2:
            streams.append(bytes(rng.randrange(256) for _ in range(rng.randrange(1, 80))) + rng.choice(wires))
        elif kind == 3:
            if payload and rng.random() < 0.7:
                for _ in range(rng.randrange(1, 4)):
                    payload[rng.randrange(len(payload))] = rng.choice([0, 1, 2, 0x7F, 0x80, 0xC3, 0xFF,
                                                                       rng.randrange(256)])
            else:
                payload = payload[:rng.randrange(len(payload) + 1)] + bytes(rng.randrange(3))
            streams.append(reframe(body[0], rng.randrange(65536), bytes(payload)))
        elif kind == 4:
            streams.append(reframe(rng.randrange(256), rng.randrange(65536), bytes(payload)))
        else:
            streams.append(b"\x00".join(rng.sample(wires, 3)) + b"\x00\x00" + rng.choice(wires))
    return streams


def test_build_is_warning_free_and_reports_a_source_hash(host_build):
    result = subprocess.run(["make", "-C", str(HOST_DIR), f"BUILD={host_build}", "-n", "-B"], capture_output=True,
                            text=True, check=True)
    compiles = [line for line in result.stdout.splitlines() if " -c " in line]
    assert len(compiles) == 8 and all("-std=c99 -Wall -Wextra -Werror -pedantic" in c for c in compiles)
    build_ids = {part for c in compiles for part in c.split() if "RC_HOST_BUILD_ID" in part}
    assert len(build_ids) == 1 and "host-" in build_ids.pop()


def test_core_keeps_no_state_outside_the_runner_object(host_build):
    """No writable static data in the core's objects: two runners can share a process."""
    objects = [str(host_build / f"{name}.o") for name in ("rc_codec", "rc_espdl", "rc_sha256", "rc_stream",
                                                           "runner_core")]
    symbols = subprocess.run(["nm", "--defined-only", *objects], capture_output=True, text=True, check=True).stdout
    assert [line for line in symbols.splitlines() if re.match(r"[0-9a-f]+ [bBdD] ", line)] == []


def test_every_vector_decodes_and_reencodes_as_in_python(host_build):
    names = list(VALID)
    answers = codec_check(host_build, [f"wire {VALID[n]['wire_hex']}" for n in names]
                          + [f"body {VALID[n]['body_hex']}" for n in names])
    for name, from_wire, from_body in zip(names, answers, answers[len(names):]):
        v = VALID[name]
        expected = {"seq": v["seq"], "message": v["message"], "body": v["body_hex"], "wire": v["wire_hex"]}
        assert from_wire == [expected], name
        assert from_body == expected, name
        assert python_items(bytes.fromhex(v["wire_hex"])) == [expected], name


def test_invalid_vectors_give_the_documented_reasons(host_build):
    answers = codec_check(host_build, [f"wire {v['wire_hex']}" for v in VECTORS["invalid"]])
    for v, items in zip(VECTORS["invalid"], answers):
        assert [i["error"] for i in items] == [v["reason"]], v["name"]
        assert items == python_items(bytes.fromhex(v["wire_hex"])), v["name"]


def test_stream_vectors_yield_the_listed_items(host_build):
    answers = codec_check(host_build, [f"wire {s['wire_hex']}" for s in VECTORS["streams"]])
    for s, items in zip(VECTORS["streams"], answers):
        expected = [e if "error" in e else {"seq": VALID[e["vector"]]["seq"], "message": VALID[e["vector"]]["message"],
                                            "body": VALID[e["vector"]]["body_hex"],
                                            "wire": VALID[e["vector"]]["wire_hex"]} for e in s["expected"]]
        assert items == expected, s["name"]


def test_fuzzed_streams_decode_exactly_as_in_python(host_build):
    streams = fuzzed_streams(seed=2024, count=1500)
    answers = codec_check(host_build, [f"wire {s.hex()}" for s in streams])
    reasons = set()
    for stream, items in zip(streams, answers):
        assert items == python_items(stream), stream.hex()
        reasons.update(i.get("error", "ok") for i in items)
    assert reasons >= {"ok", "cobs", "short", "length", "crc", "unknown-type", "payload"}


def test_oversize_runs_are_bounded_like_python(host_build):
    rng = random.Random(5)
    long_log = p.encode(p.Log(p.LogLevel.INFO, "x" * 400), 3)
    streams = [long_log + p.encode(p.Credit(1), 4), bytes(rng.randrange(1, 256) for _ in range(900)) + b"\x00"
               + p.encode(p.Credit(2), 5), p.encode(p.Log(p.LogLevel.INFO, "y" * 244), 1)]
    lines = ["max_payload 256"] + [f"wire {s.hex()}" for s in streams]
    answers = codec_check(host_build, lines)
    assert answers[0] == {"max_payload": 256}
    for stream, items in zip(streams, answers[1:]):
        assert items == python_items(stream, 256)
    assert answers[1][0] == {"error": "oversize"} and answers[1][1]["message"]["type"] == "CREDIT"


def test_cobs_and_crc_agree_with_python(host_build):
    rng = random.Random(9)
    samples = [b"", b"\x00", b"\x00\x00", bytes(range(1, 255)), bytes(range(1, 256)), bytes([7]) * 508,
               bytes([7]) * 254 + b"\x00", b"\x01" * 253]
    samples += [bytes(rng.choice([0, rng.randrange(1, 256)]) for _ in range(rng.randrange(600))) for _ in range(200)]
    noise = [bytes(rng.randrange(1, 256) for _ in range(rng.randrange(1, 40))) for _ in range(200)]
    answers = codec_check(host_build, [f"cobs {s.hex()}" for s in samples] + [f"crc {s.hex()}" for s in samples]
                          + [f"uncobs {n.hex()}" for n in noise])
    for s, enc, crc in zip(samples, answers, answers[len(samples):]):
        assert enc == {"cobs": cobs.encode(s).hex()} and crc == {"crc": zlib.crc32(s)}
    for n, dec in zip(noise, answers[2 * len(samples):]):
        try:
            assert dec == {"body": cobs.decode(n).hex()}
        except cobs.DecodeError:
            assert dec == {"error": "cobs"}
    assert codec_check(host_build, [f"crc {b'123456789'.hex()}"]) == [{"crc": VECTORS["crc"]["check"]}]


def test_sha256_known_answers(host_build):
    fips = {  # FIPS 180-4 examples (NIST CSRC), and the empty message
        b"": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        b"abc": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq":
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1",
        b"a" * 1_000_000: "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0",
    }
    rng = random.Random(3)
    randoms = [bytes(rng.randrange(256) for _ in range(n)) for n in (1, 55, 56, 63, 64, 65, 119, 120, 128, 1000)]
    answers = codec_check(host_build, [f"sha256 {m.hex()}" for m in [*fips, *randoms]])
    assert [a["sha256"] for a in answers] == [*fips.values(), *(hashlib.sha256(m).hexdigest() for m in randoms)]


# --------------------------------------------------------------------------- runner_host

@contextmanager
def host_runner(build: Path, target: str, log: Path):
    """A booted and greeted runner_host for ``target``: (board handle, link)."""
    board = VirtualBoard(target, log, command=[str(build / "runner_host"), "--target", target]).start()
    port = serial.serial_for_url(board.port, baudrate=921600, timeout=0.05)
    link = DeviceLink(port, f"host-core {target} runner", liveness=board.exit_reason)
    try:
        board.reset()
        link.wait_boot()
        link.hello()
        yield board, link
    finally:
        port.close()
        board.stop()


def load(link: DeviceLink, models: list[Hcm1], layouts, window: int, schedule=p.Schedule.ROUND_ROBIN,
         output_batch: int = 1, queue_depth: int = 0) -> list[p.ConfigureAckModule]:
    for slot, m in enumerate(models):
        link.upload(slot, f"m{slot}.hcm1", m.blob())
    configs = tuple(m.config(slot, *layouts[slot]) for slot, m in enumerate(models))
    return link.configure(p.Configure(window, schedule, p.CONFIGURE_FLAG_ALL_OUTPUTS, queue_depth, output_batch,
                                      configs))


def collect(link: DeviceLink, frames: np.ndarray, modules: int, first_frame: int = 0) -> list[np.ndarray]:
    """Stream ``frames`` then FLUSH; every module's outputs in window order ``[windows * W, C]``."""
    outputs: list[p.Output] = []
    link.stream(frames, outputs.append, first_frame)
    per_module = []
    for k in range(modules):
        mine = sorted((o for o in outputs if o.module == k), key=lambda o: o.window)
        per_module.append(np.concatenate([o.array() for o in mine]))
    return per_module


def input_frames(count: int, channels: int, bits: int, seed: int) -> np.ndarray:
    lo, hi = int_range(bits)
    return np.random.default_rng(seed).integers(lo, hi + 1, (count, channels), dtype=int_dtype(bits))


CASES = {  # name: (models, layouts, window, schedule, output_batch)
    "three-modules-caches-int8-int16-int8": (*pipeline_models(), 3, p.Schedule.ROUND_ROBIN, 1),
    "sequential-batched-window-1": (*pipeline_models(), 1, p.Schedule.SEQUENTIAL, 5),
    "ncw-input-int16-window-4": (
        [Hcm1(cin=5, cout=7, bits=16, obits=16, ein=-12, eout=-11, mul=7, add=-100, shift=3, context=4),
         Hcm1(cin=7, cout=3, bits=16, obits=8, ein=-9, eout=-2, mul=-1, add=2, shift=5, context=0)],
        [(p.Layout.NCW, p.Layout.NCW), (p.Layout.NCW, p.Layout.NWC)], 4, p.Schedule.ROUND_ROBIN, 2),
    "one-module-no-cache": ([Hcm1(cin=3, cout=3, ein=0, eout=0, mul=1, add=0, shift=0)],
                            [(p.Layout.NWC, p.Layout.NWC)], 2, p.Schedule.SEQUENTIAL, 1),
}


@pytest.fixture(scope="module", params=["esp32p4", "esp32s3"])
def host_runner_for_target(request, host_build, tmp_path_factory):
    with host_runner(host_build, request.param, tmp_path_factory.mktemp("runner") / "runner.log") as (board, link):
        yield request.param, board, link


@pytest.mark.parametrize("case", list(CASES))
def test_outputs_equal_the_documented_function(host_runner_for_target, case):
    target, _, link = host_runner_for_target
    models, layouts, window, schedule, batch = CASES[case]
    acks = load(link, models, layouts, window, schedule, batch, queue_depth=16)
    assert [(a.input_exponent, a.output_exponent, a.bits, a.input_channels, a.output_channels) for a in acks] == [
        (m.ein, m.eout, m.bits, m.cin, m.cout) for m in models]
    frames = input_frames(24, models[0].cin, models[0].bits, seed=len(case))
    more = input_frames(12, models[0].cin, models[0].bits, seed=99)
    first = collect(link, frames, len(models))
    expected = reference(models, frames, window, target)
    for k in range(len(models)):
        assert np.array_equal(first[k], expected[k]), f"module {k}"
    carried = collect(link, more, len(models), first_frame=len(frames))  # the caches carry the stream on
    whole = reference(models, np.concatenate([frames, more]), window, target)
    for k in range(len(models)):
        assert np.array_equal(carried[k], whole[k][len(expected[k]):]), f"module {k} after the first sequence"
    link.reset()  # caches back to zero: the first sequence again
    again = collect(link, frames, len(models))
    assert all(np.array_equal(a, b) for a, b in zip(again, first))


def test_every_schedule_follows_plan_schedule(host_build, tmp_path):
    """(window, module, step) of every run, backlog included, for many pipelines, windows and queue depths."""
    with host_runner(host_build, "esp32p4", tmp_path / "runner.log") as (_, link):
        for slot in range(4):
            link.upload(slot, f"m{slot}.hcm1", Hcm1(cin=2, cout=2, context=1).blob())
        for n in (1, 2, 3, 4):
            for window in (1, 2, 3, 5):
                for schedule in p.Schedule:
                    for depth in (0, 1, 2, 6):
                        configs = tuple(Hcm1(cin=2, cout=2, context=1).config(k) for k in range(n))
                        link.configure(p.Configure(window, schedule, p.CONFIGURE_FLAG_ALL_OUTPUTS, depth, 1, configs))
                        outputs: list[p.Output] = []
                        plan = plan_schedule(n, window, schedule, 13, queue_depth=depth, flush=True)
                        try:
                            link.stream(input_frames(13, 2, 8, seed=n), outputs.append)
                            assert plan.backlog_full_step is None
                        except DeviceError as e:
                            assert e.code == p.ErrorCode.BACKLOG_FULL and plan.backlog_full_step is not None
                            link.hello()
                        assert sorted((o.window, o.module, o.step) for o in outputs) == sorted(
                            (r.window, r.module, r.step) for r in plan.runs), (n, window, schedule, depth)


def test_both_roundings_are_exercised(host_build, tmp_path):
    models, layouts = pipeline_models()
    frames = input_frames(30, CHANNELS, 8, seed=1)
    results = {}
    for target in ("esp32p4", "esp32s3"):
        with host_runner(host_build, target, tmp_path / f"{target}.log") as (_, link):
            load(link, models, layouts, 3)
            results[target] = collect(link, frames, len(models))
            assert np.array_equal(results[target][2], reference(models, frames, 3, target)[2])
    assert not np.array_equal(results["esp32p4"][2], results["esp32s3"][2])  # ties happened and rounded apart


def test_models_and_configurations_are_checked_like_a_real_model(host_build, tmp_path):
    with host_runner(host_build, "esp32p4", tmp_path / "runner.log") as (_, link):
        for blob, match in [(b"HCM2\n", "not an HCM1 model"), (Hcm1().blob() + b"cin=4", "given twice"),
                            (Hcm1().blob().replace(b"bits=8 ", b"bits=12 "), "bits=12"),
                            (Hcm1(context=2).blob().replace(b"cache_output=cache_out", b"cache_output=-"),
                             "both cache tensors"),
                            (Hcm1().blob().replace(b"context=0", b"context=1"), "needs a cache")]:
            with pytest.raises(DeviceError, match=f"MODEL_LOAD_FAILED.*{match}"):
                link.upload(0, "bad.hcm1", blob)
            link.hello()
        link.upload(0, "m.hcm1", Hcm1(context=2, window=3).blob())
        good = Hcm1(context=2).config(0)
        for config, window, match in [
            (dataclasses.replace(good, output="nope"), 3, "has no output 'nope'"),
            (dataclasses.replace(good, input="cache"), 3, "input 'cache' has another role"),
            (dataclasses.replace(good, cache_input="", cache_output=""), 3, "keeps a cache"),
            (dataclasses.replace(good, cache_output=""), 3, "both cache tensors or neither"),
            (dataclasses.replace(good, slot=5), 3, "slot 5 holds no model"),
            (good, 4, "takes 3 frames, not 4"),
        ]:
            with pytest.raises(DeviceError, match=f"BAD_CONFIG.*{match}"):
                link.configure(p.Configure(window, p.Schedule.SEQUENTIAL, 0, 0, 1, (config,)))
            link.hello()
        with pytest.raises(DeviceError, match="BAD_CONFIG.*do not fit one OUTPUT"):  # 1 x 8 int8 x 508 > 4096
            link.configure(p.Configure(3, p.Schedule.SEQUENTIAL, 0, 0, 200, (good,)))
        link.hello()
        with pytest.raises(DeviceError, match="BAD_CONFIG.*reserved flag bits set: 0x02"):
            link.configure(p.Configure(3, p.Schedule.SEQUENTIAL, 2, 0, 1, (good,)))
        link.hello()
        with pytest.raises(DeviceError, match="NOT_CONFIGURED"):  # a failed CONFIGURE leaves none (protocol.md)
            link.reset()
        link.hello()
        assert link.configure(p.Configure(3, p.Schedule.SEQUENTIAL, 0, 0, 1, (good,)))[0].input_channels == 8


@pytest.mark.parametrize("layout", [p.Layout.NWC, p.Layout.NCW], ids=lambda layout: layout.name)
def test_parts_carry_the_documented_function(host_runner_for_target, layout):
    """Module 0's window (8 frames x 300 int16 channels, 4800 bytes) goes out in parts of 6 and 2 frames, stored
    part by part (NCW: per channel within each part); module 1's (8 x 2 int8) whole: both equal the reference."""
    target, _, link = host_runner_for_target
    models = [Hcm1(cin=4, cout=300, bits=8, obits=16, ein=-4, eout=-9, mul=-3, add=5, shift=-2, context=2),
              Hcm1(cin=300, cout=2, bits=8, obits=8, ein=-5, eout=-3, mul=1, add=0, shift=1, context=0)]
    layouts = [(p.Layout.NWC, layout), (layout, p.Layout.NWC)]
    load(link, models, layouts, 8, p.Schedule.SEQUENTIAL, output_batch=1)
    frames = input_frames(24, 4, 8, seed=3)
    outputs: list[p.Output] = []
    link.stream(frames, outputs.append)
    assert [(o.module, o.window, o.part_first_frame, o.part_frames) for o in outputs if o.module == 0] == [
        (0, j, first, count) for j in range(3) for first, count in p.part_ranges(4096, 8, 300, 16, 1)]
    assert p.part_ranges(4096, 8, 300, 16, 1) == [(0, 6), (6, 2)]
    assert all(not o.is_part for o in outputs if o.module == 1)
    joined = p.join_parts(outputs)
    expected = reference(models, frames, 8, target)
    for k in range(2):
        got = np.concatenate([o.array() for o in joined if o.module == k])
        assert np.array_equal(got, expected[k]), k
    assert all(o.timings[0].cycles == models[0].run_cycles(8) for o in joined if o.module == 0)
    with pytest.raises(DeviceError, match=r"BAD_CONFIG.*module 0: 2 windows of 8 x 300 do not fit one OUTPUT of 4096 "
                                          r"bytes \(one window goes in parts with output_batch 1\)"):
        load(link, models, layouts, 8, p.Schedule.SEQUENTIAL, output_batch=2)
    link.hello()


PER_WINDOW_CASES = {  # name: (models, layouts, window, output_batch); the last module gives a per-window output
    "last-3-of-8-frames-ncw-int16-in-parts": (  # 3 x 700 x int16 = 4200 bytes: parts of 2 and 1 frames
        [Hcm1(cin=4, cout=5, ein=-5, eout=-4, mul=3, add=1, shift=1, context=2),
         Hcm1(cin=5, cout=700, bits=8, obits=16, ein=-6, eout=-9, mul=-3, add=5, shift=-2, context=1, oframes=3)],
        [(p.Layout.NWC, p.Layout.NCW), (p.Layout.NCW, p.Layout.NCW)], 8, 1),
    "last-frame-nwc-batched": (
        [Hcm1(cin=4, cout=6, ein=-5, eout=-4, mul=2, add=-1, shift=1, context=1),
         Hcm1(cin=6, cout=3, ein=-3, eout=-2, mul=5, add=3, shift=2, oframes=1)],
        [(p.Layout.NCW, p.Layout.NWC), (p.Layout.NWC, p.Layout.NWC)], 4, 4),
    **{f"flat-rank-{rank}-int{bits}": (
        [Hcm1(cin=4, cout=6, ein=-5, eout=-4, mul=3, add=1, shift=1, context=2),
         Hcm1(cin=6, cout=5, obits=bits, ein=-4, eout=-3, mul=-7, add=2, shift=1 if bits == 8 else -4, oframes=2,
              orank=rank)],
        [(p.Layout.NWC, p.Layout.NWC), (p.Layout.NWC, p.Layout.FLAT)], 4, 3) for rank, bits in
        ((1, 8), (2, 16), (4, 8))},
}


@pytest.mark.parametrize("case", list(PER_WINDOW_CASES))
def test_per_window_outputs_carry_the_documented_function(host_runner_for_target, case):
    """The last module's last F frames (NWC/NCW, in parts when too large) or its FLAT tensor's elements in memory
    order equal the reference, through caches, the hand-over and the target's rounding, batched or not."""
    target, _, link = host_runner_for_target
    models, layouts, window, batch = PER_WINDOW_CASES[case]
    last = models[-1]
    flat = layouts[-1][1] == p.Layout.FLAT
    frames, channels = (1, last.oframes * last.cout) if flat else (last.oframes, last.cout)
    acks = load(link, models, layouts, window, p.Schedule.SEQUENTIAL, batch)
    assert acks[-1].output_channels == channels
    stream = input_frames(6 * window, models[0].cin, models[0].bits, seed=len(case))
    outputs: list[p.Output] = []
    link.stream(stream, outputs.append)
    mine = [o for o in outputs if o.module == len(models) - 1]
    assert {(o.frames, o.channels, o.layout) for o in mine} == {(frames, channels, layouts[-1][1])}
    ranges = p.part_ranges(4096, frames, channels, last.obits, len(models))
    assert [(o.part_first_frame, o.part_frames) for o in mine if o.is_part] == ranges * (6 if ranges else 0)
    assert [o.windows for o in mine if not o.is_part] == ([] if ranges else [batch] * (6 // batch) + [6 % batch] * (
        6 % batch > 0))
    joined = sorted((o for o in p.join_parts(mine)), key=lambda o: o.window)
    expected = reference(models, stream, window, target)[-1]
    assert np.array_equal(np.concatenate([o.array() for o in joined]), expected)


def test_per_window_output_rules_of_the_hcm1_backend(host_build, tmp_path):
    """oframes beyond the window is the model's own BAD_CONFIG; up to the window it is accepted."""
    with host_runner(host_build, "esp32p4", tmp_path / "runner.log") as (_, link):
        link.upload(0, "m0.hcm1", Hcm1(oframes=9).blob())
        with pytest.raises(DeviceError, match=r"BAD_CONFIG.*module 0: output 'output' holds the last 9 frames of a "
                                              r"window, not 8"):
            link.configure(p.Configure(8, p.Schedule.SEQUENTIAL, 0, 0, 1, (Hcm1().config(0),)))
        link.hello()
        assert link.configure(p.Configure(9, p.Schedule.SEQUENTIAL, 0, 0, 1, (Hcm1().config(0),)))[0].output_channels \
            == 8


def test_a_frame_too_large_for_an_output_part_is_refused(host_build, tmp_path):
    with host_runner(host_build, "esp32p4", tmp_path / "runner.log") as (_, link):
        link.upload(0, "m0.hcm1", Hcm1(cin=4, cout=2100, obits=16).blob())  # one frame: 4200 bytes
        with pytest.raises(DeviceError, match=r"BAD_CONFIG.*module 0: one frame of 2100 x int16 does not fit an "
                                              r"OUTPUT part of 4096 bytes"):
            link.configure(p.Configure(1, p.Schedule.SEQUENTIAL, 0, 0, 1, (Hcm1(cin=4, cout=2100).config(0),)))
        link.hello()
        link.upload(0, "m0.hcm1", Hcm1(cin=4, cout=2000, obits=16).blob())  # 4000 bytes: one frame per part
        link.configure(p.Configure(3, p.Schedule.SEQUENTIAL, 0, 0, 0, (Hcm1(cin=4, cout=2000).config(0),)))
        outputs: list[p.Output] = []
        link.stream(input_frames(3, 4, 8, seed=1), outputs.append)
        assert [(o.part_first_frame, o.part_frames) for o in outputs] == [(0, 1), (1, 1), (2, 1)]


def test_only_a_reported_modules_output_must_fit_one_message(host_build, tmp_path):
    with host_runner(host_build, "esp32p4", tmp_path / "runner.log") as (_, link):
        # 400 windows of 8 channels fit module 1's OUTPUT, not module 0's 16; module 0 does not report
        link.upload(0, "m0.hcm1", Hcm1(cout=16).blob())
        link.upload(1, "m1.hcm1", Hcm1(cin=16).blob())
        wide = (Hcm1().config(0), Hcm1().config(1))
        assert len(link.configure(p.Configure(1, p.Schedule.SEQUENTIAL, 0, 0, 400, wide))) == 2


def test_info_and_the_control_lines(host_build, tmp_path):
    with host_runner(host_build, "esp32s3", tmp_path / "runner.log") as (board, link):
        info = link.hello()
        assert (info.target, info.device_kind, info.max_payload, info.credits) == ("esp32s3", "host-core", 4096, 256)
        assert re.fullmatch(r"host-[0-9a-f]{16}", info.build_id) and info.esp_dl_version.startswith("none")
        readme_example = (HOST_DIR / "README.md").read_text().split("```text\n")[1].split("```")[0].encode()
        link.upload(3, "example.hcm1", readme_example)  # obits and window left out: their defaults
        assert info.free_psram_bytes - link.hello().free_psram_bytes == len(readme_example)
        board.flash("host-flashed")  # what flashing does: another build ID, then a reset that drops the models
        assert "host-core esp32s3" in link.wait_boot().banner
        assert link.hello().build_id == "host-flashed"
        with pytest.raises(DeviceError, match="slot 3 holds no model"):
            link.configure(p.Configure(1, p.Schedule.SEQUENTIAL, 0, 0, 1, (Hcm1(context=2).config(3),)))


def test_upload_limits_and_link_errors(host_build, tmp_path):
    with host_runner(host_build, "esp32s3", tmp_path / "runner.log") as (_, link):
        with pytest.raises(DeviceError, match="OUT_OF_MEMORY"):
            link.request(p.ModelBegin(0, 64 << 20, bytes(32), "huge"))
        link.hello()
        with pytest.raises(DeviceError, match="BAD_PAYLOAD.*slot 16 >= 16"):
            link.request(p.ModelBegin(16, 4, bytes(32), "x"))
        link.hello()
        blob = Hcm1().blob()
        link.request(p.ModelBegin(0, len(blob), hashlib.sha256(blob).digest(), "m.hcm1"))
        with pytest.raises(DeviceError, match="BAD_PAYLOAD.*received 0 of"):
            link.request(p.ModelEnd(0))
        link.hello()
        link.port.write(p.encode(p.Log(p.LogLevel.INFO, "from the host"), 1))  # a device-to-host type
        reply = link.receive().message
        assert (reply.code, reply.ref_type, reply.ref_seq) == (p.ErrorCode.UNKNOWN_MESSAGE, p.MessageType.LOG, 1)
        link.port.write(reframe(0x42, 7, b""))
        assert link.receive().message == p.Error(p.ErrorCode.UNKNOWN_MESSAGE, 0x42, 7,
                                                 "bad frame (unknown-type): type 0x42")
        link.port.write(bytes.fromhex(VECTORS["invalid"][6]["wire_hex"]))  # HELLO with a trailing byte
        reply = link.receive().message
        assert (reply.code, reply.ref_type) == (p.ErrorCode.BAD_PAYLOAD, p.MessageType.HELLO)
        link.port.write(b"\x01" * 5000 + b"\x00")  # longer than any frame: one oversize error
        assert link.receive().message.text == "bad frame (oversize)"
        logs = []
        link.on_log = lambda level, text: logs.append((level, text))
        link._tx_seq += 3  # three host frames "lost": the device logs the gap and goes on
        link.request(p.ModelBegin(0, len(blob), hashlib.sha256(blob).digest(), "m.hcm1"))
        assert logs and logs[0][0] == p.LogLevel.WARNING and logs[0][1].startswith("seq gap: expected")


def test_runner_host_is_clean_under_asan_and_ubsan(asan_build, host_build, tmp_path, monkeypatch):
    streams = fuzzed_streams(seed=77, count=400)
    lines = [f"wire {v['wire_hex']}" for v in VECTORS["vectors"] + VECTORS["invalid"] + VECTORS["streams"]]
    lines += [f"wire {s.hex()}" for s in streams] + ["sha256 " + (b"abc" * 100).hex()]
    assert codec_check(asan_build, lines) == codec_check(host_build, lines)
    monkeypatch.setenv("ASAN_OPTIONS", "detect_leaks=1:exitcode=23")
    monkeypatch.setenv("UBSAN_OPTIONS", "halt_on_error=1:print_stacktrace=1")
    log = tmp_path / "asan.log"
    models, layouts = pipeline_models()
    with host_runner(asan_build, "esp32s3", log) as (board, link):
        for schedule, window, batch in [(p.Schedule.ROUND_ROBIN, 3, 1), (p.Schedule.SEQUENTIAL, 1, 7),
                                        (p.Schedule.ROUND_ROBIN, 2, 3), (p.Schedule.SEQUENTIAL, 700, 1)]:
            load(link, models, layouts, window, schedule, batch, queue_depth=20)  # 700 frames: OUTPUT parts
            frames = input_frames(max(40, 2 * window), CHANNELS, 8, seed=window)
            got = collect(link, frames, 3)
            assert np.array_equal(got[2], reference(models, frames, window, "esp32s3")[2])
        load(link, models, layouts, 1, p.Schedule.ROUND_ROBIN, queue_depth=2)
        with pytest.raises(DeviceError, match="BACKLOG_FULL"):
            collect(link, input_frames(20, CHANNELS, 8, seed=3), 3)
        link.hello()
        link.port.write(bytes(random.Random(1).randrange(1, 256) for _ in range(6000)) + b"\x00")
        link.port.write(b"".join(streams[:50]))
        while link.port.read(65536):  # the replies to that (fuzzed HELLOs too): let them go before greeting
            pass
        link.hello()
        board.reset()
        link.wait_boot()
        link.hello()
    assert board.process.returncode == 0, log.read_text()
    assert "Sanitizer" not in log.read_text() and "runtime error" not in log.read_text()


def test_conformance_pipeline_fits_the_schedule_tests(host_build, tmp_path):
    """hcm1_pipeline (the conformance suite's host-core modules) streams with every window it is asked for."""
    with host_runner(host_build, "esp32p4", tmp_path / "runner.log") as (_, link):
        for window in (1, 2, 3, 4):
            modules = hcm1_pipeline(window)
            for slot, (name, blob, _) in enumerate(modules):
                link.upload(slot, name, blob)
            link.configure(p.Configure(window, p.Schedule.ROUND_ROBIN, p.CONFIGURE_FLAG_ALL_OUTPUTS, 12, 1,
                                       tuple(c for _, _, c in modules)))
            outputs: list[p.Output] = []
            link.stream(input_frames(12, CHANNELS, 8, seed=window), outputs.append)
            plan = plan_schedule(3, window, p.Schedule.ROUND_ROBIN, 12, queue_depth=12, flush=True)
            assert sorted((o.window, o.module, o.step) for o in outputs) == sorted(
                (r.window, r.module, r.step) for r in plan.runs)


# --------------------------------------------------------------------------- 64-bit timings

def test_cycle_count_is_widened_from_32_bits(host_build):
    """rc_cycles_widen: the 32-bit counter's difference plus the 64-bit microseconds give the full count."""
    rng = random.Random(11)
    cases = []  # (cycles32, microseconds, mhz, true count)
    for mhz in (240, 360, 400):
        for _ in range(300):
            true = rng.choice([rng.randrange(0, 1 << 32), rng.randrange(1 << 32, 1 << 45),
                               rng.randrange(1, 4096) * (1 << 32) + rng.randrange(-5000, 5000)])
            # the two clocks are read at slightly different moments and the timer ticks in microseconds
            us = max(0, round(true / mhz) + rng.randrange(-2000, 2001))
            cases.append((true % (1 << 32), us, mhz, true))
    cases += [(0, 0, 400, 0), (123, 0, 400, 123), (0xFFFFFFFF, 0, 400, 0xFFFFFFFF),  # short runs: as counted
              (5, 12_000_000, 400, (1 << 32) * 1 + 5),  # 12 s at 400 MHz: 4.8e9 cycles, one wrap
              (7, 3_600_000_000, 400, 1_440_000_000_000 - 1_440_000_000_000 % (1 << 32) + 7),  # an hour
              (77, 5_000_000, 0, 77)]  # no clock rate: the 32-bit value as it is
    answers = codec_check(host_build, [f"cycles {c} {us} {mhz}" for c, us, mhz, _ in cases]
                          + ["cycles 1 18446744073709551615 400"])  # absurd time: no overflow, no crash
    for (c, us, mhz, true), answer in zip(cases, answers):
        assert answer == {"cycles": true}, (c, us, mhz)
    assert answers[-1]["cycles"] % (1 << 32) == 1


def test_batched_timings_are_summed_in_64_bits(host_build, tmp_path):
    """Four runs of 2e9 cycles in one OUTPUT: 8e9, beyond 2^32, reaches the host exactly (u64 on the wire)."""
    model = Hcm1(cin=2, cout=2, cycles=2_000_000_000)
    with host_runner(host_build, "esp32p4", tmp_path / "runner.log") as (_, link):
        load(link, [model], [(p.Layout.NWC, p.Layout.NWC)], 1, p.Schedule.SEQUENTIAL, output_batch=4)
        outputs: list[p.Output] = []
        link.stream(input_frames(10, 2, 8, seed=1), outputs.append)
    assert [(o.window, o.windows) for o in outputs] == [(0, 4), (4, 4), (8, 2)]
    assert [o.timings[0].cycles for o in outputs] == [8_000_000_000, 8_000_000_000, 4_000_000_000]
    assert all(o.timings[0].microseconds >= 0 for o in outputs)


# --------------------------------------------------------------------------- warm-up at CONFIGURE

def test_configure_warms_every_module_up_and_resets_it(host_build, tmp_path):
    """CONFIGURE runs every module once (its first-run cost stays out of the timings) and resets it after (no run
    count, no cache content of the warm-up reaches the stream)."""
    models = [Hcm1(cin=4, cout=4, context=2, first_cycles=1_000_000_000, counter=1, mul=1, add=3, shift=0),
              Hcm1(cin=4, cout=3, context=1, first_cycles=7_000_000, counter=1, mul=2, add=-1, shift=1)]
    layouts = [(p.Layout.NWC, p.Layout.NCW), (p.Layout.NCW, p.Layout.NWC)]
    window = 3
    frames = input_frames(12, 4, 8, seed=5)
    with host_runner(host_build, "esp32s3", tmp_path / "runner.log") as (_, link):
        for attempt in range(2):  # a second CONFIGURE binds again: warmed up and reset again
            load(link, models, layouts, window, p.Schedule.ROUND_ROBIN, output_batch=1)
            outputs: list[p.Output] = []
            link.stream(frames, outputs.append)
            expected = reference(models, frames, window, "esp32s3")
            for k in range(len(models)):
                mine = sorted((o for o in outputs if o.module == k), key=lambda o: o.window)
                assert np.array_equal(np.concatenate([o.array() for o in mine]), expected[k]), (attempt, k)
                for o in mine:  # window 0 included: no first-run cost in any timing
                    assert [t.cycles for t in o.timings] == [m.run_cycles(window) for m in models[:k + 1]], (
                        attempt, o.window, o.module)


# --------------------------------------------------------------------------- .espdl memory estimate

_ELEM_BYTES = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8}  # espdl.fbs TensorDataType
_NUMPY_ELEM = {"float32": 1, "uint8": 2, "int8": 3, "uint16": 4, "int16": 5, "int32": 6, "int64": 7, "bool": 9,
               "float16": 10, "float64": 11, "uint32": 12, "uint64": 13}


def _fbs(name: str):
    """esp-ppq's generated FlatBuffers module for espdl.fbs table ``name`` (builder functions)."""
    import importlib

    from harness.espdl.reader import _flatc_package

    _flatc_package()
    return importlib.import_module(f"FlatBuffers.Dl.{name}")


def espdl_file(tensors, nodes=(), magic: bytes = b"EDL2") -> bytes:
    """A synthetic .espdl: ``tensors`` (name, TensorDataType, dims; a str dim is symbolic, None no shape), the
    first the graph input and the last its output, all of them in value_info as esp-ppq writes them;
    ``nodes`` (op_type, output names)."""
    import flatbuffers

    DV, D, TS, TTS, TI, VI, N, G, M = (_fbs(n) for n in ("DimensionValue", "Dimension", "TensorShape",
                                                           "TensorTypeAndShape", "TypeInfo", "ValueInfo", "Node",
                                                           "Graph", "Model"))
    b = flatbuffers.Builder(1024)

    def vector(start, items):
        start(b, len(items))
        for item in reversed(items):
            b.PrependUOffsetTRelative(item)
        return b.EndVector()

    def value_info(name, elem, dims):
        shape = None
        if dims is not None:
            dim_tables = []
            for d in dims:
                param = b.CreateString(d) if isinstance(d, str) else None
                DV.Start(b)
                DV.AddDimType(b, 2 if param else 1)
                if param:
                    DV.AddDimParam(b, param)
                else:
                    DV.AddDimValue(b, d)
                value = DV.End(b)
                D.Start(b)
                D.AddValue(b, value)
                dim_tables.append(D.End(b))
            dims_vector = vector(TS.StartDimVector, dim_tables)
            TS.Start(b)
            TS.AddDim(b, dims_vector)
            shape = TS.End(b)
        TTS.Start(b)
        TTS.AddElemType(b, elem)
        if shape is not None:
            TTS.AddShape(b, shape)
        tensor_type = TTS.End(b)
        TI.Start(b)
        TI.AddValueType(b, 1)
        TI.AddValue(b, tensor_type)
        type_info = TI.End(b)
        text = b.CreateString(name)
        VI.Start(b)
        VI.AddName(b, text)
        VI.AddValueInfoType(b, type_info)
        return VI.End(b)

    def node(op_type, outputs):
        names = [b.CreateString(o) for o in outputs]
        out_vector = vector(N.StartOutputVector, names)
        op = b.CreateString(op_type)
        N.Start(b)
        N.AddOutput(b, out_vector)
        N.AddOpType(b, op)
        return N.End(b)

    infos = [value_info(*t) for t in tensors]
    node_tables = [node(*n) for n in nodes]
    node_vector = vector(G.StartNodeVector, node_tables)
    inputs, outputs, values = (vector(G.StartInputVector, infos[:1]), vector(G.StartOutputVector, infos[-1:]),
                               vector(G.StartValueInfoVector, infos))
    G.Start(b)
    G.AddNode(b, node_vector)
    G.AddInput(b, inputs)
    G.AddOutput(b, outputs)
    G.AddValueInfo(b, values)
    graph = G.End(b)
    M.Start(b)
    M.AddGraph(b, graph)
    b.Finish(M.End(b))
    body = bytes(b.Output())
    header = magic + struct.pack("<II", 0, len(body)) + (bytes(4) if magic == b"EDL2" else b"")
    return header + body


def _aligned(n: int) -> int:
    return (n + 15) // 16 * 16


def expected_need(tensors: list[tuple[str, int, tuple]], nodes, flatbuffer: int) -> dict:
    """The estimate of firmware/README.md ("Memory check before loading") in Python: ``tensors`` as counted
    (graph input, graph output, value_info), sizes None where the file fixes none."""
    sizes = [None if dims is None or any(isinstance(d, str) for d in dims) or elem not in _ELEM_BYTES
             else _ELEM_BYTES[elem] * int(np.prod(dims, dtype=np.int64)) for _, elem, dims in tensors]
    largest = max((s for s in sizes if s is not None), default=0)
    tensor_bytes = sum(_aligned(largest if s is None else s) for s in sizes)
    by_name = {}
    for (name, _, _), size in zip(tensors, sizes):
        by_name.setdefault(name, largest if size is None else size)
    state = sum(_aligned(by_name.get(outs[0], largest) * (1 if op == "StreamingCache" else 16))
                for op, outs in nodes if op in ("StreamingCache", "GRU", "LSTM"))
    objects = 1024 * len(nodes) + 256 * len(tensors) + 16384
    need = flatbuffer + tensor_bytes + state + objects
    return {"nodes": len(nodes), "tensors": len(tensors), "unsized": sizes.count(None), "tensor_bytes": tensor_bytes,
            "largest_tensor": largest, "state_bytes": state, "object_bytes": objects, "need_bytes": need,
            "block_bytes": max(flatbuffer, tensor_bytes)}


SYNTHETIC = {  # name: (tensors, nodes)
    "streaming": ([("x", 3, (1, 3, 8)), ("h", 3, (1, 3, 16)), ("cached", 3, (1, 7, 16)), ("y", 5, (1, 3, 5))],
                  [("Conv", ["h"]), ("StreamingCache", ["cached"]), ("Conv", ["y"])]),
    "symbolic-dim-and-no-shape": ([("x", 3, (1, "T", 8)), ("h", 1, None), ("big", 1, (1, 40, 40)), ("y", 3, (1, 1))],
                                  [("Conv", ["h"]), ("Softmax", ["big"]), ("Gemm", ["y"])]),
    "gru-and-missing-output": ([("x", 5, (1, 4, 6)), ("y", 5, (4, 1, 1, 32))],
                               [("GRU", ["y"]), ("StreamingCache", ["nowhere"]), ("LSTM", ["y"])]),
    "scalar-and-zero": ([("x", 3, ()), ("e", 1, (0, 5)), ("y", 13, (3,))], [("Add", ["y"])]),
}


def _counted(tensors):
    """The tensors as the estimate counts them: graph input, graph output, then every value_info."""
    return [tensors[0], tensors[-1], *tensors]


@pytest.mark.parametrize("name", list(SYNTHETIC))
def test_espdl_estimate_of_synthetic_models(host_build, name):
    tensors, nodes = SYNTHETIC[name]
    for magic, header in ((b"EDL2", 16), (b"EDL1", 12)):
        data = espdl_file(tensors, nodes, magic)
        [answer] = codec_check(host_build, [f"espdl {data.hex()}"])
        answer.pop("description")
        expected = expected_need(_counted(tensors), nodes, len(data) - header)
        assert answer == {"version": int(magic[3:]), "flatbuffer_bytes": len(data) - header, **expected}, magic


def test_espdl_estimate_of_a_real_export(host_build, tiny, quantizer):
    """An esp-ppq streaming export (with a StreamingCache): the C walk agrees with harness.espdl.reader's reading, and
    the need is at least the file plus every activation tensor (the brief of the check)."""
    from harness.espdl.reader import load_espdl

    exports = quantizer.streaming_exports(tiny("tiny_auto"), 3)
    answers = codec_check(host_build, [f"espdl {e.path.read_bytes().hex()}" for e in exports])
    assert any(n.op_type == "StreamingCache" for e in exports for n in load_espdl(e.path).nodes)
    for export, answer in zip(exports, answers):
        model = load_espdl(export.path)
        infos = [*model.inputs, *model.outputs, *model.value_info.values()]
        tensors = [(i.name, _NUMPY_ELEM[i.dtype], i.shape) for i in infos]
        nodes = [(n.op_type, list(n.outputs)) for n in model.nodes]
        size = export.path.stat().st_size
        answer.pop("description")
        assert answer == {"version": 2, "flatbuffer_bytes": size - 16, **expected_need(tensors, nodes, size - 16)}
        assert answer["need_bytes"] >= size + sum(_ELEM_BYTES[t[1]] * int(np.prod(t[2])) for t in tensors)


def test_espdl_container_and_broken_flatbuffers_are_refused(host_build, asan_build):
    good = espdl_file(*SYNTHETIC["streaming"])
    cases = {
        good[:15]: "15 bytes are too few for an .espdl file",
        b"PDL2" + good[4:]: "packed models (PDL2) are not supported: upload one .espdl per slot",
        b"ONNX" + good[4:]: "not an .espdl file (magic 4f 4e 4e 58)",
        good[:4] + struct.pack("<I", 1) + good[8:]: "encrypted model (mode 1): the runner has no key",
        good[:-1]: f"the header announces {len(good) - 16} bytes, the file holds {len(good) - 1}",
        good[:8] + struct.pack("<I", 4) + good[12:]: "a FlatBuffer of 4 bytes holds no model",
        good[:16] + struct.pack("<I", len(good)) + good[20:]: "broken FlatBuffer: the root offset points outside",
    }
    answers = codec_check(host_build, [f"espdl {data.hex()}" for data in cases])
    for (data, text), answer in zip(cases.items(), answers):
        assert answer["code"] == p.ErrorCode.MODEL_LOAD_FAILED and answer["text"].startswith(text), answer
    # damaged files: every answer is an estimate or a refusal, never a crash (ASan/UBSan build too)
    rng = random.Random(3)
    damaged = []
    for _ in range(400):
        data = bytearray(good)
        for _ in range(rng.randrange(1, 6)):
            data[16 + rng.randrange(len(data) - 16)] = rng.randrange(256)
        damaged.append(bytes(data))
    damaged += [good[:16] + bytes([0xFF]) * (len(good) - 16), good[:16] + bytes(len(good) - 16)]
    lines = [f"espdl {d.hex()}" for d in damaged]
    answers = codec_check(host_build, lines)
    assert answers == codec_check(asan_build, lines)
    refused = [a for a in answers if "code" in a]
    assert refused and all(a["code"] == p.ErrorCode.MODEL_LOAD_FAILED and a["text"].startswith("broken FlatBuffer")
                           for a in refused)
    assert len(refused) < len(answers)  # and some damage leaves a readable file


def test_memory_decision(host_build):
    """OUT_OF_MEMORY exactly when the need exceeds the free bytes or a single block the largest free block."""
    cases = [((1000, 600, 1000, 600), 0), ((1001, 600, 1000, 600), 7), ((1000, 601, 1000, 600), 7),
             ((1000, 600, 5000, 599), 7), ((0, 0, 0, 0), 0), ((1 << 40, 1 << 33, (1 << 40) - 1, 1 << 34), 7)]
    answers = codec_check(host_build, ["memcheck " + " ".join(map(str, args)) for args, _ in cases])
    for (args, code), answer in zip(cases, answers):
        assert answer["code"] == code, args
        if code:
            need, block, free, largest = args
            assert answer["text"] == (f"needs {need} bytes of PSRAM (one block of {block}), {free} free "
                                      f"(largest block {largest})")


def test_espdl_uploads_are_checked_before_loading(host_build, tmp_path):
    """runner_host does what the ESP-IDF backend does before ESP-DL: OUT_OF_MEMORY naming the need and the free
    bytes for a model that does not fit the PSRAM left, MODEL_LOAD_FAILED for a broken one."""
    huge = espdl_file([("x", 3, (1, 1, 8)), ("act", 3, (1, 65536, 1024)), ("y", 3, (1, 1, 8))], [("Conv", ["act"])])
    small = espdl_file(*SYNTHETIC["streaming"])
    broken = small[:16] + struct.pack("<I", len(small)) + small[20:]
    [need_huge, need_small] = codec_check(host_build, [f"espdl {huge.hex()}", f"espdl {small.hex()}"])
    with host_runner(host_build, "esp32s3", tmp_path / "runner.log") as (_, link):
        free = link.hello().free_psram_bytes - len(huge)  # the upload buffer holds the file
        with pytest.raises(DeviceError, match=re.escape(
                f"OUT_OF_MEMORY to MODEL_END seq 3: huge.espdl: needs {need_huge['need_bytes']} bytes of PSRAM "
                f"(one block of {need_huge['block_bytes']}), {free} free (largest block {free})")):
            link.upload(0, "huge.espdl", huge)
        link.hello()
        with pytest.raises(DeviceError, match=f"MODEL_LOAD_FAILED.*small.espdl: fits \\(needs "
                                              f"{need_small['need_bytes']} bytes"):
            link.upload(1, "small.espdl", small)
        link.hello()
        with pytest.raises(DeviceError, match="MODEL_LOAD_FAILED.*broken.espdl: broken FlatBuffer"):
            link.upload(2, "broken.espdl", broken)
        link.hello()
        assert link.hello().free_psram_bytes == free + len(huge)  # every refused upload was released


# --------------------------------------------------------------------------- reset reason in BOOT

def test_an_unexpected_reboot_names_its_reset_reason(host_build, tmp_path):
    models, layouts = pipeline_models()
    with host_runner(host_build, "esp32p4", tmp_path / "runner.log") as (board, link):
        assert link.hello() and "; reset: power-on" in board_banner(board, link)
        load(link, models, layouts, 3)
        board._control("reset task watchdog")  # the chip reboots in the middle of the session
        with pytest.raises(p.ProtocolError, match=r"rebooted unexpectedly: espdl-hil streaming runner "
                                                  r"\(host-core esp32p4\) ready; reset: task watchdog"):
            link.stream(input_frames(6, CHANNELS, 8, seed=2), lambda out: None)


def board_banner(board, link) -> str:
    """Reset ``board`` as the host does at the start of a session and return the BOOT banner."""
    board.reset()
    banner = link.wait_boot().banner
    link.hello()
    return banner
