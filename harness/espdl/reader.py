"""Read ``.espdl`` models and packs, and write PDL3 packs, without ESP-PPQ.

The harness needs what the chip will load: graph inputs/outputs with on-chip
shapes and exponents, the nodes, the initializers and the test values ESP-PPQ
embedded for ``dl::Model::test()``. This module parses the EDL1/EDL2 containers
and the PDL1/PDL2/PDL3 packs the way esp-dl's ``fbs_loader`` does, decodes the
FlatBuffer with the ``flatc`` classes ESP-PPQ ships (without importing ESP-PPQ
itself, which is slow), and turns every malformed input into one
``EspdlFormatError``.

CLI: ``python -m harness.espdl FILE [--name NAME]`` prints a summary.
"""

from __future__ import annotations

import argparse
import hashlib
import math
import os
import struct
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from harness import compat
from harness.errors import EspdlFormatError

# ONNX TensorDataType -> numpy dtype name (espdl.fbs enum TensorDataType).
_DTYPES: dict[int, str] = {
    1: "float32",
    2: "uint8",
    3: "int8",
    4: "uint16",
    5: "int16",
    6: "int32",
    7: "int64",
    9: "bool",
    10: "float16",
    11: "float64",
    12: "uint32",
    13: "uint64",
}

_MODEL_MAGICS = {b"EDL1": 12, b"EDL2": 16}  # magic -> header size
_PACK_BLOB_MAGIC = {b"PDL1": b"EDL1", b"PDL2": b"EDL2", b"PDL3": b"EDL2"}
_PACK_HEADER = {b"PDL1": 8, b"PDL2": 8, b"PDL3": 60}  # entry table starts here
_PDL3_VERSION = slice(4, 20)
_PDL3_SIZE_OFFSET = 20
_PDL3_SHA = slice(24, 56)
_PDL3_COUNT_OFFSET = 56
_ENTRY_SIZE = 12
_ALIGN = 16
_LAYOUT_PREFIX = "layout ==> "
_TENSOR_RAW_DATA_SLOT = 20  # vtable offset of Tensor.raw_data ([AlignedBytes])
_TENSOR_TYPE = 1  # TypeInfoValue.tensor_type

_FIX_REEXPORT = (
    "re-export the model with esp-ppq (espdl_quantize_*) or re-pack it; the file is corrupted or not an .espdl model"
)
_FIX_PACK = "re-pack the models with harness.espdl.reader.pack_models or esp-dl's pack_espdl_models.py"


@dataclass(frozen=True)
class TensorInfo:
    """A graph input, output or activation: on-chip shape (NWC/NHWC) and exponents.

    Dimensions without a numeric value (symbolic) are reported as -1.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str
    exponents: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class Tensor:
    """An initializer or an embedded test value, data reshaped to ``dims`` (read-only)."""

    name: str
    dims: tuple[int, ...]
    dtype: str
    exponents: tuple[int, ...]
    layout: str
    data: np.ndarray


@dataclass(frozen=True)
class Node:
    """One operator, in file (topological) order."""

    name: str
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attributes: dict[str, Any]


@dataclass
class EspdlModel:
    """One model as esp-dl loads it."""

    name: str
    inputs: list[TensorInfo]
    outputs: list[TensorInfo]
    value_info: dict[str, TensorInfo]
    nodes: list[Node]
    initializers: dict[str, Tensor]
    test_inputs: dict[str, Tensor]
    test_outputs: dict[str, Tensor]
    metadata: dict[str, str]
    producer: str
    sha256: str

    def input(self, name: str) -> TensorInfo:
        return _pick(self.inputs, name, f"model {self.name!r} has no input {name!r}")

    def output(self, name: str) -> TensorInfo:
        return _pick(self.outputs, name, f"model {self.name!r} has no output {name!r}")

    def tensor_info(self, name: str) -> TensorInfo | None:
        """Shape/dtype/exponents of a graph input, output or activation; None if unknown."""
        for info in (*self.inputs, *self.outputs):
            if info.name == name:
                return info
        return self.value_info.get(name)


def _pick(infos: list[TensorInfo], name: str, cause: str) -> TensorInfo:
    for info in infos:
        if info.name == name:
            return info
    names = ", ".join(info.name for info in infos) or "none"
    raise EspdlFormatError(f"{cause} (available: {names})", "use one of the available names")


# ---------------------------------------------------------------- flatc classes


def _flatc_package() -> ModuleType:
    """ESP-PPQ's generated ``FlatBuffers`` package, imported without importing ``esp_ppq``."""
    return compat.espdl_flatbuffers()


def _flatc(cls: str) -> Any:
    return compat.espdl_table_class(cls)


# ---------------------------------------------------------------- error guard


def _one_line(exc: BaseException) -> str:
    kind = type(exc)
    kind_name = kind.__name__ if kind.__module__ == "builtins" else f"{kind.__module__}.{kind.__name__}"
    text = " ".join(str(exc).split()) or "no detail"
    return f"{kind_name}: {text[:160]}"


@contextmanager
def _malformed(what: str, fix: str = _FIX_REEXPORT) -> Iterator[None]:
    """Turn any low-level exception into one EspdlFormatError about ``what``."""
    try:
        yield
    except EspdlFormatError:
        raise
    except Exception as exc:  # noqa: BLE001 - the point is that nothing else escapes
        raise EspdlFormatError(f"{what} ({_one_line(exc)})", fix) from exc


# ---------------------------------------------------------------- FlatBuffer decoding


def _str(value: bytes | None) -> str:
    return value.decode("utf-8") if value is not None else ""


def _int_tuple(length: int, as_numpy: Any) -> tuple[int, ...]:
    return tuple(int(v) for v in as_numpy()) if length else ()


def _dtype(code: int, what: str) -> str:
    if code not in _DTYPES:
        raise EspdlFormatError(f"{what} has unsupported data type {code}", _FIX_REEXPORT)
    return _DTYPES[code]


def _raw_bytes(tensor: Any) -> tuple[bytes, int, int]:
    """(buffer, start, length) of ``raw_data`` ([AlignedBytes], 16 bytes each)."""
    return compat.table_vector(compat.flatbuffers_table(tensor), _TENSOR_RAW_DATA_SLOT, 16)


# ONNX's typed value fields: which one holds a tensor of each numpy kind (int8/int16/bool go in int32_data)
_TYPED_FIELDS = {"f": ("FloatDataLength", "FloatDataAsNumpy"), "i": ("Int32DataLength", "Int32DataAsNumpy"),
                 "b": ("Int32DataLength", "Int32DataAsNumpy"), "u": ("Uint64DataLength", "Uint64DataAsNumpy")}


def _typed_data(t: Any, dtype: np.dtype, count: int) -> np.ndarray | None:
    """The values of a tensor written to ONNX's typed fields instead of raw_data, or None."""
    length, values = _TYPED_FIELDS.get(dtype.kind, (None, None))
    if dtype == np.int64:
        length, values = "Int64DataLength", "Int64DataAsNumpy"
    elif dtype == np.float64:
        length, values = "DoubleDataLength", "DoubleDataAsNumpy"
    if length is None or getattr(t, length)() != count:
        return None
    return np.asarray(getattr(t, values)()).astype(dtype)


def _tensor(t: Any, where: str) -> Tensor:
    name = _str(t.Name())
    what = f"{where} tensor {name!r}"
    dims = _int_tuple(t.DimsLength(), t.DimsAsNumpy)
    if any(d < 0 for d in dims):
        raise EspdlFormatError(f"{what} has negative dims {dims}", _FIX_REEXPORT)
    dtype = np.dtype(_dtype(t.DataType(), what)).newbyteorder("<")
    count = math.prod(dims)
    buf, start, length = _raw_bytes(t)
    typed = _typed_data(t, dtype, count) if length == 0 and count else None
    if typed is not None:  # an older exporter's scalar in ONNX's typed fields (int32_data, float_data, ...)
        data = typed.reshape(dims)
    elif count * dtype.itemsize > length:
        raise EspdlFormatError(
            f"{what} needs {count * dtype.itemsize} bytes for dims {dims} but raw_data holds {length}",
            _FIX_REEXPORT,
        )
    else:
        data = np.frombuffer(buf, dtype=dtype, count=count, offset=start).reshape(dims)
    doc = _str(t.DocString())
    return Tensor(
        name=name,
        dims=dims,
        dtype=dtype.name,
        exponents=_int_tuple(t.ExponentsLength(), t.ExponentsAsNumpy),
        layout=doc.removeprefix(_LAYOUT_PREFIX) if doc.startswith(_LAYOUT_PREFIX) else "",
        data=data,
    )


def _value_info(v: Any) -> TensorInfo:
    name = _str(v.Name())
    type_info = v.ValueInfoType()
    if type_info is None or type_info.ValueType() != _TENSOR_TYPE:
        raise EspdlFormatError(f"value info {name!r} is not a tensor type", _FIX_REEXPORT)
    tensor_type = _flatc("TensorTypeAndShape")()
    union = type_info.Value()
    tensor_type.Init(union.Bytes, union.Pos)
    shape = tensor_type.Shape()
    dims: list[int] = []
    for i in range(shape.DimLength() if shape is not None else 0):
        value = shape.Dim(i).Value()
        dims.append(int(value.DimValue()) if value is not None and value.DimType() == 1 else -1)
    return TensorInfo(
        name=name,
        shape=tuple(dims),
        dtype=_dtype(tensor_type.ElemType(), f"value info {name!r}"),
        exponents=_int_tuple(v.ExponentsLength(), v.ExponentsAsNumpy),
    )


def _attribute(a: Any, where: str) -> Any:
    kind = a.AttrType()
    if kind == 1:
        return float(a.F().F())
    if kind == 2:
        return int(a.I().I())
    if kind == 3:
        return a.SAsNumpy().tobytes().decode("utf-8") if a.SLength() else ""
    if kind == 4:
        return _tensor(a.T(), where)
    if kind == 6:
        return [float(v) for v in a.FloatsAsNumpy()] if a.FloatsLength() else []
    if kind == 7:
        return list(_int_tuple(a.IntsLength(), a.IntsAsNumpy))
    if kind == 8:
        return [_str(a.Strings(i)) for i in range(a.StringsLength())]
    raise EspdlFormatError(f"{where} has unsupported attribute type {kind}", _FIX_REEXPORT)


def _node(n: Any) -> Node:
    name = _str(n.Name())
    attributes = {}
    for i in range(n.AttributeLength()):
        a = n.Attribute(i)
        attr_name = _str(a.Name())
        attributes[attr_name] = _attribute(a, f"node {name!r} attribute {attr_name!r}")
    return Node(
        name=name,
        op_type=_str(n.OpType()),
        inputs=tuple(_str(n.Input(i)) for i in range(n.InputLength())),
        outputs=tuple(_str(n.Output(i)) for i in range(n.OutputLength())),
        attributes=attributes,
    )


def _tensors(count: int, get: Any, where: str) -> dict[str, Tensor]:
    tensors = (_tensor(get(i), where) for i in range(count))
    return {t.name: t for t in tensors}


def _decode(payload: bytes, name: str, sha256: str) -> EspdlModel:
    model = _flatc("Model").GetRootAs(payload, 0)
    graph = model.Graph()
    if graph is None:
        raise EspdlFormatError("FlatBuffer has no graph", _FIX_REEXPORT)
    value_info = (_value_info(graph.ValueInfo(i)) for i in range(graph.ValueInfoLength()))
    metadata = (model.MetadataProps(i) for i in range(model.MetadataPropsLength()))
    return EspdlModel(
        name=name,
        inputs=[_value_info(graph.Input(i)) for i in range(graph.InputLength())],
        outputs=[_value_info(graph.Output(i)) for i in range(graph.OutputLength())],
        value_info={v.name: v for v in value_info},
        nodes=[_node(graph.Node(i)) for i in range(graph.NodeLength())],
        initializers=_tensors(graph.InitializerLength(), graph.Initializer, "initializer"),
        test_inputs=_tensors(graph.TestInputsValueLength(), graph.TestInputsValue, "test input"),
        test_outputs=_tensors(graph.TestOutputsValueLength(), graph.TestOutputsValue, "test output"),
        metadata={_str(m.Key()): _str(m.Value()) for m in metadata},
        producer=f"{_str(model.ProducerName())} {_str(model.ProducerVersion())}".strip(),
        sha256=sha256,
    )


# ---------------------------------------------------------------- containers


@dataclass(frozen=True)
class _Blob:
    """Where one EDLx model sits in a buffer."""

    start: int
    header: int
    size: int

    @property
    def end(self) -> int:
        return self.start + self.header + self.size


def _u32(buf: bytes, offset: int) -> int:
    return struct.unpack_from("<I", buf, offset)[0]


def _locate_blob(buf: bytes, start: int, limit: int, label: str, expected: bytes | None = None) -> _Blob:
    """Check the EDL1/EDL2 header at ``start`` and that its payload fits before ``limit``."""
    magic = buf[start : start + 4]
    if (expected is not None and magic != expected) or magic not in _MODEL_MAGICS:
        want = expected.decode() if expected is not None else "EDL1 or EDL2"
        raise EspdlFormatError(f"{label}: bad magic {magic!r} (expected {want})", _FIX_REEXPORT)
    header = _MODEL_MAGICS[magic]
    if limit - start < header:
        raise EspdlFormatError(
            f"{label}: truncated {magic.decode()} header ({limit - start} bytes, need {header})", _FIX_REEXPORT
        )
    size = _u32(buf, start + 8)
    if size > limit - start - header:
        raise EspdlFormatError(
            f"{label}: size field says {size} bytes but only {limit - start - header} follow the header",
            _FIX_REEXPORT,
        )
    return _Blob(start, header, size)


def _read_blob(buf: bytes, blob: _Blob, label: str, name: str) -> EspdlModel:
    mode = _u32(buf, blob.start + 4)
    if mode == 1:
        raise EspdlFormatError(
            f"{label}: model is AES-128-CTR encrypted (mode 1)", "re-export it without encrypt_data=True"
        )
    if mode != 0:
        raise EspdlFormatError(f"{label}: unknown mode {mode} (0 plain, 1 AES)", _FIX_REEXPORT)
    payload = buf[blob.start + blob.header : blob.end]
    sha256 = hashlib.sha256(buf[blob.start : blob.end]).hexdigest()
    with _malformed(f"{label}: FlatBuffer payload does not parse"):
        try:
            return _decode(payload, name, sha256)
        except EspdlFormatError as exc:
            raise EspdlFormatError(f"{label}: {exc.cause}", exc.fix) from exc


@dataclass(frozen=True)
class _Entry:
    name: str
    blob: _Blob


def _pack_limit(buf: bytes, magic: bytes, label: str) -> int:
    """Bytes of ``buf`` that belong to the pack; PDL3: check package_size and sha256."""
    if magic != b"PDL3":
        return len(buf)
    size = _u32(buf, _PDL3_SIZE_OFFSET)
    if size > len(buf):
        raise EspdlFormatError(
            f"{label}: PDL3 package_size {size} is larger than the file ({len(buf)} bytes)", _FIX_PACK
        )
    if size < _PACK_HEADER[magic]:
        raise EspdlFormatError(f"{label}: PDL3 package_size {size} is smaller than its header", _FIX_PACK)
    stored = buf[_PDL3_SHA]
    if _pdl3_digest(buf[:size]) != stored:
        raise EspdlFormatError(f"{label}: PDL3 sha256 mismatch (package corrupted or modified)", _FIX_PACK)
    return size


def _pdl3_digest(package: bytes) -> bytes:
    zeroed = package[: _PDL3_SHA.start] + bytes(_PDL3_SHA.stop - _PDL3_SHA.start) + package[_PDL3_SHA.stop :]
    return hashlib.sha256(zeroed).digest()


def _pack_entries(buf: bytes, label: str) -> list[_Entry]:
    magic = buf[:4]
    base = _PACK_HEADER[magic]
    if len(buf) < base:
        raise EspdlFormatError(f"{label}: truncated {magic.decode()} header ({len(buf)} bytes, need {base})", _FIX_PACK)
    limit = _pack_limit(buf, magic, label)
    count = _u32(buf, _PDL3_COUNT_OFFSET if magic == b"PDL3" else 4)
    if base + count * _ENTRY_SIZE > limit:
        raise EspdlFormatError(f"{label}: entry table for {count} models runs past the end ({limit} bytes)", _FIX_PACK)
    entries: list[_Entry] = []
    for i in range(count):
        data_off, name_off, name_len = struct.unpack_from("<III", buf, base + i * _ENTRY_SIZE)
        if name_off + name_len > limit:
            raise EspdlFormatError(
                f"{label}: pack entry {i} name offsets {name_off}+{name_len} out of range ({limit} bytes)", _FIX_PACK
            )
        with _malformed(f"{label}: pack entry {i} name is not text", _FIX_PACK):
            name = buf[name_off : name_off + name_len].decode("utf-8")
        if data_off >= limit:
            raise EspdlFormatError(
                f"{label}: pack entry {name!r} data offset {data_off} out of range ({limit} bytes)", _FIX_PACK
            )
        blob = _locate_blob(buf, data_off, limit, f"{label} entry {name!r}", _PACK_BLOB_MAGIC[magic])
        entries.append(_Entry(name, blob))
    _check_unique(entries, label)
    return entries


def _check_unique(entries: list[_Entry], label: str) -> None:
    counts = Counter(e.name for e in entries)
    duplicates = sorted(n for n, c in counts.items() if c > 1)
    if duplicates:
        raise EspdlFormatError(f"{label}: pack holds several models named {', '.join(duplicates)}", _FIX_PACK)


def _read_source(source: str | os.PathLike[str] | bytes) -> tuple[bytes, str, str]:
    """(content, label for messages, default model name)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source), "<bytes>", "<bytes>"
    path = Path(source)
    try:
        content = path.read_bytes()
    except OSError as exc:
        raise EspdlFormatError(f"cannot read {path}: {exc.strerror or exc}", "check the model path") from exc
    return content, str(path), path.stem


def _kind(buf: bytes, label: str) -> bytes:
    if not buf:
        raise EspdlFormatError(f"{label}: file is empty", _FIX_REEXPORT)
    magic = buf[:4]
    if magic not in _MODEL_MAGICS and magic not in _PACK_HEADER:
        raise EspdlFormatError(
            f"{label}: bad magic {magic!r} (expected EDL1, EDL2, PDL1, PDL2 or PDL3)",
            "pass an .espdl file exported by esp-ppq or a pack made by pack_espdl_models.py",
        )
    return magic


def _entry_named(entries: list[_Entry], name: str | None, label: str) -> _Entry:
    names = ", ".join(e.name for e in entries) or "none"
    if name is None:
        if len(entries) == 1:
            return entries[0]
        raise EspdlFormatError(
            f"{label}: pack holds {len(entries)} models ({names}) and no name was given",
            "pass the model name to pick one",
        )
    for entry in entries:
        if entry.name in (name, f"{name}.espdl"):
            return entry
    raise EspdlFormatError(
        f"{label}: pack has no model named {name!r} (models: {names})", "pass one of the listed names"
    )


def load_espdl(source: str | os.PathLike[str] | bytes, name: str | None = None) -> EspdlModel:
    """Read one model from an EDLx file, or the entry ``name`` of a PDLx pack."""
    buf, label, stem = _read_source(source)
    with _malformed(f"{label}: cannot be read"):
        magic = _kind(buf, label)
        if magic in _MODEL_MAGICS:
            return _read_blob(buf, _locate_blob(buf, 0, len(buf), label), label, name or stem)
        entry = _entry_named(_pack_entries(buf, label), name, label)
        return _read_blob(buf, entry.blob, f"{label} entry {entry.name!r}", entry.name)


def load_pack(source: str | os.PathLike[str] | bytes) -> dict[str, EspdlModel]:
    """Every model of a PDLx pack by entry name; an EDLx file gives ``{stem: model}``."""
    buf, label, stem = _read_source(source)
    with _malformed(f"{label}: cannot be read"):
        magic = _kind(buf, label)
        if magic in _MODEL_MAGICS:
            return {stem: _read_blob(buf, _locate_blob(buf, 0, len(buf), label), label, stem)}
        return {
            e.name: _read_blob(buf, e.blob, f"{label} entry {e.name!r}", e.name) for e in _pack_entries(buf, label)
        }


# ---------------------------------------------------------------- writing


def _pad16(data: bytes) -> bytes:
    return data + bytes(-len(data) % _ALIGN)


def _checked_name(name: str) -> bytes:
    try:
        encoded = name.encode("ascii")
    except UnicodeEncodeError as exc:
        raise EspdlFormatError(f"pack entry name {name!r} is not ASCII", "rename the model") from exc
    if not encoded:
        raise EspdlFormatError("pack entry name is empty", "give every model a file name")
    return encoded


def pack_models(models: dict[str, bytes], version: str = "v1.0") -> bytes:
    """Build a PDL3 pack (esp-dl ``pack_espdl_models.py -f PDL3`` layout) from EDL2 blobs, in dict order."""
    if not models:
        raise EspdlFormatError("no models to pack", "pass at least one EDL2 model")
    if not version.isascii() or len(version) > _PDL3_VERSION.stop - _PDL3_VERSION.start - 1:
        raise EspdlFormatError(
            f"package version {version!r} is not at most 15 ASCII characters", "use a shorter version"
        )
    names = [_checked_name(n) for n in models]
    for name, blob in models.items():
        _locate_blob(blob, 0, len(blob), f"pack input {name!r}", b"EDL2")
    blobs = [_pad16(bytes(b)) for b in models.values()]
    name_start = _PACK_HEADER[b"PDL3"] + _ENTRY_SIZE * len(models)
    data_start = name_start + sum(map(len, names))
    data_start += -data_start % _ALIGN
    entries, name_off, data_off = b"", name_start, data_start
    for name, blob in zip(names, blobs):
        entries += struct.pack("<III", data_off, name_off, len(name))
        name_off += len(name)
        data_off += len(blob)
    header = b"PDL3" + version.encode("ascii").ljust(16, b"\0") + struct.pack("<I", data_off) + bytes(32)
    header += struct.pack("<I", len(models))
    body = header + entries + b"".join(names)
    package = body + bytes(data_start - len(body)) + b"".join(blobs)
    return package[: _PDL3_SHA.start] + _pdl3_digest(package) + package[_PDL3_SHA.stop :]


# ---------------------------------------------------------------- summary / CLI


def _info_line(info: TensorInfo) -> str:
    return f"  {info.name}: {info.dtype} {list(info.shape)} exp {list(info.exponents)}"


def describe(model: EspdlModel) -> str:
    """Short summary: I/O shapes and exponents, node counts by op type, test values."""
    ops = Counter(n.op_type for n in model.nodes)
    lines = [
        f"model {model.name} ({model.producer or 'unknown producer'}), sha256 {model.sha256[:16]}",
        "inputs:",
        *map(_info_line, model.inputs),
        "outputs:",
        *map(_info_line, model.outputs),
        f"nodes: {len(model.nodes)} (" + ", ".join(f"{op} x{n}" for op, n in ops.most_common()) + ")",
        f"initializers: {len(model.initializers)}",
        "test inputs: " + (", ".join(model.test_inputs) or "none"),
        "test outputs: " + (", ".join(model.test_outputs) or "none"),
    ]
    if model.metadata:
        lines.append("metadata: " + ", ".join(f"{k}={v}" for k, v in model.metadata.items()))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.espdl", description="Summarize an .espdl model or pack.")
    parser.add_argument("file", help="EDL1/EDL2 model or PDL1/PDL2/PDL3 pack")
    parser.add_argument("--name", help="model to pick from a pack (entry file name, .espdl optional)")
    args = parser.parse_args(argv)
    try:
        model = load_espdl(args.file, args.name)
    except EspdlFormatError as exc:
        print(exc, file=sys.stderr)
        return 2
    print(describe(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
