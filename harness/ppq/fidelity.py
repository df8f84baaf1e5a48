"""How far a chip's offline result may lie from ESP-PPQ's simulation: ESP-DL's own contract, per model.

ESP-DL promises (``dl::Model::test()``): int8 is exact, int16 within one LSB
per operator -- ESP-PPQ computes int16 sums in float32, the chip exactly. One
LSB at one operator grows through the operators after it, so the end-to-end
bound of an int16 model is measured: ESP-PPQ's simulation of the offline
graphs runs again with every computing operator's output moved by one LSB
(all up, all down, random signs), and the largest change of each sub-model's
output over those runs is that sub-model's bound. An int8 model is held to
exactness except at the ops the lint, from the file alone, names as rounding
up to 1 LSB apart (an average pool's float32 reciprocal, a requantized graph
input): only those are moved. An int8 model whose ``quant_setting`` runs some
ops at 16 bits (mixed precision) is int16 there: those ops are moved too, each
at its own width. The bound is a property of the quantized model and the
frames, computed without the device under test.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.model.frames import Frames
from harness.ppq.env import DEVICE, import_ppq
from harness.ppq.reference import one_thread, to_chip_output, to_graph_input

# Operators that move integers without computing (the chip copies them exactly).
EXACT_OPS = {"Concat", "Slice", "Split", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Pad",
             "MaxPool", "Gather", "Expand"}
TRIALS = ("all +1", "all -1", "random 1", "random 2", "random 3")


@dataclass(frozen=True)
class FidelityBound:
    """Allowed |device offline - ESP-PPQ| per sub-model output, in LSB, and why."""

    per_module: tuple[int, ...]
    reason: str


def _nudge_hook_class():
    import torch
    from esp_ppq.executor import QuantOPRuntimeHook

    class NudgeHook(QuantOPRuntimeHook):
        """Moves every output value of one operator by one LSB (sign per trial), saturating."""

        def __init__(self, operation, bits: int):
            super().__init__(operation)
            self.lo, self.hi = -(1 << (bits - 1)), (1 << (bits - 1)) - 1
            self.trial = None
            self.gen = torch.Generator()

        def post_forward_hook(self, outputs, quant_outputs, quant_configs):
            nudged = []
            for y, cfg in zip(quant_outputs, quant_configs):
                if y is None or cfg is None or cfg.scale is None:
                    nudged.append(y)
                    continue
                if self.trial == "all +1":
                    delta = torch.ones_like(y)
                elif self.trial == "all -1":
                    delta = -torch.ones_like(y)
                else:
                    delta = torch.randint(0, 2, y.shape, generator=self.gen).to(y.dtype) * 2 - 1
                scale = cfg.scale.flatten()[0].to(y.dtype)
                q = torch.round(y / scale) + delta
                nudged.append(torch.clamp(q, self.lo, self.hi) * scale)
            return nudged

    return NudgeHook


def one_lsb_ops(qm, m) -> dict[str, str]:
    """Ops of module ``m``'s quantized graph whose chip result the lint says may be 1 LSB off ESP-PPQ's.

    A finding about an op the exporter added (e.g. a RequantizeLinear) stands for the graph's ops it feeds.
    Returns op name -> the finding's kind.
    """
    from harness.espdl.reader import load_espdl
    from harness.espdl.lint import ONE_LSB_KINDS, lint_model

    model = load_espdl(m.offline_espdl)
    readers: dict[str, list] = {}
    for node in model.nodes:
        for name in node.inputs:
            readers.setdefault(name, []).append(node)
    ops = {}
    for finding in (f for f in lint_model(model, qm.target) if f.kind in ONE_LSB_KINDS):
        stack = [next(n for n in model.nodes if n.name == finding.node)]
        while stack:
            node = stack.pop()
            if node.name in m.offline_graph.operations:
                ops.setdefault(node.name, finding.kind)
            else:
                stack += [r for out in node.outputs for r in readers.get(out, [])]
    return ops


def _measured_inputs(qm, frames: Frames) -> list[np.ndarray]:
    """The sequences the bound is measured on: whole, and for a per-window output every prefix it is judged on."""
    if not qm.output.per_window:
        return list(frames.values)
    return [seq[:length] for seq in frames.values for length in range(qm.output.span, frames.sequence_length + 1)]


def output_bits(op) -> int:
    """The width ``op`` writes its output at: its own quantization config, which a ``quant_setting`` dispatch
    may set apart from the model's bits. An output config overlapped by a fused successor's (Conv + Relu) is
    held on that one's grid, and ESP-PPQ leaves the overlapped config's own ``num_of_bits`` stale."""
    return max(c.dominated_by.num_of_bits for c in op.output_quant_config)


def _computing_ops(m) -> list:
    """The ops of module ``m``'s quantized graph whose chip result may differ from ESP-PPQ's at int16."""
    from esp_ppq.IR.quantize import QuantableOperation

    return [op for op in m.offline_graph.operations.values()
            if isinstance(op, QuantableOperation) and op.type not in EXACT_OPS]


def fidelity_bound(qm, frames: Frames) -> FidelityBound:
    """ESP-DL's bound for ``qm`` on ``frames``: int8 exact but where the lint says an op may be 1 LSB off or a
    ``quant_setting`` runs an op at int16; int16 measured from one LSB per operator."""
    n = len(qm.modules)
    import_ppq()
    marked = wide = None
    if qm.bits == 8:
        marked = [one_lsb_ops(qm, m) for m in qm.modules]
        wide = [{op.name for op in _computing_ops(m) if output_bits(op) > 8} for m in qm.modules]
        if not any(marked) and not any(wide):
            return FidelityBound((0,) * n, "int8: ESP-DL computes exactly what ESP-PPQ simulates")
    from esp_ppq.executor import TorchExecutor

    hook_class = _nudge_hook_class()
    runs = []
    for k, m in enumerate(qm.modules):
        hooks = {op.name: hook_class(op, output_bits(op)) for op in _computing_ops(m)
                 if marked is None or op.name in marked[k] or op.name in wide[k]}
        runs.append((m, TorchExecutor(m.offline_graph, device=DEVICE), hooks))
    operators = sum(len(h) for _, _, h in runs)
    worst = np.zeros(n, dtype=np.int64)
    with one_thread():
        for t, trial in enumerate(TRIALS):
            for _, _, hooks in runs:
                for k, hook in enumerate(hooks.values()):
                    hook.trial = trial
                    hook.gen.manual_seed(1000 * t + k)
            for seq in _measured_inputs(qm, frames):
                clean = nudged = to_graph_input(seq, frames.exponent)
                for k, (m, executor, hooks) in enumerate(runs):
                    clean = executor.forward({"input": clean}, output_names=["output"])[0]
                    nudged = executor.forward({"input": nudged}, output_names=["output"], hooks=hooks)[0]
                    a = to_chip_output(clean, m.out_exponent, qm.bits).astype(np.int64)
                    b = to_chip_output(nudged, m.out_exponent, qm.bits).astype(np.int64)
                    worst[k] = max(worst[k], int(np.abs(a - b).max()))
    if marked is None:
        bounds = tuple(max(1, int(w)) for w in worst)
        return FidelityBound(
            bounds,
            f"int16: ESP-DL allows ±1 LSB per operator; ±1 LSB at each of the {operators} computing operators of "
            f"ESP-PPQ's simulation ({', '.join(TRIALS)}) moved the sub-model outputs by at most "
            f"{', '.join(map(str, bounds))} LSB on these frames",
        )
    bounds = tuple(int(w) for w in worst)
    named = ", ".join(f"module {k} {op} ({kind})" for k, ops in enumerate(marked) for op, kind in ops.items())
    if any(wide):
        # as for int16 models, at least 1 where an int16 op runs: a few trials on these frames may not find the
        # rounding edge a chip's ±1 LSB there crosses on the way back to int8
        bounds = tuple(max(1, b) if wide[k] else b for k, b in enumerate(bounds))
        int16 = ", ".join(f"module {k} {op}" for k, ops in enumerate(wide) for op in sorted(ops))
        count = sum(map(len, wide))
        lint = f" and at the ops the lint says may round 1 LSB apart ({named})" if named else ""
        return FidelityBound(
            bounds,
            f"mixed precision: {count} int16 operator{'s' if count != 1 else ''} measured at ±1 LSB each, as "
            f"ESP-DL allows ({int16}){lint}; ±1 LSB there ({', '.join(TRIALS)}) moved the sub-model outputs by at "
            f"most {', '.join(map(str, bounds))} LSB on these frames (at least 1 where an int16 op runs)",
        )
    return FidelityBound(
        bounds,
        f"int8: exact except where the lint says the chip may round 1 LSB apart from ESP-PPQ ({named}); ±1 LSB "
        f"there ({', '.join(TRIALS)}) moved the sub-model outputs by at most {', '.join(map(str, bounds))} LSB on "
        f"these frames",
    )
