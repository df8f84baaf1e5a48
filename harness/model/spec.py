"""Model specs: how a user adds a streaming model without editing the harness.

A spec is a Python file defining::

    NAME = "my_model"              # id used in test ids and --models
    STREAMING = "explicit"         # "explicit": sub-models carry caches in streaming_forward
                                   # "auto": ESP-PPQ auto_streaming inserts StreamingCache ops
    CONFIG = {"channels": 64, "sequence_length": 36, ...}
    def build_submodels(config) -> list[torch.nn.Module]: ...

Optional, for ``auto`` models: ``streaming_table(config)`` (or ``streaming_table(config, window)``)
returns the entries ESP-PPQ's ``insert_streaming_cache_on_var`` builds, for tensors its
auto-streaming cannot cache by itself (a slice of the last frames before a classifier); they go to
every streaming export, and their value is part of the export's cache key.

Optional for every model the harness quantizes (``explicit``, ``auto``)::

    def calibration_data(config) -> array [S, T, C]   # real sequences, time-major like frames
    def quant_setting(setting) / quant_setting(setting, target)   # adjust ESP-PPQ's espdl setting
    def metric(outputs, labels) -> dict[str, float]    # replaces top-1 accuracy in the report (any model)

``calibration_data`` is called on **every** run, also when the spec index describes the spec (the spec is
then imported for it): its value is hashed into the quantization cache key, so other data is another
calibration. ``quant_setting``'s effect is keyed by its source (the spec's source digest covers the file
that defines it).

The harness reads the keys in ``HARNESS_KEYS`` from ``CONFIG`` (with the
defaults below); every other key is the model's own and is only hashed into
the artifact cache key.

Already-exported models (an existing export pipeline, ESP-DL's tutorial files) need no torch code::

    NAME = "my_export"
    STREAMING = "exported"
    EXPORTS = {"esp32p4": {"offline": "model.espdl", "streaming": {3: "streaming_model.espdl"}}, ...}

Paths are relative to the spec. ``channels``, ``sequence_length`` and ``bits`` come from the offline
file; the window sizes are those of the streaming files (``harness.model.exported``).
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from harness.errors import ConfigError
from harness.resources import PACKAGE, shipped

STREAMING_MODES = ("explicit", "auto", "exported")

HARNESS_KEYS: dict[str, Any] = {
    "channels": None,  # input channels of the first sub-model (required)
    "sequence_length": None,  # frames in one offline sequence (required)
    "bits": 8,  # activation bits: 8 or 16
    "seed": 0,  # weights, calibration data, frames and test values derive from it
    "calibration_sequences": 8,  # random sequences used to calibrate each sub-model
    "calibration_window": 3,  # explicit caches: window the streaming graph is traced with
    "sequences": 2,  # frame sequences streamed per case
    "tolerance_lsb": 0,  # allowed |streamed - offline| in LSB
    "tolerance_reason": "",  # why a non-zero tolerance is right (shown in reports)
    "frame_period_ms": None,  # hop between frames in milliseconds (e.g. 10 for audio): real-time figures
}

MODELS_DIR = shipped("models")


@dataclass
class ModelSpec:
    """A loaded, validated model spec.

    Its functions come from the spec's module, imported on first use when the spec was described by the spec
    index (``harness.model.spec_index``: an unchanged spec is not imported, nor torch with it, on a warm run).
    """

    name: str
    streaming: str
    config: dict[str, Any]
    path: Path
    exports: dict | None = field(default=None, repr=False)  # STREAMING = "exported": harness.model.exported.ExportedFiles per target
    sources: tuple[Path, ...] = ()  # the spec file and every local (not installed) module it reaches
    hooks: frozenset[str] = frozenset()  # the functions of FUNCTIONS the spec defines
    module: Any = field(default=None, repr=False)  # the imported spec; None until a function is needed
    digest_files: tuple[Path, ...] | None = field(default=None, repr=False)  # what source_digest hashed last time
    on_digest: Callable | None = field(default=None, repr=False)  # told the files of each new source digest
    # calibration_data's checked array per config (one call per run, whatever the number of targets)
    _calibration: dict = field(init=False, default_factory=dict, repr=False, compare=False)

    @property
    def build_submodels(self) -> Callable | None:
        return self.function("build_submodels")

    @property
    def streaming_table(self) -> Callable | None:
        return self.function("streaming_table")

    @property
    def calibration_data(self) -> Callable | None:
        """The spec's ``calibration_data(config)``, or None (the harness then calibrates on random sequences)."""
        return self.function("calibration_data")

    @property
    def quant_setting(self) -> Callable | None:
        """The spec's ``quant_setting(setting)`` / ``quant_setting(setting, target)``, or None."""
        return self.function("quant_setting")

    @property
    def metric(self) -> Callable | None:
        """The spec's ``metric(outputs, labels)``, or None (the report then shows top-1 accuracy)."""
        return self.function("metric")

    def calibration_array(self):
        """``calibration_data(config)`` as a checked float32 ``[sequences, sequence_length, channels]`` numpy
        array, or None when the spec defines none.

        Correctness before start-up time: the spec index describes an unchanged spec without importing it, but a
        spec with ``calibration_data`` is imported for this and the function is called on every run (once per
        config), since its data may come from files the source digest does not cover. The quantizer hashes the
        result into the cache key (``harness.ppq.quantize``).
        """
        if "calibration_data" not in self.hooks:
            return None
        memo = self.config_json()
        if memo not in self._calibration:
            self._calibration[memo] = self._checked_calibration(self.calibration_data)
        return self._calibration[memo]

    def _checked_calibration(self, function: Callable):
        import numpy as np

        t, c = self.sequence_length, self.channels
        fix = f"return real float sequences shaped [sequences, {t}, {c}] (time-major, like --frames)"
        try:
            raw = function(dict(self.config))
        except Exception as exc:  # a user function: one line, not a traceback
            raise _fail(self.path, f"calibration_data() raised {_one_line(exc)}", "fix the function; " + fix) from exc
        try:
            if hasattr(raw, "detach") and hasattr(raw, "cpu"):  # a torch tensor (maybe on a device, with grad)
                raw = raw.detach().cpu().numpy()
            array = np.asarray(raw)
        except Exception as exc:  # a ragged list, an object numpy cannot take
            raise _fail(self.path, f"calibration_data() returned {type(raw).__name__}, not an array "
                                   f"({_one_line(exc)})", fix) from exc
        if array.dtype.kind != "f":
            raise _fail(self.path, f"calibration_data() returned dtype {array.dtype}, not floats", fix)
        if array.ndim != 3:
            raise _fail(self.path, f"calibration_data() returned shape {list(array.shape)}, not 3-D "
                                   f"[sequences, frames, channels]", fix)
        s = array.shape[0]
        if s < 1:
            raise _fail(self.path, f"calibration_data() returned no sequences (shape {list(array.shape)})",
                        "return at least one sequence; " + fix)
        if array.shape[1] != t:
            raise _fail(self.path, f"calibration_data() returned sequences of {array.shape[1]} frames (shape "
                                   f"{list(array.shape)}), not CONFIG['sequence_length'] = {t}", fix)
        if array.shape[2] != c:
            raise _fail(self.path, f"calibration_data() returned {array.shape[2]} channels (shape "
                                   f"{list(array.shape)}), not CONFIG['channels'] = {c}", fix)
        with np.errstate(over="ignore"):  # beyond float32's range: caught as not finite below
            array = np.ascontiguousarray(array, dtype=np.float32)
        finite = np.isfinite(array)
        if not finite.all():
            where = [int(i) for i in np.argwhere(~finite)[0]]
            raise _fail(self.path, f"calibration_data() value {array[tuple(where)]} at index {where} is not finite "
                                   f"in float32 ({int((~finite).sum())} of {array.size} values are NaN or infinite)",
                        "replace NaN/inf values (e.g. with numpy.nan_to_num) and keep values within float32's range")
        array.setflags(write=False)
        return array

    def adjust_setting(self, setting, target: str):
        """ESP-PPQ's espdl ``QuantizationSetting`` after the spec's ``quant_setting`` (the same object when the
        spec has none, or when the function modifies it in place and returns nothing)."""
        function = self.quant_setting
        if function is None:
            return setting
        fix = "modify the QuantizationSetting it is given (or return a new one); see README, 'Adding a model'"
        try:
            takes_target = len(inspect.signature(function).parameters) > 1
            result = function(setting, target) if takes_target else function(setting)
        except Exception as exc:  # a user function: one line, not a traceback
            raise _fail(self.path, f"quant_setting() raised {_one_line(exc)}", fix) from exc
        if result is None:
            return setting
        if not isinstance(result, type(setting)):
            raise _fail(self.path, f"quant_setting() returned {type(result).__name__}, not a QuantizationSetting", fix)
        return result

    def evaluate(self, outputs, labels) -> dict[str, float]:
        """The spec's ``metric(outputs, labels)``, checked: a dict of names to finite floats (one line if not).

        None when the spec defines no metric (the report then uses top-1 accuracy).
        """
        function = self.metric
        if function is None:
            return None
        fix = "return a dict of metric names to numbers, e.g. {'accuracy': 0.93}"
        try:
            result = function(outputs, labels)
        except Exception as exc:  # a user function: one line, not a traceback
            raise _fail(self.path, f"metric() raised {_one_line(exc)}", fix) from exc
        if not isinstance(result, dict) or not result:
            raise _fail(self.path, f"metric() returned {result!r:.80}", fix)
        import math

        checked = {}
        for name, value in result.items():
            try:
                number = float(value)
            except (TypeError, ValueError):
                number = math.nan
            if not isinstance(name, str) or not math.isfinite(number):
                raise _fail(self.path, f"metric() returned {name!r}: {value!r:.40}", fix + " (str keys, finite numbers)")
            checked[name] = number
        return checked

    def with_functions(self, **functions: Callable | None) -> "ModelSpec":
        """A copy whose functions ``functions`` replace the spec's (None: it defines none), e.g. another table."""
        from dataclasses import replace
        from types import SimpleNamespace

        module = SimpleNamespace(**{**{n: self.function(n) for n in self.hooks}, **functions})
        hooks = frozenset(n for n in FUNCTIONS if callable(getattr(module, n, None)))
        return replace(self, module=module, hooks=hooks, digest_files=None, on_digest=None)

    def function(self, name: str) -> Callable | None:
        """The spec's function ``name`` (one of FUNCTIONS), or None when it defines none."""
        if name not in self.hooks:
            return None
        if self.module is None:
            self.module = _described_module(self)
        return getattr(self.module, name)

    def __getattr__(self, key: str) -> Any:
        if key in HARNESS_KEYS:
            return self.config[key]
        raise AttributeError(key)

    def windows(self, target: str, requested: list[int]) -> list[int]:
        """The window sizes this model streams on ``target``: the requested ones, or an export's own files."""
        if self.exports is None:
            return requested
        return sorted(self.exports[target].streaming) if target in self.exports else []

    def window_error(self, window: int) -> str | None:
        """Why ``window`` cannot stream this model, or None."""
        t = self.sequence_length
        if self.exports is not None:
            return None  # the window sizes are those of the exported files
        if window < 1 or t % window:
            divisors = ", ".join(str(d) for d in range(1, t + 1) if t % d == 0)
            return (
                f"window size {window} does not divide the sequence length {t} of model "
                f"'{self.name}'; choose one of {divisors}"
            )
        return None

    def table_for(self, window: int) -> list[dict]:
        """The spec's streaming-table entries for ``window`` (``[]`` without a ``streaming_table``)."""
        if self.streaming_table is None:
            return []
        fix = "return a list of insert_streaming_cache_on_var(var_name, window_size, op_name) results"
        try:
            takes_window = len(inspect.signature(self.streaming_table).parameters) > 1
            entries = self.streaming_table(dict(self.config), window) if takes_window else self.streaming_table(dict(self.config))
        except Exception as exc:  # a user function: one line, not a traceback
            raise _fail(self.path, f"streaming_table() raised {type(exc).__name__}: {exc}", fix) from exc
        entries = [entries] if isinstance(entries, dict) else entries
        keys = {"window_size", "op_name", "frame_axis"}
        if not isinstance(entries, (list, tuple)) or not all(
            isinstance(e, dict) and all(isinstance(v, dict) and set(v) == keys for v in e.values()) for e in entries
        ):
            raise _fail(self.path, f"streaming_table() returned {entries!r:.120}", fix)
        return [{name: dict(entry)} for e in entries for name, entry in e.items()]  # one entry per tensor

    def source_digest(self, submodels: list | None = None) -> str:
        """sha256 over the spec file, the local modules it reaches and the source files of every module class it
        builds: a change in any of them (a helper that builds layers, the streaming table) is a new model.

        Without ``submodels``: over the files the last digest with them covered (``digest_files``, kept by the
        spec index); None when there is no such list.
        """
        if submodels is None:
            if self.digest_files is None or not all(f.is_file() for f in self.digest_files):
                return None
            files = set(self.digest_files)
        else:
            files = {self.path, *self.sources}
            for name in sorted(self.hooks):  # streaming_table, quant_setting, ... wherever they are defined
                try:
                    src = inspect.getsourcefile(self.function(name))
                except TypeError:  # a builtin or a C function: no source file
                    src = None
                if src and _user_file(Path(src).resolve()):
                    files.add(Path(src).resolve())
            for sub in submodels:
                for module in sub.modules():
                    src = inspect.getsourcefile(type(module))
                    if src and "site-packages" not in src:
                        files.add(Path(src).resolve())
        h = hashlib.sha256()
        for f in sorted(files):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        if submodels is not None and tuple(sorted(files)) != self.digest_files:
            self.digest_files = tuple(sorted(files))
            if self.on_digest is not None:
                self.on_digest(self)
        return h.hexdigest()

    def config_json(self) -> str:
        return json.dumps(self.config, sort_keys=True, default=str)


def _fail(path: Path, cause: str, fix: str) -> ConfigError:
    return ConfigError(f"model spec {path}: {cause}", fix)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    """``Type: message`` of a user function's exception on one line (no traceback)."""
    text = " ".join(str(exc).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# what a spec may define, besides its constants; each is an accessor of ModelSpec and listed in its ``hooks``
FUNCTIONS = ("build_submodels", "streaming_table", "calibration_data", "quant_setting", "metric")
# the arguments each may be called with (its signature must take one of them)
_SIGNATURES = {"build_submodels": [("config",)], "streaming_table": [("config",), ("config", "window")],
               "calibration_data": [("config",)], "quant_setting": [("setting",), ("setting", "target")],
               "metric": [("outputs", "labels")]}
QUANTIZATION_HOOKS = ("calibration_data", "quant_setting")  # only for models the harness quantizes


def _check_functions(module, path: Path, streaming: str) -> frozenset[str]:
    """The FUNCTIONS the spec defines, each a function taking its arguments (one line if not)."""
    hooks = set()
    for name in FUNCTIONS:
        value = getattr(module, name, None)
        if value is None:
            continue
        calls = [f"{name}({', '.join(args)})" for args in _SIGNATURES[name]]
        if not callable(value):
            raise _fail(path, f"{name} is a {type(value).__name__}, not a function", f"define def {calls[0]}: ...")
        if streaming == "exported" and name in QUANTIZATION_HOOKS:
            raise _fail(path, f"{name}() applies to models the harness quantizes, and an exported spec's files are "
                              f"already quantized", f"remove {name}, or quantize with it in your own export pipeline")
        try:
            signature = inspect.signature(value)
        except (TypeError, ValueError):  # no signature to inspect (a builtin): called as is
            signature = None
        if signature is not None and not any(_binds(signature, args) for args in _SIGNATURES[name]):
            raise _fail(path, f"{name}{signature} cannot be called as {' or '.join(calls)}",
                        f"define def {calls[0]}: ...")
        hooks.add(name)
    return frozenset(hooks)


def _binds(signature: inspect.Signature, args: tuple[str, ...]) -> bool:
    try:
        signature.bind(*args)
        return True
    except TypeError:
        return False


def _check_frame_period(path: Path, config: dict) -> None:
    period = config.get("frame_period_ms")
    if period is None:
        return
    if isinstance(period, bool) or not isinstance(period, (int, float)) or not period > 0 or period == float("inf"):
        raise _fail(path, f"CONFIG['frame_period_ms'] is {period!r}, not a positive number of milliseconds",
                    "set the hop between frames, e.g. 10 for 10 ms audio frames, or leave it out")


def load_spec(path: str | Path, index=None) -> ModelSpec:
    """Import and validate one spec file; with ``index`` (a ``SpecIndex``), an unchanged spec is described from
    it instead, and imported only when one of its functions is needed."""
    path = Path(path).resolve()
    if not path.is_file():
        raise _fail(path, "file not found", "pass the path of a Python spec file to --model-spec")
    if index is not None:
        described = index.lookup(path)
        if described is not None:
            return _validated(path, described["name"], described["streaming"], described["config"],
                              frozenset(described["hooks"]), None, tuple(Path(p) for p in described["sources"]),
                              index, described.get("digest_files"))
    module = _import(path)
    name = getattr(module, "NAME", None)
    if not isinstance(name, str) or not name.isidentifier():
        raise _fail(path, "NAME is missing or not an identifier", "define NAME = 'my_model'")
    streaming = getattr(module, "STREAMING", None)
    if streaming not in STREAMING_MODES:
        raise _fail(path, f"STREAMING is {streaming!r}", f"set STREAMING to one of {', '.join(STREAMING_MODES)}")
    if streaming == "exported":
        from dataclasses import replace

        from harness.model.exported import load_exported_spec

        hooks = _check_functions(module, path, streaming)
        config = {**HARNESS_KEYS, **(getattr(module, "CONFIG", None) or {})}
        _check_frame_period(path, config)
        return replace(load_exported_spec(module, path, name, config), hooks=hooks & {"metric"})
    build = getattr(module, "build_submodels", None)
    if not callable(build):
        raise _fail(path, "build_submodels(config) is missing", "define it to return the list of sub-models")
    table = getattr(module, "streaming_table", None)
    if table is not None and (not callable(table) or streaming != "auto"):
        raise _fail(path, "streaming_table must be a function, and only auto-streaming models use one",
                    "define streaming_table(config) in a STREAMING = 'auto' spec, or remove it")
    hooks = _check_functions(module, path, streaming)
    spec = _validated(path, name, streaming, getattr(module, "CONFIG", None), hooks, module, local_sources(module), index)
    if index is not None:
        index.remember(spec)
    return spec


def _validated(path: Path, name: str, streaming: str, user_config, hooks: frozenset[str], module,
               sources: tuple[Path, ...], index, digest_files=None) -> ModelSpec:
    """The spec of these values, checked (the same checks whether they come from the module or the index)."""
    if not isinstance(user_config, dict):
        raise _fail(path, "CONFIG is missing or not a dict", "define CONFIG = {'channels': ..., 'sequence_length': ...}")
    config = {**HARNESS_KEYS, **user_config}
    for key in ("channels", "sequence_length"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise _fail(path, f"CONFIG['{key}'] must be a positive int", f"set CONFIG['{key}']")
    if config["bits"] not in (8, 16):
        raise _fail(path, f"CONFIG['bits'] is {config['bits']!r}", "use 8 or 16")
    for key in ("calibration_sequences", "calibration_window", "sequences"):
        if not isinstance(config[key], int) or config[key] < 1:
            raise _fail(path, f"CONFIG['{key}'] must be a positive int", f"set CONFIG['{key}']")
    if config["tolerance_lsb"] and not config["tolerance_reason"]:
        raise _fail(path, "a non-zero tolerance_lsb needs a tolerance_reason", "say why the residual is expected")
    _check_frame_period(path, config)
    loaded = ModelSpec(name, streaming, config, path, sources=sources, hooks=hooks, module=module,
                       digest_files=tuple(Path(p) for p in digest_files) if digest_files is not None else None,
                       on_digest=index.remember if index is not None else None)
    if loaded.window_error(config["calibration_window"]) and streaming == "explicit":
        raise _fail(path, loaded.window_error(config["calibration_window"]), "change CONFIG['calibration_window']")
    return loaded


def _import(path: Path):
    """The spec file's module (errors in it become one line)."""
    module_name = f"_hil_spec_{hashlib.sha1(str(path).encode()).hexdigest()[:10]}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # classes defined in the spec can then be inspected and pickled
    search = [str(path.parent), str(MODELS_DIR.parent)]  # the spec's siblings, and `models.*`
    sys.path[:0] = search
    _forget_other_siblings(path.parent)
    before = set(sys.modules)
    try:
        spec.loader.exec_module(module)
        _remember_siblings(path.parent, before)
    except Exception as exc:  # a user file: any error must become one clear line
        sys.modules.pop(module_name, None)
        raise _fail(
            path, f"cannot be imported: {type(exc).__name__}: {exc}", "fix the file (see README, 'Adding a model')"
        ) from exc
    finally:
        for entry in search:
            sys.path.remove(entry)
    return module


_SIBLINGS: dict[str, tuple[Path, str]] = {}  # sibling modules a spec import loaded: name -> (file, its sha256 then)


def _file_sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


def _forget_other_siblings(directory: Path) -> None:
    """Let a spec import its own sibling modules, as they are now: another spec's same-named sibling (``layers.py``
    next to each) leaves ``sys.modules``, and so does one an earlier spec import loaded whose file has changed
    since (the source digest sees the edit, so the code must be the edited one); a spec that imported one keeps
    its module object."""
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if origin is None or "." in name:
            continue
        own = directory / f"{name}.py", directory / name / "__init__.py"
        file = Path(origin).resolve()
        if not any(f.is_file() for f in own) or not _user_file(file):
            continue
        if file in {f.resolve() for f in own}:
            loaded = _SIBLINGS.get(name)
            if loaded is None or loaded[0] != file or loaded[1] == _file_sha256(file):
                continue  # not loaded for a spec, or unchanged: keep it
        for dotted in [n for n in sys.modules if n == name or n.startswith(name + ".")]:
            del sys.modules[dotted]


def _remember_siblings(directory: Path, before: set[str]) -> None:
    """The sibling modules of ``directory`` a spec import just loaded, with their files' sha256."""
    for name in set(sys.modules) - before:
        origin = getattr(sys.modules[name], "__file__", None)
        if origin is None or "." in name:
            continue
        file = Path(origin).resolve()
        if file.parent == directory.resolve() or file.parent.parent == directory.resolve():
            _SIBLINGS[name] = (file, _file_sha256(file))


def _described_module(spec: ModelSpec):
    """Import a spec the index described, now that one of its functions is needed; it must still say what the
    index said (a spec whose CONFIG depends on more than its source files, e.g. the environment, does not)."""
    module = _import(spec.path)
    said = (getattr(module, "NAME", None), getattr(module, "STREAMING", None),
            {**HARNESS_KEYS, **(getattr(module, "CONFIG", None) or {})})
    if said != (spec.name, spec.streaming, spec.config):
        raise _fail(spec.path, "its NAME, STREAMING or CONFIG changed while none of its source files did (they "
                               "depend on something else, e.g. an environment variable)",
                    "make them depend only on the spec's files, or run with a new --hil-cache-dir")
    return module


@functools.lru_cache(maxsize=1)
def _installed_roots() -> tuple[Path, ...]:
    import sysconfig

    return tuple({Path(sysconfig.get_paths()[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib")})


def _user_file(file: Path) -> bool:
    """Not the standard library's, not an installed distribution's."""
    return not any(file.is_relative_to(root) for root in _installed_roots()) and "site-packages" not in file.parts


def local_sources(module) -> tuple[Path, ...]:
    """The source files of ``module`` and of every local module its globals reach, transitively.

    Local: not the standard library, not an installed distribution, not the harness itself (whose code is
    hashed on its own): the user's helpers, e.g. a ``layers.py`` the spec imports functions from.
    """
    from types import ModuleType

    def local(file: Path) -> bool:
        return _user_file(file) and (not file.is_relative_to(PACKAGE) or file.is_relative_to(PACKAGE / "shipped"))

    files: set[Path] = set()
    seen: set[str] = set()
    stack = [module]
    while stack:
        current = stack.pop()
        name = getattr(current, "__name__", None)
        if name is None or name in seen:
            continue
        seen.add(name)
        origin = getattr(current, "__file__", None)
        if not origin or not local(Path(origin).resolve()):
            continue
        files.add(Path(origin).resolve())
        for value in list(vars(current).values()):
            if isinstance(value, ModuleType):
                stack.append(value)
                continue
            try:  # a function's or class's module; any other object's attribute may be anything
                owner = getattr(value, "__module__", None)
            except Exception:  # noqa: BLE001 - a user object's __getattr__
                owner = None
            if isinstance(owner, str) and owner in sys.modules:
                stack.append(sys.modules[owner])
    return tuple(sorted(files))


def builtin_spec_paths() -> list[Path]:
    """Spec files shipped in ``models/`` (those defining NAME)."""
    return sorted(
        p for p in MODELS_DIR.glob("*.py") if not p.name.startswith("_") and "\nNAME = " in p.read_text()
    )


def load_specs(extra_paths: list[str] | None = None, only: list[str] | None = None, index=None) -> list[ModelSpec]:
    """Built-in specs plus ``--model-spec`` files, filtered by ``--models``; names must be unique.

    ``index``: a ``SpecIndex`` (``load_spec``).

    Without ``--models``: the ``--model-spec`` models when there are any (a user's repository runs its own
    models), else every shipped one.
    """
    specs: dict[str, ModelSpec] = {}
    for path in [*builtin_spec_paths(), *(Path(p) for p in extra_paths or [])]:
        spec = load_spec(path, index)
        if spec.name in specs and specs[spec.name].path != spec.path:
            raise _fail(
                spec.path, f"NAME '{spec.name}' is already used by {specs[spec.name].path}", "give the model a new NAME"
            )
        specs[spec.name] = spec
    if only:
        unknown = [n for n in only if n not in specs]
        if unknown:
            raise ConfigError(
                f"unknown model(s) {', '.join(unknown)} in --models", f"choose from {', '.join(sorted(specs))}"
            )
        return [specs[n] for n in only]
    own = [s for s in specs.values() if s.path in {Path(p).resolve() for p in extra_paths or []}]
    return own or list(specs.values())
