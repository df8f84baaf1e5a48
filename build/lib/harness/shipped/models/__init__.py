"""Streaming models shipped with the harness; each ``*.py`` with a ``NAME`` is a model spec."""
