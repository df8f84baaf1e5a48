"""A spec's optional functions and keys: calibration_data, quant_setting, metric, CONFIG['frame_period_ms'].

``tests/specs/hooks_auto.py`` defines all of them (one small sub-model, calibrated in ~1 s). Each calibration
below says what it is for; the data and setting must reach ESP-PPQ, be part of the cache key, and every mistake
in them must be one line naming the spec.
"""

from __future__ import annotations

import hashlib
import json
import re
import textwrap

import numpy as np
import pytest

from harness.errors import ConfigError
from harness.espdl.reader import load_espdl
from harness.model.spec import FUNCTIONS, load_spec
from harness.model.spec_index import SpecIndex
from harness.ppq.quantize import Quantizer
from harness.targets import get_target
from tests.conftest import SPECS

HOOKS = SPECS / "hooks_auto.py"
P4 = get_target("esp32p4")


def one_line(info, path=HOOKS) -> str:
    text = str(info.value)
    assert "\n" not in text and str(path) in text, text
    return text


@pytest.fixture(scope="module")
def hooks(tmp_path_factory):
    """hooks_auto as it is, without its calibration_data, and without its quant_setting (one calibration each)."""
    cache = tmp_path_factory.mktemp("hooks")
    spec = load_spec(HOOKS)
    built = {}
    for variant, changes in {"full": {}, "random": {"calibration_data": None},
                             "default_setting": {"quant_setting": None}}.items():
        quantizer = Quantizer(cache)
        built[variant] = quantizer.model(spec.with_functions(**changes) if changes else spec, P4)
        assert quantizer.calibrations == 1
    return built


# ----------------------------------------------------------------------------------------------- calibration_data
def test_calibration_data_is_what_the_model_is_calibrated_on(hooks):
    full, random = hooks["full"], hooks["random"]
    data = load_spec(HOOKS).calibration_array()
    assert data.shape == (6, 12, 8) and data.dtype == np.float32
    expected = hashlib.sha256(json.dumps([6, 12, 8]).encode() + data.tobytes()).hexdigest()
    assert full.calibration_source == {"kind": "calibration_data", "sha256": expected, "shape": [6, 12, 8]}
    assert random.calibration_source == {"kind": "random", "seed": 4, "sequences": 4}
    for qm in (full, random):
        assert json.loads((qm.directory / "manifest.json").read_text())["calibration"] == qm.calibration_source
    # 40x the scale of the random default: the input exponent moves up by about log2(40) ~ 5.3
    assert full.input_exponent - random.input_exponent >= 4, (full.input_exponent, random.input_exponent)
    # the offline file's embedded test input is the first calibration sequence, not a random one
    test = load_espdl(full.modules[0].offline_espdl).test_inputs["input"]
    assert np.array_equal(np.asarray(test.data).reshape(12, 8), P4.quantize(data[0], full.input_exponent, 8))


CALLS_AND_FILE = '''
def calibration_data(config):
    marker = Path(__file__).with_name("calls.txt")
    marker.write_text(str(int(marker.read_text()) + 1 if marker.exists() else 1))
    return np.load(Path(__file__).with_name("calibration.npy"))
'''


def test_calibration_data_is_called_on_every_run_and_its_data_keys_the_cache(tmp_path):
    """A warm run describes the spec from the index, yet calls calibration_data: other data is another
    calibration (the data file is no source file), the same data a cache hit."""
    source = HOOKS.read_text()
    body = re.sub(r"\ndef calibration_data\(config\):\n(    .*\n|\n)*?(?=\ndef )", CALLS_AND_FILE, source)
    assert body != source
    spec_file = tmp_path / "user" / "spec.py"
    spec_file.parent.mkdir()
    spec_file.write_text("from pathlib import Path\n" + body)
    rng = np.random.default_rng(0)
    np.save(spec_file.with_name("calibration.npy"), rng.standard_normal((3, 12, 8)).astype(np.float32))
    calls = spec_file.with_name("calls.txt")
    index, cache = SpecIndex(tmp_path / "cache" / "specs"), tmp_path / "cache"

    def run():
        spec = load_spec(spec_file, index)
        described = spec.module is None
        quantizer = Quantizer(cache)
        return described, quantizer.model(spec, P4), quantizer.calibrations

    described, first, calibrations = run()
    assert (described, calibrations, calls.read_text()) == (False, 1, "1")
    described, warm, calibrations = run()
    assert (described, calibrations, calls.read_text()) == (True, 0, "2")  # not imported for the index, yet called
    assert warm.key == first.key
    np.save(spec_file.with_name("calibration.npy"), 3 * rng.standard_normal((3, 12, 8)).astype(np.float32))
    described, other, calibrations = run()
    assert (described, calibrations, calls.read_text()) == (True, 1, "3")
    assert other.key != first.key and other.calibration_source["sha256"] != first.calibration_source["sha256"]


@pytest.mark.parametrize(
    "returned, message",
    [
        (lambda: np.zeros((12, 8), np.float32), r"returned shape \[12, 8\], not 3-D \[sequences, frames, channels\]"),
        (lambda: np.zeros((2, 12, 5), np.float32), r"returned 5 channels \(shape \[2, 12, 5\]\), not CONFIG\['channels'\] = 8"),
        (lambda: np.zeros((2, 10, 8), np.float32), r"sequences of 10 frames .* not CONFIG\['sequence_length'\] = 12"),
        (lambda: np.zeros((0, 12, 8), np.float32), r"returned no sequences \(shape \[0, 12, 8\]\)"),
        (lambda: np.full((2, 12, 8), np.nan), r"value nan at index \[0, 0, 0\] is not finite in float32 \(192 of 192"),
        (lambda: np.full((1, 12, 8), 1e300), r"value inf at index \[0, 0, 0\] is not finite in float32"),
        (lambda: np.zeros((2, 12, 8), np.int16), r"returned dtype int16, not floats"),
        (lambda: [[1.0, 2.0], [3.0]], r"returned list, not an array \(ValueError"),
        (lambda: (_ for _ in ()).throw(OSError("no such file:\n  calib.npy")),
         r"calibration_data\(\) raised OSError: no such file: calib.npy; fix the function"),
    ],
)
def test_bad_calibration_data_is_one_line(tmp_path, returned, message):
    spec = load_spec(HOOKS).with_functions(calibration_data=lambda config: returned())
    with pytest.raises(ConfigError, match=message) as info:
        spec.calibration_array()
    assert "calibration_data()" in one_line(info)
    quantizer = Quantizer(tmp_path)  # the same line from the quantizer, before anything is calibrated
    with pytest.raises(ConfigError, match=message):
        quantizer.model(spec, P4)
    assert quantizer.calibrations == 0


def test_calibration_data_may_be_a_torch_tensor():
    import torch

    tensor = torch.ones(2, 12, 8, dtype=torch.float64, requires_grad=True) * 3
    array = load_spec(HOOKS).with_functions(calibration_data=lambda config: tensor).calibration_array()
    assert array.dtype == np.float32 and array.shape == (2, 12, 8) and float(array.max()) == 3.0


# ----------------------------------------------------------------------------------------------- quant_setting
def test_quant_setting_reaches_esp_ppq(hooks):
    full, default = hooks["full"], hooks["default_setting"]
    assert full.setting_changes == {"dispatching_table.dispatchings./hidden/Conv": "ESPDL_INT16",
                                    "quantize_activation_setting.calib_algorithm": "minmax"}
    assert json.loads((full.directory / "manifest.json").read_text())["quant_setting"] == full.setting_changes
    assert default.setting_changes == {}
    for qm, platform, observer in ((full, "ESPDL_INT16", "minmax"), (default, "ESPDL_INT8", "kl")):
        graph = qm.modules[0].offline_graph
        assert graph.operations["/hidden/Conv"].platform.name == platform
        activations = {c.observer_algorithm for op in graph.operations.values() if hasattr(op, "config_with_variable")
                       for c, v in op.config_with_variable if not v.is_parameter}
        assert activations == {observer}, activations
    # ESP-PPQ's exporter writes the dispatched op at 16 bits, requantizing on both sides; the ends stay int8
    model, plain = load_espdl(full.modules[0].offline_espdl), load_espdl(default.modules[0].offline_espdl)
    assert (model.initializers["hidden.weight"].dtype, plain.initializers["hidden.weight"].dtype) == ("int16", "int8")
    assert [n.op_type for n in model.nodes].count("RequantizeLinear") == 2
    assert "RequantizeLinear" not in [n.op_type for n in plain.nodes]
    assert model.input("input").dtype == model.output("output").dtype == "int8"


def _set(attribute: str, value):
    def change(setting, target):
        sub = setting
        *path, last = attribute.split(".")
        for part in path:
            sub = getattr(sub, part)
        setattr(sub, last, value)
    return change


def _dispatch(op: str, chip: str | None = None):
    def change(setting, target):
        from esp_ppq.api import get_target_platform

        setting.quantize_activation_setting.calib_algorithm = "minmax"  # "kl" at 16 bits takes seconds per tensor
        setting.dispatching_table.append(op, get_target_platform(chip or target, 16))
    return change


def _raise(setting):
    raise RuntimeError("no such\nfield")


@pytest.mark.parametrize(
    "function, message",
    [
        (_raise, r"quant_setting\(\) raised RuntimeError: no such field"),
        (lambda setting: 42, r"quant_setting\(\) returned int, not a QuantizationSetting"),
        (_set("quantize_activation_setting.calib_algorithm", "kll"),
         r"sets quantize_activation_setting.calib_algorithm to 'kll'; use one of minmax, kl, percentile"),
        (_set("dispatcher", "everything"), r"sets dispatcher to 'everything'"),
        (_dispatch("/hidden/Conv", "esp32s3"), r"dispatches '/hidden/Conv' to ESPDL_S3_INT16, not a platform of esp32p4"),
        (_dispatch("/hiden/Conv"), r"dispatches operation '/hiden/Conv', which no sub-model of 'hooks_auto' has "
                                   r"\(close: /hidden/Conv"),
        (_dispatch("/project/Conv"), r"makes module 0 of 'hooks_auto' write its output at 16 bits \(op '/project/Conv'\)"),
        (_dispatch("/expand/Conv"), r"makes module 0 of 'hooks_auto' read its input at 16 bits \(op '/expand/Conv'\)"),
    ],
)
def test_bad_quant_setting_is_one_line(tmp_path, function, message):
    spec = load_spec(HOOKS).with_functions(quant_setting=function)
    with pytest.raises(ConfigError, match=message) as info:
        Quantizer(tmp_path).model(spec, P4)
    one_line(info)


def test_an_explicit_model_streams_exactly_with_a_16_bit_op_reading_its_cache(tmp_path):
    """The locked streaming graph gives a 16-bit reader of an 8-bit tensor (here the cache's Concat) the offline
    graph's 16-bit scale there, not the producer's 8-bit one (nor that 16-bit scale to the 8-bit Concat): export
    and streaming stay exact."""
    from harness.model.frames import generate_frames
    from harness.ppq.quantize import exponent_of
    from harness.ppq.streaming import offline_on_host, stream_on_host

    quantizer = Quantizer(tmp_path)
    qm = quantizer.model(load_spec(SPECS / "hooks_explicit.py"), P4)
    m = qm.modules[0]
    read, offline = (g.operations["/depthwise/depthwise.0/Conv"].input_quant_config[0]
                     for g in (m.streaming_graph, m.offline_graph))
    concat = m.streaming_graph.operations["/Concat"].output_quant_config[0]
    assert (read.num_of_bits, offline.num_of_bits, concat.num_of_bits) == (16, 16, 8)
    assert exponent_of(read.scale) == exponent_of(offline.scale) != exponent_of(concat.scale)
    assert m.unlocked == [] and qm.tolerance_lsb == 0
    assert len(quantizer.streaming_exports(qm, 3)) == 1  # the file runs one window at export (harness lint)
    frames = generate_frames(qm)
    expected = offline_on_host(qm, frames)[-1].data
    for window in (1, 3):
        assert np.array_equal(stream_on_host(qm, frames, window)[-1].data, expected)


SETTINGS_HELPER = '''
def quant_setting(setting):
    setting.quantize_activation_setting.calib_algorithm = "minmax"
'''


@pytest.mark.parametrize("where", ["spec", "helper"])
def test_editing_quant_setting_means_a_new_calibration(tmp_path, where):
    """Its source is in the spec's source digest, whether it is in the spec or in a module next to it."""
    user = tmp_path / "user"
    user.mkdir()
    source = HOOKS.read_text()
    body = source[:source.index("\ndef quant_setting")] + "\n" + source[source.index("\ndef metric"):]
    if where == "spec":
        body += SETTINGS_HELPER
        edited = user / "spec.py"
    else:
        body = "from settings_helper import quant_setting\n" + body
        (user / "settings_helper.py").write_text(SETTINGS_HELPER)
        edited = user / "settings_helper.py"
    (user / "spec.py").write_text(body)
    index, cache = SpecIndex(tmp_path / "cache" / "specs"), tmp_path / "cache"

    def run():
        quantizer = Quantizer(cache)
        return quantizer.model(load_spec(user / "spec.py", index), P4), quantizer.calibrations

    first, calibrations = run()
    assert calibrations == 1 and first.setting_changes == {"quantize_activation_setting.calib_algorithm": "minmax"}
    assert run()[1] == 0
    edited.write_text(edited.read_text().replace('"minmax"', '"percentile"'))
    second, calibrations = run()
    assert calibrations == 1 and second.key != first.key
    assert second.setting_changes == {"quantize_activation_setting.calib_algorithm": "percentile"}


# ------------------------------------------------------------------------------------- metric, frame_period_ms
def test_the_optional_functions_are_registered_and_survive_the_index(tmp_path):
    assert {"calibration_data", "quant_setting", "metric"} <= set(FUNCTIONS)
    index = SpecIndex(tmp_path / "specs")
    imported = load_spec(HOOKS, index)
    described = load_spec(HOOKS, index)
    assert described.module is None
    for spec in (imported, described):
        assert spec.hooks == {"build_submodels", "calibration_data", "quant_setting", "metric"}
        assert spec.frame_period_ms == 10
    outputs = np.zeros((2, 12, 3), np.float32)
    outputs[0, -1, 2] = outputs[1, -1, 0] = 1
    assert described.evaluate(outputs, np.array([2, 1])) == {"accuracy": 0.5}  # imports it now
    assert callable(described.metric)
    plain = load_spec(SPECS / "tiny_auto.py")
    assert plain.metric is None and plain.evaluate(outputs, np.array([2, 1])) is None
    assert plain.calibration_array() is None and plain.frame_period_ms is None


@pytest.mark.parametrize(
    "returned, message",
    [
        ({"accuracy": "high"}, r"metric\(\) returned 'accuracy': 'high'"),
        ({"f1": float("nan")}, r"metric\(\) returned 'f1': nan"),
        ([0.5], r"metric\(\) returned \[0.5\]"),
        ({}, r"metric\(\) returned \{\}"),
    ],
)
def test_a_metric_result_that_is_not_numbers_is_one_line(returned, message):
    spec = load_spec(HOOKS).with_functions(metric=lambda outputs, labels: returned)
    with pytest.raises(ConfigError, match=message) as info:
        spec.evaluate(np.zeros((1, 12, 3)), np.zeros(1, int))
    one_line(info)
    failing = load_spec(HOOKS).with_functions(metric=lambda outputs, labels: 1 / 0)
    with pytest.raises(ConfigError, match=r"metric\(\) raised ZeroDivisionError: division by zero") as info:
        failing.evaluate(np.zeros((1, 12, 3)), np.zeros(1, int))
    one_line(info)


GOOD = """
from models.tcn import build_tcn
NAME = "mine"
STREAMING = "auto"
CONFIG = {"channels": 8, "expand": 16, "kernel_size": 3, "dilation": 2, "sequence_length": 12}
def build_submodels(config):
    return build_tcn(config)
"""


@pytest.mark.parametrize("value", ["10", "12.5", "None"])
def test_frame_period_ms_is_a_positive_number(tmp_path, value):
    path = tmp_path / "spec.py"
    path.write_text(textwrap.dedent(GOOD).replace('"sequence_length": 12}', f'"sequence_length": 12, "frame_period_ms": {value}}}'))
    index = SpecIndex(tmp_path / "specs")
    for spec in (load_spec(path, index), load_spec(path, index)):  # imported, then described by the index
        assert spec.frame_period_ms == eval(value)


@pytest.mark.parametrize("value", ["0", "-10", "'10'", "True", "float('inf')", "float('nan')", "[10]"])
def test_a_bad_frame_period_ms_is_one_line(tmp_path, value):
    path = tmp_path / "spec.py"
    path.write_text(textwrap.dedent(GOOD).replace('"sequence_length": 12}', f'"sequence_length": 12, "frame_period_ms": {value}}}'))
    with pytest.raises(ConfigError, match=r"CONFIG\['frame_period_ms'\] is .*, not a positive number of milliseconds; "
                                          r"set the hop between frames") as info:
        load_spec(path)
    one_line(info, path)


@pytest.mark.parametrize(
    "extra, message",
    [
        ("metric = 3\n", r"metric is a int, not a function; define def metric\(outputs, labels\)"),
        ("def metric(outputs):\n    return {}\n", r"metric\(outputs\) cannot be called as metric\(outputs, labels\)"),
        ("def quant_setting():\n    pass\n", r"quant_setting\(\) cannot be called as quant_setting\(setting\) or "
                                             r"quant_setting\(setting, target\)"),
        ("def calibration_data(config, extra):\n    pass\n", r"calibration_data\(config, extra\) cannot be called as "
                                                            r"calibration_data\(config\)"),
        ("calibration_data = 'calib.npy'\n", r"calibration_data is a str, not a function"),
    ],
)
def test_an_optional_function_that_cannot_be_called_so_is_one_line(tmp_path, extra, message):
    path = tmp_path / "spec.py"
    path.write_text(textwrap.dedent(GOOD) + extra)
    with pytest.raises(ConfigError, match=message) as info:
        load_spec(path)
    one_line(info, path)


def test_an_exported_spec_cannot_calibrate(tmp_path):
    path = tmp_path / "spec.py"
    path.write_text('NAME = "mine"\nSTREAMING = "exported"\nEXPORTS = {}\n'
                    'def calibration_data(config):\n    return None\n')
    with pytest.raises(ConfigError, match=r"calibration_data\(\) applies to models the harness quantizes") as info:
        load_spec(path)
    one_line(info, path)
