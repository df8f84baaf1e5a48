"""What a run derives from a quantized model and its frames, kept on disk in the model's cache entry.

ESP-PPQ's offline simulation on the frames (as the fidelity verdict and the
host check use it) and the fidelity bound depend only on the quantized model
(its cache key), the frames and the harness code computing them, so a warm run
reads them instead of simulating again. Each result is stored under
``<quantized entry>/derived/<what>-<key>/`` like the other cache entries: files
vouched for by a manifest of their sha256, written through a staging
directory under a lock, computed again when anything is missing or changed.
An entry dies with its quantized entry (a recalibration removes it). The
lint findings of each cached ``.espdl`` are kept next to it the same way.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from harness.model.frames import Frames
from harness.ppq.quantize import exclusive, file_sha256
from harness.emulator.engine import SOURCES as ENGINE_SOURCES
from harness.resources import code_digest
from harness.tensors import QTensor

# The harness code a derived result follows besides the quantized model (whose key covers quantize.py).
SOURCES = ("harness.ppq.derived", "harness.ppq.reference", "harness.ppq.accuracy", "harness.ppq.streaming", "harness.ppq.fidelity",
           "harness.espdl.lint", "harness.espdl.reader", "harness.ppq.env", "harness.targets", "harness.ppq.export_repairs",
           *ENGINE_SOURCES)  # the lint runs the engine's filter unpacking


def cached_reference(qm, frames: Frames) -> list[QTensor]:
    """``harness.ppq.reference.offline_reference(qm, frames)``, from disk when computed before."""
    from harness.ppq.reference import offline_reference

    return _outputs(qm, "reference", frames, lambda: offline_reference(qm, frames))


def cached_host_reference(qm, frames: Frames) -> list[QTensor]:
    """``harness.ppq.streaming.offline_on_host(qm, frames)``, from disk when computed before (int8: the same
    simulation as ``cached_reference``, so the same entry)."""
    from harness.ppq.streaming import offline_on_host

    what = "reference" if qm.bits == 8 else "reference-float64"
    return _outputs(qm, what, frames, lambda: offline_on_host(qm, frames))


def cached_host_stream(qm, frames: Frames, window: int, exports: list) -> list[QTensor]:
    """``harness.ppq.streaming.stream_on_host(qm, frames, window, exports)``, from disk when computed before.

    Keyed also by the exported files' sha256: the host check steps the graphs as those files wire them.
    """
    from harness.ppq.streaming import stream_on_host

    wiring = hashlib.sha256("".join(e.sha256 for e in exports).encode()).hexdigest()[:16]
    return _outputs(qm, f"host-stream-W{window}-{wiring}", frames, lambda: stream_on_host(qm, frames, window, exports))


def cached_fidelity_bound(qm, frames: Frames):
    """``harness.ppq.fidelity.fidelity_bound(qm, frames)``, from disk when computed before."""
    from harness.ppq.fidelity import FidelityBound, fidelity_bound

    def save(bound, out: Path) -> None:
        (out / "bound.json").write_text(json.dumps({"per_module": list(bound.per_module), "reason": bound.reason}))

    def load(directory: Path):
        data = json.loads((directory / "bound.json").read_text())
        per_module = tuple(int(b) for b in data["per_module"])
        if len(per_module) != len(qm.modules) or not isinstance(data["reason"], str):
            raise ValueError("bound.json does not fit the model")
        return FidelityBound(per_module, data["reason"])

    return stored(qm, "fidelity", frames, lambda: fidelity_bound(qm, frames), save, load)


def cached_lint(path: Path, target) -> tuple[str, ...]:
    """``harness.espdl.lint.lint_model`` findings for the ``.espdl`` at ``path`` on ``target``, kept next to the file.

    Keyed by the file's sha256, the target and the harness code, so they still follow the current rules;
    a record that does not match its own checksum is linted again.
    """
    from harness.espdl.reader import load_espdl
    from harness.espdl.lint import lint_model

    h = hashlib.sha256()
    for part in (file_sha256(path), getattr(target, "name", str(target)), _code_digest()):
        h.update(part.encode() + b"\n")
    key = h.hexdigest()
    record = path.with_name(f"{path.name}.lint.json")
    try:
        data = json.loads(record.read_text())
        findings = data["findings"]
        intact = data["sha256"] == _json_sha256(findings) and all(isinstance(f, str) for f in findings)
        if data["key"] == key and intact:
            return tuple(findings)
    except (OSError, ValueError, KeyError, TypeError):
        pass
    findings = [str(f) for f in lint_model(load_espdl(path), target)]
    staging = record.with_name(f"{record.name}.tmp-{os.getpid()}")
    staging.write_text(json.dumps({"key": key, "findings": findings, "sha256": _json_sha256(findings)}, indent=2))
    os.replace(staging, record)
    return tuple(findings)


def _json_sha256(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


def _outputs(qm, what: str, frames: Frames, compute: Callable[[], list[QTensor]]) -> list[QTensor]:
    def save(outputs: list[QTensor], out: Path) -> None:
        for k, t in enumerate(outputs):
            np.save(out / f"m{k}.npy", t.data, allow_pickle=False)
        (out / "exponents.json").write_text(json.dumps([t.exponent for t in outputs]))

    def load(directory: Path) -> list[QTensor]:
        exponents = json.loads((directory / "exponents.json").read_text())
        if len(exponents) != len(qm.modules):
            raise ValueError("exponents.json does not fit the model")
        return [QTensor(np.load(directory / f"m{k}.npy", allow_pickle=False), int(e)) for k, e in enumerate(exponents)]

    return stored(qm, what, frames, compute, save, load)


def stored(qm, what: str, frames: Frames, compute: Callable, save: Callable, load: Callable):
    """``compute()``'s result for ``qm`` on ``frames``, read from its entry when intact, else computed and
    written (``save(result, directory)``, ``load(directory)``). Models without a cache entry of their own
    (exported files, a model being built) are computed every time."""
    if not qm.key or qm.spec.exports is not None:
        return compute()
    key = derived_key(qm, what, frames)
    directory = entry_directory(qm, what, frames, key)
    with exclusive(directory):
        result = _read(directory, key, load)
        if result is not None:
            return result
        result = compute()
        staging = directory.with_name(f"{directory.name}.tmp-{os.getpid()}")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        save(result, staging)
        files = {p.name: file_sha256(p) for p in sorted(staging.iterdir())}
        (staging / "manifest.json").write_text(json.dumps({"what": what, "key": key, "files": files}, indent=2))
        shutil.rmtree(directory, ignore_errors=True)
        os.replace(staging, directory)
    return result


def entry_directory(qm, what: str, frames: Frames, key: str | None = None) -> Path:
    """Where the result ``what`` of ``qm`` on ``frames`` is kept."""
    return qm.directory / "derived" / f"{what}-{(key or derived_key(qm, what, frames))[:24]}"


def derived_key(qm, what: str, frames: Frames) -> str:
    """Everything that decides a derived result: the quantized model, what, the frames and the harness code."""
    values = np.ascontiguousarray(frames.values)
    h = hashlib.sha256()
    for part in (qm.key, what, str(values.shape), str(values.dtype), str(frames.exponent),
                 hashlib.sha256(values.tobytes()).hexdigest(), _code_digest()):
        h.update(part.encode() + b"\n")
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def _code_digest() -> str:
    return code_digest(*SOURCES)


def _read(directory: Path, key: str, load: Callable):
    """The entry's result, or None when it is missing, for another key, or any file changed since written."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
        files = manifest["files"]
        if manifest["key"] != key or not files:
            return None
        if any(file_sha256(directory / name) != digest for name, digest in files.items()):
            return None
        return load(directory)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
