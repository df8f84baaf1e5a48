"""Errors the harness raises for bad input: each names the cause and the fix.

A user must never see a traceback from deep inside a library, a hang or a
wrong verdict. Every failure that comes from a bad input is raised as a
``HarnessError`` whose message is one line: what is wrong, then what to do.
"""

from __future__ import annotations


class HarnessError(Exception):
    """A bad input or environment, with the fix spelled out."""

    def __init__(self, cause: str, fix: str):
        self.cause = cause.rstrip(".")
        self.fix = fix.rstrip(".")
        super().__init__(f"{self.cause}; {self.fix}.")


class ConfigError(HarnessError):
    """A command-line option, model spec or model config is wrong."""


class EspdlFormatError(HarnessError):
    """An ``.espdl`` file or pack cannot be read."""


class QuantizationError(HarnessError):
    """ESP-PPQ reported an error while quantizing or exporting a model."""


class StreamingError(HarnessError):
    """A model cannot be streamed the way its offline form runs."""
