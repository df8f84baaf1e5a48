"""Results derived from a quantized model are computed once, read back on later runs, and rebuilt when damaged."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

import harness.ppq.fidelity
import harness.espdl.lint
import harness.ppq.reference
import harness.ppq.streaming
from harness.ppq.derived import (cached_fidelity_bound, cached_host_reference, cached_host_stream, cached_lint,
                                 cached_reference, entry_directory)
from harness.model.frames import generate_frames


def _counted(monkeypatch, module, name: str) -> list:
    """Count the calls of ``module.name`` (still calling it)."""
    calls = []
    original = getattr(module, name)

    def counting(*args, **kwargs):
        calls.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counting)
    return calls


def _same(a, b) -> bool:
    return all(x.exponent == y.exponent and x.data.dtype == y.data.dtype and np.array_equal(x.data, y.data)
               for x, y in zip(a, b, strict=True))


@pytest.mark.parametrize("name, cached, module, computed", [
    ("tiny_auto", cached_reference, harness.ppq.reference, "offline_reference"),
    ("tiny_auto16", cached_host_reference, harness.ppq.streaming, "offline_on_host"),
])
def test_a_reference_is_simulated_once_then_read(tiny, monkeypatch, name, cached, module, computed):
    qm = tiny(name)
    frames = generate_frames(qm, seed=501)  # frames no other test stores results for
    calls = _counted(monkeypatch, module, computed)
    first = cached(qm, frames)
    again = cached(qm, frames)
    assert len(calls) == 1 and _same(first, again)
    assert _same(first, getattr(module, computed)(qm, frames))
    other = dataclasses.replace(frames, values=frames.values[:, :6])  # a prefix: another entry
    cached(qm, other)
    assert len(calls) == 3



def test_a_host_stream_is_stepped_once_per_wiring_then_read(tiny, quantizer, monkeypatch):
    """Keyed by the exported files too: other files (another window, another wiring) are stepped again."""
    qm = tiny("tiny_auto")
    frames = generate_frames(qm, seed=505)
    w3, w4 = quantizer.streaming_exports(qm, 3), quantizer.streaming_exports(qm, 4)
    calls = _counted(monkeypatch, harness.ppq.streaming, "stream_on_host")
    first = cached_host_stream(qm, frames, 3, w3)
    assert _same(first, cached_host_stream(qm, frames, 3, w3)) and len(calls) == 1
    assert _same(first, harness.ppq.streaming.stream_on_host(qm, frames, 3, w3))
    cached_host_stream(qm, frames, 4, w4)
    rewired = [dataclasses.replace(w3[0], sha256="0" * 64), *w3[1:]]  # same window, another file
    cached_host_stream(qm, frames, 3, rewired)
    assert len(calls) == 4  # the first, the direct call, W4 and the other file

@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "delete the manifest", "garble the manifest"])
def test_a_damaged_reference_is_simulated_again(tiny, monkeypatch, damage):
    qm = tiny("tiny_explicit")
    frames = generate_frames(qm, seed=502)
    expected = cached_reference(qm, frames)
    entry = entry_directory(qm, "reference", frames)
    target = entry / "m2.npy"
    if damage == "flip a byte":
        data = bytearray(target.read_bytes())
        data[-1] ^= 0x01
        target.write_bytes(bytes(data))
    elif damage == "truncate":
        target.write_bytes(target.read_bytes()[:-8])
    elif damage == "delete the manifest":
        (entry / "manifest.json").unlink()
    else:
        (entry / "manifest.json").write_text("{")
    calls = _counted(monkeypatch, harness.ppq.reference, "offline_reference")
    assert _same(cached_reference(qm, frames), expected)
    assert len(calls) == 1  # simulated again, not read
    assert _same(cached_reference(qm, frames), expected) and len(calls) == 1  # and stored again


def test_a_damaged_fidelity_bound_is_measured_again(tiny, monkeypatch):
    qm = tiny("tiny_auto16")
    frames = generate_frames(qm, seed=503)
    expected = cached_fidelity_bound(qm, frames)
    assert expected.per_module and all(b >= 1 for b in expected.per_module)
    entry = entry_directory(qm, "fidelity", frames)
    bound = json.loads((entry / "bound.json").read_text())
    (entry / "bound.json").write_text(json.dumps({**bound, "per_module": [99] * len(bound["per_module"])}))
    calls = _counted(monkeypatch, harness.ppq.fidelity, "fidelity_bound")
    assert cached_fidelity_bound(qm, frames) == expected
    assert len(calls) == 1
    assert cached_fidelity_bound(qm, frames) == expected and len(calls) == 1


def test_a_model_without_a_cache_entry_is_simulated_every_time(tiny, monkeypatch):
    qm = dataclasses.replace(tiny("tiny_auto"), key="")  # e.g. a model being built: nothing to store next to
    frames = generate_frames(qm, seed=504)
    calls = _counted(monkeypatch, harness.ppq.reference, "offline_reference")
    cached_reference(qm, frames)
    cached_reference(qm, frames)
    assert len(calls) == 2


def test_lint_findings_are_read_back_and_a_damaged_record_is_linted_again(tiny, quantizer, monkeypatch):
    qm = tiny("tiny_auto")
    path = quantizer.streaming_exports(qm, 3)[0].path
    first = cached_lint(path, qm.target)
    record = path.with_name(f"{path.name}.lint.json")
    calls = _counted(monkeypatch, harness.espdl.lint, "lint_model")
    assert cached_lint(path, qm.target) == first and not calls
    data = json.loads(record.read_text())
    record.write_text(json.dumps({**data, "findings": [*data["findings"], "planted finding"]}))
    assert cached_lint(path, qm.target) == first and len(calls) == 1
    assert cached_lint(path, qm.target) == first and len(calls) == 1
