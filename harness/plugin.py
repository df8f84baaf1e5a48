"""pytest plugin: options, the target x model x window parametrization, one fixture per stage.

Stages as fixtures: ``quantized_model`` (stage 1, calibrated once per model and
target), ``streaming_exports`` (stage 1, per window), ``reference`` (stage 2),
``frames`` (stage 3) and ``record_case`` (stage 5, into ``session.json``).
Expensive results are memoized for the session in ``HilSession`` and on disk
in the artifact cache, so parametrized cases share them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness import compat
from harness.dut import DeviceLink, boot_and_hello
from harness.errors import HarnessError
from harness.resources import shipped
from harness.spec import ModelSpec, load_specs
from harness.targets import TARGETS, Target, get_target

DEFAULT_WINDOWS = "1,3,6"
PATH_OPTIONS = ("--model-spec", "--hil-cache-dir", "--artifacts-dir", "--frames-file", "--frames")
# where pytest reads its configuration, and the section that makes a file count
INI_FILES = {"pytest.ini": "", ".pytest.ini": "", "pyproject.toml": "[tool.pytest", "tox.ini": "[pytest]",
             "setup.cfg": "[tool:pytest]"}
# the harness's options and the same-named fixtures that hand their values to cases (option dest -> help)
OPTIONS = ("window_sizes", "models", "model_spec", "artifacts_dir", "frames_file", "hil_dut", "hil_cache_dir")


@dataclass(frozen=True)
class Case:
    """One parametrized case: a model streamed to a target in windows of ``window`` frames."""

    target: Target
    spec: ModelSpec
    window: int

    @property
    def id(self) -> str:
        return f"{self.target.name}-{self.spec.name}-W{self.window}"


@dataclass(frozen=True)
class ModelCase:
    """A model on a target, independent of the window size."""

    target: Target
    spec: ModelSpec

    @property
    def id(self) -> str:
        return f"{self.target.name}-{self.spec.name}"


@dataclass
class Settings:
    """Validated command-line settings."""

    targets: list[Target]
    windows: list[int]
    specs: list[ModelSpec]
    artifacts_dir: Path
    cache_dir: Path
    frames_path: Path | None
    dut: str  # "virtual" or "board": what the streaming cases run on
    dut_reason: str  # why (shown in the run header)
    ports: dict[str, list[str]] = field(default_factory=dict)  # boards: serial ports per target

    def cases(self) -> list[Case]:
        return [Case(t, s, w) for t in self.targets for s in self.specs for w in s.windows(t.name, self.windows)]

    def model_cases(self) -> list[ModelCase]:
        return [ModelCase(t, s) for t in self.targets for s in self.specs if s.windows(t.name, self.windows)]


def _split(value: str | None) -> list[str]:
    return [v for v in re.split(r"[,|\s]+", value or "") if v]


def pytest_addoption(parser: pytest.Parser) -> None:
    """The harness's own options; ``--target`` and ``--port`` are pytest-embedded's, shared with the same meaning."""
    group = parser.getgroup("espdl-stream", "ESP-DL streaming hardware-in-the-loop (pytest-espdl-stream)")
    group.addoption("--window-sizes", default=DEFAULT_WINDOWS, metavar="W,W,...",
                    help=f"frames per streamed window, each dividing the models' sequence length. Default: {DEFAULT_WINDOWS}")
    group.addoption("--models", default=None, metavar="NAME,...",
                    help="model names to run (shipped or from --model-spec). Default: the --model-spec models if any, else every "
                         "shipped model")
    group.addoption("--model-spec", action="append", default=[], metavar="PATH",
                    help="a model spec file to add (repeatable). Default: none")
    group.addoption("--artifacts-dir", default="artifacts", metavar="DIR",
                    help="where session.json, report.md, frames and case streams go. Default: artifacts (under the rootdir)")
    group.addoption("--frames-file", "--frames", dest="frames_file", default=None, metavar="NPY",
                    help="float frames [T, C] or [S, T, C] instead of generated ones. Default: generated from each "
                         "model's seed (an exported model's embedded test input)")
    group.addoption(
        "--hil-dut", "--dut", dest="hil_dut", default="auto", choices=("auto", "virtual", "board"),
        help="device under test: board (never falls back), virtual, or auto (a board if one is found, else the virtual "
             "board; any --port asks for a board). Default: auto",
    )
    group.addoption("--hil-cache-dir", default=None, metavar="DIR",
                    help="cache of quantized models and .espdl exports. Default: .hil-cache (under the rootdir)")


def _settings(config: pytest.Config) -> Settings:
    # relative paths: from the ini file's directory, or where pytest was started when there is none
    root = config.rootpath if config.inipath is not None else config.invocation_params.dir

    def under_root(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else root / path

    targets_opt = _split(config.getoption("target", None))
    targets = [get_target(t) for t in targets_opt] if targets_opt and targets_opt != ["auto"] else list(TARGETS.values())
    windows = []
    for w in _split(config.getoption("window_sizes")):
        if not w.isdigit() or int(w) < 1:
            raise HarnessError(f"--window-sizes: '{w}' is not a positive integer", "give e.g. --window-sizes 1,3,6")
        windows.append(int(w))
    specs = load_specs(config.getoption("model_spec"), _split(config.getoption("models")) or None)
    for spec in specs:
        for w in windows:
            error = spec.window_error(w)
            if error:
                raise HarnessError(f"--window-sizes: {error}", "pass window sizes that divide it")
    frames = config.getoption("frames_file")
    if frames:
        _check_frames(under_root(frames), specs, windows)
    cache = config.getoption("hil_cache_dir")
    dut, dut_reason, ports = _choose_dut(config.getoption("hil_dut"), [t.name for t in targets], config.getoption("port", None))
    return Settings(
        targets=targets,
        windows=windows,
        specs=specs,
        artifacts_dir=under_root(config.getoption("artifacts_dir")),
        cache_dir=under_root(cache) if cache else root / ".hil-cache",
        frames_path=under_root(frames) if frames else None,
        dut=dut,
        dut_reason=dut_reason,
        ports=ports,
    )


def _check_frames(path: Path, specs: list[ModelSpec], windows: list[int]) -> None:
    """A ``--frames`` file every selected model can stream at every window size, or one line why not."""
    from harness.frames import check_frames_shape, load_frames_file

    floats = load_frames_file(path)
    for spec in specs:
        length = check_frames_shape(floats, path, spec).shape[1]
        bad = [w for w in windows if length % w]
        if bad:
            raise HarnessError(f"--frames {path}: sequences of {length} frames cannot be cut into windows of "
                               f"{', '.join(map(str, bad))} frames", "pass --window-sizes that divide it")


def _choose_dut(requested: str, targets: list[str], port_option: str | None) -> tuple[str, str, dict]:
    """Which device the streaming cases run on, why, and (boards) the ports per target."""
    from harness.firmware import board_ports, board_unavailable, parse_ports

    if requested == "virtual":
        return "virtual", "requested with --dut virtual", {}
    if port_option:  # a port names a board: never fall back to the virtual one
        requested = "board"
    missing = board_unavailable(targets, port_option)
    if missing is None:
        ports = parse_ports(port_option, targets) if port_option else {t: board_ports() for t in targets}
        listed = "; ".join(f"{t} on {', '.join(p)}" for t, p in ports.items())
        return "board", f"--dut {requested}: {listed}", ports
    cause, fix = missing
    if requested == "board":
        raise HarnessError(f"--dut board{f' --port {port_option}' if port_option else ''}: {cause}", fix)
    return "virtual", f"--dut auto fell back to the virtual board: {cause}", {}


SETTINGS = pytest.StashKey[Settings]()
BOARD_INDEX = pytest.StashKey[int]()
SESSION = pytest.StashKey["HilSession"]()


def pytest_configure(config: pytest.Config) -> None:
    if config.option.help or getattr(config.option, "version", False):
        return
    hidden = _hidden_ini(config)
    if hidden is not None:
        raise pytest.UsageError(
            f"pytest did not read {hidden} because an option value given after a space was taken for a test path "
            f"(pytest looks for its ini file before any plugin's options exist); write path options with '=' "
            f"({', '.join(o + '=...' for o in PATH_OPTIONS[:4])})"
        )
    try:
        config.stash[SETTINGS] = _settings(config)
        if not hasattr(config, "workerinput"):  # the controller checks, once per run
            compat.check()  # the private library internals the harness relies on are still there
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.args_source == pytest.Config.ArgsSource.INVOCATION_DIR:
        # a plain `pytest` in a user's repository: the shipped case matrix runs too (this repository's
        # pytest.ini names test_cases in testpaths, so it never gets here twice)
        config.args = [*config.args, str(shipped("test_cases"))]
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(Recorder(config), "espdl-hil-recorder")


def _hidden_ini(config: pytest.Config) -> Path | None:
    """The ini file pytest missed because an existing path after a space steered its search, or None."""
    if config.inipath is not None:
        return None
    args = list(config.invocation_params.args)
    steered = any(a in PATH_OPTIONS and i + 1 < len(args) and Path(args[i + 1]).expanduser().exists()
                  for i, a in enumerate(args))
    if not steered:
        return None
    start = config.invocation_params.dir
    for directory in (start, *start.parents):
        for name, section in INI_FILES.items():
            candidate = directory / name
            if candidate.is_file() and section in candidate.read_text(errors="ignore"):
                return candidate
    return None


def pytest_report_header(config: pytest.Config) -> list[str]:
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return []
    return [
        f"espdl-hil: DUT = {settings.dut.upper()} ({settings.dut_reason})",
        f"espdl-hil: targets={','.join(t.name for t in settings.targets)} "
        f"models={','.join(s.name for s in settings.specs)} windows={','.join(map(str, settings.windows))}",
        f"espdl-hil: cache={settings.cache_dir} artifacts={settings.artifacts_dir}",
    ]


def _option_fixture(dest: str):
    def value(request: pytest.FixtureRequest):
        return request.config.getoption(dest)

    value.__name__ = dest
    value.__doc__ = f"The value of --{dest.replace('_', '-')} as given (its default when not)."
    return pytest.fixture(scope="session", name=dest)(value)


for _dest in OPTIONS:  # one same-named fixture per option
    globals()[_dest] = _option_fixture(_dest)


@pytest.fixture(scope="session", autouse=True)
def hil_dut_property(request: pytest.FixtureRequest, record_testsuite_property):
    """The DUT kind as a JUnit XML testsuite property (``hil_dut``), so a CI farm can see what ran."""
    settings = request.config.stash.get(SETTINGS, None)
    if settings is not None:
        record_testsuite_property("hil_dut", settings.dut)
        record_testsuite_property("hil_dut_reason", settings.dut_reason)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    settings = metafunc.config.stash[SETTINGS]
    if "hil_case" in metafunc.fixturenames:
        cases = settings.cases()
        metafunc.parametrize("hil_case", cases, ids=[c.id for c in cases])
    elif "hil_model" in metafunc.fixturenames:
        cases = settings.model_cases()
        metafunc.parametrize("hil_model", cases, ids=[c.id for c in cases])


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
    _offline: dict = field(default_factory=dict)  # (target, model, device) -> outputs of the offline exports on it
    warned: set = field(default_factory=set)  # lint findings already shown

    def __post_init__(self) -> None:
        from harness.quantize import Quantizer
        from harness.session import SessionReport

        self.quantizer = Quantizer(self.settings.cache_dir)
        self.report = SessionReport(self.settings.dut, [t.name for t in self.settings.targets], self.settings.dut_reason)

    def frames(self, qm):
        from harness.frames import FramesWarning, frames_from_file, generate_frames, save_frames

        key = (qm.spec.name, qm.target.name)
        if key not in self._frames:
            path = self.settings.frames_path
            embedded = None
            if qm.spec.exports is not None and not path:  # the user's files: their own test input first
                from harness.exported import embedded_frames

                embedded = embedded_frames(qm)
            frames = frames_from_file(qm, path) if path else embedded or generate_frames(qm)
            save_frames(frames, self.settings.artifacts_dir / f"{qm.target.name}-{qm.spec.name}")
            self._frames[key] = frames
            if frames.saturation_warning():
                warnings.warn(FramesWarning(f"{qm.target.name} {qm.spec.name}: {frames.saturation_warning()}"))
        return self._frames[key]

    def reference(self, qm, length: int | None = None):
        """ESP-PPQ's simulation on the frames (only their first ``length`` frames when given)."""
        from harness.per_window import prefix
        from harness.derived import cached_reference

        key = (qm.spec.name, qm.target.name, length)
        if key not in self._references:
            frames = self.frames(qm)
            if qm.spec.exports is not None:  # no ESP-PPQ graph: the offline file's embedded test output, if any
                from harness.exported import embedded_reference

                self._references[key] = embedded_reference(qm, frames)
            else:
                self._references[key] = cached_reference(qm, prefix(frames, length) if length else frames)
        return self._references[key]

    def fidelity(self, qm):
        """ESP-DL's bound on |device offline - ESP-PPQ| for ``qm`` on its frames (``harness.fidelity``)."""
        from harness.derived import cached_fidelity_bound

        key = (qm.spec.name, qm.target.name)
        if key not in self._fidelity:
            if qm.spec.exports is not None:
                from harness.fidelity import FidelityBound

                self._fidelity[key] = FidelityBound((1 if qm.bits == 16 else 0,) * len(qm.modules), (
                    "exported files: the offline file's embedded test output within ESP-DL's Model::test() "
                    "tolerance (int8 exact, int16 ±1); without ESP-PPQ's graph no per-operator bound is measured"))
            else:
                self._fidelity[key] = cached_fidelity_bound(qm, self.frames(qm))
        return self._fidelity[key]

    def board(self, target: str):
        """The virtual board serving ``target``: started on first use, and again after one died or was retired."""
        from harness.virtual_board import VirtualBoard

        board = self._boards.get(target)
        if board is None or board.exit_reason() is not None:
            if board is not None:
                board.stop()
            log = self.settings.artifacts_dir / "logs" / f"virtual-board-{target}.log"
            self._boards[target] = VirtualBoard(target, log).start()
        return self._boards[target]

    def offline_on(self, device, case, run, length: int):
        """The offline exports' outputs on ``device`` for ``case``'s model on ``length`` frames: ``run()`` once
        per device, model and length."""
        key = (case.target.name, case.spec.name, device.name, length)
        if key not in self._offline:
            self._offline[key] = run()
        return self._offline[key]

    def device_failed(self, name: str, virtual_target: str | None = None) -> None:
        """A case failed on device ``name``: forget what it computed; a virtual board gets a fresh process."""
        self._offline = {k: v for k, v in self._offline.items() if k[2] != name}
        board = self._boards.pop(virtual_target, None) if virtual_target else None
        if board is not None:
            board.stop()

    def firmware(self, target: str):
        """The runner built for ``target`` (built at most once per session, and only if its sources changed)."""
        from harness.firmware import ensure_built

        if target not in self._firmware:
            log = self.settings.artifacts_dir / "logs" / f"build-{target}.log"
            self._firmware[target], _ = ensure_built(target, log)
        return self._firmware[target]

    def close(self) -> None:
        for board in self._boards.values():
            board.stop()


def _hil_session(config: pytest.Config) -> HilSession:
    if SESSION not in config.stash:
        config.stash[SESSION] = HilSession(config.stash[SETTINGS])
    return config.stash[SESSION]


@pytest.fixture(scope="session")
def hil_session(pytestconfig: pytest.Config) -> HilSession:
    """The run's shared state: settings, the quantizer and its cache, frames, references, devices, the report."""
    return _hil_session(pytestconfig)


@pytest.fixture
def hil_case() -> Case:
    """The case a test runs: ``Case(target, spec, window)``, one per target x model x window size.

    A test that names it is parametrized over the selected cases (``pytest_generate_tests``)."""
    raise pytest.UsageError("hil_case is parametrized by the espdl-stream plugin; no case was selected")


@pytest.fixture
def hil_model() -> ModelCase:
    """A model on a target, independent of the window size: ``ModelCase(target, spec)``.

    A test that names it is parametrized over the selected models (``pytest_generate_tests``)."""
    raise pytest.UsageError("hil_model is parametrized by the espdl-stream plugin; no model was selected")


@pytest.fixture
def quantized_model(hil_case: Case, hil_session: HilSession):
    """Stage 1: every sub-model of the case's model, calibrated once for its target."""
    return hil_session.quantizer.model(hil_case.spec, hil_case.target)


@pytest.fixture
def streaming_exports(hil_case: Case, hil_session: HilSession, quantized_model):
    """Stage 1: the streaming ``.espdl`` of each sub-model for the case's window size (lint findings warned)."""
    from harness.lint import LintWarning

    exports = hil_session.quantizer.streaming_exports(quantized_model, hil_case.window)
    for e in exports:
        for finding in e.lint:
            key = (hil_case.target.name, hil_case.spec.name, e.module, finding)
            if key not in hil_session.warned:  # once per session, not once per window size
                hil_session.warned.add(key)
                warnings.warn(LintWarning(f"{hil_case.target.name} {hil_case.spec.name} module {e.module}: {finding}"))
    return exports


@pytest.fixture
def frames(hil_case: Case, hil_session: HilSession, quantized_model):
    """Stage 3: the quantized input frames (saved as .npy + manifest in the artifacts dir)."""
    return hil_session.frames(quantized_model)  # --frames was checked against every window at start-up


@pytest.fixture
def reference(hil_case: Case, hil_session: HilSession, quantized_model, frames):
    """Stage 2: each sub-model's offline output on the frames, ``QTensor([S, T, C])`` per module.

    A per-window last module: its output on the prefix ending with each judged window of the case's window
    size (``harness.per_window``).
    """
    from harness.per_window import expected_outputs

    whole = hil_session.reference(quantized_model)
    if whole is None:  # exported files without embedded test values for these frames: fidelity is not judged
        return None
    return expected_outputs(quantized_model, hil_case.window, frames.sequence_length, whole,
                            lambda length: hil_session.reference(quantized_model, length))


@pytest.fixture
def fidelity(hil_session: HilSession, quantized_model, frames):
    """ESP-DL's bound on |device offline - ESP-PPQ| per sub-model, with its reason (``harness.fidelity``)."""
    return hil_session.fidelity(quantized_model)


@pytest.fixture
def device(request: pytest.FixtureRequest, hil_case: Case, hil_session: HilSession):
    """Stage 4: a freshly reset streaming runner for the case's target, behind pytest-embedded's serial DUT.

    A case that fails costs only itself: afterwards the virtual board process is replaced, so the next
    case starts on a fresh device (a board is reset, greeted and given its models again by every case).
    """
    target = hil_case.target.name
    if hil_session.settings.dut == "virtual":
        board = hil_session.board(target)
        with open_virtual_board(board) as link:
            yield link
        if _failed(request.node) or board.exit_reason():
            hil_session.device_failed(link.name, target)
    else:
        port = hil_session.settings.ports[target][request.node.stash.get(BOARD_INDEX, 0)]
        with open_board(hil_session.firmware(target), port) as link:
            yield link
        if _failed(request.node):
            hil_session.device_failed(link.name)


@pytest.fixture
def device_offline(hil_case: Case, hil_session: HilSession, quantized_model, frames, device):
    """Stage 4: what the same device computes on the offline exports, each sequence as one window.

    A per-window last module: on the offline export of each judged prefix (``harness.per_window``).
    Memoized per device and length: it does not depend on the case's window size.
    """
    from harness.dut import stream_pipeline
    from harness.per_window import expected_outputs, prefix

    def on(length: int):
        def run():
            exports = hil_session.quantizer.offline_exports(quantized_model, length)
            return stream_pipeline(device, exports, prefix(frames, length), length)
        return hil_session.offline_on(device, hil_case, run, length)

    whole = on(frames.sequence_length)
    outputs = expected_outputs(quantized_model, hil_case.window, frames.sequence_length, whole.outputs,
                               lambda length: on(length).outputs)
    return dataclasses.replace(whole, outputs=outputs)


def _failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(PHASES, {}).values())


@contextlib.contextmanager
def open_virtual_board(board):
    """The virtual board behind pytest-embedded's ``serial`` service on its pty, reset and greeted."""
    try:
        dut = _create_dut(embedded_services="serial", port=board.port)
    except HarnessError:
        if board.exit_reason():  # the process died before the port could be opened: its cause, not the cable
            raise HarnessError(f"virtual {board.target} board died: {board.exit_reason()}",
                               "see its log; the next case starts a fresh virtual board") from None
        raise
    with _owned(dut.serial):
        link = _link(dut, f"virtual {board.target} board", board.exit_reason)
        _expect_runner(link, boot_and_hello(link, board.reset), board.target)
        yield link


@contextlib.contextmanager
def open_board(firmware, port: str):
    """A board behind pytest-embedded's ``esp,idf`` services: flashed with ``firmware`` only if it runs another build."""
    name = f"{firmware.target} board on {port}"
    dut = _create_dut(embedded_services="esp,idf", app_path=str(firmware.build_dir.parent),
                      build_dir=firmware.build_dir.name, target=firmware.target, port=port, skip_autoflash=True)
    with _owned(dut.serial):
        if firmware.baud:  # esptool connected at the ROM's speed; the runner speaks at its own
            dut.serial.proc.baudrate = firmware.baud
        link = _link(dut, name, None)
        info = boot_and_hello(link, dut.serial.hard_reset)
        if info is None or not firmware.matches(info.build_id):
            dut.serial.flash()  # pytest-embedded's esp,idf flashing of build_<target>
            info = boot_and_hello(link, dut.serial.hard_reset)
            if info is None or not firmware.matches(info.build_id):
                raise HarnessError(
                    f"{name} does not run the runner just flashed (it reports {info.build_id if info else 'nothing'})",
                    "check --port: it may belong to another board",
                )
        _expect_runner(link, info, firmware.target)
        yield link


@contextlib.contextmanager
def _owned(serial):
    """The port is the link's alone while the case runs (pytest-embedded's reader stopped) and closed after it.

    Closed, not handed back: a reader restarted on a port whose device died would spend seconds reconnecting.
    """
    serial.stop_redirect_thread()
    try:
        yield serial
    finally:
        serial.close()


def _link(dut, name: str, liveness):
    def log(level: int, text: str) -> None:  # device logs go to pytest-embedded's dut.log
        compat.serial_queue(dut).put(f"[device] {text}\n".encode())

    return DeviceLink(dut.serial.proc, name, on_log=log, liveness=liveness)


def _expect_runner(link, info, target: str) -> None:
    if info is None:
        raise HarnessError(f"{link.name} sent no boot banner", "check that it runs the streaming runner")
    if info.target != target:
        raise HarnessError(
            f"the device runs {info.target} firmware but the case is for {target}",
            f"flash the {target} runner or pick --target {info.target}",
        )


def _create_dut(**kwargs):
    """pytest-embedded's DUT for these services; connection failures become one clear line."""
    import gc

    from pytest_embedded.dut_factory import DutFactory

    # closing a DUT scans every object the collector tracks (pytest-embedded's gc.get_referrers): the ones
    # alive now (torch, ESP-PPQ, loaded graphs) are frozen, garbage collected first, so the scan skips them
    gc.collect()
    gc.freeze()
    try:
        return DutFactory.create(**kwargs)
    except Exception as exc:  # esptool/pyserial: the board is absent, busy or another chip
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise HarnessError(
            f"cannot open the device on {kwargs.get('port')}: {detail}",
            "check the cable and that no other program (monitor, another test) holds the port",
        ) from exc


@pytest.fixture
def record_case(request: pytest.FixtureRequest, hil_case: Case, hil_session: HilSession, quantized_model):
    """Stage 5: record what a case measured (into session.json via its pytest report) and save its streams.

    ``record(*verdicts, arrays={name: QTensor}, **fields)``: each ``harness.compare.Verdict`` contributes its
    fields; a plain ``Comparison`` (one question, e.g. the host check) its figures.
    """

    def record(*results, arrays: dict | None = None, **extra) -> None:
        import numpy as np

        from harness.compare import Comparison

        directory = hil_session.settings.artifacts_dir / "cases" / f"{request.node.originalname}[{hil_case.id}]"
        directory.mkdir(parents=True, exist_ok=True)
        for name, tensor in (arrays or {}).items():
            np.save(directory / f"{name}.npy", tensor.data)
        fields = {"tolerance_reason": quantized_model.tolerance_reason or None,
                  "lint": [f"module {m.index}: {f}" for m in quantized_model.modules for f in m.lint]}
        for result in results:
            fields.update(comparison_fields(result) if isinstance(result, Comparison) else result.fields())
        request.node.stash.setdefault(CASE, {}).update(fields, **extra)

    return record


def comparison_fields(c) -> dict:
    """session.json figures of one comparison (the fields every measured case has)."""
    return {
        "max_abs_lsb": c.max_abs_lsb, "mismatches": c.mismatches, "exponent_match": c.exponent_match,
        "differing": c.differing, "total": c.total, "tolerance_lsb": c.tolerance_lsb, "snr_db": c.snr_db,
        "first_divergence": c.first_divergence,
    }


CASE = pytest.StashKey[dict]()  # what a case measured
PHASES = pytest.StashKey[dict]()  # its setup/call/teardown reports


def _identity(item: pytest.Item) -> dict | None:
    """Which HIL case an item is (None for the harness's own tests)."""
    params = getattr(item, "callspec", None) and item.callspec.params
    case = (params or {}).get("hil_case") or (params or {}).get("hil_model")
    if case is None:
        return None
    identity = {"id": case.id, "test": item.originalname, "target": case.target.name, "model": case.spec.name,
                "window": getattr(case, "window", None)}
    frames = _hil_session(item.config)._frames.get((case.spec.name, case.target.name))
    if frames is not None:  # what the case streamed (or would have)
        identity.update(input_saturation=frames.saturation, warnings=[w for w in [frames.saturation_warning()] if w])
    return identity


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Every phase report of a HIL case carries the case and its measurements (xdist ships them to the controller)."""
    report = yield
    item.stash.setdefault(PHASES, {})[report.when] = report
    identity = _identity(item)
    if identity is not None:
        report.espdl_hil = _plain({**identity, **item.stash.get(CASE, {})})
    return report


def _plain(data: dict) -> dict:
    """Only JSON types (numpy scalars and arrays converted): what xdist can ship and session.json can hold."""
    import json

    def convert(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"cannot record {type(value).__name__} in session.json")

    return json.loads(json.dumps(data, default=convert))


class Recorder:
    """The controller's side of the report: pytest's reports in, ``session.json`` entries out.

    Registered only in the process that writes the report (not in pytest-xdist workers), so it sees each
    report once: its own, or the ones xdist relays from the workers.
    """

    def __init__(self, config: pytest.Config):
        self.config = config

    @property
    def report(self):
        return _hil_session(self.config).report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        category = self.config.hook.pytest_report_teststatus(report=report, config=self.config)[0]
        self.report.add_report(report, category)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:  # pytest counts a collection error as an error of the run
            self.report.other_tests["error"] = self.report.other_tests.get("error", 0) + 1

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """pytest-xdist: a worker's stage counters (calibrations, exports) arrive with its shutdown."""
        counts = getattr(node, "workeroutput", {}).get("espdl_hil")
        if counts:
            self.report.calibrations += counts["calibrations"]
            self.report.exports += counts["exports"]


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return
    hil = _hil_session(config)
    hil.close()
    if hasattr(config, "workerinput"):  # the controller writes the report
        config.workeroutput["espdl_hil"] = {"calibrations": hil.quantizer.calibrations, "exports": hil.quantizer.exports}
        return
    hil.report.calibrations += hil.quantizer.calibrations
    hil.report.exports += hil.quantizer.exports
    hil.report.write(settings.artifacts_dir)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With several boards per target, spread cases over them: one pytest-xdist group (and worker) per board."""
    settings = config.stash.get(SETTINGS, None)
    if settings is None or settings.dut != "board":
        return
    seen: dict[str, int] = {}
    for item in items:
        case = getattr(item, "callspec", None) and item.callspec.params.get("hil_case")
        if case is None:
            continue
        target = case.target.name
        index = seen.get(target, 0) % len(settings.ports[target])
        seen[target] = seen.get(target, 0) + 1
        item.stash[BOARD_INDEX] = index
        item.add_marker(pytest.mark.xdist_group(f"{target}-board{index}"))
