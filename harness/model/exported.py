"""Bring-your-own exports: cases for ``.espdl`` files a user's own pipeline made (``STREAMING = "exported"``).

There is no torch module and no ESP-PPQ graph, only files, so the harness
judges what files allow:

* **streaming exactness**, as for any model: each streaming file on the DUT
  against the offline file on the same DUT. A per-window output (a classifier
  head) can only be judged on the window whose prefix is the offline file's
  whole sequence, the last one: that is what ESP-DL's streaming tutorial
  asserts on the chip.
* **arithmetic fidelity** against the offline file's embedded test output
  (ESP-PPQ's simulation at export time), when the file has one and the frames
  are its embedded test input, within ``Model::test()``'s tolerance (int8
  exact, int16 ±1).

Every file is linted like the harness's own exports (streaming wiring, frame
rate), so a file ESP-PPQ 1.3.12 wired wrong fails with the cause.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import ConfigError, EspdlFormatError
from harness.espdl.reader import EspdlModel, load_espdl
from harness.model.frames import Frames
from harness.targets import TARGETS
from harness.tensors import QTensor

_FIX = ('EXPORTS = {"esp32p4": {"offline": "model.espdl", "streaming": {3: "streaming_model.espdl"}}}, '
        "paths relative to the spec")


@dataclass(frozen=True)
class ExportedFile:
    """One file and how its single input and output carry frames."""

    path: Path
    model: EspdlModel
    input_layout: str  # "NWC" or "NCW"
    output_layout: str  # "NWC", "NCW" or "FLAT"
    frames: int  # input frames per call

    @property
    def input(self):
        return self.model.inputs[0]

    @property
    def output(self):
        return self.model.outputs[0]

    @property
    def channels(self) -> int:
        return self.input.shape[2] if self.input_layout == "NWC" else self.input.shape[1]

    def output_frames(self) -> int:
        shape = self.output.shape
        return 1 if self.output_layout == "FLAT" else shape[1] if self.output_layout == "NWC" else shape[2]

    def output_channels(self) -> int:
        shape = self.output.shape
        if self.output_layout == "FLAT":
            return int(np.prod(shape))
        return shape[2] if self.output_layout == "NWC" else shape[1]

    @property
    def sha256(self) -> str:
        return self.model.sha256


@dataclass(frozen=True)
class ExportedFiles:
    """A target's offline file and its streaming files by window size."""

    offline: ExportedFile
    streaming: dict[int, ExportedFile]

    @property
    def per_window(self) -> bool:
        """The output is not one frame per input frame (a head): judged on the last window only."""
        o = self.offline
        return o.output_layout == "FLAT" or o.output_frames() != o.frames


def _fail(path: Path, cause: str, fix: str = _FIX) -> ConfigError:
    return ConfigError(f"model spec {path}: {cause}", fix)


def _read(spec_path: Path, value, what: str) -> tuple[Path, EspdlModel]:
    if not isinstance(value, (str, Path)):
        raise _fail(spec_path, f"{what} is {value!r}, not a path")
    path = (spec_path.parent / value).resolve()
    if not path.is_file():
        raise _fail(spec_path, f"{what} {path} does not exist", "fix the path (relative to the spec file)")
    try:
        model = load_espdl(path)
    except EspdlFormatError as exc:
        raise _fail(spec_path, f"{what} {path} cannot be read: {exc.cause}", "export it again with ESP-PPQ") from None
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise _fail(spec_path, f"{what} {path} has {len(model.inputs)} inputs and {len(model.outputs)} outputs",
                    "give files with one input and one output; state stays inside (StreamingCache ops)")
    if len(model.inputs[0].shape) != 3 or model.inputs[0].shape[0] != 1:
        raise _fail(spec_path, f"{what} {path}: input shape {list(model.inputs[0].shape)} is not [1, frames, channels]",
                    "export the model with a 1-D (time) input")
    return path, model


def _frame_axis(offline: EspdlModel, streaming: list[EspdlModel]) -> int:
    """The input axis whose size differs between the offline and the streaming files (1 when none does: NWC)."""
    base = offline.inputs[0].shape
    for m in streaming:
        differs = [a for a in (1, 2) if m.inputs[0].shape[a] != base[a]]
        if len(differs) == 1:
            return differs[0]
    return 1


def _output_layout(model: EspdlModel, frames: int, axis: int) -> str:
    shape = model.outputs[0].shape
    if len(shape) != 3 or shape[0] != 1:
        return "FLAT"
    if shape[axis] == frames or shape[3 - axis] != frames:  # the input's order, unless only the other axis fits
        return "NWC" if axis == 1 else "NCW"
    return "NCW" if axis == 1 else "NWC"


def load_exported_spec(module, path: Path, name: str, config: dict):
    """A ``STREAMING = "exported"`` spec: every file read and checked, the model's shape taken from them."""
    from harness.model.spec import ModelSpec

    exports = getattr(module, "EXPORTS", None)
    if not isinstance(exports, dict) or not exports:
        raise _fail(path, "EXPORTS is missing or empty")
    files: dict[str, ExportedFiles] = {}
    shapes = set()
    for target, entry in exports.items():
        if target not in TARGETS:
            raise _fail(path, f"EXPORTS names target {target!r}", f"use {', '.join(TARGETS)}")
        if not isinstance(entry, dict) or set(entry) != {"offline", "streaming"} or not isinstance(entry["streaming"], dict) \
                or not entry["streaming"]:
            raise _fail(path, f"EXPORTS[{target!r}] is {entry!r:.100}")
        offline_path, offline = _read(path, entry["offline"], f"EXPORTS[{target!r}]['offline']")
        streaming = {}
        for window, value in entry["streaming"].items():
            if not isinstance(window, int) or window < 1:
                raise _fail(path, f"EXPORTS[{target!r}]['streaming'] has window {window!r}", "key each file by its window size (int)")
            streaming[window] = _read(path, value, f"EXPORTS[{target!r}]['streaming'][{window}]")
        axis = _frame_axis(offline, [m for _, m in streaming.values()])
        layout = "NWC" if axis == 1 else "NCW"
        t = offline.inputs[0].shape[axis]
        offline_file = ExportedFile(offline_path, offline, layout, _output_layout(offline, t, axis), t)
        by_window = {}
        for window, (p, m) in sorted(streaming.items()):
            if m.inputs[0].shape[axis] != window:
                raise _fail(path, f"{p} takes {list(m.inputs[0].shape)} ({layout}), not windows of {window} frames",
                            f"key it by its own window size, {m.inputs[0].shape[axis]}")
            by_window[window] = ExportedFile(p, m, layout, _output_layout(m, window, axis), window)
        shapes.add((offline_file.channels, t, 16 if offline.inputs[0].dtype == "int16" else 8))
        files[target] = ExportedFiles(offline_file, by_window)
    if len(shapes) != 1:
        raise _fail(path, f"the targets' offline files differ in (channels, frames, bits): {sorted(shapes)}",
                    "export every target from the same model")
    channels, frames, bits = shapes.pop()
    config = {**config, "channels": channels, "sequence_length": frames, "bits": bits, "sequences": 1}
    return ModelSpec(name, "exported", config, path, files, module=module)


def exported_model(spec, target, cache_dir: Path):
    """The ``QuantizedModel`` view of a target's files: one module, no ESP-PPQ graph."""
    from harness.espdl.lint import lint_model
    from harness.ppq.quantize import ModuleArtifacts, OutputForm, QuantizedModel

    files = spec.exports[target.name]
    o = files.offline
    shape = tuple(o.output.shape[1:])
    form = OutputForm(per_window=True, shape=shape, span=o.frames) if files.per_window else OutputForm()
    module = ModuleArtifacts(
        index=0, offline_native=None, streaming_native=None, offline_espdl=o.path,
        in_channels=o.channels, out_channels=o.output_channels(), cache_shape=None,
        in_exponent=o.input.exponents[0], out_exponent=o.output.exponents[0],
        lint=tuple(str(f) for f in lint_model(o.model, target)), output=form,
    )
    key = hashlib.sha256("\n".join([o.sha256, *(f.sha256 for f in files.streaming.values())]).encode()).hexdigest()
    tolerance = spec.config["tolerance_lsb"]
    return QuantizedModel(spec, target, key, cache_dir / "exported" / f"{spec.name}-{target.name}-{key[:16]}",
                          [module], tolerance, spec.config["tolerance_reason"])


def export_of(qm, file: ExportedFile, window: int):
    """A file as the ``StreamingExport`` the runners take, linted like the harness's own exports."""
    from harness.espdl.lint import check_frame_rate, check_streaming_structure, lint_model
    from harness.ppq.quantize import StreamingExport

    m = qm.modules[0]
    if file.frames != qm.spec.sequence_length:  # a streaming file: its wiring must be one the chip runs
        check_streaming_structure(file.model, file.path, window)
    check_frame_rate(file.model, qm.target, window, file.output.name, file.output_layout, file.path, m.output,
                     m.out_channels)
    return StreamingExport(
        module=0, window=window, path=file.path, sha256=file.sha256, input=file.input.name, output=file.output.name,
        cache_input=None, cache_output=None, in_exponent=file.input.exponents[0],
        out_exponent=file.output.exponents[0], layouts={"input": file.input_layout, "output": file.output_layout},
        out_channels=file.output_channels(), out_frames=file.output_frames(), per_window=m.output.per_window,
        lint=tuple(str(f) for f in lint_model(file.model, qm.target)),
    )


def streaming_export(qm, window: int) -> list:
    files = qm.spec.exports[qm.target.name]
    if window not in files.streaming:
        raise ConfigError(f"'{qm.spec.name}' has no streaming file for window {window} on {qm.target.name}",
                          f"add it to EXPORTS or use {sorted(files.streaming)}")
    return [export_of(qm, files.streaming[window], window)]


def offline_export(qm, frames: int) -> list:
    files = qm.spec.exports[qm.target.name]
    if frames != files.offline.frames:
        raise ConfigError(
            f"'{qm.spec.name}' has an offline file for {files.offline.frames} frames only, not {frames}",
            "exported models are judged on sequences of the offline file's length",
        )
    return [export_of(qm, files.offline, frames)]


def embedded_frames(qm) -> Frames | None:
    """The offline file's embedded test input as one sequence of frames, or None."""
    o = qm.spec.exports[qm.target.name].offline
    test = o.model.test_inputs.get(o.input.name)
    if test is None:
        return None
    data = np.asarray(test.data).reshape(o.input.shape)[0]
    values = data if o.input_layout == "NWC" else data.T
    return Frames(np.ascontiguousarray(values[None]), qm.input_exponent, qm.target.name, None,
                  f"embedded test input of {o.path}")


def embedded_reference(qm, frames: Frames) -> list[QTensor] | None:
    """The offline file's embedded test output, as the chip holds it, when ``frames`` are its test input."""
    o = qm.spec.exports[qm.target.name].offline
    expected = embedded_frames(qm)
    test = o.model.test_outputs.get(o.output.name)
    if test is None or expected is None or not np.array_equal(expected.values, frames.values):
        return None
    data = np.asarray(test.data).reshape(o.output.shape)
    if qm.output.per_window:
        rows = data.reshape(1, 1, -1) if o.output_layout != "NCW" else data[0].T.reshape(1, 1, -1)
    else:
        rows = (data[0] if o.output_layout == "NWC" else data[0].T)[None]
    return [QTensor(np.ascontiguousarray(rows), o.output.exponents[0])]
