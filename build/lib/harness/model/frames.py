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
from harness.targets import int_range


@dataclass(frozen=True)
class Frames:
    """Quantized input sequences for one (model, target)."""

    values: np.ndarray  # int8/int16 [sequences, frames, channels]
    exponent: int
    target: str
    seed: int | None
    source: str  # "generated" or the user file
    saturation: float = 0.0  # fraction of values that lay outside the integer range and were clipped

    def saturation_warning(self) -> str | None:
        """A line for the run when quantizing the frames clipped more than ``SATURATION_WARNING`` of them."""
        if self.saturation <= SATURATION_WARNING:
            return None
        return (f"{self.saturation:.1%} of the frame values from {self.source} saturate when quantized with exponent "
                f"{self.exponent} (more than {SATURATION_WARNING:.0%}): the cases then test mostly clipped inputs; "
                f"scale the frames like the calibration data")

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
            "saturation": self.saturation,
        }


SATURATION_WARNING = 0.01


class FramesWarning(UserWarning):
    """The frames a case streams are valid but say little (e.g. mostly clipped)."""


def quantize_frames(qm, floats: np.ndarray) -> tuple[np.ndarray, float]:
    """Integers for ``qm``'s target and input exponent, and the fraction of values that saturated."""
    values = qm.target.quantize(floats, qm.input_exponent, qm.bits)
    lo, hi = int_range(qm.bits)
    scaled = qm.target.round(np.asarray(floats, dtype=np.float32) * np.float32(2.0 ** -qm.input_exponent))
    return values, float(np.mean((scaled < lo) | (scaled > hi))) if scaled.size else 0.0


def generate_frames(qm, seed: int | None = None, sequences: int | None = None) -> Frames:
    """Seeded standard-normal frames for ``qm`` (a QuantizedModel), quantized for its target."""
    spec = qm.spec
    seed = spec.seed if seed is None else seed
    rng = np.random.default_rng([seed, 0xF4A3E5])  # its own stream: independent of calibration data
    shape = (sequences or spec.sequences, spec.sequence_length, spec.channels)
    floats = rng.standard_normal(shape, dtype=np.float32)
    values, saturation = quantize_frames(qm, floats)
    return Frames(values, qm.input_exponent, qm.target.name, seed, "generated", saturation)


def load_frames_file(path: str | Path) -> np.ndarray:
    """The float frames of a user ``.npy``, checked for what makes them unusable for any model."""
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
    finite = np.isfinite(floats)
    if not finite.all():
        where = [int(i) for i in np.argwhere(~finite)[0]]
        raise ConfigError(
            f"--frames {path}: value {floats[tuple(where)]} at index {where} is not finite "
            f"({int((~finite).sum())} of {floats.size} values are NaN or infinite)",
            "replace NaN/inf values (e.g. with numpy.nan_to_num) before saving the frames",
        )
    return floats


def check_frames_shape(floats: np.ndarray, path, spec) -> np.ndarray:
    """``floats`` as ``[sequences, frames, channels]`` for ``spec``, or one line saying why they do not fit."""
    if floats.ndim == 2:
        floats = floats[None]
    channels = spec.channels
    if floats.ndim != 3 or floats.shape[2] != channels or floats.shape[1] < 1:
        raise ConfigError(
            f"--frames {path}: shape {list(floats.shape)} is not [frames, {channels}] or [sequences, frames, {channels}]",
            f"save time-major frames with {channels} channels for model '{spec.name}'",
        )
    return floats


def frames_from_file(qm, path: str | Path) -> Frames:
    """User-supplied float frames (``[frames, channels]`` or ``[sequences, frames, channels]``)."""
    path = Path(path)
    floats = check_frames_shape(load_frames_file(path), path, qm.spec)
    values, saturation = quantize_frames(qm, floats)
    return Frames(values, qm.input_exponent, qm.target.name, None, str(path.resolve()), saturation)


def save_frames(frames: Frames, directory: Path) -> Path:
    """Write ``frames.npy`` and ``frames.json``; return the manifest path."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "frames.npy", frames.values)
    manifest = directory / "frames.json"
    manifest.write_text(json.dumps({**frames.manifest(), "file": "frames.npy"}, indent=2))
    return manifest
