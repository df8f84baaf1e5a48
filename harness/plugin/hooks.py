"""The pytest wiring: hooks, the target x model x window parametrization, one fixture per stage.

Stages as fixtures: ``quantized_model`` (stage 1, calibrated once per model and
target), ``streaming_exports`` (stage 1, per window), ``reference`` (stage 2),
``frames`` (stage 3), ``device``/``device_offline`` (stage 4) and
``record_case`` (stage 5, into ``session.json``). Options live in
``options``, shared state in ``state``, devices in ``boards``, what cases
measured in ``recording`` and the report in ``report``.
"""

from __future__ import annotations

import dataclasses
import warnings

import pytest

from harness import compat
from harness.errors import HarnessError
from harness.plugin.options import OPTIONS, PATH_OPTIONS, Case, ModelCase, add_options, hidden_ini, settings_from
from harness.plugin.recording import CASE, PHASES, Recorder, comparison_fields, failed, identity, junit_properties, plain
from harness.plugin.state import SESSION, SETTINGS, HilSession, session_of
from harness.resources import shipped

# Warnings of the libraries the harness drives, checked and harmless; registered by the plugin so a user's
# repository gets them too (each names its message and module, nothing broader).
WARNING_FILTERS = (
    # ESP-PPQ's espdl_quantize_torch calls torch.onnx.export(dynamo=False): torch deprecates that exporter but
    # still ships it in the pinned torch
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning:esp_ppq.api.espdl_interface",
    # the same exporter calling a deprecated helper of its own, inside torch
    "ignore:The feature will be removed:DeprecationWarning:torch.onnx._internal.torchscript_exporter.utils",
    # pytest-embedded's autouse fixtures call record_xml_attribute, which pytest labels experimental
    "ignore:record_xml_attribute is an experimental feature:pytest.PytestExperimentalApiWarning",
    # ... and, with --junitxml, pytest warns per test that the attribute does not fit its default xunit2 schema
    # (the harness's figures are record_property pairs, which it keeps)
    "ignore:record_xml_attribute is incompatible with junit_family:pytest.PytestWarning",
)


def pytest_addoption(parser: pytest.Parser) -> None:
    add_options(parser)


BOARD_INDEX = pytest.StashKey[int]()


def pytest_configure(config: pytest.Config) -> None:
    for line in WARNING_FILTERS:
        config.addinivalue_line("filterwarnings", line)
    if config.option.help or getattr(config.option, "version", False):
        return
    hidden = hidden_ini(config)
    if hidden is not None:
        raise pytest.UsageError(
            f"pytest did not read {hidden} because an option value given after a space was taken for a test path "
            f"(pytest looks for its ini file before any plugin's options exist); write path options with '=' "
            f"({', '.join(o + '=...' for o in PATH_OPTIONS)})"
        )
    try:
        config.stash[SETTINGS] = settings_from(config)
        if not hasattr(config, "workerinput"):  # the controller checks, once per run
            compat.check(config.stash[SETTINGS].cache_dir)  # the private library internals the harness relies on are still there
    except HarnessError as exc:
        raise pytest.UsageError(str(exc)) from None
    if config.args_source == pytest.Config.ArgsSource.INVOCATION_DIR:
        # a plain `pytest` in a user's repository: the shipped case matrix runs too (this repository's
        # pytest.ini names test_cases in testpaths, so it never gets here twice)
        config.args = [*config.args, str(shipped("test_cases"))]
    if not hasattr(config, "workerinput"):
        config.pluginmanager.register(Recorder(config), "espdl-hil-recorder")
    if config.stash[SETTINGS].dut == "virtual" and not config.option.collectonly:
        session_of(config).launch_boards()


def pytest_unconfigure(config: pytest.Config) -> None:
    """A run that ends before its session finishes (a usage error, an interrupt) still powers its boards off."""
    if SESSION in config.stash:
        hil = config.stash[SESSION]
        hil.close()
        if hil.plotter is not None:
            hil.plotter.close()


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


@pytest.fixture(scope="session")
def hil_session(pytestconfig: pytest.Config) -> HilSession:
    """The run's shared state: settings, the quantizer and its cache, frames, references, devices, the report."""
    return session_of(pytestconfig)


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
def quantized_model(request: pytest.FixtureRequest, hil_session: HilSession):
    """Stage 1: every sub-model of the case's model, calibrated once for its target (a ``hil_case`` or a
    ``hil_model`` test). A model that could not be quantized fails each of its cases with the same line, once
    computed."""
    case = request.getfixturevalue("hil_case" if "hil_case" in request.fixturenames else "hil_model")
    return hil_session.quantized(case.spec, case.target)


@pytest.fixture
def streaming_exports(hil_case: Case, hil_session: HilSession, quantized_model):
    """Stage 1: the streaming ``.espdl`` of each sub-model for the case's window size (lint findings warned)."""
    from harness.espdl.lint import LintWarning

    exports = hil_session.streaming_exports(quantized_model, hil_case.window)
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
    size (``harness.verdict.per_window``).
    """
    from harness.verdict.per_window import expected_outputs

    whole = hil_session.reference(quantized_model)
    if whole is None:  # exported files without embedded test values for these frames: fidelity is not judged
        return None
    return expected_outputs(quantized_model, hil_case.window, frames.sequence_length, whole,
                            lambda length: hil_session.reference(quantized_model, length))


@pytest.fixture
def fidelity(hil_session: HilSession, quantized_model, frames):
    """ESP-DL's bound on |device offline - ESP-PPQ| per sub-model, with its reason (``harness.ppq.fidelity``)."""
    return hil_session.fidelity(quantized_model)


@pytest.fixture
def device(request: pytest.FixtureRequest, hil_case: Case, hil_session: HilSession):
    """Stage 4: a streaming runner for the case's target, behind pytest-embedded's serial DUT.

    Opened, reset and greeted by the first case and kept while cases pass: each case greets it again, its
    unchanged models stay loaded and its CONFIGURE restarts every stream. A case that fails costs only itself:
    afterwards the device is closed (a virtual board's process replaced), so the next case starts on a fresh one.
    """
    target = hil_case.target.name
    port = None
    if hil_session.settings.dut != "virtual":
        port = hil_session.settings.ports[target][request.node.stash.get(BOARD_INDEX, 0)]
    link, fresh = hil_session.device(target, port)
    before = dataclasses.replace(link.stats)
    yield link
    from harness.signoff.provenance import device_provenance

    request.node.stash.setdefault(CASE, {}).update(
        device_fresh=fresh, models_uploaded=link.stats.models_uploaded - before.models_uploaded,
        models_kept=link.stats.models_kept - before.models_kept,
        device_info=device_provenance(link, "virtual" if port is None else "board", port))
    if port is None:
        board = hil_session.board_if_running(target)
        if failed(request.node) or board is None or board.exit_reason():
            hil_session.device_failed(link.name, virtual_target=target)
    elif failed(request.node):
        hil_session.device_failed(link.name, port=port)


@pytest.fixture
def device_offline(hil_case: Case, hil_session: HilSession, quantized_model, frames, device):
    """Stage 4: what the same device computes on the offline exports, each sequence as one window.

    A per-window last module: on the offline export of each judged prefix (``harness.verdict.per_window``).
    Memoized per device and length: it does not depend on the case's window size.
    """
    from harness.verdict.per_window import expected_outputs

    def on(length: int):
        return hil_session.offline_on(device, hil_case, quantized_model, frames, length)

    whole = on(frames.sequence_length)
    outputs = expected_outputs(quantized_model, hil_case.window, frames.sequence_length, whole.outputs,
                               lambda length: on(length).outputs)
    return dataclasses.replace(whole, outputs=outputs)


@pytest.fixture
def record_case(request: pytest.FixtureRequest, hil_session: HilSession):
    """Stage 5: record what a case measured (into session.json via its pytest report and into JUnit properties)
    and save its streams; for a ``hil_case`` or a ``hil_model`` test.

    ``record(*verdicts, arrays={name: QTensor}, **fields)``: each ``harness.verdict.compare.Verdict`` contributes its
    fields; a plain ``Comparison`` (one question, e.g. the host check) its figures.
    """
    hil_case = request.getfixturevalue("hil_case" if "hil_case" in request.fixturenames else "hil_model")
    quantized_model = hil_session.quantized(hil_case.spec, hil_case.target)

    def record(*results, arrays: dict | None = None, **extra) -> None:
        import numpy as np

        from harness.verdict.compare import Comparison

        directory = hil_session.settings.artifacts_dir / "cases" / f"{request.node.originalname}[{hil_case.id}]"
        directory.mkdir(parents=True, exist_ok=True)
        for name, tensor in (arrays or {}).items():
            np.save(directory / f"{name}.npy", getattr(tensor, "data", tensor))  # a QTensor's integers, or an array
        fields = {"tolerance_reason": quantized_model.tolerance_reason or None,
                  "lint": [f"module {m.index}: {f}" for m in quantized_model.modules for f in m.lint],
                  **case_provenance(request, hil_session, quantized_model)}
        for result in results:
            fields.update(comparison_fields(result) if isinstance(result, Comparison) else result.fields())
        request.node.stash.setdefault(CASE, {}).update(fields, **extra)
        request.node.user_properties.extend(junit_properties(plain({**fields, **extra})))  # record_property

    return record


def case_provenance(request: pytest.FixtureRequest, hil_session: HilSession, qm) -> dict:
    """What a case ran on: the sha256 of each ``.espdl`` it used (its window's streaming files and the offline
    ones), where its frames and the model's calibration data came from."""
    from harness.ppq.quantize import file_sha256

    files = {f"{m.index}/offline": file_sha256(m.offline_espdl) for m in qm.modules if m.offline_espdl.is_file()}
    if "streaming_exports" in request.fixturenames:
        files.update({f"{e.module}/W{e.window}": file_sha256(e.path)
                      for e in request.getfixturevalue("streaming_exports")})
    frames = hil_session.frames_if_made(qm.spec.name, qm.target.name)
    source = None
    if frames is not None:
        manifest = frames.manifest()
        source = {k: manifest.get(k) for k in ("source", "seed", "sha256", "file_sha256") if manifest.get(k) is not None}
    return {"espdl_sha256": files, "frames_source": source,
            "calibration_source": getattr(qm, "calibration_source", None),
            "quant_setting": getattr(qm, "setting_changes", None) or None, "cache_entry": qm.directory.name}


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> None:
    """After the last test, kept devices go back to pytest-embedded while its session fixtures still run."""
    if nextitem is None and SESSION in item.config.stash:
        session_of(item.config).devices.release()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call):
    """Every phase report of a HIL case carries the case and its measurements (xdist ships them to the controller)."""
    report = yield
    item.stash.setdefault(PHASES, {})[report.when] = report
    if call.excinfo is not None and call.excinfo.errisinstance(HarnessError) and report.failed:
        # a bad input (a spec's function, a file): its one line names the cause and the fix; the harness's own
        # stack says nothing more to the user (`pytest --full-trace` still shows it)
        if not item.config.getoption("fulltrace", False):
            report.longrepr = f"{call.excinfo.typename}: {call.excinfo.value}"
    case = identity(item)
    if case is not None:
        report.espdl_hil = plain({**case, **item.stash.get(CASE, {})})
    return report


@pytest.hookimpl(tryfirst=True)
def pytest_runtestloop(session: pytest.Session) -> None:
    """The process that writes the report prepares its plotting while the cases run (``harness.signoff.plots``)."""
    if SETTINGS in session.config.stash and not hasattr(session.config, "workerinput") and not session.config.option.collectonly:
        from harness.signoff import plots

        if plots.available() is None:
            session_of(session.config).plotter = plots.Plotter()


def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return
    hil = session_of(config)
    hil.close()
    if hasattr(config, "workerinput"):  # the controller writes the report
        config.workeroutput["espdl_hil"] = {"calibrations": hil.quantizer.calibrations, "exports": hil.quantizer.exports}
        return
    hil.report.calibrations += hil.quantizer.calibrations
    hil.report.exports += hil.quantizer.exports
    hil.report.write(settings.artifacts_dir, settings.cache_dir / "plots", hil.plotter)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Within each test module, the cases of one target, model and window run one after another (a kept device
    then holds their models: ``HeldDevices``). With several boards per target, spread cases over them: one
    pytest-xdist group (and worker) per board."""
    settings = config.stash.get(SETTINGS, None)
    if settings is None:
        return
    first: dict = {}  # (test module, case) -> where it first appears

    def grouped(item: pytest.Item) -> int:
        case = getattr(item, "callspec", None) and item.callspec.params.get("hil_case")
        key = (item.nodeid.split("::")[0], case.id if case is not None else item.nodeid)
        return first.setdefault(key, len(first))

    items.sort(key=grouped)  # stable: the tests of a group keep their order
    if settings.dut != "board":
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
