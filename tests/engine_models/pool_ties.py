"""Real ESP-PPQ exports whose test input puts exact ties into a mean, for the pooling/reduce rounding tests.

``ReLU -> {ReduceMean over H, W; GlobalAveragePool}`` on a ``[1, 16, 2, 41]`` input (area 82, whose odd part
41 makes ``fl32(1/82)`` inexact). The model is quantized once, the exponents ESP-PPQ chose are read back,
and the test input is then written in integers: channels 0..7 get window sums where ESP-DL's float32
reciprocal multiply and an exact division round differently on the target, channels 8..15 random sums.
The test values are generated from that input and exported with the model, so every run has ties to
disagree about, whatever exponents the calibration gave.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

SHAPE = (1, 16, 2, 41)
AREA = SHAPE[2] * SHAPE[3]
TIE_CHANNELS = 8
_F32 = np.float32


@dataclass(frozen=True)
class PoolTies:
    path: Path
    sums: np.ndarray  # int64 [C], the window sum of every channel in the test input
    diverging: np.ndarray  # bool [C], channels whose sum the chip and an exact division round differently


def chip_mean(sums, e_in: int, e_out: int, area: int, rounding: str) -> np.ndarray:
    """AveragePool's rounding, spelled out independently of the engine: ``R(fl32(sum) * fl32-scale)``."""
    scale = _F32(2.0**e_in) * (_F32(1) / _F32(area)) * _F32(2.0**-e_out)
    return _round(np.asarray(sums).astype(_F32) * scale, rounding)


def divided_mean(sums, e_in: int, e_out: int, area: int, rounding: str) -> np.ndarray:
    """The mean as torch (ESP-PPQ) and ESP-DL's ReduceMean compute it: ``R(fl32(fl32(sum * 2^e_in) / area) * 2^-e_out)``."""
    return _round((np.asarray(sums).astype(_F32) * _F32(2.0**e_in)) / _F32(area) * _F32(2.0**-e_out), rounding)


def _round(v: np.ndarray, rounding: str) -> np.ndarray:
    v = v.astype(_F32)
    return (np.rint(v) if rounding == "half_even" else np.floor(v + _F32(0.5))).astype(np.int64)


def _window(total: int, n: int) -> np.ndarray:
    """``n`` int8 values as even as possible with the given sum."""
    q, r = divmod(total, n)
    return np.array([q + 1] * r + [q] * (n - r), dtype=np.int64)


def export_pool_ties(target: str, rounding: str, directory: Path) -> PoolTies:
    import torch
    from torch import nn

    import esp_ppq.lib as PFL
    from esp_ppq.api import espdl_quantize_torch, generate_test_value, get_target_platform

    from harness.ppq.reference import one_thread
    from harness.espdl.reader import load_espdl
    from harness.ppq.env import ppq_call

    class Means(nn.Module):
        def forward(self, x):
            r = torch.relu(x)
            return r.mean(dim=(2, 3), keepdim=True), nn.functional.adaptive_avg_pool2d(r, 1)

    gen = torch.Generator().manual_seed(0)
    calib = []
    for _ in range(2):
        c = torch.rand(SHAPE, generator=gen) * 0.5
        c[:, 0] = 3.5  # input and both means reach 3.5: input and output exponents alike
        calib.append(c)
    path = directory / f"pool-ties-{target}.espdl"
    model = Means().eval()
    with one_thread():
        with ppq_call(f"quantize {path.stem}", path.with_suffix(".quantize.log")):
            graph = espdl_quantize_torch(
                model, str(path), calib_dataloader=calib, calib_steps=len(calib), input_shape=list(SHAPE),
                inputs=[calib[0]], target=target, num_of_bits=8, error_report=False, device="cpu",
            )  # exported once with the calibration input, to read the exponents back
        exported = load_espdl(path)
        gap = next(n for n in exported.nodes if n.op_type == "GlobalAveragePool")
        e_in = exported.inputs[0].exponents[0]
        e_out = exported.tensor_info(gap.outputs[0]).exponents[0]
        assert exported.tensor_info(gap.inputs[0]).exponents[0] == e_in, "ReLU changed the exponent"
        candidates = np.arange(0, 127 * AREA + 1)
        split = np.nonzero(chip_mean(candidates, e_in, e_out, AREA, rounding)
                           != divided_mean(candidates, e_in, e_out, AREA, rounding))[0]
        assert split.size >= TIE_CHANNELS, (
            f"no window sum over area {AREA} rounds differently for exponents {e_in} -> {e_out} on {target}; "
            "the calibration no longer gives the exponents this fixture was built for")
        rng = np.random.default_rng(1)
        sums = np.concatenate([rng.choice(split, TIE_CHANNELS, replace=False),
                               rng.integers(0, 60 * AREA, SHAPE[1] - TIE_CHANNELS)])
        q = np.stack([_window(int(s), AREA) for s in sums]).reshape(SHAPE)
        x = torch.from_numpy((q * 2.0**e_in).astype(np.float32))
        names = [v.name for v in graph.variables.values()
                 if v.name and not v.is_parameter and (v.source_op is not None or v.name in graph.inputs)]
        with ppq_call(f"export {path.stem}", path.with_suffix(".export.log")):
            values = generate_test_value(graph, "cpu", [x], names)
            PFL.Exporter(platform=get_target_platform(target, 8)).export(str(path), graph, values_for_test=values)
    diverging = (chip_mean(sums, e_in, e_out, AREA, rounding) != divided_mean(sums, e_in, e_out, AREA, rounding))
    return PoolTies(path, sums.astype(np.int64), diverging)
