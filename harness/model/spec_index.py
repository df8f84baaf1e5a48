"""The spec index: what an imported spec said, kept by the SHA-256 of its source files.

Importing a spec imports torch (and whatever else the user's model needs), which is most of a warm run's
start-up. A spec's NAME, STREAMING and CONFIG are decided by its source files (the spec and the local
modules it reaches), so while none of them changes the index describes the spec without importing it; the
module is imported when one of its functions is needed (a cache miss builds the sub-models), and must then
say what the index said (``harness.model.spec``). The index also keeps the files the model's source digest
covered, so a warm run computes the cache key without building the sub-models.

One JSON file per spec path under ``<cache>/specs/``; an entry that is missing, damaged, written by other
spec-loading code or outdated by any file only makes the spec be imported (and the entry written) again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

from harness.resources import code_digest


def _sha256(path: Path) -> str | None:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None


class SpecIndex:
    """Spec descriptions under ``directory`` (``load_spec(path, index)``)."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self._loader = code_digest("harness.model.spec", "harness.model.spec_index")

    def _entry(self, path: Path) -> Path:
        return self.directory / f"{hashlib.sha256(str(path).encode()).hexdigest()[:16]}.json"

    def lookup(self, path: Path) -> dict | None:
        """What the spec at ``path`` said when its files were as they are now, or None."""
        try:
            entry = json.loads(self._entry(path).read_text())
            if entry["loader"] != self._loader or entry["path"] != str(path):
                return None
            if any(_sha256(Path(f)) != sha for f, sha in entry["files"].items()):
                return None
            return entry
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return None

    def remember(self, spec) -> None:
        """Keep what ``spec`` (imported) says, and the files of its last source digest; a spec whose CONFIG does
        not survive JSON unchanged (tuples, objects) is not kept: it is imported every time."""
        if spec.streaming not in ("explicit", "auto"):
            return
        with contextlib.suppress(TypeError, ValueError):
            if json.loads(json.dumps(spec.config)) != spec.config:
                return
            watched = {spec.path, *spec.sources}
            entry = {
                "loader": self._loader,
                "path": str(spec.path),
                "files": {str(f): _sha256(f) for f in sorted(watched)},
                "name": spec.name,
                "streaming": spec.streaming,
                "config": {k: v for k, v in spec.config.items()},
                "hooks": sorted(spec.hooks),
                "sources": [str(f) for f in spec.sources],
                "digest_files": [str(f) for f in spec.digest_files] if spec.digest_files is not None else None,
            }
            if None in entry["files"].values():
                return
            target = self._entry(spec.path)
            with contextlib.suppress(OSError):
                target.parent.mkdir(parents=True, exist_ok=True)
                staging = target.with_name(f"{target.name}.tmp-{os.getpid()}")
                staging.write_text(json.dumps(entry, indent=1))
                os.replace(staging, target)
