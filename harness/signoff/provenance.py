"""Provenance: what a run was, in enough detail to reproduce it (``session.json``'s ``"provenance"``).

Versions are read from the installed distributions' metadata, not by importing them (a warm run imports no
torch); the harness's git commit and dirty flag come from its checkout when it runs from one.
"""

from __future__ import annotations

import platform
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from harness.resources import PACKAGE

DISTRIBUTION = "pytest-espdl-stream"
TOOLS = ("esp-ppq", "torch", "onnx", "onnxruntime", "numpy", "pytest", "pytest-embedded", "esptool")


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def harness_source() -> dict:
    """The harness's version, and its git commit and dirty flag when it runs from a checkout."""
    source = {"version": _version(DISTRIBUTION), "path": str(PACKAGE)}
    root = PACKAGE.parent
    if (root / ".git").exists():
        def git(*args: str) -> str | None:
            try:
                done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True, timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                return None
            return done.stdout.strip() if done.returncode == 0 else None

        commit = git("rev-parse", "HEAD")
        status = git("status", "--porcelain", "--untracked-files=no")
        source.update(commit=commit, dirty=bool(status) if status is not None else None)
    return source


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_provenance(argv: list[str] | None = None) -> dict:
    """The run's side: harness, Python and tool versions, platform, command line, start time."""
    return {
        "harness": harness_source(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tools": {dist: _version(dist) for dist in TOOLS},
        "command": list(sys.argv if argv is None else argv),
        "cwd": str(Path.cwd()),
        "started": now(),
    }


def device_provenance(link, kind: str, port: str | None) -> dict:
    """What a device said of itself in INFO (board: its runner build and ESP-DL/ESP-IDF versions)."""
    info = link.info
    entry = {"kind": kind, "port": port, "name": link.name}
    if info is not None:
        entry.update(target=info.target, device_kind=info.device_kind, build_id=info.build_id,
                     esp_dl_version=info.esp_dl_version, idf_version=info.idf_version,
                     free_internal_bytes=info.free_internal_bytes, free_psram_bytes=info.free_psram_bytes)
    if getattr(link, "banner", None):
        entry["banner"] = link.banner  # a board's names its chip revision and last reset (display only)
    return entry
