"""Tests for harness.espdl.reader against real esp-ppq exports, esp-dl's packer and broken files.

Three exports of one tiny TCN-like model (esp32p4 int8, esp32s3 int8, esp32p4
int16) are read back and compared with the quantized PPQ graph esp-ppq returns
and with the ``.info`` dump the exporter writes next to each ``.espdl``.
"""

from __future__ import annotations

import hashlib
import re
import os
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.errors import EspdlFormatError
from harness.espdl.reader import EspdlModel, Tensor, describe, load_espdl, load_pack, pack_models

REPO = Path(__file__).resolve().parents[1]
# A git checkout of espressif/esp-dl (ESP_DL_REPO=/path/to/esp-dl): enables the tests that compare
# with esp-dl's own packer and read its example models; skipped without it.
ESP_DL_REPO = Path(os.environ["ESP_DL_REPO"]) if os.environ.get("ESP_DL_REPO") else None
TUTORIAL_MODELS = "examples/tutorial/how_to_deploy_streaming_model/test_streaming_model/main/models/esp32p4"
PACKER = "esp-dl/fbs_loader/pack_espdl_models.py"

INPUT_SHAPE = [1, 8, 12]
TEST_OUTPUTS = ["/Relu_output_0", "/dw/Conv_output_0", "/Sigmoid_output_0", "36"]
EXPORTS = [("esp32p4", 8), ("esp32s3", 8), ("esp32p4", 16)]
METADATA = {"harness": "espdl-reader-test", "window": "12"}


class TinyTcn(nn.Module):
    """Pointwise conv + ReLU, causal dilated depthwise conv + Sigmoid, pointwise conv, residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(8, 16, 1)
        self.dw = nn.Conv1d(16, 16, 3, dilation=2, groups=16)
        self.c2 = nn.Conv1d(16, 8, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.c1(x))
        h = torch.sigmoid(self.dw(F.pad(h, (4, 0))))
        return x + self.c2(h)


@dataclass
class Export:
    target: str
    bits: int
    path: Path
    graph: object  # esp_ppq BaseGraph
    info: str
    x: torch.Tensor

    @property
    def model(self) -> EspdlModel:
        return load_espdl(self.path)


def _make_model(gen: torch.Generator) -> TinyTcn:
    model = TinyTcn().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.4)
    return model


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Export]:
    from esp_ppq.api import espdl_quantize_torch

    out_dir = tmp_path_factory.mktemp("espdl")
    gen = torch.Generator().manual_seed(20240611)
    model = _make_model(gen)
    x = torch.randn(INPUT_SHAPE, generator=gen)
    calib = [torch.randn(INPUT_SHAPE[1:], generator=gen) for _ in range(4)]
    result = {}
    for target, bits in EXPORTS:
        path = out_dir / f"tiny_{target}_{bits}.espdl"
        graph = espdl_quantize_torch(
            model,
            str(path),
            calib_dataloader=calib,
            calib_steps=4,
            input_shape=INPUT_SHAPE,
            inputs=[x],
            target=target,
            num_of_bits=bits,
            error_report=False,
            export_test_values=True,
            test_output_names=TEST_OUTPUTS,
            device="cpu",
            metadata_props=METADATA,
        )
        info = path.with_suffix(".info").read_text()
        result[(target, bits)] = Export(target, bits, path, graph, info, x)
    return result


@pytest.fixture(params=EXPORTS, ids=lambda p: f"{p[0]}-int{p[1]}")
def export(request: pytest.FixtureRequest, exports: dict[tuple[str, int], Export]) -> Export:
    return exports[request.param]


# ---------------------------------------------------------------- PPQ graph helpers


def _config(graph, name: str):
    from esp_ppq.IR.quantize import QuantableOperation

    var = graph.variables[name]
    op = var.source_op
    if isinstance(op, QuantableOperation):
        return op.output_quant_config[op.outputs.index(var)]
    op = var.dest_ops[0]
    return op.input_quant_config[op.inputs.index(var)]


def _exponents(graph, name: str) -> tuple[int, ...]:
    scale = _config(graph, name).scale.detach().double().numpy().reshape(-1)
    exps = np.log2(scale)
    assert np.array_equal(exps, np.round(exps)), f"{name}: scale {scale} is not a power of two"
    return tuple(int(e) for e in exps)


def _to_int(graph, name: str) -> np.ndarray:
    from esp_ppq.quantization.qfunction.linear import PPQLinearQuant_toInt

    var = graph.variables[name]
    return PPQLinearQuant_toInt(var.value, _config(graph, name)).numpy().astype(np.int64)


def _nwc(shape: list[int]) -> tuple[int, ...]:
    return (shape[0], shape[2], shape[1])


def _round(x: np.ndarray, target: str) -> np.ndarray:
    x = x.astype(np.float32)
    return np.rint(x) if target == "esp32p4" else np.floor(x + np.float32(0.5))


def _pack_weight(q: np.ndarray, block: int) -> np.ndarray:
    """esp-ppq's (N/b)WCb order for an ONNX [N, C, K] weight: blocks of b output channels innermost, rest NWC."""
    nkc = q.transpose(0, 2, 1)
    n, k, c = nkc.shape
    aligned = n // block * block
    blocks = nkc[:aligned].reshape(n // block, block, k, c).transpose(0, 2, 3, 1)
    return np.concatenate([blocks.ravel(), nkc[aligned:].ravel()])


# ---------------------------------------------------------------- .info parsing


_INFO_TENSOR = re.compile(
    r"^%(?P<name>.+?), shape: \[(?P<shape>[^\]]*)\], exponents: \[(?P<exp>[^\]]*)\], "
    r"(?:docString: b'(?P<doc>[^']*)', )?\nvalue: array\(\[(?P<values>[^\]]*)\]",
    re.M,
)
_INFO_VALUE_INFO = re.compile(
    r"^\s*%(?P<name>\S+)\[(?P<dtype>\w+), (?P<shape>[\dx]+)\], exponents: \[(?P<exp>[^\]]*)\]$", re.M
)
_INFO_NODE = re.compile(r"^  (?P<outs>%.+?) = (?P<op>\w+)(?:\[(?P<attrs>.*)\])?\((?P<ins>.*)\)$", re.M)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(v) for v in re.findall(r"-?\d+", text))


def _section(info: str, title: str) -> str:
    match = re.search(rf"^{re.escape(title)}:\n(.*?)(?=\n\n\n|\Z)", info, re.S | re.M)
    assert match, f"no '{title}' section in .info"
    return match.group(1)


def _info_tensors(info: str, title: str) -> dict[str, dict]:
    return {
        m["name"]: {
            "shape": _ints(m["shape"]),
            "exponents": _ints(m["exp"]),
            "doc": m["doc"],
            "values": np.array(_ints(m["values"]), dtype=np.int64),
        }
        for m in _INFO_TENSOR.finditer(_section(info, title))
    }


def _info_value_infos(text: str) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...]]]:
    return {
        m["name"]: (m["dtype"].lower(), tuple(int(d) for d in m["shape"].split("x")), _ints(m["exp"]))
        for m in _INFO_VALUE_INFO.finditer(text)
    }


def _attr_text(value: object) -> str:
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(map(_attr_text, value)) + "]"
    return str(value)


# ---------------------------------------------------------------- against the PPQ graph


def test_graph_inputs_and_outputs_match_ppq(export: Export) -> None:
    model, graph = export.model, export.graph
    dtype = f"int{export.bits}"
    assert [i.name for i in model.inputs] == list(graph.inputs) == ["input.1"]
    assert [o.name for o in model.outputs] == list(graph.outputs)
    for info in (*model.inputs, *model.outputs):
        assert info.shape == _nwc(graph.variables[info.name].shape) == (1, 12, 8)
        assert info.dtype == dtype
        assert info.exponents == _exponents(graph, info.name)


def test_value_info_matches_ppq(export: Export) -> None:
    model, graph = export.model, export.graph
    # The Conv+ReLU pair is fused on export: the conv's own output disappears.
    activations = {n for n, v in graph.variables.items() if not v.is_parameter}
    assert set(model.value_info) == activations - {"/c1/Conv_output_0"}
    for name, info in model.value_info.items():
        assert info.shape == _nwc(graph.variables[name].shape), name
        assert info.exponents == _exponents(graph, name), name
        assert info.dtype == f"int{export.bits}"
        assert model.tensor_info(name) == info


def test_nodes_follow_ppq_order_with_relu_fused(export: Export) -> None:
    model, graph = export.model, export.graph
    ppq_types = [op.type for op in graph.topological_sort() if op.type != "Relu"]
    assert [n.op_type for n in model.nodes] == ppq_types
    sigmoid = "LUT" if export.bits == 16 else "Sigmoid"
    assert ppq_types == ["Conv", "Conv", sigmoid, "Conv", "Add"]
    c1, dw = model.nodes[0], model.nodes[1]
    assert c1.inputs == ("input.1", "c1.weight", "c1.bias") and c1.outputs == ("/Relu_output_0",)
    assert dw.attributes == {
        "activation": "Linear",
        "dilations": [2],
        "group": 16,
        "kernel_shape": [3],
        "pads": [4, 0],
        "quant_type": f"S{export.bits}",
        "strides": [1],
    }
    assert c1.attributes["activation"] == "Relu"


def test_weights_and_biases_match_ppq_quantization(export: Export) -> None:
    model, graph = export.model, export.graph
    block = 16 if export.bits == 8 else 8
    per_channel = export.target == "esp32p4"
    for layer in ("c1", "dw", "c2"):
        weight, bias = model.initializers[f"{layer}.weight"], model.initializers[f"{layer}.bias"]
        n_out = graph.variables[f"{layer}.weight"].shape[0]
        assert weight.dtype == f"int{export.bits}" and bias.dtype == ("int32" if export.bits == 8 else "int64")
        assert weight.exponents == _exponents(graph, f"{layer}.weight")
        assert bias.exponents == _exponents(graph, f"{layer}.bias")
        assert len(weight.exponents) == (n_out if per_channel else 1)
        suffix = "_UNALIGNED" if n_out % block else ""
        assert weight.layout == f"(N/{block})WC{block}{suffix}" and bias.layout == "UNK"
        assert np.array_equal(weight.data.ravel(), _pack_weight(_to_int(graph, f"{layer}.weight"), block))
        assert np.array_equal(bias.data.astype(np.int64), _to_int(graph, f"{layer}.bias"))
        assert bias.dims == (n_out,)
    assert model.initializers["c1.weight"].dims == (1, 8, 16)
    assert model.initializers["dw.weight"].dims == (3, 16, 1)


def test_sigmoid_table(export: Export) -> None:
    model = export.model
    node = model.nodes[2]
    lut = model.initializers[node.attributes["lut"]]
    out_exp = model.value_info[node.outputs[0]].exponents
    in_exp = model.value_info[node.inputs[0]].exponents
    assert lut.name == "Sigmoid_lut_0" and lut.layout == "" and lut.exponents == out_exp
    if export.bits == 16:
        assert node.attributes["original_op_type"] == "Sigmoid"
        step = node.attributes["int16_lut_step"]
        assert step == 32 and lut.dims == (65536 // step + 1,) and lut.dtype == "int16"
        codes = np.arange(lut.dims[0], dtype=np.int64) * step - 32768
    else:
        assert lut.dims == (256,) and lut.dtype == "int8"
        codes = np.arange(-128, 128)
    real = torch.sigmoid(torch.from_numpy(codes.astype(np.float32) * np.float32(2.0 ** in_exp[0]))).numpy()
    hi = 2 ** (export.bits - 1) - 1
    expected = np.clip(_round(real * np.float32(2.0 ** -out_exp[0]), export.target), -hi - 1, hi)
    assert np.array_equal(lut.data, expected)


def test_test_values_match_ppq_execution(export: Export) -> None:
    from esp_ppq.executor import TorchExecutor

    model, graph = export.model, export.graph
    assert list(model.test_inputs) == ["input.1"]
    assert set(model.test_outputs) == set(TEST_OUTPUTS)
    test_in = model.test_inputs["input.1"]
    info = model.input("input.1")
    assert test_in.dims == info.shape and test_in.exponents == info.exponents
    hi = 2 ** (export.bits - 1) - 1
    scaled = export.x.numpy().transpose(0, 2, 1) * np.float32(2.0 ** -info.exponents[0])
    assert np.array_equal(test_in.data, np.clip(_round(scaled, export.target), -hi - 1, hi))

    outputs = TorchExecutor(graph, device="cpu").forward(inputs=export.x, output_names=TEST_OUTPUTS)
    for name, out in zip(TEST_OUTPUTS, outputs):
        tensor, info = model.test_outputs[name], model.tensor_info(name)
        assert tensor.dims == info.shape and tensor.exponents == info.exponents
        assert tensor.dtype == f"int{export.bits}"
        ints = out.numpy().transpose(0, 2, 1) * 2.0 ** -info.exponents[0]
        assert np.array_equal(ints, np.round(ints)), name
        assert np.array_equal(tensor.data, ints), name


def test_model_identity_and_metadata(export: Export) -> None:
    model = export.model
    assert model.name == export.path.stem
    assert model.sha256 == hashlib.sha256(export.path.read_bytes()).hexdigest()
    assert model.metadata == METADATA
    assert load_espdl(export.path, name="renamed").name == "renamed"
    assert load_espdl(export.path.read_bytes()).nodes[0].name == model.nodes[0].name


def test_tensor_data_is_read_only(export: Export) -> None:
    data = export.model.initializers["c1.bias"].data
    with pytest.raises(ValueError):
        data[0] = 1


# ---------------------------------------------------------------- against the .info dump


def test_header_and_value_info_match_info_dump(export: Export) -> None:
    model = export.model
    head = export.info.split(") initializers (")[0]
    expected_inputs = _info_value_infos(head)
    assert [i.name for i in model.inputs] == list(expected_inputs)
    for info in model.inputs:
        assert (info.dtype, info.shape, info.exponents) == expected_inputs[info.name]
    listed = _info_value_infos(_section(export.info, "values info"))
    assert list(model.value_info) == list(listed)
    for name, info in model.value_info.items():
        assert (info.dtype, info.shape, info.exponents) == listed[name]
    assert re.search(r"^  return %(.+)$", export.info, re.M)[1] == ", %".join(o.name for o in model.outputs)


def test_nodes_match_info_dump(export: Export) -> None:
    model = export.model
    lines = list(_INFO_NODE.finditer(export.info))
    assert len(lines) == len(model.nodes)
    for node, line in zip(model.nodes, lines):
        assert node.op_type == line["op"]
        assert ", ".join(f"%{o}" for o in node.outputs) == line["outs"]
        assert ", ".join(f"%{i}" for i in node.inputs) == line["ins"]
        attrs = ", ".join(f"{k} = {_attr_text(v)}" for k, v in node.attributes.items())
        assert attrs == (line["attrs"] or "")


@pytest.mark.parametrize("title,field", [
    ("initializers value", "initializers"),
    ("test inputs value", "test_inputs"),
    ("test outputs value", "test_outputs"),
])
def test_tensors_match_info_dump(export: Export, title: str, field: str) -> None:
    tensors: dict[str, Tensor] = getattr(export.model, field)
    listed = _info_tensors(export.info, title)
    assert list(tensors) == list(listed)
    for name, tensor in tensors.items():
        entry = listed[name]
        assert tensor.dims == entry["shape"] and tensor.exponents == entry["exponents"], name
        assert tensor.layout == (entry["doc"] or "").removeprefix("layout ==> "), name
        # The dump prints whole 16-byte chunks: the data followed by zero padding.
        flat = tensor.data.ravel().astype(np.int64)
        assert np.array_equal(entry["values"][: flat.size], flat), name
        assert not entry["values"][flat.size :].any(), name
        assert entry["values"].size * tensor.data.itemsize % 16 == 0


# ---------------------------------------------------------------- packs


def _blobs(exports: dict[tuple[str, int], Export]) -> dict[str, bytes]:
    return {e.path.name: e.path.read_bytes() for e in exports.values()}


def _parse_pdl3(pack: bytes) -> tuple[str, int, bytes, list[tuple[int, str]]]:
    version = pack[4:20].split(b"\0")[0].decode()
    size, digest, count = struct.unpack_from("<I32sI", pack, 20)
    entries = []
    for i in range(count):
        data_off, name_off, name_len = struct.unpack_from("<III", pack, 60 + 12 * i)
        entries.append((data_off, pack[name_off : name_off + name_len].decode()))
    return version, size, digest, entries


def test_pack_layout_and_sha256(exports: dict[tuple[str, int], Export]) -> None:
    blobs = _blobs(exports)
    pack = pack_models(blobs, version="v2.5")
    assert pack[:4] == b"PDL3"
    version, size, digest, entries = _parse_pdl3(pack)
    assert version == "v2.5" and size == len(pack)
    assert digest == hashlib.sha256(pack[:24] + bytes(32) + pack[56:]).digest()
    assert [name for _, name in entries] == list(blobs)
    for data_off, name in entries:
        assert data_off % 16 == 0
        assert pack[data_off : data_off + len(blobs[name])] == blobs[name]


def test_pack_round_trip(exports: dict[tuple[str, int], Export]) -> None:
    blobs = _blobs(exports)
    models = load_pack(pack_models(blobs))
    assert list(models) == list(blobs)
    for name, model in models.items():
        single = load_espdl(blobs[name])
        assert model.name == name
        assert model.sha256 == hashlib.sha256(blobs[name]).hexdigest()
        assert [n.op_type for n in model.nodes] == [n.op_type for n in single.nodes]
        assert model.inputs == single.inputs and model.value_info == single.value_info
        for key, tensor in single.test_outputs.items():
            assert np.array_equal(model.test_outputs[key].data, tensor.data)


def test_pick_model_from_pack(exports: dict[tuple[str, int], Export]) -> None:
    blobs = _blobs(exports)
    pack = pack_models(blobs)
    s3 = exports[("esp32s3", 8)]
    for name in (s3.path.name, s3.path.stem):
        model = load_espdl(pack, name=name)
        assert model.sha256 == hashlib.sha256(blobs[s3.path.name]).hexdigest()
    with pytest.raises(EspdlFormatError, match="no name was given") as err:
        load_espdl(pack)
    assert s3.path.name in str(err.value)
    with pytest.raises(EspdlFormatError, match="no model named 'missing'") as err:
        load_espdl(pack, name="missing")
    assert s3.path.name in str(err.value)
    single = pack_models({s3.path.name: blobs[s3.path.name]})
    assert load_espdl(single).name == s3.path.name


def test_load_pack_of_single_file_is_keyed_by_stem(export: Export) -> None:
    assert list(load_pack(export.path)) == [export.path.stem]


def test_pack_detects_any_flipped_byte(exports: dict[tuple[str, int], Export]) -> None:
    pack = bytearray(pack_models(_blobs(exports)))
    for offset in (8, 100, len(pack) - 1):
        broken = bytearray(pack)
        broken[offset] ^= 0x01
        with pytest.raises(EspdlFormatError, match="sha256 mismatch"):
            load_pack(bytes(broken))


def test_pack_models_validates_inputs(export: Export) -> None:
    blob = export.path.read_bytes()
    edl1 = b"EDL1" + blob[4:12] + blob[16:]
    cases = [
        ({}, "no models"),
        ({"a.espdl": b"junk"}, "bad magic"),
        ({"a.espdl": edl1}, "expected EDL2"),
        ({"a.espdl": blob[:-16]}, "size field"),
        ({"é.espdl": blob}, "not ASCII"),
    ]
    for models, message in cases:
        with pytest.raises(EspdlFormatError, match=message):
            pack_models(models)
    with pytest.raises(EspdlFormatError, match="15 ASCII"):
        pack_models({"a.espdl": blob}, version="v" * 16)


def _esp_dl_file(path: str, dest: Path) -> Path:
    if ESP_DL_REPO is None:
        pytest.skip("set ESP_DL_REPO to a git checkout of espressif/esp-dl to compare with its tools")
    dest.write_bytes(subprocess.run(
        ["git", "-C", str(ESP_DL_REPO), "show", f"HEAD:{path}"], check=True, capture_output=True
    ).stdout)
    return dest


def _run_packer(packer: Path, files: list[Path], out: Path, fmt: str) -> bytes:
    cmd = [sys.executable, str(packer), "-m", *map(str, files), "-o", str(out), "-f", fmt]
    subprocess.run(cmd, check=True, capture_output=True)
    return out.read_bytes()


def test_pack_is_byte_identical_to_esp_dl_packer(exports: dict[tuple[str, int], Export], tmp_path: Path) -> None:
    packer = _esp_dl_file(PACKER, tmp_path / "pack_espdl_models.py")
    files = sorted(e.path for e in exports.values())
    reference = _run_packer(packer, files, tmp_path / "ref.espdl", "PDL3")
    ours = pack_models({f.name: f.read_bytes() for f in files}, version="v1.0")
    assert ours == reference


def test_reads_esp_dl_pdl2_and_pdl1_packs(exports: dict[tuple[str, int], Export], tmp_path: Path) -> None:
    packer = _esp_dl_file(PACKER, tmp_path / "pack_espdl_models.py")
    files = sorted(e.path for e in exports.values())
    pdl2 = _run_packer(packer, files, tmp_path / "pdl2.espdl", "PDL2")
    assert pdl2[:4] == b"PDL2"
    models = load_pack(pdl2)
    assert list(models) == [f.name for f in files]
    for f in files:
        assert models[f.name].sha256 == hashlib.sha256(f.read_bytes()).hexdigest()

    edl1_dir = tmp_path / "edl1"
    edl1_dir.mkdir()
    for f in files:  # EDL1: 12-byte header, same FlatBuffer
        blob = f.read_bytes()
        (edl1_dir / f.name).write_bytes(b"EDL1" + blob[4:12] + blob[16:])
    pdl1 = _run_packer(packer, [edl1_dir], tmp_path / "pdl1.espdl", "PDL2")  # EDL1 inputs give PDL1
    assert pdl1[:4] == b"PDL1"
    models = load_pack(pdl1)
    assert list(models) == [f.name for f in files]
    for f in files:
        original = load_espdl(f)
        assert models[f.name].value_info == original.value_info
        assert np.array_equal(models[f.name].initializers["c1.weight"].data, original.initializers["c1.weight"].data)


# ---------------------------------------------------------------- esp-dl's own example files


def test_esp_dl_tutorial_models(tmp_path: Path) -> None:
    model = load_espdl(_esp_dl_file(f"{TUTORIAL_MODELS}/model.espdl", tmp_path / "model.espdl"))
    streaming = load_espdl(_esp_dl_file(f"{TUTORIAL_MODELS}/streaming_model.espdl", tmp_path / "streaming_model.espdl"))
    assert model.input("input.1").shape == (1, 24, 16) and model.input("input.1").exponents == (-5,)
    assert model.output("164").shape == (1, 16) and model.output("164").exponents == (-8,)
    assert model.test_inputs["input.1"].dims == (1, 24, 16) and model.test_outputs["164"].exponents == (-8,)
    assert streaming.input("input.1").shape == (1, 3, 16)
    caches = [n for n in streaming.nodes if n.op_type == "StreamingCache"]
    assert [n.attributes["window_size"] for n in caches] == [3, 5, 3, 3, 2]
    assert all(n.attributes["frame_axis"] == 1 for n in caches)
    assert [n.op_type for n in streaming.nodes if n.op_type != "StreamingCache"] == [n.op_type for n in model.nodes]
    packed = load_pack(pack_models({"model.espdl": (tmp_path / "model.espdl").read_bytes()}))
    assert packed["model.espdl"].sha256 == model.sha256


# ---------------------------------------------------------------- malformed input


def _with_u32(blob: bytes, offset: int, value: int) -> bytes:
    return blob[:offset] + struct.pack("<I", value) + blob[offset + 4 :]


def _malformed_cases(good: bytes, pack: bytes) -> dict[str, tuple[bytes, str]]:
    rng = np.random.default_rng(7)
    garbage = rng.integers(0, 256, 4096, dtype=np.uint8).tobytes()
    size_of_pack = struct.unpack_from("<I", pack, 20)[0]
    return {
        "empty": (b"", "file is empty"),
        "wrong magic": (b"ONNX" + good[4:], "bad magic b'ONNX'"),
        "short magic": (b"ED", "bad magic"),
        "truncated header": (good[:10], "truncated EDL2 header"),
        "size beyond end": (_with_u32(good, 8, len(good)), "size field says"),
        "truncated file": (good[: len(good) // 2], "size field says"),
        "encrypted": (_with_u32(good, 4, 1), "AES-128-CTR encrypted (mode 1)"),
        "unknown mode": (_with_u32(good, 4, 7), "unknown mode 7"),
        "garbage flatbuffer": (b"EDL2" + struct.pack("<III", 0, len(garbage), 0) + garbage, "FlatBuffer"),
        "zero flatbuffer": (b"EDL2" + struct.pack("<III", 0, 64, 0) + bytes(64), "FlatBuffer has no graph"),
        "truncated pack header": (pack[:30], "truncated PDL3 header"),
        "pack size beyond end": (_with_u32(pack, 20, len(pack) + 1), "package_size"),
        "pack sha256": (pack[:-1] + bytes([pack[-1] ^ 0xFF]), "sha256 mismatch"),
        "pack entry table": (_pdl3_resealed(_with_u32(pack, 56, 10_000), size_of_pack), "entry table"),
        "pack data offset": (_pdl3_resealed(_with_u32(pack, 60, len(pack) + 64), size_of_pack), "out of range"),
        "pack name offset": (_pdl3_resealed(_with_u32(pack, 64, len(pack) - 2), size_of_pack), "out of range"),
        "pack blob magic": (_pdl3_resealed(_with_u32(pack, 60, 0), size_of_pack), "expected EDL2"),
        "pdl1 entry table": (b"PDL1" + struct.pack("<I", 3) + bytes(8), "entry table"),
    }


def _pdl3_resealed(pack: bytes, size: int) -> bytes:
    """Recompute the PDL3 digest after editing, so the edit itself is what the reader meets."""
    digest = hashlib.sha256(pack[:24] + bytes(32) + pack[56:size]).digest()
    return pack[:24] + digest + pack[56:]


@pytest.fixture(scope="module")
def malformed(exports: dict[tuple[str, int], Export]) -> dict[str, tuple[bytes, str]]:
    good = exports[("esp32p4", 8)].path.read_bytes()
    return _malformed_cases(good, pack_models({"a.espdl": good}))


MALFORMED = [
    "empty", "wrong magic", "short magic", "truncated header", "size beyond end", "truncated file", "encrypted",
    "unknown mode", "garbage flatbuffer", "zero flatbuffer", "truncated pack header", "pack size beyond end",
    "pack sha256", "pack entry table", "pack data offset", "pack name offset", "pack blob magic", "pdl1 entry table",
]


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_bytes_raise_one_line_error(malformed: dict[str, tuple[bytes, str]], case: str) -> None:
    data, cause = malformed[case]
    for load in (load_espdl, load_pack):
        with pytest.raises(EspdlFormatError) as err:
            load(data)
        message = str(err.value)
        assert "\n" not in message and cause in err.value.cause and err.value.cause.startswith("<bytes>")
        assert err.value.fix and message == f"{err.value.cause}; {err.value.fix}."


@pytest.mark.parametrize("case", ["empty", "encrypted", "garbage flatbuffer"])
def test_malformed_file_error_names_the_path(
    malformed: dict[str, tuple[bytes, str]], case: str, tmp_path: Path
) -> None:
    path = tmp_path / "broken.espdl"
    path.write_bytes(malformed[case][0])
    with pytest.raises(EspdlFormatError) as err:
        load_espdl(path)
    assert err.value.cause.startswith(str(path))


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(EspdlFormatError, match="cannot read .*nope.espdl"):
        load_espdl(tmp_path / "nope.espdl")


def test_unknown_input_and_output_names(export: Export) -> None:
    model = export.model
    with pytest.raises(EspdlFormatError, match=r"no input 'x' \(available: input\.1\)"):
        model.input("x")
    with pytest.raises(EspdlFormatError, match=r"no output 'x' \(available: 36\)"):
        model.output("x")
    assert model.tensor_info("x") is None
    assert model.tensor_info("36") is model.output("36")


def test_corrupted_files_never_leak_low_level_errors(exports: dict[tuple[str, int], Export]) -> None:
    rng = np.random.default_rng(11)
    for export in exports.values():
        good = export.path.read_bytes()
        for _ in range(150):
            broken = bytearray(good)
            for pos in rng.integers(16, len(good), rng.integers(1, 4)):
                broken[pos] = int(rng.integers(0, 256))
            cut = int(rng.integers(17, len(good) + 1))
            for data in (bytes(broken), _with_u32(good[:cut], 8, cut - 16)):
                try:
                    load_espdl(data)
                except EspdlFormatError as err:
                    assert "\n" not in str(err)


# ---------------------------------------------------------------- summary and CLI


def test_describe(export: Export) -> None:
    text = describe(export.model)
    assert f"input.1: int{export.bits} [1, 12, 8] exp [{export.model.input('input.1').exponents[0]}]" in text
    assert "Conv x3" in text and "Add x1" in text
    assert "/Sigmoid_output_0" in text and "harness=espdl-reader-test" in text


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "harness.espdl", *args], cwd=REPO, capture_output=True, text=True)


def test_cli_prints_summary(exports: dict[tuple[str, int], Export], tmp_path: Path) -> None:
    export = exports[("esp32p4", 16)]
    result = _cli(str(export.path))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == describe(export.model)
    pack = tmp_path / "models.espdl"
    pack.write_bytes(pack_models({export.path.name: export.path.read_bytes()}))
    result = _cli(str(pack), "--name", export.path.stem)
    assert result.returncode == 0 and f"model {export.path.name}" in result.stdout


def test_cli_reports_malformed_file(malformed: dict[str, tuple[bytes, str]], tmp_path: Path) -> None:
    path = tmp_path / "bad.espdl"
    path.write_bytes(malformed["encrypted"][0])
    result = _cli(str(path))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(str(path)) and "AES-128-CTR" in lines[0]


def _edl1_with_typed_scalars(tmp_path: Path) -> Path:
    """An EDL1 file (older exporter) whose scalar initializers sit in ONNX's typed fields, raw_data empty."""
    import flatbuffers

    from harness.espdl.reader import _flatc

    dl = {name: __import__(_flatc(name).__module__, fromlist=["_"]) for name in ("Tensor", "Graph", "Model")}
    b = flatbuffers.Builder(256)

    def scalar(name: str, data_type: int, field: str, value, kind) -> int:
        name_off = b.CreateString(name)
        getattr(dl["Tensor"], f"TensorStart{field}Vector")(b, 1)
        kind(b, value)
        values = b.EndVector()
        dl["Tensor"].TensorStartDimsVector(b, 1)
        b.PrependInt64(1)
        dims = b.EndVector()
        dl["Tensor"].TensorStart(b)
        dl["Tensor"].TensorAddName(b, name_off)
        dl["Tensor"].TensorAddDims(b, dims)
        dl["Tensor"].TensorAddDataType(b, data_type)
        getattr(dl["Tensor"], f"TensorAdd{field}")(b, values)
        return dl["Tensor"].TensorEnd(b)

    tensors = [scalar("scale", 1, "FloatData", 0.03125, flatbuffers.Builder.PrependFloat32),
               scalar("zero", 3, "Int32Data", -3, flatbuffers.Builder.PrependInt32),
               scalar("axis", 7, "Int64Data", 2, flatbuffers.Builder.PrependInt64)]
    graph_name = b.CreateString("typed")
    dl["Graph"].GraphStartInitializerVector(b, len(tensors))
    for t in reversed(tensors):
        b.PrependUOffsetTRelative(t)
    inits = b.EndVector()
    dl["Graph"].GraphStart(b)
    dl["Graph"].GraphAddName(b, graph_name)
    dl["Graph"].GraphAddInitializer(b, inits)
    graph = dl["Graph"].GraphEnd(b)
    dl["Model"].ModelStart(b)
    dl["Model"].ModelAddGraph(b, graph)
    b.Finish(dl["Model"].ModelEnd(b))
    body = bytes(b.Output())
    path = tmp_path / "typed.espdl"
    path.write_bytes(b"EDL1" + struct.pack("<II", 0, len(body)) + body)
    return path


def test_scalars_of_older_exports_are_read_from_onnx_typed_fields(tmp_path: Path) -> None:
    model = load_espdl(_edl1_with_typed_scalars(tmp_path))
    values = {name: (t.dtype, t.data.tolist()) for name, t in model.initializers.items()}
    assert values == {"scale": ("float32", [0.03125]), "zero": ("int8", [-3]), "axis": ("int64", [2])}
