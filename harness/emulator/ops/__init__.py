"""ESP-DL's operators as the engine emulates them: one module per operator family, one builder per op type.

A builder takes the ``Engine`` being built and one node of the model, prepares everything constant (unpacked
weights, shifts, lookup tables) and returns a ``Plan`` whose function computes the node's outputs from its
activation inputs, as the chip does for the target. ``@builds("Op", ...)`` enters it in ``BUILDERS``; the
families below are imported here so that importing the package fills the registry.
"""

from __future__ import annotations

import importlib
from typing import Callable

BUILDERS: dict[str, Callable] = {}  # op type -> builder(engine, node) -> Plan


def builds(*op_types: str):
    """Register the decorated builder for ``op_types`` (each op type has exactly one builder)."""

    def register(builder: Callable) -> Callable:
        for op in op_types:
            if op in BUILDERS:
                raise RuntimeError(f"two builders for {op}: {BUILDERS[op].__module__} and {builder.__module__}")
            BUILDERS[op] = builder
        return builder

    return register


FAMILIES = ("activation", "compare", "conv", "elementwise", "normalization", "pool", "quantize", "recurrent", "reduce", "resize", "shape", "softmax", "streaming")

for _family in FAMILIES:  # each registers its builders
    importlib.import_module(f"{__name__}.{_family}")
