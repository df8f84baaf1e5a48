"""Shared fixtures for the harness's own tests: small model specs quantized once per session."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness.ppq.quantize import Quantizer
from harness.model.spec import load_spec
from harness.targets import get_target

ROOT = Path(__file__).resolve().parent.parent
SPECS = Path(__file__).resolve().parent / "specs"


@pytest.fixture(scope="session")
def quantizer(tmp_path_factory) -> Quantizer:
    return Quantizer(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny(quantizer):
    """``tiny(spec_name, target)`` -> QuantizedModel of ``tests/specs/<spec_name>.py``, memoized."""

    def get(name: str, target: str = "esp32p4"):
        return quantizer.model(load_spec(SPECS / f"{name}.py"), get_target(target))

    return get


def run_pytest(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """Run pytest in a fresh process from the project root (as a user would)."""
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", *args],
        cwd=cwd, capture_output=True, text=True, timeout=600,
    )


@pytest.fixture(scope="session")
def boards(tmp_path_factory):
    """``boards(target)`` -> a running virtual board for ``target`` (started again if one died)."""
    from harness.emulator.virtual_board import VirtualBoard

    started = {}

    def board(target: str) -> VirtualBoard:
        if target not in started or started[target].exit_reason():
            started[target] = VirtualBoard(target, tmp_path_factory.mktemp("logs") / f"{target}.log").start()
        return started[target]

    yield board
    for b in started.values():
        b.stop()


def schema_errors(session: dict) -> list[str]:
    """Where ``session`` (a session.json's data) breaks docs/session.schema.json."""
    import json

    import jsonschema

    schema = json.loads((ROOT / "docs" / "session.schema.json").read_text())
    return [f"{e.json_path}: {e.message[:200]}" for e in jsonschema.Draft202012Validator(schema).iter_errors(session)]
