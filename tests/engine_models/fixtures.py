"""Session fixtures shared by the engine and CLI tests: ESP-PPQ exports built once per session.

Each test module imports these fixtures; the exports are memoized here (not by
pytest, which would build them once per importing module).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from engine_models.zoo import RESIDUAL, SATURATING, ZOO, export

TARGETS = ("esp32p4", "esp32s3")
_MEMO: dict = {}


def _memo(key, build):
    if key not in _MEMO:
        _MEMO[key] = build()
    return _MEMO[key]


@pytest.fixture(scope="session")
def engine_dir(tmp_path_factory) -> Path:
    return _memo("dir", lambda: tmp_path_factory.mktemp("engine"))


@pytest.fixture(scope="session")
def zoo_exports(engine_dir) -> dict[tuple[str, str, int, bool], Path]:
    """(model, target, bits, lut) -> .espdl; int16 also without LUT fusion (ESP-DL's float activations)."""

    def build():
        out = {}
        for spec in ZOO:
            for target in TARGETS:
                for bits in (8, 16):
                    out[(spec.name, target, bits, True)] = export(spec, 1, target, bits, engine_dir)
        for target in TARGETS:
            out[("zoo1d", target, 16, False)] = export(ZOO[0], 1, target, 16, engine_dir, lut=False, suffix="-nolut")
        return out

    return _memo("zoo", build)


@pytest.fixture(scope="session")
def residual_exports(engine_dir) -> tuple[int, dict[str, Path]]:
    """``x + tanh(conv(x))``: the first seed whose esp32p4 export leaves the graph input unaligned at the Add,
    and that seed's export for both targets."""

    def build():
        from harness.espdl.reader import load_espdl

        for seed in range(8):
            path = export(RESIDUAL, seed, "esp32p4", 8, engine_dir)
            model = load_espdl(path)
            add = next(n for n in model.nodes if n.op_type == "Add")
            exps = {model.tensor_info(n).exponents[0] for n in (*add.inputs, *add.outputs)}
            if len(exps) > 1:
                return seed, {"esp32p4": path, "esp32s3": export(RESIDUAL, seed, "esp32s3", 8, engine_dir)}
        raise AssertionError("ESP-PPQ aligned the residual Add for every seed 0..7")

    return _memo("residual", build)


@pytest.fixture(scope="session")
def saturating_exports(engine_dir) -> dict[str, Path]:
    return _memo("saturating", lambda: {t: export(SATURATING, 0, t, 8, engine_dir) for t in TARGETS})
