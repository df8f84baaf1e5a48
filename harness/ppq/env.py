"""Running ESP-PPQ safely inside a long pytest session.

ESP-PPQ only *logs* streaming and export problems (``[ERROR]`` lines), keeps
process-wide singletons (``StreamingTable``, ``ExporterPatternInfo``) that a
failed export leaves dirty, prints a banner, progress bars and coloured
``[INFO]`` lines on the stdout it captured at import time, and defaults its
executors to CUDA. ``ppq_call`` runs one quantization or export with all of
that contained: output goes to a log file, global state is reset before and
after, and any ``[ERROR]`` line becomes a ``QuantizationError``.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import warnings
from pathlib import Path
from typing import Iterator

from harness import compat
from harness.errors import QuantizationError

DEVICE = "cpu"  # TorchExecutor defaults to "cuda"; every executor here gets this
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_imported = False


def import_ppq() -> None:
    """Import esp_ppq once, with its banner and import-time chatter swallowed."""
    global _imported
    if _imported:
        return
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        importlib.import_module("esp_ppq.api")  # imports esp_ppq itself first
    _imported = True


def reset_global_state() -> None:
    """Clear ESP-PPQ's export singletons (a failed export leaves them dirty)."""
    from esp_ppq.api import StreamingTable

    compat.pattern_info().reset()
    table = StreamingTable()
    table.reset()
    table.set_input_frame_axis(1)
    table.set_input_frame_num(1)


def layout_recording_exporter(platform):
    """ESP-PPQ's exporter for ``platform`` that records the on-chip layout of each tensor in ``.layouts``.

    The ``.espdl`` stores permuted shapes but not the permutation, and a graph
    input that feeds e.g. a Concat keeps its NCW layout. The exporter knows
    once it has prepared the graph (and forgets at the end of ``export``), so
    a subclass reads the permutations right after ``prepare_graph``.
    """
    import esp_ppq.lib as PFL

    class LayoutRecordingExporter(type(PFL.Exporter(platform=platform))):
        def __init__(self) -> None:
            super().__init__()
            self.layouts: dict[str, str] = {}

        def prepare_graph(self, graph, *args, **kwargs):
            graph = super().prepare_graph(graph, *args, **kwargs)
            info = compat.pattern_info()
            for name in graph.variables:
                perm = info.get_var_permute(name)
                if perm is not None and len(perm) == 3:
                    perm = list(perm)
                    self.layouts[name] = "NWC" if perm == [0, 2, 1] else "NCW" if perm == [0, 1, 2] else str(perm)
            return graph

    return LayoutRecordingExporter()


def precise_copy(graph):
    """Copy of an int16 graph whose quantized ops compute in float64 (ESP-PPQ's high-precision int16 mode).

    ESP-PPQ's float32 sums of int16 products are inexact, and how they round depends on how many frames
    a conv sees at once. Only the executor's float width changes: every rounding comes from the ops'
    quantization configs. ESP-PPQ 1.3.12 registers no executor for its esp32p4 high-precision platform
    (``ESPDL_H_PRE_INT16``), so the esp32s3 one, which differs only in its rounding policy, stands in.
    """
    from esp_ppq.core import TargetPlatform
    from esp_ppq.IR.quantize import QuantableOperation

    copy = graph.copy()
    for op in copy.operations.values():
        if isinstance(op, QuantableOperation):
            op.platform = TargetPlatform.ESPDL_S3_H_PRE_INT16
    return copy


@contextlib.contextmanager
def repaired_exports() -> Iterator[None]:
    """ESP-PPQ's exporter with the harness's repairs in place of two of its patterns: ``RequantGraphInputs`` for
    its requantize pattern and ``PackedMatMul`` for its MatMul layout (``harness.ppq.export_repairs``).

    Also for exporters created inside the block (the tests' model zoo makes its own).
    """
    from harness.ppq.export_repairs import packed_matmul_pattern, requant_graph_inputs_pattern

    with compat.exporter_patterns(requant_graph_inputs_pattern(), packed_matmul_pattern()):
        yield


class _Tee(io.TextIOBase):
    """Collects everything ESP-PPQ writes, for the log file and the [ERROR] scan."""

    def __init__(self) -> None:
        self.parts: list[str] = []

    def write(self, s: str) -> int:
        self.parts.append(s)
        return len(s)

    def text(self) -> str:
        return _ANSI.sub("", "".join(self.parts)).replace("\r", "\n")


@contextlib.contextmanager
def ppq_call(what: str, log_path: Path) -> Iterator[None]:
    """Run one ESP-PPQ step isolated; raise ``QuantizationError`` on any ``[ERROR]`` line."""
    import_ppq()
    sink = _Tee()
    handlers = [h for lg in compat.ppq_loggers() for h in compat.logger_handlers(lg) if compat.is_console_handler(h)]
    saved = [compat.handler_stream(h) for h in handlers]
    reset_global_state()
    failure: BaseException | None = None
    try:
        for h in handlers:
            compat.set_handler_stream(h, sink)
        with (
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
            warnings.catch_warnings(),
        ):
            warnings.simplefilter("ignore")
            yield
    except BaseException as exc:  # re-raised below, after the log is written
        failure = exc
    finally:
        for h, stream in zip(handlers, saved):
            compat.set_handler_stream(h, stream)
        reset_global_state()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        text = sink.text()
        log_path.write_text(text)
    errors = [line.split("]:", 1)[-1].strip() for line in text.splitlines() if "[ERROR]" in line]
    if failure is not None:
        if isinstance(failure, QuantizationError) or not isinstance(failure, Exception):
            raise failure
        raise QuantizationError(
            f"ESP-PPQ failed to {what}: {type(failure).__name__}: {str(failure).strip().splitlines()[0] if str(failure).strip() else ''}",
            f"see {log_path} for ESP-PPQ's output; check the model against ESP-PPQ's supported ops",
        ) from failure
    if errors:
        raise QuantizationError(
            f"ESP-PPQ reported an error while trying to {what}: {errors[0]}"
            + (f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""),
            f"fix the model (see {log_path}); ESP-PPQ only logs these, the exported model would be wrong",
        )
