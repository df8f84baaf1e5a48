"""The virtual board's parsed-model cache: kept by content across processes, never trusted when damaged."""

import hashlib

import numpy as np
import pytest

from harness.device import protocol as p
from harness.emulator import virtual_board
from harness.emulator.virtual_board import Board, ParsedModels
from harness.espdl import reader
from harness.targets import get_target


@pytest.fixture(scope="module")
def blob(tiny):
    qm = tiny("tiny_auto")
    return (qm.directory / "m0.offline.espdl").read_bytes()


def same(a, b) -> bool:
    return (a.name, [n.op_type for n in a.nodes], sorted(a.initializers)) == (
        b.name, [n.op_type for n in b.nodes], sorted(b.initializers)) and all(
        np.array_equal(a.initializers[k].data, b.initializers[k].data) and not b.initializers[k].data.flags.writeable for k in a.initializers)


def counting_parses(monkeypatch) -> list:
    calls = []
    real = reader.load_espdl

    def load(data, name=""):
        calls.append(name)
        return real(data, name=name)

    monkeypatch.setattr(reader, "load_espdl", load)
    return calls


def test_a_model_parsed_by_one_process_is_not_parsed_by_the_next(tmp_path, blob, monkeypatch):
    sha = hashlib.sha256(blob).digest()
    calls = counting_parses(monkeypatch)
    first = ParsedModels(tmp_path).get(blob, sha, "m0")
    assert calls == ["m0"] and len(list(tmp_path.glob(f"{sha.hex()}-*.pickle"))) == 1
    second = ParsedModels(tmp_path).get(blob, sha, "m0")  # a new board process: from disk
    assert calls == ["m0"] and same(first, second)


def test_a_damaged_entry_is_parsed_again_and_replaced(tmp_path, blob, monkeypatch):
    sha = hashlib.sha256(blob).digest()
    ParsedModels(tmp_path).get(blob, sha, "m0")
    (entry,) = tmp_path.glob("*.pickle")
    entry.write_bytes(entry.read_bytes()[:100])
    calls = counting_parses(monkeypatch)
    again = ParsedModels(tmp_path).get(blob, sha, "m0")
    assert calls == ["m0"] and same(again, reader.load_espdl(blob, name="m0"))
    assert ParsedModels(tmp_path).get(blob, sha, "m0") is not None and calls.count("m0") == 2


def test_another_reader_does_not_use_the_entry(tmp_path, blob, monkeypatch):
    sha = hashlib.sha256(blob).digest()
    ParsedModels(tmp_path).get(blob, sha, "m0")
    monkeypatch.setattr(virtual_board, "code_digest", lambda *modules: "another reader")
    calls = counting_parses(monkeypatch)
    ParsedModels(tmp_path).get(blob, sha, "m0")
    assert calls == ["m0"] and len(list(tmp_path.glob("*.pickle"))) == 2


def test_an_uploaded_model_lands_in_the_board_cache(tmp_path, blob):
    board = Board(get_target("esp32p4"), parsed=ParsedModels(tmp_path))
    sha = hashlib.sha256(blob).digest()
    replies = []
    for seq, message in enumerate([p.Hello(1, 1), p.ModelBegin(0, len(blob), sha, "m0"), p.ModelChunk(0, 0, blob),
                                   p.ModelEnd(0)]):
        replies += board.handle(p.Packet(seq, message))
    assert isinstance(replies[-1], p.Ack) and list(tmp_path.glob(f"{sha.hex()}-*.pickle"))
