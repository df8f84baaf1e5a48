"""``python -m harness.emulator check``: the host ``Model::test()`` as a command, with its exit codes.

0: every embedded test output matches; 1: some differ (named, first divergence
and linted cause given); 2: the model cannot be checked (unreadable file,
unknown op, unknown target) -- one line on stderr.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from engine_models.fixtures import engine_dir, residual_exports, zoo_exports  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent


def emulator(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "harness.emulator", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def test_matching_model_exits_0_with_one_line_per_tensor(zoo_exports):
    path = zoo_exports[("zoo1d", "esp32s3", 8, True)]
    run = emulator("check", str(path), "--target", "esp32s3")
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    m = re.fullmatch(r"(\d+)/(\d+) tensors match", lines[-1])
    assert m and m.group(1) == m.group(2) and int(m.group(2)) >= 20
    tensor_lines = [l for l in lines if re.match(r"\s+\S+: match, max \|diff\| 0, 0 of \d+ differ$", l)]
    assert len(tensor_lines) == int(m.group(2))
    assert "/AveragePool_output_0: match" in run.stdout and run.stderr == ""


def test_mismatch_exits_1_and_names_the_first_divergence_and_its_cause(residual_exports):
    _, paths = residual_exports
    run = emulator("check", str(paths["esp32p4"]), "--target", "esp32p4")
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    mismatch = [l for l in out.splitlines() if ": MISMATCH" in l]
    assert len(mismatch) == 1
    assert "differs because of linted node /Add: exponent-mismatch" in mismatch[0]
    name = mismatch[0].split(":")[0].strip()
    assert f"first diverging tensor (topological order): {name}" in out
    m = re.search(r"^(\d+)/(\d+) tensors match$", out, re.M)
    assert m and int(m.group(1)) == int(m.group(2)) - 1


def test_wrong_rounding_target_exits_1(zoo_exports):
    run = emulator("check", str(zoo_exports[("zoo1d", "esp32p4", 8, True)]), "--target", "esp32s3")
    assert run.returncode == 1 and "MISMATCH" in run.stdout


@pytest.mark.parametrize("case", ["unknown-target", "truncated", "not-espdl", "missing", "unknown-op"])
def test_unusable_input_exits_2_with_one_line(zoo_exports, tmp_path, case):
    good = zoo_exports[("zoo1d", "esp32p4", 8, True)]
    path, target, expect = good, "esp32p4", None
    if case == "unknown-target":
        target, expect = "esp32", "unknown target 'esp32'"
    elif case == "truncated":
        path = tmp_path / "cut.espdl"
        path.write_bytes(good.read_bytes()[:200])
        expect = "cut.espdl"
    elif case == "not-espdl":
        path = tmp_path / "notes.espdl"
        path.write_text("hello")
        expect = "bad magic"
    elif case == "missing":
        path, expect = tmp_path / "nope.espdl", "cannot read"
    else:  # rename the Tanh op (same length, so the FlatBuffer stays valid): an op the engine does not know
        path = tmp_path / "tanx.espdl"
        path.write_bytes(good.read_bytes().replace(b"Tanh", b"Tanx"))
        expect = "node '/Tanx' has op type 'Tanx'"
    run = emulator("check", str(path), "--target", target)
    assert run.returncode == 2, run.stdout + run.stderr
    assert run.stdout == ""
    assert len(run.stderr.strip().splitlines()) == 1 and expect in run.stderr
