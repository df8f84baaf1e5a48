"""Stage 1: quantize each streaming sub-model once per (model, target, bits); export per window.

Calibration is the slow step (~1.5 s per sub-model), export is cheap (~0.1 s),
so each sub-model is calibrated once on whole offline sequences and every
streaming ``.espdl`` (one per window size) is exported from that same
quantized graph:

* ``auto`` models: ESP-PPQ's exporter turns a copy of the offline graph into a
  streaming one (``auto_streaming=True``), so scales are identical by
  construction.
* ``explicit`` models: the streaming graph (``streaming_forward`` with cache
  inputs/outputs) is quantized *without* a calibration of its own: every
  activation whose tensor also exists in the offline graph gets the offline
  scale ("locked"); cache tensors inherit theirs through the passive ops that
  move them. Only tensors with no offline counterpart are calibrated, on
  windows cut from the calibration sequences with caches carried (as the seed
  does), and they are reported.

Sub-model k+1's input is locked to sub-model k's output exponent, so the chip
can hand one module's output to the next without requantizing.

Calibration runs on the spec's ``calibration_data(config)`` when it defines one (real sequences, time-major),
else on seeded random sequences; ESP-PPQ's espdl setting passes through the spec's ``quant_setting`` first.

Everything is cached on disk under a content hash of what determines it
(model source, config, target, bits, the calibration data, the harness's own
quantizer source and the ESP-PPQ/torch/ONNX versions); a warm run performs zero
calibrations.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Callable

from harness.errors import ConfigError, QuantizationError, StreamingError
from harness.espdl.reader import load_espdl
from harness.espdl.lint import check_frame_rate, check_interface, check_streaming_structure
from harness.ppq.env import DEVICE, import_ppq, layout_recording_exporter, ppq_call, repaired_exports
from harness.model.spec import ModelSpec
from harness.ppq.export_repairs import (
    bound_config, check_causal, fold_shared_pads, layout_transposes, per_consumer_caches, rnn_alignment,
    streaming_table_advice,
)
from harness.resources import code_digest
from harness.targets import Target

PASSIVE_OPS = {"Concat", "Slice", "Split", "Transpose", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Pad"}
COPY_OPS = PASSIVE_OPS - {"Concat", "Pad"}  # one input copied as is (Concat and Pad get aligned operands)
OFFLINE_IO = (["input"], ["output"])
STREAMING_IO = (["input", "cache"], ["output", "cache_out"])
_VERSIONED = ("esp-ppq", "torch", "onnx", "onnxsim", "numpy")


@dataclass(frozen=True)
class OutputForm:
    """What a sub-model returns per call: one frame per input frame, or one tensor per window.

    A per-window output (a classifier head: ``[1, classes]``, or the last ``F`` frames) has no
    frame per input frame; the streamed value of window j is compared with the offline model run on
    the prefix that ends with window j, once that prefix covers ``span`` frames (the fewest the
    offline model accepts).
    """

    per_window: bool = False
    shape: tuple[int, ...] = ()  # the offline output without its batch axis, e.g. (16,) or (16, 3)
    span: int = 1  # frames a prefix needs before the offline model can run on it

    @property
    def flat(self) -> bool:
        """Not a [channels, frames] tensor: sent as its elements (protocol layout FLAT)."""
        return self.per_window and len(self.shape) != 2

    def frames(self, window: int) -> int:
        """Output frames of one window (FLAT: 1 row)."""
        if not self.per_window:
            return window
        return 1 if self.flat else self.shape[1]

    def judged(self, window: int, sequence_length: int) -> list[int]:
        """Windows whose prefix covers the output span (earlier ones are reported, not judged)."""
        return [j for j in range(sequence_length // window) if (j + 1) * window >= self.span]


@dataclass
class ModuleArtifacts:
    """One calibrated sub-model."""

    index: int
    offline_native: Path | None  # ESP-PPQ's saved graph, calibrated on whole sequences (None: the user's files)
    streaming_native: Path | None  # explicit models: the graph with cache input/output; None for auto
    offline_espdl: Path  # offline model with embedded test values (inputs + every tensor)
    in_channels: int
    out_channels: int  # channels of one output frame; per-window output: elements of a FLAT one
    cache_shape: tuple[int, int] | None  # (channels, frames), NCW as in the graph
    in_exponent: int
    out_exponent: int
    unlocked: list[str] = field(default_factory=list)  # streaming tensors calibrated on their own
    lint: tuple[str, ...] = ()  # where the chip computes something else than ESP-PPQ's simulation (offline file)
    output: OutputForm = field(default_factory=OutputForm)  # per frame, or one tensor per window (last module)
    tensors: frozenset[str] = frozenset()  # names of the offline graph's variables
    _graphs: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def offline_graph(self):
        """The esp_ppq BaseGraph calibrated on whole sequences, loaded (with ESP-PPQ) on first use.

        A warm run whose derived results are all cached never needs it, nor ESP-PPQ's import.
        """
        return self._graph(self.offline_native)

    @property
    def streaming_graph(self):
        """Explicit models: the locked graph with cache input/output; None for auto models."""
        return self._graph(self.streaming_native)

    def _graph(self, path: Path | None):
        if path is None:
            return None
        if path not in self._graphs:
            import_ppq()
            self._graphs[path] = _load_graph(path)
        return self._graphs[path]


@dataclass
class QuantizedModel:
    """All sub-models of one spec for one target, plus where their artifacts live."""

    spec: ModelSpec
    target: Target
    key: str
    directory: Path
    modules: list[ModuleArtifacts]
    tolerance_lsb: int
    tolerance_reason: str
    # what the sub-models were calibrated on, as the cache entry's manifest.json records it:
    # {"kind": "random", "seed", "sequences"} or {"kind": "calibration_data", "sha256", "shape"};
    # None for an exported model (the harness calibrated nothing)
    calibration_source: dict | None = None
    # what the spec's quant_setting changed in ESP-PPQ's espdl setting: {"dotted.field": value} ({} without one)
    setting_changes: dict = field(default_factory=dict)

    @property
    def bits(self) -> int:
        return self.spec.bits

    @property
    def input_exponent(self) -> int:
        return self.modules[0].in_exponent

    @property
    def output(self) -> OutputForm:
        """The last module's output form (the only one that may be per window)."""
        return self.modules[-1].output


@dataclass(frozen=True)
class StreamingExport:
    """One streaming ``.espdl`` and the tensor names a runner needs to drive it."""

    module: int
    window: int
    path: Path
    sha256: str
    input: str
    output: str
    cache_input: str | None
    cache_output: str | None
    in_exponent: int
    out_exponent: int
    layouts: dict[str, str]  # on-chip layout of input/output/cache tensors: "NWC" (frame axis 1) or "NCW" (axis 2)
    out_channels: int  # channels of one output frame (FLAT: elements of the output)
    out_frames: int  # output frames of one window: the window, or a per-window output's own (FLAT: 1)
    per_window: bool = False  # one output per window (compared with the offline model on the prefix)
    lint: tuple[str, ...] = ()  # where the chip computes something else than ESP-PPQ's simulation


def frame_shape(layout: str, frames: int, channels: int) -> list[int]:
    """On-chip shape of ``frames`` frames of ``channels`` channels in ``layout``."""
    return [1, frames, channels] if layout == "NWC" else [1, channels, frames]


def exponent_of(scale) -> int:
    """ESP-DL exponent of a power-of-two scale (``value = q * 2**exponent``)."""
    return int(round(math.log2(float(scale.flatten()[0]))))


def var_config(graph, name: str):
    """The quantization config the exporter binds to a variable (producer's, else first consumer's)."""
    from esp_ppq.IR.quantize import QuantableOperation

    var = graph.variables[name]
    op = var.source_op
    if isinstance(op, QuantableOperation):
        return op.output_quant_config[op.outputs.index(var)]
    config = bound_config(graph, var)  # a graph input: its first quantized reader's
    if config is not None:
        return config
    raise QuantizationError(f"tensor '{name}' is not quantized", "check the model's dispatching (all ops int)")


def var_exponent(graph, name: str) -> int:
    return exponent_of(var_config(graph, name).scale)


def harness_digest() -> str:
    """What, besides the model, decides the artifacts: this code and the tool versions."""
    h = hashlib.sha256()
    h.update(code_digest("harness.ppq.quantize", "harness.ppq.env", "harness.ppq.export_repairs", "harness.compat").encode())
    for dist in _VERSIONED:
        h.update(f"{dist}={metadata.version(dist)}".encode())
    return h.hexdigest()


class Quantizer:
    """Session-wide quantization service: disk cache, memory cache and counters."""

    def __init__(self, cache_dir: Path):
        self.cache_dir = Path(cache_dir)
        self.calibrations = 0
        self.exports = 0
        self._models: dict[tuple[str, str], QuantizedModel] = {}
        self._exports: dict[tuple[str, int], list[StreamingExport]] = {}

    # ------------------------------------------------------------------ models
    def model(self, spec: ModelSpec, target: Target) -> QuantizedModel:
        """The quantized sub-models of ``spec`` for ``target`` (calibrating only on a cache miss)."""
        memo = (spec.name, target.name)
        if memo not in self._models:
            if spec.exports is not None:  # the user's own files: nothing to quantize
                from harness.model.exported import exported_model

                self._models[memo] = exported_model(spec, target, self.cache_dir)
            else:
                self._models[memo] = self._load_or_build(spec, target)
        return self._models[memo]

    def _load_or_build(self, spec: ModelSpec, target: Target) -> QuantizedModel:
        digest = spec.source_digest()  # known from the spec index: no sub-models built (nor torch imported) for it
        # A spec with calibration_data is imported and the function called on EVERY run, warm or cold (the spec
        # index cannot vouch for data read from elsewhere): the data's hash is part of the key, so other data is
        # another calibration and the same data a cache hit. Without it: seeded random sequences (config).
        data = spec.calibration_array()
        source = calibration_source(spec, data)
        # quant_setting's effect: its code is in the source digest (the files that define it); whether there is one
        # is keyed too (a spec whose functions were replaced, ModelSpec.with_functions, has the same files)
        setting = "quant_setting" if "quant_setting" in spec.hooks else "espdl_setting"
        submodels = None if digest is not None else self._submodels(spec)
        key = hashlib.sha256(
            "\n".join(
                [digest or spec.source_digest(submodels), spec.config_json(), target.name, str(spec.bits),
                 harness_digest(), json.dumps(source, sort_keys=True), setting]
            ).encode()
        ).hexdigest()
        directory = self.cache_dir / "quantized" / f"{spec.name}-{target.name}-{key[:16]}"
        with exclusive(directory):  # parallel workers (pytest-xdist) calibrate a model once, not once each
            if not _intact(directory):  # missing, or damaged since it was written: calibrate again
                staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
                shutil.rmtree(staging, ignore_errors=True)
                import_ppq()
                self._build(spec, target, submodels or self._submodels(spec), staging, data)
                shutil.rmtree(directory, ignore_errors=True)
                os.replace(staging, directory)
        return _load(spec, target, key, directory)

    @staticmethod
    def _submodels(spec: ModelSpec) -> list:
        import torch

        with torch.random.fork_rng():
            torch.manual_seed(spec.seed)
            submodels = [m.eval() for m in spec.build_submodels(dict(spec.config))]
        if not submodels:
            raise QuantizationError(f"model '{spec.name}' has no sub-models", "build_submodels must return a list")
        return submodels

    def _build(self, spec: ModelSpec, target: Target, submodels: list, out: Path, data=None) -> None:
        """Calibrate every sub-model into ``out``: on ``data`` (``spec.calibration_array()``) when given, else on
        seeded random sequences."""
        import numpy as np
        import torch

        t = spec.sequence_length
        if data is None:
            gen = torch.Generator().manual_seed(spec.seed)
            sequences = torch.randn(spec.calibration_sequences, spec.channels, t, generator=gen)
            test_input = torch.randn(1, spec.channels, t, generator=gen)
        else:  # the user's [S, T, C] frames, channel-first like the graphs: [S, C, T]
            sequences = torch.from_numpy(np.array(data, dtype=np.float32)).permute(0, 2, 1).contiguous()
            test_input = sequences[:1].clone()  # the embedded test values then see data of the real scale
        platform = target.ppq_platform(spec.bits)
        setting_use = _SettingUse(spec, target)
        manifest: dict = {"model": spec.name, "target": target.name, "bits": spec.bits, "modules": [],
                          "calibration": calibration_source(spec, data)}
        prev_scale = None
        residual_graphs = []
        for k, sub in enumerate(submodels):
            with torch.no_grad():
                outputs, test_output = sub(sequences), sub(test_input)
            name = f"m{k}"
            onnx_path = out / f"{name}.offline.onnx"
            self._export_onnx(sub, [sequences[:1]], onnx_path, OFFLINE_IO, out / "logs" / f"{name}.onnx.log",
                              fold_pads=spec.streaming == "auto")
            locks = (lambda g, s=prev_scale: {"input": s}) if prev_scale is not None else None
            offline, _ = self._quantize(
                onnx_path, platform, spec.bits, [s.unsqueeze(0) for s in sequences], [test_input], locks,
                out / "logs" / f"{name}.offline.quantize.log", setting_use,
            )
            setting_use.check_ends(offline, k)
            form = _output_form(sub, outputs, sequences[:1])
            if form.per_window and k < len(submodels) - 1:
                raise ConfigError(
                    f"sub-model {k} of '{spec.name}' returns one output per call ({list(outputs.shape)} for "
                    f"{t} frames), not one frame per input frame, so the next sub-model cannot stream on it",
                    "only the last sub-model may end in a per-window head; merge the head into the last one",
                )
            entry = {
                "index": k,
                "in_channels": int(sequences.shape[1]),
                "out_channels": int(math.prod(outputs.shape[1:])) if form.flat else int(outputs.shape[1]),
                "cache_shape": None,
                "unlocked": [],
                "output": {"per_window": form.per_window, "shape": list(form.shape), "span": form.span},
                "exponents": [var_exponent(offline, "input"), var_exponent(offline, "output")],
                "tensors": sorted(offline.variables),
            }
            streaming = None
            cache_shape = getattr(sub, "cache_shape", None) if spec.streaming == "explicit" else None
            if cache_shape is not None:
                entry["cache_shape"] = list(cache_shape)
                streaming, unlocked = self._quantize_explicit(spec, platform, sub, sequences, offline, out, name,
                                                              setting_use)
                entry["unlocked"] = unlocked
                if unlocked:
                    residual_graphs.append(k)
            self._export_offline(platform, offline, test_input, out / f"{name}.offline.espdl")
            _save_graph(offline, out / f"{name}.offline.native")
            if streaming is not None:
                _save_graph(streaming, out / f"{name}.streaming.native")
            prev_scale = var_config(offline, "output").scale.clone()
            manifest["modules"].append(entry)
            sequences, test_input = outputs, test_output
        setting_use.check_dispatched()
        manifest["quant_setting"] = setting_use.changes
        manifest["tolerance_lsb"], manifest["tolerance_reason"] = spec.tolerance_lsb, spec.tolerance_reason
        out.mkdir(parents=True, exist_ok=True)
        manifest["files"] = {p.name: file_sha256(p) for p in sorted(out.glob("m*.*")) if p.suffix in _CACHED}
        (out / "manifest.json").write_text(json.dumps(manifest, indent=2))
        if residual_graphs:
            _measure_residual(spec, target, out, data)

    def _export_onnx(self, module, example: list, path: Path, io_names, log: Path, fold_pads: bool = False) -> None:
        import onnx
        import torch
        from onnxsim import simplify

        path.parent.mkdir(parents=True, exist_ok=True)
        with ppq_call(f"export {path.name} to ONNX", log):
            torch.onnx.export(
                module, tuple(example), str(path), opset_version=18, do_constant_folding=True, dynamo=False,
                input_names=io_names[0], output_names=io_names[1],
            )
            simplified, ok = simplify(onnx.load(str(path)))
            model = simplified if ok else onnx.load(str(path))
            if fold_pads and fold_shared_pads(model):
                onnx.checker.check_model(model)
            onnx.save(model, str(path))

    def _quantize(self, onnx_path: Path, platform, bits: int, calib: list, example: list,
                  locks: Callable | None, log: Path, setting_use: "_SettingUse | None" = None):
        """ESP-PPQ's quantize_onnx_model, with the calibration pass able to lock scales first.

        ``setting_use``: the spec's ``quant_setting``, applied to ESP-PPQ's espdl setting before dispatching.
        """
        import esp_ppq.lib as PFL
        from esp_ppq.api import QuantizationSettingFactory, dispatch_graph, load_onnx_graph
        from esp_ppq.executor import TorchExecutor
        from esp_ppq.quantization.optim import QuantAlignmentPass, RuntimeCalibrationPass

        setting = QuantizationSettingFactory.espdl_setting(bits)
        if setting_use is not None:  # outside ppq_call: its errors are the spec's, not ESP-PPQ's
            setting = setting_use.apply(setting)
        lock_pass = None
        with ppq_call(f"quantize {onnx_path.stem}", log):
            graph = load_onnx_graph(onnx_import_file=str(onnx_path))
            if setting_use is not None:
                setting_use.found |= set(graph.operations)
            graph = dispatch_graph(graph, platform, setting.dispatcher, setting.dispatching_table)

            class LockingQuantizer(type(PFL.Quantizer(platform, graph))):
                """The platform's quantizer, its calibration pass replaced by one that locks scales first."""

                def build_quant_pipeline(self, s):
                    nonlocal lock_pass
                    passes = list(super().build_quant_pipeline(s))
                    for i, p in enumerate(passes):
                        if isinstance(p, RuntimeCalibrationPass):
                            lock_pass = passes[i] = _locking_calibration(p, locks)
                        elif isinstance(p, QuantAlignmentPass):
                            passes[i] = rnn_alignment(p)
                    return PFL.Pipeline(passes)

            quantizer = LockingQuantizer(graph)  # quantizes ``graph`` in place
            executor = TorchExecutor(graph=graph, device=DEVICE)
            quantizer.quantize(
                inputs=example, calib_dataloader=calib, executor=executor, setting=setting,
                # ESP-PPQ asserts 2 <= steps <= 5000; one sequence is then seen twice (the same ranges)
                calib_steps=max(2, min(len(calib), 5000)), collate_fn=lambda batch: batch,
            )
        if lock_pass is None:
            raise QuantizationError("ESP-PPQ's pipeline has no calibration pass", "use esp-ppq 1.3.x")
        self.calibrations += int(lock_pass.calibrated)
        return graph, lock_pass.unlocked

    def _quantize_explicit(self, spec, platform, sub, sequences, offline, out: Path, name: str,
                           setting_use: "_SettingUse | None" = None):
        """Streaming graph of an explicit-cache sub-model, exponents locked to the offline graph."""
        import torch

        w = spec.calibration_window
        cache_shape = tuple(sub.cache_shape)
        windows = []
        with torch.no_grad():
            for seq in sequences:
                cache = torch.zeros(1, *cache_shape)
                for chunk in torch.split(seq.unsqueeze(0), w, dim=2):
                    windows.append([chunk, cache])
                    _, cache = sub.streaming_forward(chunk, cache)
        onnx_path = out / f"{name}.streaming.onnx"
        example = windows[min(1, len(windows) - 1)]  # the second window (a cache of data), unless there is one only
        self._export_onnx(_streaming_module(sub), example, onnx_path, STREAMING_IO,
                          out / "logs" / f"{name}.streaming.onnx.log")
        _check_streaming_io(onnx_path, f"module {name[1:]} of '{spec.name}'")
        graph, unlocked = self._quantize(
            onnx_path, platform, spec.bits, windows, example, lambda g: corresponding_scales(offline, g),
            out / "logs" / f"{name}.streaming.quantize.log", setting_use,
        )
        conflicts = copy_conflicts(graph)
        if conflicts:
            raise StreamingError(
                f"module {name[1:]} of '{spec.name}': the streaming graph copies tensors the offline graph quantizes "
                f"at different exponents through {conflicts[0]}; the chip keeps one exponent per tensor and copies "
                f"integers, so the streamed result cannot equal the offline one",
                "give each cached tensor its own cache input and output (one per layer) instead of packing them",
            )
        differing = [
            n for n, e in locked_exponents(offline, graph).items() if e[0] != e[1]
        ]
        return graph, sorted(set(unlocked) | set(differing))

    def _export_offline(self, platform, graph, test_input, path: Path) -> None:
        """The offline model with test values for every tensor the chip keeps, for ``Model::test()``."""
        import esp_ppq.lib as PFL
        from esp_ppq.api import generate_test_value

        names = computed_tensors(graph)
        while True:
            with ppq_call(f"export {path.name}", path.with_suffix(".export.log")), repaired_exports():
                values = generate_test_value(graph, DEVICE, [test_input], names)
                PFL.Exporter(platform=platform).export(str(path), graph, values_for_test=values, export_config=True)
            model = load_espdl(path)
            kept = {i.name for i in model.inputs} | {o for n in model.nodes for o in n.outputs}
            if set(names) <= kept:
                break
            # fused away (e.g. a Conv output before its fused ReLU): Model::test() refuses a file naming them
            names = [n for n in names if n in kept]
        self.exports += 1

    # ----------------------------------------------------------------- exports
    def streaming_exports(self, qm: QuantizedModel, window: int) -> list[StreamingExport]:
        """One streaming ``.espdl`` per sub-model for ``window`` frames (cached)."""
        error = qm.spec.window_error(window)
        if error:
            raise ConfigError(error, "pick window sizes that divide it (--window-sizes)")
        if qm.spec.exports is not None:
            from harness.model.exported import streaming_export

            return streaming_export(qm, window)
        table = _table(qm, window)
        kind = f"W{window}" + (f"-table-{hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()[:12]}"
                               if table else "")
        return self._exports_of(qm, kind, lambda m, out: self._export_module(qm, m, window, True, out, table))

    def offline_exports(self, qm: QuantizedModel, frames: int) -> list[StreamingExport]:
        """The offline (cache-free) sub-models exported for ``frames`` frames, run as one window (cached).

        The same quantized graphs the streaming files come from: what a DUT computes on them is the
        offline result the streamed one must equal.
        """
        if qm.spec.exports is not None:
            from harness.model.exported import offline_export

            return offline_export(qm, frames)
        return self._exports_of(qm, f"T{frames}", lambda m, out: self._export_module(qm, m, frames, False, out))

    def _exports_of(self, qm: QuantizedModel, kind: str, export: Callable) -> list[StreamingExport]:
        memo = (qm.key, kind)
        if memo in self._exports:
            return self._exports[memo]
        directory = qm.directory / kind
        manifest = directory / "manifest.json"
        with exclusive(directory):
            exports = _verified_exports(manifest, qm.target)
            if exports is None:  # missing, or damaged since it was written: build it again
                staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
                shutil.rmtree(staging, ignore_errors=True)
                staging.mkdir(parents=True)
                entries = [export(m, staging) for m in qm.modules]
                (staging / "manifest.json").write_text(json.dumps(entries, indent=2))
                shutil.rmtree(directory, ignore_errors=True)
                os.replace(staging, directory)
                exports = _verified_exports(manifest, qm.target)
        self._exports[memo] = exports
        return exports

    def _export_module(self, qm: QuantizedModel, m: ModuleArtifacts, frames: int, streaming: bool, out: Path,
                       table: list[dict] = ()) -> dict:
        """Export module ``m`` for windows of ``frames`` frames: streaming (with its state) or offline.

        ``table``: the spec's manual streaming-table entries (auto models); each module's export gets those that
        name one of its tensors (and, when they name an op, that op reading or writing it).
        """
        platform = qm.target.ppq_platform(qm.bits)
        path = out / f"m{m.index}.espdl"
        shape = [1, m.in_channels, frames]
        what = f"for window {frames}" if streaming else f"offline for {frames} frames"
        stateful = streaming and m.streaming_native is not None
        auto = streaming and qm.spec.streaming == "auto"
        graph = m.streaming_graph if stateful else m.offline_graph
        if auto:
            check_causal(graph, f"module {m.index} of '{qm.spec.name}'")
        log = out / f"m{m.index}.export.log"
        with (
            _advised(log, graph, f"module {m.index} of '{qm.spec.name}' {what}", qm, m.index),
            ppq_call(f"export {qm.spec.name} module {m.index} {what}", log),
            repaired_exports(),
        ):
            exporter = layout_recording_exporter(platform)
            if stateful:  # explicit caches: the locked streaming graph at this window
                _retrace(graph, {"input": shape, "cache": [1, *m.cache_shape]})
                exporter.export(str(path), graph, export_config=True)
            elif auto:  # ESP-PPQ inserts StreamingCache ops into a copy, one per temporal consumer
                graph_input = graph.variables["input"]
                offline_shape = list(graph_input.shape)
                # the exporter wants exactly one differing dimension, also when window == sequence length
                graph_input.shape = [1, m.in_channels, -1]
                try:
                    exporter.export(str(path), graph, auto_streaming=True, streaming_input_shape=shape,
                                    streaming_table=_entries_for(table, graph) or None,
                                    streaming_custom_passes=[per_consumer_caches, layout_transposes(set(graph.operations))],
                                    export_config=True)
                finally:
                    graph_input.shape = offline_shape
            else:  # no state: the offline graph at this length
                _retrace(graph, {"input": shape})
                try:
                    exporter.export(str(path), graph, export_config=True)
                finally:
                    _retrace(graph, {"input": [1, m.in_channels, qm.spec.sequence_length]})
        layouts = exporter.layouts
        self.exports += 1
        names = ["input", "output", *(["cache", "cache_out"] if stateful else [])]
        if m.output.flat:  # not a [1, C, F] tensor: the runner sends its elements (protocol layout FLAT)
            layouts["output"] = "FLAT"
        missing = [n for n in names if layouts.get(n) not in ("NWC", "NCW", "FLAT")]
        if missing:
            raise QuantizationError(
                f"{path}: no 1-D layout recorded for {', '.join(missing)} ({layouts})",
                "streaming models must take and return [1, channels, frames] tensors",
            )
        exps = {n: var_exponent(graph, n) for n in names}
        inputs = {n: (frame_shape(layouts[n], frames, m.in_channels) if n == "input" else None, exps[n]) for n in names[::2]}
        model = load_espdl(path)
        check_interface(model, inputs, {n: exps[n] for n in names[1::2]}, path)
        if auto:
            check_streaming_structure(model, path, frames, table={
                name: entry["window_size"] for e in _entries_for(table, graph) for name, entry in e.items()})
        check_frame_rate(model, qm.target, frames, "output", layouts["output"], path, m.output, m.out_channels)
        return {
            "module": m.index,
            "window": frames,
            "path": path.name,
            "sha256": file_sha256(path),
            "input": "input",
            "output": "output",
            "cache_input": "cache" if stateful else None,
            "cache_output": "cache_out" if stateful else None,
            "in_exponent": exps["input"],
            "out_exponent": exps["output"],
            "layouts": {n: layouts[n] for n in names},
            "out_channels": m.out_channels,
            "out_frames": m.output.frames(frames),
            "per_window": m.output.per_window,
        }


@contextlib.contextmanager
def _advised(log: Path, graph, what: str, qm: QuantizedModel | None = None, module: int | None = None):
    """ESP-PPQ's "insert manually" export error becomes the streaming-table entry to add.

    Tensor names restart per sub-model, so when another sub-model of ``qm`` has a tensor of the same name the
    entry must name the op it is for: the spec's ``streaming_table(config)`` has no sub-model argument, and an
    entry without an op reaches every sub-model that has the tensor.
    """
    try:
        yield
    except QuantizationError as exc:
        text = log.read_text() if log.is_file() else ""
        advice = streaming_table_advice(text, graph, what)
        if advice is not None and qm is not None:
            advice = _for_one_module(advice, text, graph, qm, module)
        raise (advice or exc) from None


def _for_one_module(advice, log_text: str, graph, qm: QuantizedModel, module: int):
    """``advice`` whose entry names its op, and says which sub-models it reaches, when the tensor it names is
    also a tensor of another sub-model (ESP-PPQ's StreamingTable is keyed by tensor name only)."""
    from harness.ppq.export_repairs import UNSUPPORTED_OP, last_frames

    match = UNSUPPORTED_OP.search(log_text)
    op = graph.operations.get(match.group(1)) if match else None
    if op is None or not op.inputs:
        return advice
    data = op.inputs[0].name
    others = [k for k, m in enumerate(qm.modules) if k != module and data in m.tensors]
    if not others:
        return advice
    fix = advice.fix
    frames = last_frames(op) if op.type == "Slice" else None
    if frames is not None:  # the one entry the advice gives without its op
        fix = fix.replace(f"insert_streaming_cache_on_var({data!r}, {frames})",
                          f"insert_streaming_cache_on_var({data!r}, {frames}, {op.name!r})")
    shared = [k for k in others if op.name in _touching(qm.modules[k].offline_graph, data)]
    if shared:  # the op name does not single it out: say where else it applies
        verb = "has" if len(shared) == 1 else "have"
        note = f"the entry also reaches {_modules(shared)}, which {verb} an op {op.name!r} at a tensor {data!r} too"
    else:
        verb = "has" if len(others) == 1 else "have"
        note = f"the op name keeps the entry to sub-model {module}: {_modules(others)} also {verb} a tensor {data!r}"
    return type(advice)(advice.cause, f"{fix}; {note}")


def _modules(indices: list[int]) -> str:
    """'sub-model 1', 'sub-models 0 and 2': the words the messages name sub-models with."""
    return (f"sub-model {indices[0]}" if len(indices) == 1
            else f"sub-models {', '.join(map(str, indices[:-1]))} and {indices[-1]}")


def _touching(graph, tensor: str) -> set[str]:
    """Names of the ops of ``graph`` that read or write ``tensor`` (an entry's op must be one of them)."""
    var = graph.variables.get(tensor)
    if var is None:
        return set()
    return {op.name for op in var.dest_ops} | ({var.source_op.name} if var.source_op is not None else set())


def _entries_for(table: list[dict], graph) -> list[dict]:
    """The streaming-table entries that apply to ``graph``: its tensor, and the op they name (if any) reading or
    writing it there. ESP-PPQ looks the op up in every graph it gets the entry for, so another sub-model's op
    would fail deep inside its exporter."""
    return [e for e in table if all(name in graph.variables and (entry.get("op_name") is None
                                                                 or entry["op_name"] in _touching(graph, name))
                                    for name, entry in e.items())]


def _table(qm: QuantizedModel, window: int) -> list[dict]:
    """The spec's streaming-table entries for ``window``, checked, kept in the model's cache entry.

    The entry's key covers the spec's sources and ESP-PPQ's version, the table's inputs: a warm run reads it
    instead of calling the spec (whose tables call ESP-PPQ, imported for nothing else then).
    """
    if "streaming_table" not in qm.spec.hooks:
        return []
    path = qm.directory / "tables" / f"W{window}.json"
    with contextlib.suppress(OSError, ValueError):
        kept = json.loads(path.read_text())
        if isinstance(kept, list) and all(isinstance(e, dict) and len(e) == 1 and all(isinstance(v, dict) for v in
                                                                                      e.values()) for e in kept):
            return kept
    table = qm.spec.table_for(window)
    _check_table(qm, table)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps(table, sort_keys=True))
    os.replace(staging, path)
    return table


def _check_table(qm: QuantizedModel, table: list[dict]) -> None:
    """Every streaming-table entry names a tensor of some sub-model (ESP-PPQ would only log it), and the op it
    names (if any) reads or writes that tensor there. An entry without an op reaches every sub-model that has its
    tensor; when those sub-models read the tensor differently (names restart per sub-model, so one name may be a
    conv's input in one and a head's Slice input in another) it is ambiguous and refused."""
    import difflib

    known = {n for m in qm.modules for n in m.tensors}
    for entry in table:
        for name, attrs in entry.items():
            if name not in known:
                close = difflib.get_close_matches(name, sorted(known), n=3)
                raise ConfigError(
                    f"model spec {qm.spec.path}: streaming_table names tensor '{name}', which no sub-model of "
                    f"'{qm.spec.name}' has" + (f" (close: {', '.join(close)})" if close else ""),
                    "use the tensor names of the ONNX export (netron shows them), e.g. '/out_conv/Conv_output_0'",
                )
            having = [m for m in qm.modules if name in m.tensors]
            op, window = attrs.get("op_name"), attrs.get("window_size")
            if op is not None:
                if not any(op in _touching(m.offline_graph, name) for m in having):
                    ops = sorted({o for m in having for o in _touching(m.offline_graph, name)})
                    raise ConfigError(
                        f"model spec {qm.spec.path}: streaming_table entry insert_streaming_cache_on_var({name!r}, "
                        f"{window}, {op!r}) names op {op!r}, which reads or writes tensor {name!r} in no sub-model of "
                        f"'{qm.spec.name}'", f"name one of the ops at that tensor: {', '.join(ops)}",
                    )
                continue
            if len(having) < 2:
                continue
            readings = {m.index: _readers(m.offline_graph, name) for m in having}
            if len({tuple(k for k, _ in r) for r in readings.values()}) == 1:
                continue  # read alike in every sub-model that has it (e.g. repeated blocks): one entry serves all
            _ambiguous(qm, name, window, readings)


def _readers(graph, tensor: str) -> list[tuple[tuple, str]]:
    """How ``graph`` reads ``tensor``: per reader, (op type and what it takes of the time axis, its name)."""
    from harness.espdl.lint import receptive_window

    readers = []
    for op in graph.variables[tensor].dest_ops:
        if op.type in ("Conv", "ConvTranspose", "AveragePool", "MaxPool"):
            kernel, dilation = op.attributes.get("kernel_shape") or [1], op.attributes.get("dilations") or [1]
            detail = receptive_window(int(kernel[0]), int(dilation[0]))
        elif op.type == "Slice":
            detail = tuple(None if v.value is None else tuple(int(x) for x in v.value.reshape(-1).tolist())
                           for v in op.inputs[1:])
        else:
            detail = None
        readers.append(((op.type, detail), op.name))
    if tensor in graph.outputs:
        readers.append((("output", None), tensor))
    return sorted(readers, key=repr)


def _ambiguous(qm: QuantizedModel, name: str, window, readings: dict[int, list]) -> None:
    """One line: the sub-models that have tensor ``name``, how each reads it, and the entry that picks one."""
    seen = "; ".join(f"sub-model {k}: " + (", ".join(f"{kind[0]} {op!r}" for kind, op in r) or "no reader")
                     for k, r in readings.items())
    # an op that only one of them has, and that the exporter cannot stream by itself (not a temporal op)
    unique = [(k, op) for k, r in readings.items() for kind, op in r
              if kind[0] not in ("Conv", "ConvTranspose", "AveragePool", "MaxPool", "output")
              and sum(op in (o for _, o in other) for other in readings.values()) == 1]
    if unique:
        k, op = unique[0]
        fix = (f"name the op the entry is for as its third argument, e.g. insert_streaming_cache_on_var({name!r}, "
               f"{window}, {op!r}) for sub-model {k} only")
    else:
        fix = (f"name the op the entry is for as its third argument (insert_streaming_cache_on_var({name!r}, {window}, "
               f"op)), or rename a module so the sub-models' tensor names differ")
    raise ConfigError(
        f"model spec {qm.spec.path}: streaming_table entry insert_streaming_cache_on_var({name!r}, {window}) is "
        f"ambiguous: tensor {name!r} is in {_modules(list(readings))} of '{qm.spec.name}', read differently ({seen}), "
        f"and an entry without an op applies to every sub-model that has its tensor", fix,
    )


def _output_form(sub, outputs, example) -> OutputForm:
    """Per frame when the output keeps the input's frame axis; else per window, with its span.

    The span is the shortest prefix the float sub-model accepts and answers with the same shape as on
    a whole sequence (a classifier over the last F frames needs F).
    """
    import torch

    t = example.shape[2]
    if outputs.dim() == 3 and outputs.shape[2] == t:
        return OutputForm()
    shape = tuple(int(d) for d in outputs.shape[1:])
    for span in range(1, t + 1):
        try:
            with torch.no_grad():
                if tuple(sub(example[:, :, t - span:]).shape[1:]) == shape:
                    break
        except Exception:  # too short for the model (a slice, a flatten into a Linear): try a longer prefix
            continue
    return OutputForm(per_window=True, shape=shape, span=span)


def calibration_source(spec: ModelSpec, data) -> dict:
    """What ``spec`` is calibrated on, for the cache key and the entry's manifest: the hash and shape of its
    ``calibration_data`` (float32 bytes and shape), or the seed and count of the random sequences."""
    if data is None:
        return {"kind": "random", "seed": spec.seed, "sequences": spec.calibration_sequences}
    h = hashlib.sha256(json.dumps(list(data.shape)).encode())
    h.update(data.astype("<f4", copy=False).tobytes(order="C"))
    return {"kind": "calibration_data", "sha256": h.hexdigest(), "shape": list(data.shape)}


class _SettingUse:
    """The spec's ``quant_setting`` applied to every ESP-PPQ setting of one model's build, checked, with what it
    changed (for the manifest) and the operation names its dispatching table names (each must exist)."""

    def __init__(self, spec: ModelSpec, target: Target):
        self.spec, self.target = spec, target
        self.changes: dict = {}
        self.named: set[str] = set()  # operations the user's dispatching table names
        self.found: set[str] = set()  # operations of the graphs it was applied to

    def apply(self, setting):
        from esp_ppq.api.setting import DispatchingTable

        if "quant_setting" not in self.spec.hooks:
            return setting
        before = _flat_setting(setting)
        setting = self.spec.adjust_setting(setting, self.target.name)
        self._check(setting)
        self.changes = {k: v for k, v in _flat_setting(setting).items() if before.get(k, _ABSENT) != v}
        self.named |= set(setting.dispatching_table.dispatchings) - set(DispatchingTable().dispatchings)
        for value in vars(setting).values():  # passes that collect data on a device (LSQ, bias correction ...)
            if hasattr(value, "collecting_device"):
                value.collecting_device = DEVICE  # the harness runs ESP-PPQ on the CPU only
        return setting

    def _check(self, setting) -> None:
        """What ESP-PPQ would only assert (or silently ignore) deep inside quantization, as one line."""
        from esp_ppq.api import get_target_platform
        from esp_ppq.api.setting import DispatchingTable
        from esp_ppq.core import TargetPlatform
        from esp_ppq.quantization.observer import OBSERVER_TABLE
        from esp_ppq.scheduler import DISPATCHER_TABLE

        fix = "see README, 'Adding a model' (quant_setting)"
        for part in ("quantize_activation_setting", "quantize_parameter_setting"):
            sub = getattr(setting, part)
            methods = [sub.calib_algorithm, *(getattr(sub, "calib_algorithm_per_layer", None) or {}).values()]
            for method in methods:
                if method is not None and str(method).lower() not in OBSERVER_TABLE:
                    raise self._fail(f"sets {part}.calib_algorithm to {method!r}",
                                     f"use one of {', '.join(OBSERVER_TABLE)}; {fix}")
        if isinstance(setting.dispatcher, str) and setting.dispatcher.lower() not in DISPATCHER_TABLE:
            raise self._fail(f"sets dispatcher to {setting.dispatcher!r}", f"use one of {', '.join(DISPATCHER_TABLE)}")
        mine = {get_target_platform(self.target.name, q) for q in ("w8a8", "w8a16", "w16a16", "none")}
        defaults = DispatchingTable().dispatchings
        table = setting.dispatching_table.dispatchings
        for op, value in list(table.items()):
            if op in defaults and defaults[op] == value:
                continue  # ESP-PPQ's own example entries
            try:
                platform = TargetPlatform(value)
            except ValueError:
                platform = None
            if platform is not None:
                table[op] = platform.value  # dispatch_graph takes ints only (DispatchingTable.append converts)
            if platform not in mine:
                names = ", ".join(sorted(p.name for p in mine))
                raise self._fail(
                    f"dispatches '{op}' to {platform.name if platform else repr(value)}, not a platform of "
                    f"{self.target.name} ({names})",
                    "take it from get_target_platform(target, 16) with quant_setting(setting, target)")

    def check_ends(self, graph, module: int) -> None:
        """A sub-model's input and output keep the model's bits: the harness streams ``bits``-wide frames to the
        device and hands them between sub-models (an op dispatched to another width at an end would change it)."""
        if "quant_setting" not in self.spec.hooks:
            return
        from esp_ppq.IR.quantize import QuantableOperation

        var = graph.variables["input"]
        ends = [("input", op, op.input_quant_config[op.inputs.index(var)].num_of_bits) for op in var.dest_ops
                if isinstance(op, QuantableOperation)]  # every reader: ESP-PPQ requantizes no graph input
        ends.append(("output", graph.variables["output"].source_op, var_config(graph, "output").num_of_bits))
        for side, op, bits in ends:
            if bits != self.spec.bits:
                does = "read its input" if side == "input" else "write its output"
                raise self._fail(
                    f"makes module {module} of '{self.spec.name}' {does} at {bits} bits (op "
                    f"'{op.name if op is not None else '?'}'), while the model's bits are {self.spec.bits}",
                    f"dispatch only ops inside a sub-model to another width, not its first or last op; the harness "
                    f"streams {self.spec.bits}-bit frames and hands them between sub-models")

    def check_dispatched(self) -> None:
        """Every operation the dispatching table names is in some sub-model (ESP-PPQ ignores the others)."""
        import difflib

        unknown = sorted(self.named - self.found)
        if unknown:
            close = difflib.get_close_matches(unknown[0], sorted(self.found), n=3)
            raise self._fail(f"dispatches operation '{unknown[0]}', which no sub-model of '{self.spec.name}' has"
                             + (f" (close: {', '.join(close)})" if close else ""),
                             "use the operation names of the ONNX export (netron shows them), e.g. '/conv/Conv'")

    def _fail(self, cause: str, fix: str) -> ConfigError:
        return ConfigError(f"model spec {self.spec.path}: quant_setting() {cause}", fix)


_ABSENT = object()


def _flat_setting(setting) -> dict:
    """ESP-PPQ's setting as {"dotted.field": JSON value} (dispatching entries by platform name)."""
    from esp_ppq.core import TargetPlatform

    try:
        tree = json.loads(setting.to_json())
    except (TypeError, ValueError):  # something to_json cannot encode: compare what it can
        tree = {k: v for k, v in vars(setting).items() if isinstance(v, (bool, int, float, str, type(None)))}
    flat: dict = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, dict) and value and not {"__ppq_enum__", "name"} == set(value):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, dict) and value:
            flat[prefix] = value["name"]
        else:
            flat[prefix] = value

    walk("", tree)
    for k, v in list(flat.items()):
        if k.startswith("dispatching_table.dispatchings.") and isinstance(v, int):
            with contextlib.suppress(ValueError):
                flat[k] = TargetPlatform(v).name
    return flat


def file_sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


_CACHED = (".espdl", ".native")  # what a quantized cache entry's manifest vouches for


def _intact(directory: Path) -> bool:
    """A quantized cache entry whose manifest exists and whose every file still has its recorded sha256."""
    try:
        files = json.loads((directory / "manifest.json").read_text())["files"]
        return bool(files) and all(file_sha256(directory / name) == digest for name, digest in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def _verified_exports(manifest: Path, target: Target) -> list[StreamingExport] | None:
    """The cached exports a manifest lists, or None when it or any file is missing or changed."""
    try:
        entries = json.loads(manifest.read_text())
        if any(file_sha256(manifest.parent / e["path"]) != e["sha256"] for e in entries):
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return [_exported(manifest.parent / e["path"], e, target) for e in entries]


def _exported(path: Path, entry: dict, target: Target) -> StreamingExport:
    """A manifest entry with its file linted (the findings are kept on disk but follow the current rules)."""
    from harness.ppq.derived import cached_lint

    findings = cached_lint(path, target)
    return StreamingExport(**{**entry, "path": path, "lint": findings})


def _check_streaming_io(onnx_path: Path, what: str) -> None:
    """The traced streaming graph must really take and return its cache (ONNX drops unused inputs)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inputs, outputs = [i.name for i in graph.input], [o.name for o in graph.output]
    if "cache" not in inputs:
        raise StreamingError(
            f"{what}: streaming_forward does not use its cache input, so the streamed model would have no state",
            "build the window from the cache (e.g. torch.cat([cache, h], dim=2)) or set cache_shape = None",
        )
    if outputs != STREAMING_IO[1]:
        raise StreamingError(
            f"{what}: streaming_forward returns {len(outputs)} tensors", "return (output, new_cache)"
        )


def _streaming_module(sub):
    """``sub`` with ``streaming_forward(x, cache)`` as its ``forward``, for ONNX export."""
    import torch

    class Streaming(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.sub = sub

        def forward(self, x, cache):
            return self.sub.streaming_forward(x, cache)

    return Streaming().eval()


def _locking_calibration(calibration, locks: Callable | None):
    """ESP-PPQ's calibration pass, preceded by locking the scales ``locks(graph)`` knows.

    Only activations left without a scale are calibrated on data; if there are
    none, no calibration runs at all. ``calibrated`` and ``unlocked`` say what happened.
    """
    import torch
    from esp_ppq.core import QuantizationStates
    from esp_ppq.IR.quantize import QuantableOperation
    from esp_ppq.quantization.optim import QuantizationOptimizationPass

    class LockingCalibrationPass(QuantizationOptimizationPass):
        def __init__(self):
            super().__init__(name="Locked-scale Calibration Pass")
            self.calibrated = False
            self.unlocked: list[str] = []  # tensors no lock covered: calibrated on data

        def optimize(self, graph, **kwargs) -> None:
            scales = locks(graph) if locks else {}
            per_config = getattr(scales, "per_config", {})  # a reader at another width than the producer
            pending = []
            for op in graph.operations.values():
                if not isinstance(op, QuantableOperation):
                    continue
                for cfg, var in op.config_with_variable:
                    if var.is_parameter or cfg.state != QuantizationStates.INITIAL or cfg.dominated_by is not cfg:
                        continue
                    scale = per_config.get((op.name, var.name), scales.get(var.name))
                    if scale is not None:
                        cfg.scale = scale.clone()
                        cfg.offset = torch.zeros_like(cfg.scale)
                        cfg.state = QuantizationStates.ACTIVATED
                    else:
                        pending.append(var.name)
            self.unlocked = sorted(set(pending))
            if pending:
                calibration.optimize(graph=graph, **kwargs)
                self.calibrated = True

    return LockingCalibrationPass()


def corresponding_scales(offline, streaming) -> dict:
    """Scale of every streaming-graph activation that has a counterpart in the offline graph.

    Both graphs are traced from the same module, so an op corresponds to an
    offline op (the one of the same name, else the only structural fit) when
    type and parameters are equal and each activation input comes from the
    counterpart of its offline producer (or from a passive op, e.g. the cache's
    Concat). Tensors moved by passive ops share one exponent on the chip, so
    unmatched ones inherit it.

    A tensor an op reads at another width than its producer writes it (an op the spec's ``quant_setting``
    dispatched to 16 bits in an 8-bit model: ESP-PPQ requantizes between them) has a second scale there; those
    are in the result's ``per_config`` ({(op, tensor): scale}), which the locking pass gives that op's config.
    """
    import torch
    from esp_ppq.IR.quantize import QuantableOperation

    twins: dict[str, object] = {}

    def same_source(var, twin_var) -> bool:
        src = var.source_op
        if src is None:
            return twin_var.source_op is None and twin_var.name == var.name
        if src.name in twins:
            return twin_var.source_op is twins[src.name]
        return src.type in PASSIVE_OPS

    def corresponds(op, twin) -> bool:
        return (
            op.type in (twin.type, twin.attributes.get("original_op_type"))  # int16 activations become LUT ops
            and len(twin.inputs) == len(op.inputs)
            and all(
                a.is_parameter == b.is_parameter
                and (
                    torch.equal(torch.as_tensor(a.value), torch.as_tensor(b.value))
                    if a.is_parameter and a.value is not None
                    else a.is_parameter or same_source(a, b)
                )
                for a, b in zip(op.inputs, twin.inputs)
            )
        )

    def anchored(op) -> bool:  # some input is pinned (graph input or matched producer), not only wildcards
        return any(v.source_op is None or v.source_op.name in twins for v in op.inputs if not v.is_parameter)

    taken: set[str] = set()
    for op in streaming.topological_sort():
        twin = offline.operations.get(op.name)
        if twin is None or twin.name in taken or not corresponds(op, twin):
            # torch numbers unnamed ops per type (/Add, /Add_1): fall back to a unique structural match
            candidates = [
                t for t in offline.operations.values() if t.name not in taken and anchored(op) and corresponds(op, t)
            ]
            twin = candidates[0] if len(candidates) == 1 else None
        if twin is not None:
            twins[op.name] = twin
            taken.add(twin.name)

    def home_bits(var) -> int | None:
        """The width a tensor is held at in the streaming graph: its producer's, else (a graph input) its readers'."""
        src = var.source_op
        if isinstance(src, QuantableOperation):
            return src.output_quant_config[src.outputs.index(var)].num_of_bits
        readers = [r.input_quant_config[r.inputs.index(var)].num_of_bits for r in var.dest_ops
                   if isinstance(r, QuantableOperation)]
        return max(set(readers), key=readers.count) if readers else None

    known = _Scales()
    for name, twin in twins.items():
        op = streaming.operations[name]
        if not (isinstance(op, QuantableOperation) and isinstance(twin, QuantableOperation)):
            continue
        for var, cfg in [*zip(op.inputs, twin.input_quant_config), *zip(op.outputs, twin.output_quant_config)]:
            if var.is_parameter or cfg.scale is None:
                continue
            if var in op.inputs and cfg.num_of_bits != home_bits(var):  # read at another width: this op's own scale
                known.per_config[(op.name, var.name)] = cfg.scale
            else:
                known.setdefault(var.name, cfg.scale)
    changed = True
    while changed:
        changed = False
        for op in streaming.operations.values():
            if op.type not in PASSIVE_OPS:
                continue
            acts = [v for v in (*op.inputs, *op.outputs) if not v.is_parameter]
            source = next((known[v.name] for v in acts if v.name in known), None)
            for v in acts:
                if source is not None and v.name not in known:
                    known[v.name] = source
                    changed = True
    return known


class _Scales(dict):
    """Scales by tensor name, and ``per_config`` ones by (op, tensor) where a reader's width differs."""

    def __init__(self):
        super().__init__()
        self.per_config: dict[tuple[str, str], object] = {}


def copy_conflicts(graph) -> list[str]:
    """Copying ops (Slice, Reshape ...) of a quantized graph whose output is quantized unlike their input.

    ESP-PPQ's simulation rescales there; the chip copies the integers. Locking an explicit streaming graph to
    the offline one produces this when one cache tensor packs tensors the offline graph holds at different
    exponents (two layers' pasts): the streamed result then cannot equal the offline one.
    """
    from esp_ppq.IR.quantize import QuantableOperation

    conflicts = []
    for op in graph.topological_sort():
        if op.type in COPY_OPS and isinstance(op, QuantableOperation) and op.outputs:
            e_in, e_out = exponent_of(op.input_quant_config[0].scale), exponent_of(op.output_quant_config[0].scale)
            if e_in != e_out:
                conflicts.append(f"{op.type} {op.name} ({op.inputs[0].name} {e_in}, {op.outputs[0].name} {e_out})")
    return conflicts


def locked_exponents(offline, streaming) -> dict[str, tuple[int, int]]:
    """(offline, streaming) exponent of every streaming tensor with an offline counterpart."""
    out = {}
    for name, scale in corresponding_scales(offline, streaming).items():
        out[name] = (exponent_of(scale), var_exponent(streaming, name))
    return out


def computed_tensors(graph) -> list[str]:
    """Every tensor a run of ``graph`` computes (graph inputs included; not an absent optional input, named '')."""
    return [v.name for v in graph.variables.values()
            if not v.is_parameter and v.name and (v.source_op is not None or v.name in graph.inputs)]


def _retrace(graph, shapes: dict[str, list[int]]) -> None:
    """Give every variable the shape it has for these input shapes (the exporter writes them)."""
    import torch
    from esp_ppq.executor import TorchExecutor

    for name, shape in shapes.items():
        graph.variables[name].shape = shape
    names = computed_tensors(graph)
    values = TorchExecutor(graph, device=DEVICE).forward({n: torch.zeros(s) for n, s in shapes.items()}, output_names=names)
    for n, v in zip(names, values):
        graph.variables[n].shape = list(v.shape)


@contextlib.contextmanager
def exclusive(directory: Path):
    """Hold ``<directory>.lock`` while the cache entry is checked and built (other processes wait)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    with open(directory.with_name(directory.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _save_graph(graph, path: Path) -> None:
    from esp_ppq.api import export_ppq_graph
    from esp_ppq.core import TargetPlatform

    with ppq_call(f"save {path.name}", path.with_suffix(".save.log")):
        export_ppq_graph(graph, TargetPlatform.NATIVE, str(path))


def _load_graph(path: Path):
    from esp_ppq.api import load_native_graph

    with ppq_call(f"load {path.name}", path.with_suffix(".load.log")):
        return load_native_graph(str(path))


def _load(spec: ModelSpec, target: Target, key: str, directory: Path) -> QuantizedModel:
    from harness.ppq.derived import cached_lint

    manifest = json.loads((directory / "manifest.json").read_text())
    modules = []
    for entry in manifest["modules"]:
        k = entry["index"]
        streaming_path = directory / f"m{k}.streaming.native"
        modules.append(
            ModuleArtifacts(
                index=k,
                offline_native=directory / f"m{k}.offline.native",
                streaming_native=streaming_path if streaming_path.is_file() else None,
                offline_espdl=directory / f"m{k}.offline.espdl",
                in_channels=entry["in_channels"],
                out_channels=entry["out_channels"],
                cache_shape=tuple(entry["cache_shape"]) if entry["cache_shape"] else None,
                in_exponent=entry["exponents"][0],
                out_exponent=entry["exponents"][1],
                unlocked=entry["unlocked"],
                output=OutputForm(**{**entry["output"], "shape": tuple(entry["output"]["shape"])}),
                lint=cached_lint(directory / f"m{k}.offline.espdl", target),
                tensors=frozenset(entry["tensors"]),
            )
        )
    return QuantizedModel(
        spec, target, key, directory, modules, manifest["tolerance_lsb"], manifest["tolerance_reason"],
        manifest.get("calibration"), manifest.get("quant_setting", {}),
    )


def _measure_residual(spec: ModelSpec, target: Target, directory: Path, data=None) -> None:
    """Some streaming tensors could not be locked: measure the residual they cause, make it the tolerance.

    On the calibration data when the spec gives some (random frames would be on another scale), else on seeded
    random frames."""
    from harness.model.frames import Frames, generate_frames, quantize_frames
    from harness.ppq.streaming import offline_on_host, stream_on_host

    qm = _load(spec, target, "", directory)
    if data is None:
        frames = generate_frames(qm, seed=spec.seed + 1000, sequences=spec.calibration_sequences)
    else:
        values, saturation = quantize_frames(qm, data)
        frames = Frames(values, qm.input_exponent, target.name, None, "calibration_data", saturation)
    worst = 0
    for w in range(1, spec.sequence_length + 1):
        if spec.window_error(w) is None:
            streamed = stream_on_host(qm, frames, w)
            expected = offline_on_host(qm, frames)
            worst = max(worst, int(abs(streamed[-1].data.astype(int) - expected[-1].data.astype(int)).max()))
    unlocked = sorted({n for m in qm.modules for n in m.unlocked})
    manifest = json.loads((directory / "manifest.json").read_text())
    if worst > manifest["tolerance_lsb"]:
        manifest["tolerance_lsb"] = worst
        manifest["tolerance_reason"] = (
            f"streaming tensors {', '.join(unlocked)} have no offline counterpart and were calibrated on "
            f"their own; measured residual {worst} LSB over {frames.values.shape[0]} sequences at every window size"
        )
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2))
