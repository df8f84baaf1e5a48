"""``harness.compat``: each private symbol works on the installed libraries, and its loss fails ``check()``.

Every case first uses the compat function on the real library, then removes or renames the symbol the
way a new release could and expects ``check()`` to say so in one line naming it and the supported range.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import io
import os
import queue
from importlib import metadata
from pathlib import Path

import pytest

from harness import compat
from harness.errors import ConfigError
from harness.ppq.env import import_ppq


@pytest.fixture(scope="module", autouse=True)
def _ppq():
    import_ppq()


def _handlers():
    return [h for lg in compat.ppq_loggers() for h in compat.logger_handlers(lg)]


def _recorder(monkeypatch, module: str, name: str) -> list:
    """Replace ``module.name`` by a function that records its arguments (the compat wrapper must reach it)."""
    calls: list = []
    monkeypatch.setattr(importlib.import_module(module), name, lambda *a, **kw: calls.append((a, kw)) or "result")
    return calls


# ---------------------------------------------------------------- per symbol: use it, then break it


def use_loggers(monkeypatch):
    from esp_ppq.log.logger import NaiveLogger

    loggers = compat.ppq_loggers()
    assert loggers and all(isinstance(lg, NaiveLogger) for lg in loggers)
    assert NaiveLogger.get_logger("PPQ") in loggers


def break_loggers(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.log.logger"), "initialized_loggers")


def use_handlers(monkeypatch):
    from esp_ppq.log.logger import Handler, NaiveLogger

    handlers = compat.logger_handlers(NaiveLogger.get_logger("PPQ"))
    assert handlers and all(isinstance(h, Handler) for h in handlers)


def break_handlers(monkeypatch):
    for lg in compat.ppq_loggers():
        monkeypatch.delattr(lg, "_handlers")


def use_file_name(monkeypatch):
    from esp_ppq.log.logger import Handler

    assert compat.is_console_handler(Handler())
    assert any(compat.is_console_handler(h) for h in _handlers())


def break_file_name(monkeypatch):
    for h in _handlers():
        monkeypatch.delattr(h, "_file_name")


def use_fd(monkeypatch):
    from esp_ppq.log.logger import NaiveLogger

    logger = NaiveLogger.get_logger("PPQ")
    console = [h for h in compat.logger_handlers(logger) if compat.is_console_handler(h)]
    saved = [compat.handler_stream(h) for h in console]
    sink = io.StringIO()
    try:
        for h in console:
            compat.set_handler_stream(h, sink)
        logger.error("compat probe")
    finally:
        for h, stream in zip(console, saved):
            compat.set_handler_stream(h, stream)
    assert "[ERROR]" in sink.getvalue() and "compat probe" in sink.getvalue()
    assert [compat.handler_stream(h) for h in console] == saved


def break_fd(monkeypatch):
    for h in _handlers():
        monkeypatch.delattr(h, "_fd")


def use_pattern_info(monkeypatch):
    from esp_ppq.parser.espdl.espdl_typedef import ExporterPatternInfo

    info = compat.pattern_info()
    assert info is ExporterPatternInfo()
    info.add_var_permute("compat-probe", [0, 2, 1])
    assert compat.pattern_info().get_var_permute("compat-probe") == [0, 2, 1]
    info.reset()
    assert compat.pattern_info().get_var_permute("compat-probe") is None


def break_pattern_info(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.parser.espdl.espdl_typedef"), "ExporterPatternInfo")


def use_quant_ops(monkeypatch):
    assert {"QuantizeLinear", "DequantizeLinear", "RequantizeLinear"} <= compat.quant_op_types()


def break_quant_ops(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.parser.espdl.espdl_typedef"), "QUANT_OP_SET")


def use_requant_pattern(monkeypatch):
    from esp_ppq.IR import OperationExporter

    assert issubclass(compat.requant_pattern(), OperationExporter)
    assert compat.requant_pattern().__name__ == "InsertRequantNodePattern"


def break_requant_pattern(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.parser.espdl.export_patterns"), "InsertRequantNodePattern")


def use_exporter_lookup(monkeypatch):
    exporter = importlib.import_module("esp_ppq.parser.espdl_exporter")
    original = exporter.InsertRequantNodePattern

    class Replacement(compat.requant_pattern()):
        pass

    with compat.exporter_patterns(Replacement):
        assert exporter.InsertRequantNodePattern is Replacement
    assert exporter.InsertRequantNodePattern is original


def break_exporter_lookup(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.parser.espdl_exporter"), "InsertRequantNodePattern")


def use_matmul_pattern(monkeypatch):
    from esp_ppq.IR import OperationExporter

    assert issubclass(compat.matmul_pattern(), OperationExporter)
    assert compat.matmul_pattern().__name__ == "InsertPreNodeOfMatMulPattern"


def break_matmul_pattern(monkeypatch):
    module = importlib.import_module("esp_ppq.parser.espdl.export_patterns")

    class Rewritten(module.InsertPreNodeOfMatMulPattern):  # same name, another native-KN rule
        def export(self, op, graph, **kwargs):
            return op

    Rewritten.__name__ = "InsertPreNodeOfMatMulPattern"
    monkeypatch.setattr(module, "InsertPreNodeOfMatMulPattern", Rewritten)


def use_exporter_matmul_lookup(monkeypatch):
    exporter = importlib.import_module("esp_ppq.parser.espdl_exporter")
    original = exporter.InsertPreNodeOfMatMulPattern

    class Replacement(compat.matmul_pattern()):
        pass

    with compat.exporter_patterns(Replacement):
        assert exporter.InsertPreNodeOfMatMulPattern is Replacement
    assert exporter.InsertPreNodeOfMatMulPattern is original


def break_exporter_matmul_lookup(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.parser.espdl_exporter"), "InsertPreNodeOfMatMulPattern")


def use_insert_requantize(monkeypatch):
    calls = _recorder(monkeypatch, "esp_ppq.parser.espdl.espdl_graph_utils", "insert_requantize_node")
    assert compat.insert_requantize_node("g", "v", "up", "cfg", "op") == "result"
    assert calls == [((), {"graph": "g", "var": "v", "upstream_config": "up", "config": "cfg", "op": "op"})]


def break_insert_requantize(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.parser.espdl.espdl_graph_utils"), "insert_requantize_node")


def use_cache_window(monkeypatch):
    calls = _recorder(monkeypatch, "esp_ppq.parser.espdl.espdl_streaming", "get_conv_cache_window_size")
    assert compat.conv_cache_window("op") == "result" and calls == [(("op",), {})]


def break_cache_window(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.parser.espdl.espdl_streaming"), "get_conv_cache_window_size")


def use_insert_cache(monkeypatch):
    calls = _recorder(monkeypatch, "esp_ppq.parser.espdl.espdl_streaming", "insert_streaming_cache_op")
    assert compat.insert_streaming_cache("g", "x", {"window_size": 3}) == "result"
    assert calls == [(("g", "x", {"window_size": 3}), {})]


def break_insert_cache(monkeypatch):
    monkeypatch.delattr(importlib.import_module("esp_ppq.parser.espdl.espdl_streaming"), "insert_streaming_cache_op")


def use_flatbuffers_dir(monkeypatch):
    assert compat.espdl_flatbuffers().__name__ == "FlatBuffers"
    model = compat.espdl_table_class("Model")
    assert model.__name__ == "Model" and callable(model.GetRootAs)


def break_flatbuffers_dir(monkeypatch, tmp_path):
    """An esp_ppq install that no longer ships the generated classes where the reader looks."""
    (tmp_path / "esp_ppq" / "parser" / "espdl").mkdir(parents=True)
    (tmp_path / "esp_ppq" / "__init__.py").write_text("")
    find_spec = importlib.util.find_spec

    def moved(name, *args, **kwargs):
        if name == "esp_ppq":
            return importlib.machinery.ModuleSpec("esp_ppq", None, origin=str(tmp_path / "esp_ppq" / "__init__.py"))
        return find_spec(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", moved)


def _tensor_with_raw_data(chunks: list[bytes]):
    """A generated Tensor over a buffer whose raw_data holds ``chunks`` (16 bytes each)."""
    import flatbuffers

    compat.espdl_flatbuffers()
    T = importlib.import_module("FlatBuffers.Dl.Tensor")
    A = importlib.import_module("FlatBuffers.Dl.AlignedBytes")
    b = flatbuffers.Builder(256)
    T.TensorStartRawDataVector(b, len(chunks))
    for chunk in reversed(chunks):
        A.CreateAlignedBytes(b, list(chunk))
    raw = b.EndVector()
    T.TensorStart(b)
    T.TensorAddRawData(b, raw)
    b.Finish(T.TensorEnd(b))
    return T.Tensor.GetRootAs(b.Output(), 0)


def use_tab(monkeypatch):
    import flatbuffers.table

    assert isinstance(compat.flatbuffers_table(_tensor_with_raw_data([bytes(16)])), flatbuffers.table.Table)


def break_tab(monkeypatch):
    monkeypatch.setattr(compat.espdl_table_class("Tensor"), "Init", lambda self, buf, pos: None)


def use_table(monkeypatch):
    chunks = [bytes(range(16)), bytes(range(100, 116))]
    table = compat.flatbuffers_table(_tensor_with_raw_data(chunks))
    buf, start, length = compat.table_vector(table, 20, 16)  # Tensor.raw_data
    assert length == 32 and bytes(buf[start:start + length]) == b"".join(chunks)
    buf, start, length = compat.table_vector(table, 4, 8)  # Tensor.dims: absent
    assert (start, length) == (0, 0)


def break_table(monkeypatch):
    import flatbuffers.table

    monkeypatch.delattr(flatbuffers.table.Table, "VectorLen")


def use_serial_queue(monkeypatch):
    import serial as pyserial
    from pytest_embedded_serial.serial import Serial

    class Dut:
        pass

    q = queue.Queue()
    dut = Dut()
    dut.serial = Serial(q, port=pyserial.serial_for_url("loop://"), stop_after_init=True)
    assert compat.serial_queue(dut) is q


def break_serial_queue(monkeypatch):
    from pytest_embedded_serial.serial import Serial

    init = Serial.__init__

    def renamed(self, msg_queue, *args, **kwargs):
        init(self, msg_queue, *args, **kwargs)
        self._queue = self.__dict__.pop("_q")

    monkeypatch.setattr(Serial, "__init__", renamed)


def use_obj_stack(monkeypatch):
    from pytest_embedded.dut_factory import DutFactory

    dut = object()
    monkeypatch.setattr(DutFactory, "obj_stack", [["a"], ["serial", dut]])
    release = compat.keep_factory_dut(dut)
    assert DutFactory.obj_stack == [["a"]]  # pytest-embedded's per-test close no longer reaches it
    release()
    assert DutFactory.obj_stack == [["a"], ["serial", dut]]


def break_obj_stack(monkeypatch):
    from pytest_embedded.dut_factory import DutFactory

    monkeypatch.setattr(DutFactory, "obj_stack", ())  # e.g. made immutable (pytest-embedded itself still iterates it)


CASES = {
    "esp_ppq.log.logger.initialized_loggers": (use_loggers, break_loggers),
    "esp_ppq.log.logger.NaiveLogger._handlers": (use_handlers, break_handlers),
    "esp_ppq.log.logger.Handler._file_name": (use_file_name, break_file_name),
    "esp_ppq.log.logger.Handler._fd": (use_fd, break_fd),
    "esp_ppq.parser.espdl.espdl_typedef.ExporterPatternInfo": (use_pattern_info, break_pattern_info),
    "esp_ppq.parser.espdl.espdl_typedef.QUANT_OP_SET": (use_quant_ops, break_quant_ops),
    "esp_ppq.parser.espdl.export_patterns.InsertRequantNodePattern": (use_requant_pattern, break_requant_pattern),
    "esp_ppq.parser.espdl_exporter.InsertRequantNodePattern": (use_exporter_lookup, break_exporter_lookup),
    "esp_ppq.parser.espdl.export_patterns.InsertPreNodeOfMatMulPattern": (use_matmul_pattern, break_matmul_pattern),
    "esp_ppq.parser.espdl_exporter.InsertPreNodeOfMatMulPattern": (use_exporter_matmul_lookup,
                                                                   break_exporter_matmul_lookup),
    "esp_ppq.parser.espdl.espdl_graph_utils.insert_requantize_node": (use_insert_requantize, break_insert_requantize),
    "esp_ppq.parser.espdl.espdl_streaming.get_conv_cache_window_size": (use_cache_window, break_cache_window),
    "esp_ppq.parser.espdl.espdl_streaming.insert_streaming_cache_op": (use_insert_cache, break_insert_cache),
    "esp_ppq/parser/espdl/FlatBuffers (generated espdl.fbs classes)": (use_flatbuffers_dir, break_flatbuffers_dir),
    "FlatBuffers.Dl.<table>._tab (generated espdl.fbs classes)": (use_tab, break_tab),
    "flatbuffers.table.Table.Offset/Vector/VectorLen/Bytes": (use_table, break_table),
    "pytest_embedded_serial.serial.Serial._q": (use_serial_queue, break_serial_queue),
    "pytest_embedded.dut_factory.DutFactory.obj_stack": (use_obj_stack, break_obj_stack),
}


def test_every_private_symbol_has_a_case():
    assert [s.name for s in compat.SYMBOLS] == list(CASES)


@pytest.mark.parametrize("name", list(CASES))
def test_private_symbol(name, monkeypatch, tmp_path):
    symbol = next(s for s in compat.SYMBOLS if s.name == name)
    use, remove = CASES[name]
    assert compat._problem(symbol) is None  # the installed library has it, as the harness uses it
    with monkeypatch.context() as patched:
        use(patched)
    compat.check()

    remove(*((monkeypatch, tmp_path) if remove is break_flatbuffers_dir else (monkeypatch,)))
    with pytest.raises(ConfigError) as info:
        compat.check()
    message = str(info.value)
    lo, hi = compat.SUPPORTED[symbol.dist]
    assert "\n" not in message
    assert message.startswith(f"{symbol.dist} {metadata.version(symbol.dist)} has ")
    assert message.index(name) < message.index(f"(the harness supports {symbol.dist} {lo}–{hi} for it")
    assert f"install {symbol.dist}=={hi}" in message


def test_check_passes_on_the_installed_libraries():
    compat.check()


def test_a_passed_check_is_stamped_and_skipped_until_an_installed_file_changes(monkeypatch, tmp_path):
    compat.check(tmp_path)
    stamp = tmp_path / "compat-checked"
    assert stamp.read_text() == compat.installed_fingerprint()

    probed = []
    monkeypatch.setattr(compat, "_problem", lambda symbol: probed.append(symbol) or None)
    compat.check(tmp_path)
    assert probed == []  # same installed files: the stamp stands for the probes

    import flatbuffers.table

    source = Path(flatbuffers.table.__file__)
    stat = source.stat()
    try:  # a library edited in place (same version): its files' times differ, so it is probed again
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
        compat.check(tmp_path)
    finally:
        os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert len(probed) == len(compat.SYMBOLS)


def test_a_failed_check_leaves_no_stamp(monkeypatch, tmp_path):
    symbol = compat.SYMBOLS[0]
    monkeypatch.setattr(compat, "_problem", lambda s: "has no such thing" if s is symbol else None)
    with pytest.raises(ConfigError):
        compat.check(tmp_path)
    assert not (tmp_path / "compat-checked").exists()
