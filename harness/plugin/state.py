"""What one run shares between cases: the quantizer, memoized stage results, devices and the report."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import pytest

from harness.plugin.options import Settings


SETTINGS = pytest.StashKey[Settings]()


SESSION = pytest.StashKey["HilSession"]()


@dataclass
class HilSession:
    """Session-wide state: the quantizer, memoized stage results and the report."""

    settings: Settings
    quantizer: object = None
    report: object = None
    _frames: dict = field(default_factory=dict)
    _references: dict = field(default_factory=dict)
    _boards: dict = field(default_factory=dict)
    _firmware: dict = field(default_factory=dict)
    _fidelity: dict = field(default_factory=dict)
    _accuracy: dict = field(default_factory=dict)
    _offline: dict = field(default_factory=dict)  # (target, model, device) -> outputs of the offline exports on it
    devices: object = None  # harness.plugin.boards.HeldDevices
    warned: set = field(default_factory=set)  # lint findings already shown
    plotter: object = None  # harness.signoff.plots.Plotter, started when the cases start
    _parsed: object = None  # harness.emulator.virtual_board.ParsedModels
    _failed: dict = field(default_factory=dict)  # (model, target[, window]) -> the HarnessError raised

    def __post_init__(self) -> None:
        from harness.plugin.boards import HeldDevices
        from harness.ppq.quantize import Quantizer
        from harness.plugin.report import SessionReport

        self.devices = HeldDevices()

        self.quantizer = Quantizer(self.settings.cache_dir)
        self.report = SessionReport(self.settings.dut, [t.name for t in self.settings.targets], self.settings.dut_reason)

    def frames(self, qm):
        from harness.model.frames import FramesWarning, frames_from_file, generate_frames, save_frames

        key = (qm.spec.name, qm.target.name)
        if key not in self._frames:
            path = self.settings.frames_path
            embedded = None
            if qm.spec.exports is not None and not path:  # the user's files: their own test input first
                from harness.model.exported import embedded_frames

                embedded = embedded_frames(qm)
            frames = frames_from_file(qm, path) if path else embedded or generate_frames(qm)
            save_frames(frames, self.settings.artifacts_dir / f"{qm.target.name}-{qm.spec.name}")
            self._frames[key] = frames
            if frames.saturation_warning():
                warnings.warn(FramesWarning(f"{qm.target.name} {qm.spec.name}: {frames.saturation_warning()}"))
        return self._frames[key]

    def frames_if_made(self, model: str, target: str):
        """The frames of ``model`` on ``target`` if a case has made them (a report never makes them)."""
        return self._frames.get((model, target))

    def reference(self, qm, length: int | None = None):
        """ESP-PPQ's simulation on the frames (only their first ``length`` frames when given)."""
        from harness.verdict.per_window import prefix
        from harness.ppq.derived import cached_reference

        key = (qm.spec.name, qm.target.name, length)
        if key not in self._references:
            frames = self.frames(qm)
            if qm.spec.exports is not None:  # no ESP-PPQ graph: the offline file's embedded test output, if any
                from harness.model.exported import embedded_reference

                self._references[key] = embedded_reference(qm, frames)
            else:
                self._references[key] = cached_reference(qm, prefix(frames, length) if length else frames)
        return self._references[key]

    def accuracy(self, qm):
        """Float vs quantized on the frames (``harness.ppq.accuracy``); None for exported files (no float model)."""
        from harness.ppq.accuracy import cached_accuracy

        key = (qm.spec.name, qm.target.name)
        if key not in self._accuracy:
            self._accuracy[key] = None if qm.spec.exports is not None else cached_accuracy(qm, self.frames(qm))
        return self._accuracy[key]

    def fidelity(self, qm):
        """ESP-DL's bound on |device offline - ESP-PPQ| for ``qm`` on its frames (``harness.ppq.fidelity``)."""
        from harness.ppq.derived import cached_fidelity_bound

        key = (qm.spec.name, qm.target.name)
        if key not in self._fidelity:
            if qm.spec.exports is not None:
                from harness.ppq.fidelity import FidelityBound

                self._fidelity[key] = FidelityBound((1 if qm.bits == 16 else 0,) * len(qm.modules), (
                    "exported files: the offline file's embedded test output within ESP-DL's Model::test() "
                    "tolerance (int8 exact, int16 ±1); without ESP-PPQ's graph no per-operator bound is measured"))
            else:
                self._fidelity[key] = cached_fidelity_bound(qm, self.frames(qm))
        return self._fidelity[key]

    def board(self, target: str):
        """The virtual board serving ``target``: started on first use (or by ``launch_boards``), and again after
        one died or was retired."""
        board = self._boards.get(target)
        if board is None or board.exit_reason() is not None:
            if board is not None:
                self.devices.drop(f"virtual {target}")
                board.stop()
            board = self._boards[target] = self._new_board(target)
        return board.start()

    def quantized(self, spec, target):
        """``quantizer.model(spec, target)``; its ``HarnessError`` (a spec's function, a bad setting) is kept and
        raised again for the model's later cases instead of calibrating again."""
        return self._once((spec.name, target.name), lambda: self.quantizer.model(spec, target))

    def streaming_exports(self, qm, window: int):
        """``quantizer.streaming_exports(qm, window)``, its ``HarnessError`` (a streaming table the export refuses)
        kept like ``quantized``'s: the window's other cases fail with the same line without exporting again."""
        return self._once((qm.spec.name, qm.target.name, window),
                          lambda: self.quantizer.streaming_exports(qm, window))

    def _once(self, key: tuple, make):
        from harness.errors import HarnessError

        if key in self._failed:
            raise self._failed[key].with_traceback(None)
        try:
            return make()
        except HarnessError as exc:
            self._failed[key] = exc.with_traceback(None)
            raise

    def parsed(self, path):
        """The ``.espdl`` at ``path``, parsed once per content (kept under the cache, as the virtual board keeps it)."""
        import hashlib

        from harness.emulator.virtual_board import ParsedModels

        if self._parsed is None:
            self._parsed = ParsedModels(self.settings.cache_dir / "parsed")
        data = path.read_bytes()
        return self._parsed.get(data, hashlib.sha256(data).digest(), None, path)

    def launch_boards(self) -> None:
        """Power up a virtual board per target now, while pytest collects: the first case finds it running."""
        for target in self.settings.targets:
            if target.name not in self._boards:
                self._boards[target.name] = self._new_board(target.name).launch()

    def _new_board(self, target: str):
        from harness.emulator.virtual_board import VirtualBoard

        log = self.settings.artifacts_dir / "logs" / f"virtual-board-{target}.log"
        return VirtualBoard(target, log, model_cache=self.settings.cache_dir / "parsed")

    def board_if_running(self, target: str):
        """The virtual board serving ``target`` now, if one was started (it may have died since)."""
        return self._boards.get(target)

    def offline_on(self, device, case, qm, frames, length: int):
        """What ``device`` computes on ``qm``'s offline exports for the first ``length`` frames of every sequence
        of ``frames`` (the case's frames), each sequence as one window: run once per device, model and length."""
        from harness.device.dut import stream_pipeline
        from harness.verdict.per_window import prefix

        key = (case.target.name, case.spec.name, device.name, length)
        if key not in self._offline:
            exports = self.quantizer.offline_exports(qm, length)
            self._offline[key] = stream_pipeline(device, exports, prefix(frames, length), length)
        return self._offline[key]

    def device(self, target: str, port: str | None):
        """The device link for a case: the virtual board of ``target``, or the board on ``port``, kept from the
        case before if that passed (``HeldDevices``); and whether it was opened and reset for this case."""
        from harness.plugin.boards import open_board, open_virtual_board

        if port is None:
            board = self.board(target)
            return self.devices.link(f"virtual {target}", lambda: open_virtual_board(board, keep=True))
        return self.devices.link(port, lambda: open_board(self.firmware(target), port, keep=True))

    def device_failed(self, name: str, virtual_target: str | None = None, port: str | None = None) -> None:
        """A case failed on device ``name``: forget what it computed and close it (the next case opens and resets
        it afresh); a virtual board gets a fresh process."""
        self._offline = {k: v for k, v in self._offline.items() if k[2] != name}
        self.devices.drop(port if port is not None else f"virtual {virtual_target}")
        board = self._boards.pop(virtual_target, None) if virtual_target else None
        if board is not None:
            board.stop()

    def firmware(self, target: str):
        """The runner built for ``target`` (built at most once per session, and only if its sources changed)."""
        from harness.device.firmware import ensure_built

        if target not in self._firmware:
            log = self.settings.artifacts_dir / "logs" / f"build-{target}.log"
            self._firmware[target], _ = ensure_built(target, log)
        return self._firmware[target]

    def close(self) -> None:
        self.devices.close()
        for board in self._boards.values():
            board.stop()


def session_of(config: pytest.Config) -> HilSession:
    if SESSION not in config.stash:
        config.stash[SESSION] = HilSession(config.stash[SETTINGS])
    return config.stash[SESSION]
