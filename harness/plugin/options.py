"""The harness's command-line options, validated into ``Settings``; the case matrix they select."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from harness.errors import HarnessError
from harness.model.spec import ModelSpec, load_specs
from harness.model.spec_index import SpecIndex
from harness.targets import TARGETS, Target, get_target


DEFAULT_WINDOWS = "1,3,6"


PATH_OPTIONS = ("--model-spec", "--hil-cache-dir", "--artifacts-dir", "--frames-file")
PATH_ALIASES = ("--frames",)  # older spellings of path options, still accepted


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


def split(value: str | None) -> list[str]:
    return [v for v in re.split(r"[,|\s]+", value or "") if v]


def add_options(parser: pytest.Parser) -> None:
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
    group.addoption("--frames-file", "--frames", dest="frames_file", default=None, metavar="NPY|NPZ",
                    help="float frames [T, C] or [S, T, C] (.npy), or an .npz with 'frames' and optional integer "
                         "'labels' [S, T] or [S], instead of generated ones. Default: generated from each model's "
                         "seed (an exported model's embedded test input)")
    group.addoption(
        "--hil-dut", "--dut", dest="hil_dut", default="auto", choices=("auto", "virtual", "board"),
        help="device under test: board (never falls back), virtual, or auto (a board if one is found, else the virtual "
             "board; any --port asks for a board). Default: auto",
    )
    group.addoption("--hil-cache-dir", default=None, metavar="DIR",
                    help="cache of quantized models and .espdl exports. Default: .hil-cache (under the rootdir)")


def settings_from(config: pytest.Config) -> Settings:
    # relative paths: from the ini file's directory, or where pytest was started when there is none
    root = config.rootpath if config.inipath is not None else config.invocation_params.dir

    def under_root(p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else root / path

    targets_opt = split(config.getoption("target", None))
    targets = [get_target(t) for t in targets_opt] if targets_opt and targets_opt != ["auto"] else list(TARGETS.values())
    windows = []
    for w in split(config.getoption("window_sizes")):
        if not w.isdigit() or int(w) < 1:
            raise HarnessError(f"--window-sizes: '{w}' is not a positive integer", "give e.g. --window-sizes 1,3,6")
        windows.append(int(w))
    cache = config.getoption("hil_cache_dir")
    cache_dir = under_root(cache) if cache else root / ".hil-cache"
    specs = load_specs(config.getoption("model_spec"), split(config.getoption("models")) or None,
                       SpecIndex(cache_dir / "specs"))
    for spec in specs:
        for w in windows:
            error = spec.window_error(w)
            if error:
                raise HarnessError(f"--window-sizes: {error}", "pass window sizes that divide it")
    frames = config.getoption("frames_file")
    if frames:
        check_frames(under_root(frames), specs, windows)
    dut, dut_reason, ports = choose_dut(config.getoption("hil_dut"), [t.name for t in targets], config.getoption("port", None))
    return Settings(
        targets=targets,
        windows=windows,
        specs=specs,
        artifacts_dir=under_root(config.getoption("artifacts_dir")),
        cache_dir=cache_dir,
        frames_path=under_root(frames) if frames else None,
        dut=dut,
        dut_reason=dut_reason,
        ports=ports,
    )


def check_frames(path: Path, specs: list[ModelSpec], windows: list[int]) -> None:
    """A ``--frames`` file (``.npy``, or ``.npz`` with its labels) every selected model can stream at every window
    size, or one line why not."""
    from harness.model.frames import check_frames_shape, read_frames_file

    floats = read_frames_file(path).floats  # an .npz's labels are checked against its frames here
    for spec in specs:
        length = check_frames_shape(floats, path, spec).shape[1]
        bad = [w for w in windows if length % w]
        if bad:
            raise HarnessError(f"--frames {path}: sequences of {length} frames cannot be cut into windows of "
                               f"{', '.join(map(str, bad))} frames", "pass --window-sizes that divide it")


def choose_dut(requested: str, targets: list[str], port_option: str | None) -> tuple[str, str, dict]:
    """Which device the streaming cases run on, why, and (boards) the ports per target."""
    from harness.device.firmware import board_ports, board_unavailable, parse_ports

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


def hidden_ini(config: pytest.Config) -> Path | None:
    """The ini file pytest missed because an existing path after a space steered its search, or None."""
    if config.inipath is not None:
        return None
    args = list(config.invocation_params.args)
    steered = any(a in PATH_OPTIONS + PATH_ALIASES and i + 1 < len(args) and Path(args[i + 1]).expanduser().exists()
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
