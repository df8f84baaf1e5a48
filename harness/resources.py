"""Where the shipped models, cases, firmware and docs are.

In a checkout they are top-level directories beside ``harness/``; an
installed distribution carries them as ``harness/shipped/<name>`` (see
``pyproject.toml``). Everything that reads them asks here.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """The directory ``name`` (``models``, ``test_cases``, ``firmware``, ``docs``) of this installation."""
    installed = PACKAGE / "shipped" / name
    return installed if installed.is_dir() else PACKAGE.parent / name


def code_digest(*modules: str) -> str:
    """sha256 over the source files of ``modules`` (dotted names): what decides a cached or reported result."""
    import hashlib
    import importlib.util

    h = hashlib.sha256()
    for name in modules:
        h.update(name.encode() + b"\n" + Path(importlib.util.find_spec(name).origin).read_bytes())
    return h.hexdigest()
