"""Small torch models that together exercise every op the engine emulates, and their ESP-PPQ exports.

Exports carry embedded test values for every activation of the quantized graph
(intermediates included), so ``harness.emulator.check.check`` compares the engine with
ESP-PPQ tensor by tensor. Built once per session and shared by the engine and
CLI tests (``exports`` memoizes per output directory).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Zoo1d(nn.Module):
    """NWC ops: strided/asymmetric/dilated/depthwise conv, unaligned channels, Gemm, MatMul, pools, LUTs, moves."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(8, 24, 3, stride=2)
        self.dw = nn.Conv1d(24, 24, 3, dilation=2, groups=24)
        self.c2 = nn.Conv1d(24, 20, 1)
        self.lin = nn.Linear(20, 12)
        self.register_buffer("w", torch.empty(12, 20))

    def forward(self, x):
        h = F.relu(self.c1(F.pad(x, (2, 0))))  # stride 2, asymmetric pads, fused ReLU: [1, 24, 8]
        d = torch.sigmoid(self.dw(F.pad(h, (4, 0))))  # causal dilated depthwise
        p = self.c2(d)  # 20 output channels (16 + 4 unaligned)
        q = p * torch.tanh(p.mean(dim=2, keepdim=True))  # ReduceMean (ties: 8 frames), broadcast Mul
        y = self.lin(q.transpose(1, 2)) @ self.w  # Gemm, MatMul with a constant: [1, 8, 20]
        z = y.transpose(1, 2)
        out1 = F.avg_pool1d(z, 3, stride=1, padding=1) + F.silu(q)  # padded AveragePool, Swish, Add
        out2 = F.avg_pool1d(z, 4, stride=4)  # area 4: ties
        v = torch.cat([F.pad(q, (1, 0))[:, :, :8], q[:, 4:]], dim=1)  # Pad, Slice, Concat: [1, 36, 8]
        w = F.hardswish(v) - F.leaky_relu(v, 0.1)  # Sub of two LUT activations
        out3 = F.max_pool1d(torch.relu(w), 2, stride=2)  # standalone Relu, MaxPool
        return out1, out2, out3


class Zoo2d(nn.Module):
    """NHWC ops: 2-D convs, depthwise 3x3, MaxPool, AveragePool, GlobalAveragePool, Flatten, (Un)Squeeze, Reshape."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(4, 16, 3, stride=2)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.c2 = nn.Conv2d(16, 20, 1)
        self.lin = nn.Linear(20, 10)

    def forward(self, x):
        h = F.hardswish(self.c1(F.pad(x, (1, 0, 1, 0))))  # [1, 16, 4, 4]
        d = F.leaky_relu(self.dw(h), 0.2)
        m = F.max_pool2d(d, 2, stride=1)  # [1, 16, 3, 3]
        c = torch.relu(self.c2(m))  # fused ReLU, 20 channels
        a = F.avg_pool2d(c, 2, stride=1)  # area 4: ties
        g = torch.flatten(F.adaptive_avg_pool2d(c, 1), 1)  # GlobalAveragePool, Flatten: [1, 20]
        e = self.lin(g).unsqueeze(2)  # Gemm, Unsqueeze: [1, 10, 1]
        out2 = torch.tanh(e.reshape(1, 5, 2)).squeeze(0)  # Reshape, Squeeze: [5, 2]
        return a, out2


class Residual(nn.Module):
    """``x + tanh(conv(x))`` with the graph input feeding the Add directly."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(8, 8, 1)

    def forward(self, x):
        return x + torch.tanh(self.c(x))


class Saturating(nn.Module):
    """A 1x1 conv whose int8 partial sums leave 20 bits on esp32s3 (64 channels of large weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.c = nn.Conv1d(64, 16, 1)

    def forward(self, x):
        return self.c(x)


@dataclass(frozen=True)
class Spec:
    name: str
    build: type
    input_shape: tuple[int, ...]
    scale: float = 0.4  # std of the random weights
    high: bool = False  # weights and inputs drawn from [0.9, 1): every product near 127 * 127


ZOO = [Spec("zoo1d", Zoo1d, (1, 8, 16)), Spec("zoo2d", Zoo2d, (1, 4, 8, 8))]
RESIDUAL = Spec("residual", Residual, (1, 8, 6), scale=0.5)
SATURATING = Spec("saturating", Saturating, (1, 64, 4), scale=1.9, high=True)


def make_model(spec: Spec, seed: int):
    """The model with seeded weights, a test input and calibration inputs (private generator)."""
    gen = torch.Generator().manual_seed(seed)
    model = spec.build().eval()

    def draw(shape):
        if spec.high:
            return 0.9 + 0.1 * torch.rand(shape, generator=gen)
        return torch.randn(shape, generator=gen)

    with torch.no_grad():
        for t in [*model.parameters(), *model.buffers()]:
            t.copy_(draw(t.shape) * spec.scale)
    x = draw(spec.input_shape)
    calib = [draw(spec.input_shape) for _ in range(3)]
    return model, x, calib


def export(spec: Spec, seed: int, target: str, bits: int, directory: Path, lut: bool = True,
           suffix: str = "", repaired: bool = False) -> Path:
    """Quantize with ESP-PPQ, then export with test values for every activation of the quantized graph.

    ``lut=False`` turns ESP-PPQ's int16 LUT fusion off (int16 activations then run ESP-DL's float code);
    ``repaired=True`` exports with the harness's repairs (``harness.ppq.env.repaired_exports``).
    """
    from harness.ppq.reference import one_thread

    with one_thread():
        return _export(spec, seed, target, bits, directory, lut, suffix, repaired)


def _export(spec: Spec, seed: int, target: str, bits: int, directory: Path, lut: bool, suffix: str,
            repaired: bool) -> Path:
    import esp_ppq.lib as PFL
    from esp_ppq.api import espdl_quantize_torch, generate_test_value, get_target_platform
    from esp_ppq.api.setting import QuantizationSettingFactory

    from harness.ppq.env import ppq_call, repaired_exports

    model, x, calib = make_model(spec, seed)
    path = directory / f"{spec.name}{suffix}-{target}-int{bits}-s{seed}.espdl"
    setting = QuantizationSettingFactory.espdl_setting(bits)
    setting.lut_optimization = lut
    with ppq_call(f"quantize {path.stem}", path.with_suffix(".quantize.log")):
        graph = espdl_quantize_torch(
            model, str(path), calib_dataloader=calib, calib_steps=len(calib), input_shape=list(spec.input_shape),
            inputs=[x], target=target, num_of_bits=bits, setting=setting, error_report=False, skip_export=True,
            device="cpu",
        )
    names = [v.name for v in graph.variables.values()
             if v.name and not v.is_parameter and (v.source_op is not None or v.name in graph.inputs)]
    with ppq_call(f"export {path.stem}", path.with_suffix(".export.log")), \
            (repaired_exports() if repaired else contextlib.nullcontext()):
        values = generate_test_value(graph, "cpu", [x], names)
        PFL.Exporter(platform=get_target_platform(target, bits)).export(str(path), graph, values_for_test=values)
    return path
