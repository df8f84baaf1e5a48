"""The only place the harness touches private internals of ESP-PPQ, pytest-embedded and flatbuffers.

A few things the harness needs have no public API: redirecting ESP-PPQ's console logger, its export
singletons and patterns, ESP-PPQ's generated ``espdl.fbs`` classes, pytest-embedded's DUT log queue and
the list of DUTs it closes after every test. Any release may rename these without notice. Each one is reached through one small function
here, and ``check()`` probes them all at start-up, so a changed library fails in one line naming the
symbol and the versions it was checked against, not with an AttributeError in the middle of a case.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import os
import sys
from dataclasses import dataclass
from functools import cache
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any, Callable, Iterator

from harness.errors import ConfigError, EspdlFormatError

# distribution -> (oldest, newest) release whose internals the symbols below were checked against
SUPPORTED: dict[str, tuple[str, str]] = {
    "esp-ppq": ("1.3.12", "1.3.12"),
    "pytest-embedded": ("2.9.3", "2.9.3"),
    "pytest-embedded-serial": ("2.9.3", "2.9.3"),
    "flatbuffers": ("25.12.19", "25.12.19"),
}


@dataclass(frozen=True)
class Private:
    """One private symbol: the distribution that defines it and a cheap probe of how the harness uses it."""

    dist: str
    name: str
    probe: Callable[[], None]


SYMBOLS: list[Private] = []


class _Changed(Exception):
    """The symbol exists but is no longer what the harness uses it as."""


def _private(dist: str, name: str):
    def register(probe: Callable[[], None]) -> Callable[[], None]:
        SYMBOLS.append(Private(dist, name, probe))
        return probe

    return register


def _expect(ok: bool, detail: str) -> None:
    if not ok:
        raise _Changed(detail)


def _callable_with(fn: Any, *params: str) -> None:
    _expect(callable(fn), "it is not callable")
    names = set(inspect.signature(fn).parameters)
    missing = [p for p in params if p not in names]
    _expect(not missing, f"it takes no parameter {', '.join(missing)}")


# ---------------------------------------------------------------- ESP-PPQ's console logger
# ESP-PPQ's loggers write to the sys.stdout of import time; ppq_env.ppq_call points them at its log sink.


def ppq_loggers() -> list[Any]:
    """Every logger ESP-PPQ has created (its registry is a module global)."""
    from esp_ppq.log.logger import initialized_loggers

    return list(initialized_loggers.values())


def logger_handlers(logger: Any) -> list[Any]:
    """The output handlers of one ESP-PPQ logger."""
    return list(logger._handlers.values())


def is_console_handler(handler: Any) -> bool:
    """Does ``handler`` write to a stream (not to a file of its own)?"""
    return handler._file_name is None


def handler_stream(handler: Any) -> Any:
    return handler._fd


def set_handler_stream(handler: Any, stream: Any) -> None:
    handler._fd = stream


@_private("esp-ppq", "esp_ppq.log.logger.initialized_loggers")
def _probe_loggers() -> None:
    from esp_ppq.log import logger

    registry = logger.initialized_loggers
    _expect(isinstance(registry, dict), "it is not a dict")
    _expect(all(isinstance(v, logger.NaiveLogger) for v in registry.values()), "it holds other than NaiveLogger")


@_private("esp-ppq", "esp_ppq.log.logger.NaiveLogger._handlers")
def _probe_handlers() -> None:
    for lg in ppq_loggers():
        _expect(isinstance(lg._handlers, dict), "it is not a dict")


@_private("esp-ppq", "esp_ppq.log.logger.Handler._file_name")
def _probe_file_name() -> None:
    handlers = [h for lg in ppq_loggers() for h in logger_handlers(lg)]
    _expect(any(is_console_handler(h) for h in handlers), "no logger has a console handler (_file_name None)")


@_private("esp-ppq", "esp_ppq.log.logger.Handler._fd")
def _probe_fd() -> None:
    for h in (h for lg in ppq_loggers() for h in logger_handlers(lg)):
        _expect(callable(getattr(handler_stream(h), "write", None)), "it is not a writable stream")


# ---------------------------------------------------------------- ESP-PPQ's exporter internals


def pattern_info() -> Any:
    """ESP-PPQ's exporter state (layouts, permutations, exponents): one instance per process."""
    from esp_ppq.parser.espdl.espdl_typedef import ExporterPatternInfo

    return ExporterPatternInfo()


@_private("esp-ppq", "esp_ppq.parser.espdl.espdl_typedef.ExporterPatternInfo")
def _probe_pattern_info() -> None:
    from esp_ppq.parser.espdl.espdl_typedef import ExporterPatternInfo

    _expect(ExporterPatternInfo() is ExporterPatternInfo(), "it is no longer a singleton")
    for method in ("reset", "get_var_permute", "add_var_permute"):
        _expect(callable(getattr(ExporterPatternInfo, method, None)), f"it has no method {method}")


def quant_op_types() -> set[str]:
    """Op types ESP-PPQ's exporter inserts to (re)quantize tensors."""
    from esp_ppq.parser.espdl.espdl_typedef import QUANT_OP_SET

    return set(QUANT_OP_SET)


@_private("esp-ppq", "esp_ppq.parser.espdl.espdl_typedef.QUANT_OP_SET")
def _probe_quant_ops() -> None:
    from esp_ppq.parser.espdl.espdl_typedef import QUANT_OP_SET

    _expect("RequantizeLinear" in set(QUANT_OP_SET), "it does not contain RequantizeLinear")


def requant_pattern() -> type:
    """ESP-PPQ's export pattern that inserts RequantizeLinear ops (to subclass)."""
    from esp_ppq.parser.espdl.export_patterns import InsertRequantNodePattern

    return InsertRequantNodePattern


@_private("esp-ppq", "esp_ppq.parser.espdl.export_patterns.InsertRequantNodePattern")
def _probe_requant_pattern() -> None:
    _expect(isinstance(requant_pattern(), type), "it is not a class")
    _callable_with(requant_pattern().export, "op", "graph")


@contextlib.contextmanager
def exporter_patterns(*replacements: type) -> Iterator[None]:
    """ESP-PPQ's exporter uses each of ``replacements`` instead of the pattern it subclasses while the block runs.

    The exporter looks its patterns up by name in its own module at every export, so swapping those names reaches
    every exporter, also ones created inside the block. Each name is checked first (``_EXPORTER_LOOKUPS``).
    """
    import esp_ppq.parser.espdl_exporter as exporter

    names = []
    for replacement in replacements:
        name = next(base.__name__ for base in replacement.__mro__[1:] if base.__name__ in _EXPORTER_LOOKUPS)
        _require(_EXPORTER_LOOKUPS[name])
        names.append(name)
    originals = {name: getattr(exporter, name) for name in names}
    for name, replacement in zip(names, replacements):
        setattr(exporter, name, replacement)
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(exporter, name, original)


@_private("esp-ppq", "esp_ppq.parser.espdl_exporter.InsertRequantNodePattern")
def _probe_exporter_lookup() -> None:
    import esp_ppq.parser.espdl_exporter as exporter

    _expect(exporter.InsertRequantNodePattern is requant_pattern(),
            "the exporter no longer looks InsertRequantNodePattern up by that name")


def matmul_pattern() -> type:
    """ESP-PPQ's pre-export pattern that lays out a MatMul's right-hand operand (to subclass)."""
    from esp_ppq.parser.espdl.export_patterns import InsertPreNodeOfMatMulPattern

    return InsertPreNodeOfMatMulPattern


@_private("esp-ppq", "esp_ppq.parser.espdl.export_patterns.InsertPreNodeOfMatMulPattern")
def _probe_matmul_pattern() -> None:
    _callable_with(matmul_pattern().export, "op", "graph")
    source = inspect.getsource(matmul_pattern().export)
    _expect('"native_kn"' in source and 'op.attributes.get("activation", "Linear") in ("Linear", "Relu")' in source,
            "its native-KN condition is no longer the activation test the repair relies on")


@_private("esp-ppq", "esp_ppq.parser.espdl_exporter.InsertPreNodeOfMatMulPattern")
def _probe_exporter_matmul_lookup() -> None:
    import esp_ppq.parser.espdl_exporter as exporter

    _expect(exporter.InsertPreNodeOfMatMulPattern is matmul_pattern(),
            "the exporter no longer looks InsertPreNodeOfMatMulPattern up by that name")


# pattern name -> the probe that checks the exporter still looks it up by that name
_EXPORTER_LOOKUPS = {"InsertRequantNodePattern": _probe_exporter_lookup,
                     "InsertPreNodeOfMatMulPattern": _probe_exporter_matmul_lookup}


def insert_requantize_node(graph, var, upstream_config, config, op):
    """ESP-PPQ's RequantizeLinear insertion between ``var`` and its reader ``op``; the new op or None."""
    from esp_ppq.parser.espdl.espdl_graph_utils import insert_requantize_node as insert

    return insert(graph=graph, var=var, upstream_config=upstream_config, config=config, op=op)


@_private("esp-ppq", "esp_ppq.parser.espdl.espdl_graph_utils.insert_requantize_node")
def _probe_insert_requantize() -> None:
    from esp_ppq.parser.espdl.espdl_graph_utils import insert_requantize_node as insert

    _callable_with(insert, "graph", "var", "upstream_config", "config", "op")


def conv_cache_window(op) -> int:
    """Frames a temporal op reads per output, as ESP-PPQ's auto-streaming sizes its cache."""
    from esp_ppq.parser.espdl.espdl_streaming import get_conv_cache_window_size

    return get_conv_cache_window_size(op)


@_private("esp-ppq", "esp_ppq.parser.espdl.espdl_streaming.get_conv_cache_window_size")
def _probe_cache_window() -> None:
    from esp_ppq.parser.espdl.espdl_streaming import get_conv_cache_window_size

    _callable_with(get_conv_cache_window_size, "op")


def insert_streaming_cache(graph, var_name: str, attrs: dict):
    """ESP-PPQ's StreamingCache op on ``var_name`` (``window_size``, ``op_name``, ``frame_axis``)."""
    from esp_ppq.parser.espdl.espdl_streaming import insert_streaming_cache_op

    return insert_streaming_cache_op(graph, var_name, attrs)


@_private("esp-ppq", "esp_ppq.parser.espdl.espdl_streaming.insert_streaming_cache_op")
def _probe_insert_cache() -> None:
    from esp_ppq.parser.espdl.espdl_streaming import insert_streaming_cache_op

    _callable_with(insert_streaming_cache_op, "graph", "var_name", "attrs")


# ---------------------------------------------------------------- ESP-PPQ's generated espdl.fbs classes
# ESP-PPQ ships the flatc output for espdl.fbs inside its parser; the .espdl reader loads it by path so
# that reading a file does not import ESP-PPQ itself.

_FLATBUFFERS_DIR = ("parser", "espdl", "FlatBuffers")
_FLATBUFFERS_CLASSES = ("Model", "Tensor", "TensorTypeAndShape")  # the ones the harness reads


def _flatbuffers_dir() -> Path | None:
    spec = importlib.util.find_spec("esp_ppq")
    if spec is None or spec.origin is None:
        return None
    return Path(spec.origin).parent.joinpath(*_FLATBUFFERS_DIR)


@cache
def espdl_flatbuffers() -> ModuleType:
    """ESP-PPQ's generated ``FlatBuffers`` package (``FlatBuffers.Dl.<Table>``), without importing ``esp_ppq``."""
    if "FlatBuffers" in sys.modules:  # esp_ppq itself puts it on sys.path
        return sys.modules["FlatBuffers"]
    pkg_dir = _flatbuffers_dir()
    if pkg_dir is None:
        raise EspdlFormatError(
            "cannot read .espdl files: esp-ppq (which ships the FlatBuffers classes) is not installed",
            "install esp-ppq in this environment",
        )
    pkg_spec = importlib.util.spec_from_file_location(
        "FlatBuffers", pkg_dir / "__init__.py", submodule_search_locations=[str(pkg_dir)]
    )
    if pkg_spec is None or pkg_spec.loader is None or not pkg_dir.is_dir():
        raise EspdlFormatError(f"esp-ppq has no FlatBuffers classes in {pkg_dir}", "reinstall esp-ppq")
    package = importlib.util.module_from_spec(pkg_spec)
    sys.modules["FlatBuffers"] = package
    pkg_spec.loader.exec_module(package)
    return package


@cache
def espdl_table_class(name: str) -> type:
    """The generated class of espdl.fbs table ``name`` (e.g. ``Model``)."""
    espdl_flatbuffers()
    return getattr(importlib.import_module(f"FlatBuffers.Dl.{name}"), name)


@_private("esp-ppq", "esp_ppq/parser/espdl/FlatBuffers (generated espdl.fbs classes)")
def _probe_flatbuffers_dir() -> None:
    pkg_dir = _flatbuffers_dir()
    _expect(pkg_dir is not None, "esp_ppq cannot be found")
    absent = [c for c in _FLATBUFFERS_CLASSES if not (pkg_dir / "Dl" / f"{c}.py").is_file()]
    _expect(not absent, f"{pkg_dir} has no Dl/{', Dl/'.join(absent)}")


def flatbuffers_table(obj: Any) -> Any:
    """The ``flatbuffers.table.Table`` behind a generated table object."""
    return obj._tab


def table_vector(table: Any, slot: int, item_size: int) -> tuple[Any, int, int]:
    """(buffer, start, byte length) of the vector in field ``slot``; (buffer, 0, 0) when the field is absent.

    For vectors of structs, which have no ``AsNumpy`` accessor.
    """
    offset = table.Offset(slot)
    if offset == 0:
        return table.Bytes, 0, 0
    return table.Bytes, table.Vector(offset), table.VectorLen(offset) * item_size


@_private("esp-ppq", "FlatBuffers.Dl.<table>._tab (generated espdl.fbs classes)")
def _probe_tab() -> None:
    import flatbuffers.table

    tensor = espdl_table_class("Tensor")()
    tensor.Init(bytearray(16), 0)
    _expect(isinstance(flatbuffers_table(tensor), flatbuffers.table.Table), "it is not a flatbuffers.table.Table")


@_private("flatbuffers", "flatbuffers.table.Table.Offset/Vector/VectorLen/Bytes")
def _probe_table() -> None:
    import flatbuffers.table

    table = flatbuffers.table.Table(bytearray(16), 0)
    for method in ("Offset", "Vector", "VectorLen"):
        _expect(callable(getattr(table, method, None)), f"Table has no method {method}")
    _expect(isinstance(table.Bytes, bytearray), "Table.Bytes is not the buffer")


# ---------------------------------------------------------------- pytest-embedded's DUT log


def serial_queue(dut: Any) -> Any:
    """The queue pytest-embedded writes a DUT's serial output from (into ``dut.log`` and the terminal).

    ``dut.write`` would send to the device instead, and ``DutFactory`` creates the queue itself.
    """
    return dut.serial._q


@_private("pytest-embedded-serial", "pytest_embedded_serial.serial.Serial._q")
def _probe_serial_queue() -> None:
    import queue

    import serial as pyserial
    from pytest_embedded_serial.serial import Serial

    class Dut:  # the attribute path of a DUT made by DutFactory
        pass

    q = queue.Queue()
    dut = Dut()
    dut.serial = Serial(q, port=pyserial.serial_for_url("loop://"), stop_after_init=True)
    _expect(serial_queue(dut) is q, "it is not the message queue the serial port was given")


def keep_factory_dut(dut: Any) -> Callable[[], None]:
    """Take ``dut`` (made by ``DutFactory.create``) out of the DUTs pytest-embedded closes after every test.

    Returns ``release``: it hands the DUT back, to be closed with the next ``DutFactory.close()`` (pytest-embedded
    calls it after every test; the harness at the end of the session). A device kept from case to case is
    opened, reset and greeted once instead of once per case.
    """
    from pytest_embedded.dut_factory import DutFactory

    layout = next(layout for layout in DutFactory.obj_stack if layout and layout[-1] is dut)
    DutFactory.obj_stack.remove(layout)
    return lambda: DutFactory.obj_stack.append(layout)


@_private("pytest-embedded", "pytest_embedded.dut_factory.DutFactory.obj_stack")
def _probe_obj_stack() -> None:
    from pytest_embedded.dut_factory import DutFactory

    _expect(isinstance(DutFactory.obj_stack, list), "it is not a list")
    dut = object()
    DutFactory.obj_stack.append(["serial", dut])
    try:
        release = keep_factory_dut(dut)
        _expect(all(layout[-1] is not dut for layout in DutFactory.obj_stack), "the DUT was not taken out")
        release()
        _expect(DutFactory.obj_stack[-1] == ["serial", dut], "the DUT was not handed back")
    finally:
        DutFactory.obj_stack[:] = [layout for layout in DutFactory.obj_stack if layout[-1] is not dut]
    _callable_with(DutFactory.close)


# ---------------------------------------------------------------- the start-up check


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _problem(symbol: Private) -> str | None:
    """What is wrong with ``symbol`` in the installed library, or None."""
    try:
        symbol.probe()
    except _Changed as exc:
        return f"has {symbol.name} but {exc}"
    except Exception:  # noqa: BLE001 - any failure to reach it means it is gone
        return f"has no {symbol.name}"
    return None


def check(stamp_dir: Path | None = None) -> None:
    """Raise one ``ConfigError`` if an installed library lacks a private symbol the harness uses.

    Imports the libraries (ESP-PPQ takes seconds) and runs no model. With ``stamp_dir``, a passed check
    leaves a stamp of the installed files it probed, and the next run with the same files skips it.
    """
    stamp = Path(stamp_dir) / "compat-checked" if stamp_dir is not None else None
    fingerprint = installed_fingerprint()
    if stamp is not None and stamp.is_file() and stamp.read_text() == fingerprint:
        return
    from harness.ppq.env import import_ppq

    with contextlib.suppress(Exception):  # a missing esp-ppq is reported below, per symbol
        import_ppq()
    problems = [(s, p) for s in SYMBOLS if (p := _problem(s)) is not None]
    if problems:
        _fail(problems)
    if stamp is not None:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.tmp-{os.getpid()}")
        tmp.write_text(fingerprint)
        os.replace(tmp, stamp)


def installed_fingerprint() -> str:
    """Names every installed file the probes can reach (version, path, size, mtime) and this module's code.

    Any upgrade, reinstall or edit of one of those libraries changes it (a few hundred ``stat`` calls).
    """
    h = hashlib.sha256(Path(__file__).read_bytes())
    h.update(sys.version.encode())
    for dist in sorted(SUPPORTED):
        try:
            found = metadata.distribution(dist)
        except metadata.PackageNotFoundError:
            h.update(f"{dist} absent\n".encode())
            continue
        h.update(f"{dist}={found.version}@{found.locate_file('')}\n".encode())
        for file in sorted(str(f) for f in found.files or () if f.suffix in (".py", ".pth")):
            with contextlib.suppress(OSError):
                st = found.locate_file(file).stat()
                h.update(f"{file} {st.st_size} {st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _require(probe: Callable[[], None]) -> None:
    """``check()`` for one symbol, right before it is used."""
    symbol = next(s for s in SYMBOLS if s.probe is probe)
    problem = _problem(symbol)
    if problem is not None:
        _fail([(symbol, problem)])


def _fail(problems: list[tuple[Private, str]]) -> None:
    symbol, problem = problems[0]
    lo, hi = SUPPORTED[symbol.dist]
    version = _version(symbol.dist)
    what = f"{symbol.dist} {version} {problem}" if version else f"{symbol.dist} is not installed ({symbol.name})"
    also = f"; {len(problems) - 1} more changed: {', '.join(s.name for s, _ in problems[1:])}" if problems[1:] else ""
    dists = dict.fromkeys(s.dist for s, _ in problems)
    raise ConfigError(
        f"{what} (the harness supports {symbol.dist} {lo}–{hi} for it{also})",
        "install " + " ".join(f"{d}=={SUPPORTED[d][1]}" for d in dists),
    )
