"""Model specs: the built-in ones load, and every broken spec gives one clear error."""

import textwrap

import pytest

from harness.errors import ConfigError
from harness.model.spec import builtin_spec_paths, load_spec, load_specs

GOOD = """
from models.tcn import build_tcn
NAME = "mine"
STREAMING = "explicit"
CONFIG = {"channels": 8, "expand": 16, "kernel_size": 3, "dilation": 2, "sequence_length": 12}
def build_submodels(config):
    return build_tcn(config)
"""


def write(tmp_path, body, name="spec.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return path


def test_builtin_specs_are_the_two_families():
    specs = {s.name: s for s in load_specs()}
    assert {"tcn_seed", "tcn_auto"} <= set(specs)
    assert specs["tcn_seed"].streaming == "explicit" and specs["tcn_auto"].streaming == "auto"
    assert specs["tcn_seed"].channels == 64 and specs["tcn_seed"].sequence_length == 36
    assert all(p.parent.name == "models" for p in builtin_spec_paths())


def test_user_spec_gets_harness_defaults(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert (spec.name, spec.bits, spec.tolerance_lsb, spec.calibration_window) == ("mine", 8, 0, 3)
    assert len(spec.build_submodels(spec.config)) == 3


def test_spec_can_import_its_siblings(tmp_path):
    (tmp_path / "my_blocks.py").write_text("from models.tcn import build_tcn as build\n")
    spec = load_spec(write(tmp_path, GOOD.replace("from models.tcn import build_tcn", "from my_blocks import build as build_tcn")))
    assert len(spec.build_submodels(spec.config)) == 3


def test_a_helper_module_that_builds_the_layers_is_part_of_the_model(tmp_path):
    """A spec whose layers come from a helper function (torch's own classes only) is a new model when the
    helper changes: the calibration and export cache must not serve the old one."""
    helper = tmp_path / "layers_helper.py"
    helper.write_text("import torch.nn as nn\n\ndef build(config):\n    return [nn.Conv1d(8, 8, 1)]\n")
    body = GOOD.replace("from models.tcn import build_tcn", "import layers_helper").replace(
        "return build_tcn(config)", "return layers_helper.build(config)")
    spec = load_spec(write(tmp_path, body))
    assert helper.resolve() in spec.sources and spec.path in spec.sources
    assert not any("site-packages" in f.parts or f.name == "__init__.py" for f in spec.sources)  # torch is not
    before = spec.source_digest(spec.build_submodels(spec.config))
    helper.write_text(helper.read_text().replace("nn.Conv1d(8, 8, 1)", "nn.Conv1d(8, 8, 3, padding=2)"))
    assert spec.source_digest(spec.build_submodels(spec.config)) != before


@pytest.mark.parametrize(
    "change, message",
    [
        (("NAME = \"mine\"", "NAME = 'not an id'"), "NAME is missing or not an identifier"),
        (("STREAMING = \"explicit\"", "STREAMING = 'magic'"), "STREAMING is 'magic'"),
        (("def build_submodels", "def other"), r"build_submodels\(config\) is missing"),
        (("\"channels\": 8, ", ""), r"CONFIG\['channels'\] must be a positive int"),
        (("\"sequence_length\": 12}", "\"sequence_length\": 12, \"bits\": 4}"), r"CONFIG\['bits'\] is 4"),
        (("\"sequence_length\": 12}", "\"sequence_length\": 12, \"tolerance_lsb\": 2}"), "needs a tolerance_reason"),
        (("\"sequence_length\": 12}", "\"sequence_length\": 12, \"calibration_window\": 5}"), "does not divide"),
        (("from models.tcn", "from models.nowhere"), "cannot be imported: ModuleNotFoundError"),
        (("CONFIG = {", "CONFIG = ["), "cannot be imported: SyntaxError"),
    ],
)
def test_broken_spec_is_one_clear_error(tmp_path, change, message):
    path = write(tmp_path, GOOD.replace(*change))
    with pytest.raises(ConfigError, match=message) as info:
        load_spec(path)
    text = str(info.value)
    assert str(path) in text and "\n" not in text


def test_missing_file_and_duplicate_and_unknown_names(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_spec(tmp_path / "nope.py")
    dup = write(tmp_path, GOOD.replace('"mine"', '"tcn_seed"'))
    with pytest.raises(ConfigError, match="NAME 'tcn_seed' is already used"):
        load_specs([str(dup)])
    with pytest.raises(ConfigError, match="unknown model.*nosuch.*choose from"):
        load_specs(only=["nosuch"])


def test_window_error_lists_divisors(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.window_error(3) is None
    assert spec.window_error(5) == (
        "window size 5 does not divide the sequence length 12 of model 'mine'; choose one of 1, 2, 3, 4, 6, 12"
    )


def test_two_specs_each_get_their_own_same_named_sibling(tmp_path):
    """Users keep a ``layers.py`` next to each spec; one run loads several such specs."""
    specs = []
    for name, out in (("first", 3), ("second", 5)):
        directory = tmp_path / name
        directory.mkdir()
        (directory / "layers.py").write_text(f"import torch.nn as nn\n\ndef build(config):\n    return [nn.Conv1d(8, {out}, 1)]\n")
        body = GOOD.replace("from models.tcn import build_tcn", "import layers").replace(
            "return build_tcn(config)", "return layers.build(config)").replace('"mine"', f'"{name}"')
        specs.append(load_spec(write(directory, body)))
    assert [s.build_submodels(s.config)[0].out_channels for s in specs] == [3, 5]
    assert [s.sources[0].parent.name for s in specs] == ["first", "second"]
