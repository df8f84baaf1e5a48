"""Stage 3: the input frames a case streams, quantized exactly as the chip would.

Frames are pre-generated from a seed (or read from a user ``.npy`` of floats, or an ``.npz`` with ``frames``
and optional integer ``labels``), quantized with the model's input exponent (read from the quantized graph) and
the target's rounding, and saved as ``.npy`` plus a JSON manifest so a board
run, a virtual-board run and the offline reference all see the same integers.
Layout is time-major per sequence: ``values[sequence, frame, channel]``; labels are class ids per frame
``[sequence, frame]`` or per sequence ``[sequence]``.
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
    labels: np.ndarray | None = None  # int64 class ids [sequences, frames] or [sequences] (a .npz's), or None
    file_sha256: str | None = None  # sha256 of the user's file (.npy or .npz), None when generated

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
            "file_sha256": self.file_sha256,
            "labels": None if self.labels is None else {
                "shape": list(self.labels.shape),
                "per": "frame" if self.labels.ndim == 2 else "sequence",
                "sha256": hashlib.sha256(self.labels.tobytes()).hexdigest(),
            },
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


@dataclass(frozen=True)
class FramesFile:
    """A user's ``--frames`` file, read and checked for what makes it unusable for any model."""

    floats: np.ndarray  # [frames, channels] or [sequences, frames, channels] as saved
    labels: np.ndarray | None  # int64 [sequences, frames] (per frame) or [sequences] (per sequence); .npz only
    sha256: str  # of the file's bytes


NPZ_KEYS = ("frames", "labels")


def read_frames_file(path: str | Path) -> FramesFile:
    """The float frames (and, from an ``.npz``, the labels) of a user file, with the file's sha256.

    ``.npz`` (``numpy.savez``): ``frames`` as in an ``.npy``, optional ``labels`` of integer class ids, one per
    frame ``[S, T]`` or per sequence ``[S]`` (``[T, C]`` frames are one sequence: ``[1, T]`` or ``[1]``).
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"--frames {path}: cannot be read ({exc.strerror or exc})",
                          "pass an existing .npy or .npz file") from exc
    if path.suffix.lower() == ".npz":
        floats, labels = _read_npz(path)
    else:
        floats, labels = _read_npy(path), None
    _check_floats(floats, path, "frames" if path.suffix.lower() == ".npz" else None)
    if labels is not None:
        labels = _check_labels(labels, floats, path)
    return FramesFile(floats, labels, hashlib.sha256(raw).hexdigest())


def _read_npy(path: Path) -> np.ndarray:
    try:
        floats = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--frames {path}: cannot be read as .npy ({exc})", "save with numpy.save") from exc
    if not isinstance(floats, np.ndarray):  # an .npz under another name
        floats.close()
        raise ConfigError(f"--frames {path}: is an .npz archive, not an .npy array",
                          "name it *.npz (with a 'frames' array), or save one array with numpy.save")
    return floats


def _read_npz(path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    fix = "save with numpy.savez(path, frames=floats [S, T, C], labels=ints [S, T] or [S])"
    try:
        archive = np.load(path, allow_pickle=False)
        if not hasattr(archive, "files"):
            raise ConfigError(f"--frames {path}: is one .npy array, not an .npz archive", "name it *.npy, or " + fix)
        with archive:
            unknown = [k for k in archive.files if k not in NPZ_KEYS]
            if unknown:
                raise ConfigError(f"--frames {path}: unknown array {unknown[0]!r} (the archive has "
                                  f"{', '.join(archive.files)})", f"keep only 'frames' and 'labels'; {fix}")
            if "frames" not in archive.files:
                raise ConfigError(f"--frames {path}: has no 'frames' array (it has "
                                  f"{', '.join(archive.files) or 'none'})", fix)
            return archive["frames"], archive["labels"] if "labels" in archive.files else None
    except ConfigError:
        raise
    except (OSError, ValueError, EOFError) as exc:  # not a zip, a damaged member, an object array
        raise ConfigError(f"--frames {path}: cannot be read as .npz ({' '.join(str(exc).split())})", fix) from exc


def _check_labels(labels: np.ndarray, floats: np.ndarray, path: Path) -> np.ndarray:
    """Integer class ids per frame ``[S, T]`` or per sequence ``[S]`` of these frames, as int64."""
    fix = "labels are integer class ids, one per frame [S, T] or one per sequence [S]"
    if labels.dtype.kind not in "iu":
        raise ConfigError(f"--frames {path}: labels have dtype {labels.dtype}, not integers", fix)
    if floats.ndim in (2, 3):
        s, t = (1, floats.shape[0]) if floats.ndim == 2 else floats.shape[:2]
        if labels.shape not in ((s, t), (s,)):
            raise ConfigError(
                f"--frames {path}: labels of shape {list(labels.shape)} do not match {s} sequence(s) of {t} frames",
                f"give [{s}, {t}] (one per frame) or [{s}] (one per sequence); {fix}")
    negative = labels < 0
    if negative.any():
        where = [int(i) for i in np.argwhere(negative)[0]]
        raise ConfigError(f"--frames {path}: label {int(labels[tuple(where)])} at index {where} is negative "
                          f"({int(negative.sum())} of {labels.size})", "use class ids counted from 0 (0, 1, 2 and so on)")
    return np.ascontiguousarray(labels, dtype=np.int64)


def load_frames_file(path: str | Path) -> np.ndarray:
    """The float frames of a user ``.npy`` or ``.npz``, checked for what makes them unusable for any model."""
    return read_frames_file(path).floats


def _check_floats(floats: np.ndarray, path: Path, key: str | None) -> None:
    if not np.issubdtype(floats.dtype, np.floating):
        raise ConfigError(
            f"--frames {path}: {'' if key is None else repr(key) + ' '}dtype is {floats.dtype}",
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


def check_frames_shape(floats: np.ndarray, path, spec) -> np.ndarray:
    """``floats`` as ``[sequences, frames, channels]`` for ``spec``, or one line saying why they do not fit."""
    if floats.ndim == 2:
        floats = floats[None]
    channels = spec.channels
    if floats.ndim != 3 or floats.shape[2] != channels or floats.shape[1] < 1 or floats.shape[0] < 1:
        raise ConfigError(
            f"--frames {path}: shape {list(floats.shape)} is not [frames, {channels}] or [sequences, frames, {channels}]",
            f"save time-major frames with {channels} channels for model '{spec.name}'",
        )
    return floats


def frames_from_file(qm, path: str | Path) -> Frames:
    """User-supplied float frames (``[frames, channels]`` or ``[sequences, frames, channels]``), with an
    ``.npz``'s labels (``[sequences, frames]`` or ``[sequences]``)."""
    path = Path(path)
    read = read_frames_file(path)
    floats = check_frames_shape(read.floats, path, qm.spec)
    values, saturation = quantize_frames(qm, floats)
    return Frames(values, qm.input_exponent, qm.target.name, None, str(path.resolve()), saturation, read.labels,
                  read.sha256)


def save_frames(frames: Frames, directory: Path) -> Path:
    """Write ``frames.npy`` and ``frames.json``; return the manifest path."""
    directory.mkdir(parents=True, exist_ok=True)
    np.save(directory / "frames.npy", frames.values)
    manifest = directory / "frames.json"
    described = {**frames.manifest(), "file": "frames.npy"}
    if frames.labels is not None:
        np.save(directory / "labels.npy", frames.labels)
        described["labels"]["file"] = "labels.npy"
    else:
        (directory / "labels.npy").unlink(missing_ok=True)  # an earlier run's
    manifest.write_text(json.dumps(described, indent=2))
    return manifest
