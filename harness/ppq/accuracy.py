"""What quantization costs: the float model against ESP-PPQ's quantized one on the frames a run streams.

Three chains over the sub-models, each sequence whole (offline), as floats in the graphs' layout:

* **float**: the spec's torch sub-models, each fed the previous one's float output (the first: the frames as the
  device receives them, i.e. dequantized);
* **quantized**: ESP-PPQ's quantized offline graphs, each fed the previous one's quantized output (end to end);
* **isolated**: each quantized graph fed the *float* chain's input to it: that sub-model's own error.

SNR (dB, signal = float) and cosine come from each pair; the sub-model with the lowest isolated SNR gets
ESP-PPQ's own per-operator error analysis (``graphwise_error_analyse``: accumulated to each operator's output;
``layerwise_error_analyse``: each operator's own). Decisions for task figures are argmaxes over the last
module's channels (``decisions``). Everything is kept in the quantized model's cache entry (``derived``), so a
warm run imports neither torch nor ESP-PPQ for it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.ppq.env import DEVICE, import_ppq


@dataclass
class AccuracyRun:
    """The three chains' last-module outputs, time-major ``[S, T, C]`` (a per-window head: ``[S, 1, values]``),
    and the figures per sub-model."""

    float_out: np.ndarray
    quantized_out: np.ndarray
    per_module: list[dict]  # {"module", "isolated": {snr_db, cosine}, "cumulative": {snr_db, cosine}}
    layers: dict | None  # the worst sub-model's per-operator table

    @property
    def end_to_end(self) -> dict:
        return self.per_module[-1]["cumulative"]

    @property
    def worst_module(self) -> int:
        return int(np.argmin([m["isolated"]["snr_db"] for m in self.per_module]))


def snr_db(reference: np.ndarray, x: np.ndarray) -> float:
    """10 log10(signal power / noise power), signal = ``reference`` (inf when identical)."""
    reference, x = np.asarray(reference, np.float64), np.asarray(x, np.float64)
    noise = float(np.sum((reference - x) ** 2))
    signal = float(np.sum(reference**2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(signal / noise) if signal > 0 else float("-inf")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    norm = float(np.linalg.norm(a) * np.linalg.norm(b))
    return float(a @ b / norm) if norm > 0 else (1.0 if not a.any() and not b.any() else 0.0)


def pair(reference: np.ndarray, x: np.ndarray) -> dict:
    return {"snr_db": snr_db(reference, x), "cosine": cosine(reference, x)}


def _time_major(y: np.ndarray, per_window: bool) -> np.ndarray:
    """A graph output ``[S, C, T]`` -> ``[S, T, C]``; a per-window one -> ``[S, 1, values]`` (as the reference)."""
    if per_window:
        return (y.transpose(0, 2, 1) if y.ndim == 3 else y).reshape(y.shape[0], 1, -1)
    return y.transpose(0, *range(y.ndim - 1, 0, -1))


def measure(qm, frames, log: Path) -> AccuracyRun:
    """The three chains on ``frames`` and their figures (imports torch and ESP-PPQ)."""
    import torch

    from harness.ppq.reference import one_thread, to_graph_input

    import_ppq()
    from esp_ppq.executor import TorchExecutor

    with torch.random.fork_rng():
        torch.manual_seed(qm.spec.seed)  # the same weights the quantizer calibrated
        submodels = [m.eval() for m in qm.spec.build_submodels(dict(qm.spec.config))]
    graphs = [m.offline_graph for m in qm.modules]
    executors = [TorchExecutor(g, device=DEVICE) for g in graphs]
    x = to_graph_input(frames.values, frames.exponent)  # [S, C, T] floats the device sees
    fl, qu, per_module = x, x, []
    with torch.no_grad(), one_thread():
        for k, (sub, ex) in enumerate(zip(submodels, executors)):
            fl_in = fl
            fl = sub(fl_in)
            isolated = torch.cat([ex.forward({"input": fl_in[i:i + 1]}, output_names=["output"])[0]
                                  for i in range(len(fl_in))])
            qu = torch.cat([ex.forward({"input": qu[i:i + 1]}, output_names=["output"])[0] for i in range(len(qu))])
            f, i, q = (t.detach().numpy().reshape(fl.shape) for t in (fl, isolated, qu))
            per_module.append({"module": k, "isolated": pair(f, i), "cumulative": pair(f, q)})
    per_window = qm.modules[-1].output.per_window
    run = AccuracyRun(_time_major(fl.numpy(), per_window), _time_major(qu.numpy(), per_window), per_module, None)
    worst = run.worst_module
    inputs = to_graph_input(frames.values, frames.exponent) if worst == 0 else None
    if inputs is None:  # the worst sub-model's input: the float chain's output before it
        chain = to_graph_input(frames.values, frames.exponent)
        with torch.no_grad():
            for sub in submodels[:worst]:
                chain = sub(chain)
        inputs = chain
    run.layers = operator_errors(graphs[worst], inputs, log)
    run.layers["module"] = worst
    return run


def operator_errors(graph, inputs, log: Path) -> dict:
    """ESP-PPQ's per-operator error analysis of ``graph`` on ``inputs`` ``[S, C, T]``: noise/signal power per
    computing operator, accumulated (graphwise) and its own (layerwise), as SNR dB, in graph order."""
    from harness.ppq.env import ppq_call

    import_ppq()
    from esp_ppq.quantization.analyse import graphwise_error_analyse, layerwise_error_analyse

    batches = [{"input": inputs[i:i + 1]} for i in range(len(inputs))]
    with ppq_call("per-operator error analysis", log):
        accumulated = graphwise_error_analyse(graph, running_device=DEVICE, dataloader=batches,
                                              collate_fn=None, method="snr", steps=len(batches), verbose=False)
        own = layerwise_error_analyse(graph, dataloader=batches, collate_fn=None, running_device=DEVICE,
                                      method="snr", steps=len(batches), verbose=False) or {}

    def db(ratio) -> float | None:
        if ratio is None:
            return None
        ratio = float(ratio)
        return float("inf") if ratio <= 0 else -10.0 * np.log10(ratio)

    channels = output_channel_snr(graph, batches)
    rows = []
    for op in graph.topological_sort():
        if op.name in accumulated or op.name in own:
            worst = channels.get(op.name)
            rows.append({"operator": op.name, "type": op.type, "accumulated_snr_db": db(accumulated.get(op.name)),
                         "own_snr_db": db(own.get(op.name)),
                         "output_worst_channel_snr_db": None if worst is None else worst[0],
                         "output_worst_channel": None if worst is None else worst[1]})
    return {"rows": rows}


def output_channel_snr(graph, batches: list[dict]) -> dict[str, tuple[float, int]]:
    """Per quantized operator: the lowest per-channel SNR (dB) of its output quantized on its own grid, and that
    channel, over ``batches``, from the float run of the graph.

    ESP-PPQ's own error of an operator includes quantizing its *inputs*, so a tensor that quantizes badly (one
    outlier channel taking the whole int8 range of a per-tensor scale) shows as the error of the layer that reads
    it; this names the layer that produces it, and the channel that suffers.
    """
    import torch

    from esp_ppq.executor import TorchExecutor
    from esp_ppq.IR.quantize import QuantableOperation

    ops = [op for op in graph.topological_sort() if isinstance(op, QuantableOperation) and op.outputs]
    names = [op.outputs[0].name for op in ops]
    for op in ops:
        op.dequantize()
    try:
        executor = TorchExecutor(graph, device=DEVICE)
        with torch.no_grad():
            runs = [executor.forward(batch, output_names=names) for batch in batches]
    finally:
        for op in ops:
            op.restore_quantize_state()
    found = {}
    for k, op in enumerate(ops):
        config = op.output_quant_config[0]
        values = [r[k] for r in runs if r[k] is not None]
        if not values or values[0].dim() < 2 or config.scale is None:
            continue
        x = torch.cat(values).double()
        scale = config.scale.double().reshape(-1)[0] if config.scale.numel() == 1 else None
        if scale is None or not torch.isfinite(scale) or scale <= 0:
            continue
        q = torch.clamp(torch.round(x / scale), config.quant_min, config.quant_max) * scale
        axes = [a for a in range(x.dim()) if a != 1]
        signal = (x**2).sum(dim=axes)
        noise = ((x - q) ** 2).sum(dim=axes)
        per_channel = [float("inf") if n == 0 else (10 * np.log10(float(s / n)) if s > 0 else float("-inf"))
                       for s, n in zip(signal.tolist(), noise.tolist())]
        worst = int(np.argmin(per_channel))
        found[op.name] = (per_channel[worst], worst)
    return found


def cached_accuracy(qm, frames) -> AccuracyRun:
    """``measure(qm, frames)``, kept in the model's cache entry (``harness.ppq.derived``)."""
    from harness.ppq.derived import stored

    def save(run: AccuracyRun, out: Path) -> None:
        np.save(out / "float.npy", run.float_out, allow_pickle=False)
        np.save(out / "quantized.npy", run.quantized_out, allow_pickle=False)
        (out / "figures.json").write_text(json.dumps({"per_module": run.per_module, "layers": run.layers}))

    def load(directory: Path) -> AccuracyRun:
        figures = json.loads((directory / "figures.json").read_text())
        if len(figures["per_module"]) != len(qm.modules):
            raise ValueError("figures.json does not fit the model")
        return AccuracyRun(np.load(directory / "float.npy", allow_pickle=False),
                           np.load(directory / "quantized.npy", allow_pickle=False), figures["per_module"],
                           figures["layers"])

    log = qm.directory / "logs" / "accuracy.log"
    return stored(qm, "accuracy", frames, lambda: measure(qm, frames, log), save, load)


# ------------------------------------------------------------------ task figures
def decisions(outputs: np.ndarray) -> np.ndarray:
    """Class decisions: the argmax over the last axis of ``[S, rows, C]`` -> ``[S, rows]``."""
    return np.argmax(np.asarray(outputs), axis=-1)


def aligned(decided: np.ndarray, labels: np.ndarray, frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Decisions ``[S, rows]`` and labels (``[S, T]`` per frame or ``[S]`` per sequence) at the same places.

    Rows that are frames (rows == T) meet per-frame labels frame by frame; per-sequence labels meet the last
    row (the decision after the whole sequence). Rows that are windows (a per-window head: rows = T / W) meet
    the label of each window's last frame.
    """
    labels = np.asarray(labels)
    if labels.ndim == 1:
        return decided[:, -1], labels
    rows = decided.shape[1]
    if rows == frames:
        return decided, labels
    step = frames // rows
    return decided, labels[:, step - 1::step][:, :rows]


def top1(outputs: np.ndarray, labels: np.ndarray, frames: int) -> float:
    d, l = aligned(decisions(outputs), labels, frames)
    return float(np.mean(d == l))


def agreement(a: np.ndarray, b: np.ndarray) -> float:
    """Fraction of equal decisions of two outputs at the same places (their common last rows)."""
    da, db = decisions(a), decisions(b)
    rows = min(da.shape[1], db.shape[1])
    return float(np.mean(da[:, -rows:] == db[:, -rows:]))


def task_figures(spec, labels, outputs: dict[str, np.ndarray], frames: int,
                 float_out: np.ndarray | None = None) -> tuple[dict, str | None]:
    """Task-level figures of each source's outputs (``{"float": ..., "quantized": ..., "device": ...}``, each
    ``[S, rows, C]`` floats) against ``labels``: the spec's ``metric(outputs, labels)`` when it defines one, else
    top-1 accuracy; and each source's decision agreement with the float model's (``float_out``). Nothing without
    labels: without them nothing says the outputs are class scores.

    Returns (figures, error): a metric that fails or labels that do not fit the outputs give the one line that
    says so (the caller records it with its other figures), not an exception.
    """
    from harness.errors import HarnessError

    figures: dict = {}
    if labels is None:
        return figures, None
    labels = np.asarray(labels)
    try:
        for source, out in outputs.items():
            out = np.asarray(out)
            values = spec.evaluate(out, labels)  # the spec's metric, checked; None without
            if values is not None:
                figures.update({f"{k}_{source}": v for k, v in values.items()})
                continue
            classes = out.shape[-1]
            if labels.size and int(labels.max()) >= classes:
                return figures, (f"labels reach class id {int(labels.max())}, but the last sub-model's output has "
                                 f"{classes} channels (classes 0..{classes - 1}); give labels of this model's classes, "
                                 f"or define metric(outputs, labels) in the spec for another task")
            figures[f"top1_{source}"] = top1(out, labels, frames)
    except HarnessError as exc:
        return figures, str(exc)
    if float_out is not None:
        for source, out in outputs.items():
            if source != "float":
                figures[f"agreement_float_{source}"] = agreement(float_out, out)
    return figures, None
