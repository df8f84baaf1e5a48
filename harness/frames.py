"""Stage 3: the input frames a case streams, quantized exactly as the chip would.

Frames are pre-generated from a seed (or read from a user ``.npy`` of floats),
quantized with the model's input exponent (read from the quantized graph) and
the target's rounding, and saved as ``.npy`` plus a JSON manifest so a board
run, a virtual-board run and the offline reference all see the same integers.
Layout is time-major per sequence: ``values[sequence, frame, channel]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from harness.errors import ConfigError


@dataclass(frozen=True)
class Frames:
    """Quantized input sequences for one (model, target)."""

    values: np.ndarray  # int8/int16 [sequences, frames, channels]
    exponent: int
    target: str
    seed: int | None
    source: str  # "generated" or the user file

    @property
    def sequence_length(self) -> int:
        return self.values.shape[1]

    def manifest(self) -> dict:
        return {
            "shape": list(self.values.shape),
            "dtype": str(self.values.dtype),
            "exponent": self.exponent,
            "target": self.target,
            "seed": self.seed,
            "layout": "NWC: [sequence, frame, channel], each sequence streamed from frame 0",
            "source": self.source,
            "sha256": hashlib.sha256(self.values.tobytes()).hexdigest(),
        }


def generate_frames(qm, seed: int | None = None, sequences: int | None = None) -> Frames:
    """Seeded standard-normal frames for ``qm`` (a QuantizedModel), quantized for its target."""
    spec = qm.spec
    seed = spec.seed if seed is None else seed
    rng = np.random.default_rng([seed, 0xF4A3E5])  # its own stream: independent of calibration data
    shape = (sequences or spec.sequences, spec.sequence_length, spec.channels)
    floats = rng.standard_normal(shape, dtype=np.float32)
    return Frames(qm.target.quantize(floats, qm.input_exponent, qm.bits), qm.input_exponent, qm.target.name, seed, "generated")


def frames_from_file(qm, path: str | Path) -> Frames:
    """User-supplied float frames (``[frames, channels]`` or ``[sequences, frames, channels]``)."""
    path = Path(path)
    try:
        floats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--frames {path}: cannot be read as .npy ({exc})", "save with numpy.save") from exc
    if not np.issubdtype(floats.dtype, np.floating):
        raise ConfigError(
            f"--frames {path}: dtype is {floats.dtype}",
            "give float values; the harness quantizes them with the model's input exponent",
        )
    if floats.ndim == 2:
        floats = floats[None]
    channels = qm.spec.channels
    if floats.ndim != 3 or floats.shape[2] != channels or floats.shape[1] < 1:
        raise ConfigError(
            f"--frames {path}: shape {list(floats.shape)} is not [frames, {channels}] or [sequences, frames, {channels}]",
            f"save time-major frames with {channels} channels for model '{qm.spec.name}'",
        )
    values = qm.target.quantize(floats, qm.input_exponent, qm.bits)
    return Frames(values, qm.input_exponent, qm.target.name, None, str(path.resolve()))


def save_frames(frames: Frames, directory: Path) -> Path:
    """Write ``frames.npy`` and ``frames.json``; return the manifest path."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "frames.npy", frames.values)
    manifest = directory / "frames.json"
    manifest.write_text(json.dumps({**frames.manifest(), "file": "frames.npy"}, indent=2))
    return manifest
