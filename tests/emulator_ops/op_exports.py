"""One-operator ONNX models, quantized and exported by ESP-PPQ with embedded test values, memoized per session.

Each operator family's test (``test_ops_<family>.py``) builds its graphs with ``graph()`` and checks every
export with ``harness.emulator.check``: the engine must give ESP-PPQ's values for the chip (int8 exactly,
int16 within ESP-DL's own ``Model::test()`` tolerance of one LSB).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

TARGETS = ("esp32p4", "esp32s3")
BITS = (8, 16)
_MEMO: dict = {}


def graph(name: str, inputs: dict[str, list[int]], outputs: list[str], nodes: list, constants: dict | None = None,
          opset: int = 13) -> onnx.ModelProto:
    """An ONNX model of ``nodes`` with float inputs ``name -> shape``, int64/float constants and named outputs."""
    initializers = [numpy_helper.from_array(np.asarray(v), k) for k, v in (constants or {}).items()]
    g = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, s) for k, s in inputs.items()],
        [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outputs],
        initializers,
    )
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    return onnx.shape_inference.infer_shapes(model)


def from_torch(module, input_shape: list[int], name: str) -> onnx.ModelProto:
    """A torch module as the ONNX model ``export`` takes (ESP-PPQ fuses some patterns, e.g. RMS norms, on import)."""
    import io

    import torch
    from onnxsim import simplify

    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter on purpose: it is the one ESP-PPQ's flow uses
        warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
        warnings.filterwarnings("ignore", "Exporting a model to ONNX with a batch_size other than 1", UserWarning)
        torch.onnx.export(module.eval(), (torch.zeros(input_shape),), buffer, input_names=["x"], opset_version=18,
                          dynamo=False)
    model = onnx.load_from_string(buffer.getvalue())
    simplified, ok = simplify(model)  # as ESP-PPQ's and the harness's flows do (folds e.g. a GRU's zero state)
    model = simplified if ok else model
    model.graph.name = name
    return model


def export(model: onnx.ModelProto, target: str, bits: int, directory: Path, seed: int = 0,
           repaired: bool = False) -> Path:
    """ESP-PPQ's ``espdl_quantize_onnx`` of ``model`` with test values for its outputs (memoized by file);
    ``repaired``: with the harness's export repairs (``harness.ppq.env.repaired_exports``)."""
    path = directory / f"{model.graph.name}{'-repaired' if repaired else ''}-{target}-int{bits}.espdl"
    if path not in _MEMO:
        _MEMO[path] = _export(model, target, bits, path, seed, repaired)
    return _MEMO[path]


def _export(model: onnx.ModelProto, target: str, bits: int, path: Path, seed: int, repaired: bool) -> Path:
    import torch
    from esp_ppq.api import espdl_quantize_onnx

    from harness.ppq.env import ppq_call, repaired_exports
    from harness.ppq.reference import one_thread

    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(".onnx")
    onnx.save(model, str(source))
    shapes = [[d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input]
    gen = torch.Generator().manual_seed(seed)

    def draw():
        return [torch.randn(s, generator=gen) for s in shapes]

    calib = [draw() for _ in range(4)]
    test = draw()
    one = len(shapes) == 1
    with one_thread(), ppq_call(f"quantize {path.stem}", path.with_suffix(".quantize.log")), \
            (repaired_exports() if repaired else contextlib.nullcontext()):
        espdl_quantize_onnx(
            onnx_import_file=str(source), espdl_export_file=str(path),
            calib_dataloader=[c[0] if one else c for c in calib], calib_steps=len(calib),
            input_shape=shapes[0] if one else shapes, inputs=test, target=target, num_of_bits=bits,
            device="cpu", error_report=False, export_test_values=True, verbose=0,
        )
    return path


def exact_or_within_one(path: Path, target: str, bits: int, op_types: set[str]):
    """Check ``path`` with the engine; its ops include ``op_types``; int8 exact, int16 within one LSB."""
    from harness.emulator.check import MATCH, check
    from harness.espdl.reader import load_espdl

    model = load_espdl(path)
    assert op_types <= {n.op_type for n in model.nodes}, f"{path.name}: {[n.op_type for n in model.nodes]}"
    report = check(model, target)
    compared = [r for r in report.results if r.verdict in (MATCH, "MISMATCH")]
    assert compared, "nothing compared"
    assert report.passed, "\n".join(report.lines())
    integers = [r for r in compared if isinstance(r.max_diff, int)]  # float32 outputs: Model::test()'s 2e-5
    assert max((r.max_diff for r in integers), default=0) <= (0 if bits == 8 else 1), "\n".join(report.lines())
    return model, report


def export_with_harness_quantizer(model: onnx.ModelProto, target: str, bits: int, directory: Path,
                                  seed: int = 0) -> Path:
    """Quantized by the harness's own pipeline (``harness.ppq.quantize.Quantizer._quantize``, with its ESP-PPQ
    repairs), exported with test values for every output: what a user's model goes through."""
    path = directory / f"{model.graph.name}-harness-{target}-int{bits}.espdl"
    if path not in _MEMO:
        _MEMO[path] = _export_with_harness(model, target, bits, path, seed)
    return _MEMO[path]


def _export_with_harness(model: onnx.ModelProto, target: str, bits: int, path: Path, seed: int) -> Path:
    import esp_ppq.lib as PFL
    import torch
    from esp_ppq.api import generate_test_value

    from harness.ppq.env import DEVICE, ppq_call, repaired_exports
    from harness.ppq.quantize import Quantizer
    from harness.ppq.reference import one_thread
    from harness.targets import get_target

    path.parent.mkdir(parents=True, exist_ok=True)
    source = path.with_suffix(".onnx")
    onnx.save(model, str(source))
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    gen = torch.Generator().manual_seed(seed)
    calib = [torch.randn(shape, generator=gen) for _ in range(4)]
    test = torch.randn(shape, generator=gen)
    platform = get_target(target).ppq_platform(bits)
    with one_thread():
        graph, _ = Quantizer(path.parent / "cache")._quantize(source, platform, bits, calib, [test], None,
                                                               path.with_suffix(".quantize.log"))
        names = [o.name for o in model.graph.output]
        with ppq_call(f"export {path.stem}", path.with_suffix(".export.log")), repaired_exports():
            values = generate_test_value(graph, DEVICE, [test], names)
            PFL.Exporter(platform=platform).export(str(path), graph, values_for_test=values)
    return path
