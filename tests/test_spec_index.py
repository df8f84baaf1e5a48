"""The spec index: an unchanged spec is described without importing it; any change to its files imports it again."""

import json
import subprocess
import sys
import textwrap

import pytest

from harness.errors import ConfigError
from harness.model.spec import load_spec
from harness.model.spec_index import SpecIndex

from conftest import ROOT, SPECS

SPEC = """
import os
import layers_helper
NAME = "indexed"
STREAMING = "auto"
CONFIG = {"channels": 4, "sequence_length": 6, "width": int(os.environ.get("INDEXED_WIDTH", "4"))}
IMPORTS = layers_helper.count_import()
def build_submodels(config):
    return layers_helper.build(config)
"""

HELPER = """
import pathlib
import torch.nn as nn

def count_import():
    marker = pathlib.Path(__file__).with_name("imports.txt")
    marker.write_text(str(int(marker.read_text()) + 1 if marker.exists() else 1))

def build(config):
    return [nn.Conv1d(config["channels"], config["width"], 1)]
"""


@pytest.fixture
def user_dir(tmp_path):
    (tmp_path / "layers_helper.py").write_text(textwrap.dedent(HELPER))
    (tmp_path / "spec.py").write_text(textwrap.dedent(SPEC))
    return tmp_path


def imports(user_dir) -> int:
    marker = user_dir / "imports.txt"
    return int(marker.read_text()) if marker.exists() else 0


def test_an_unchanged_spec_is_described_without_importing_it(user_dir, tmp_path):
    index = SpecIndex(tmp_path / "index")
    first = load_spec(user_dir / "spec.py", index)
    assert imports(user_dir) == 1 and first.module is not None
    second = load_spec(user_dir / "spec.py", index)
    assert imports(user_dir) == 1 and second.module is None  # not imported
    assert (second.name, second.streaming, second.config, second.hooks, second.sources) == (
        first.name, first.streaming, first.config, first.hooks, first.sources)
    assert len(second.build_submodels(second.config)) == 1  # a function imports it now
    assert imports(user_dir) == 2


@pytest.mark.parametrize("changed", ["spec.py", "layers_helper.py"])
def test_a_change_to_any_of_its_files_imports_it_again(user_dir, tmp_path, changed):
    index = SpecIndex(tmp_path / "index")
    load_spec(user_dir / "spec.py", index)
    path = user_dir / changed
    path.write_text(path.read_text().replace('"4"))', '"5"))') + "\n# edited\n")
    again = load_spec(user_dir / "spec.py", index)
    assert imports(user_dir) == 2 and again.module is not None
    assert again.config["width"] == (5 if changed == "spec.py" else 4)


def test_the_source_digest_is_known_without_building_the_submodels(user_dir, tmp_path):
    index = SpecIndex(tmp_path / "index")
    spec = load_spec(user_dir / "spec.py", index)
    assert spec.source_digest() is None  # nothing built yet: no list of files
    full = spec.source_digest(spec.build_submodels(spec.config))
    described = load_spec(user_dir / "spec.py", index)
    assert described.module is None and described.source_digest() == full
    (user_dir / "layers_helper.py").write_text((user_dir / "layers_helper.py").read_text() + "\n# edited\n")
    changed = load_spec(user_dir / "spec.py", index)
    assert changed.source_digest() is None or changed.source_digest() != full


def test_a_config_that_depends_on_the_environment_is_caught_when_the_module_is_imported(user_dir, tmp_path, monkeypatch):
    index = SpecIndex(tmp_path / "index")
    load_spec(user_dir / "spec.py", index)
    monkeypatch.setenv("INDEXED_WIDTH", "7")
    described = load_spec(user_dir / "spec.py", index)
    assert described.config["width"] == 4  # what the files said: the index cannot see the environment
    with pytest.raises(ConfigError, match=r"CONFIG changed while none of its source files did.*--hil-cache-dir"):
        described.build_submodels(described.config)


def test_a_damaged_or_foreign_entry_only_imports_the_spec_again(user_dir, tmp_path):
    index = SpecIndex(tmp_path / "index")
    load_spec(user_dir / "spec.py", index)
    (entry,) = (tmp_path / "index").glob("*.json")
    entry.write_text("{not json")
    assert load_spec(user_dir / "spec.py", index).module is not None
    data = json.loads(entry.read_text())
    entry.write_text(json.dumps({**data, "loader": "other code"}))
    assert load_spec(user_dir / "spec.py", index).module is not None
    assert imports(user_dir) == 3


def test_a_config_json_cannot_keep_is_not_indexed(tmp_path):
    spec = tmp_path / "tupled.py"
    spec.write_text(textwrap.dedent(SPEC).replace("import layers_helper\n", "").replace(
        "IMPORTS = layers_helper.count_import()\n", "").replace('"width":', '"dims": (1, 2), "width":'))
    index = SpecIndex(tmp_path / "index")
    load_spec(spec, index)
    assert load_spec(spec, index).module is not None and not list((tmp_path / "index").glob("*.json"))


WARM = """
import json, sys
from harness.model.spec import load_spec
from harness.model.spec_index import SpecIndex
from harness.ppq.quantize import Quantizer
from harness.targets import get_target
spec = load_spec(sys.argv[1], SpecIndex(sys.argv[2] + "/specs"))
quantizer = Quantizer(sys.argv[2])
qm = quantizer.model(spec, get_target("esp32p4"))
print(json.dumps({"torch": "torch" in sys.modules, "imported": spec.module is not None,
                  "calibrations": quantizer.calibrations, "directory": str(qm.directory)}))
"""


def test_a_warm_run_neither_imports_the_spec_nor_torch(tmp_path):
    """What makes a warm main job cheap: the model comes from the cache under the same key, with no torch."""

    def run():
        done = subprocess.run([sys.executable, "-c", WARM, str(SPECS / "tiny_auto.py"), str(tmp_path)],
                              cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    cold, warm = run(), run()
    assert cold["torch"] and cold["imported"] and cold["calibrations"] > 0
    assert warm == {**cold, "torch": False, "imported": False, "calibrations": 0}
