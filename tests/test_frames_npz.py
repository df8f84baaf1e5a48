"""--frames as an .npz: frames and integer labels (per frame or per sequence), every mistake one line naming the
file; the manifest records the user file's sha256 (.npy too). The model: tests/specs/hooks_auto.py (8 channels,
12 frames, one sub-model: quick to calibrate)."""

import hashlib
import json

import numpy as np
import pytest

from harness.errors import ConfigError, HarnessError
from harness.model.frames import frames_from_file, generate_frames, read_frames_file, save_frames
from harness.model.spec import load_spec
from harness.plugin.options import check_frames
from tests.conftest import SPECS

RNG = np.random.default_rng(5)
FLOATS = RNG.standard_normal((2, 12, 8)).astype(np.float32)


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("labels, per", [(RNG.integers(0, 4, (2, 12)), "frame"),
                                         (np.array([3, 0], dtype=np.uint8), "sequence")])
def test_npz_frames_carry_their_labels(tiny, tmp_path, labels, per):
    qm = tiny("hooks_auto")
    path = tmp_path / "kws.npz"
    np.savez(path, frames=FLOATS, labels=labels)
    frames = frames_from_file(qm, path)
    np.save(tmp_path / "same.npy", FLOATS)
    assert np.array_equal(frames.values, frames_from_file(qm, tmp_path / "same.npy").values)  # like the .npy
    assert frames.labels.dtype == np.int64 and np.array_equal(frames.labels, labels)
    assert frames.file_sha256 == sha256(path)
    manifest = json.loads(save_frames(frames, tmp_path / "out").read_text())
    assert manifest["file_sha256"] == sha256(path)
    assert manifest["labels"]["shape"] == list(labels.shape) and manifest["labels"]["per"] == per
    assert np.array_equal(np.load(tmp_path / "out" / manifest["labels"]["file"]), labels)
    check_frames(path, [qm.spec], [1, 3, 4])  # the start-up check takes it as well


def test_npz_without_labels_and_npy_record_the_file_not_labels(tiny, tmp_path):
    qm = tiny("hooks_auto")
    np.savez(tmp_path / "plain.npz", frames=FLOATS[0])  # [T, C]: one sequence
    np.save(tmp_path / "plain.npy", FLOATS)
    out = tmp_path / "out"
    for path in (tmp_path / "plain.npz", tmp_path / "plain.npy"):
        frames = frames_from_file(qm, path)
        assert frames.labels is None and frames.file_sha256 == sha256(path)
        manifest = json.loads(save_frames(frames, out).read_text())
        assert manifest["labels"] is None and manifest["file_sha256"] == sha256(path)
        assert not (out / "labels.npy").exists()
    generated = json.loads(save_frames(generate_frames(qm), out).read_text())
    assert generated["file_sha256"] is None and generated["labels"] is None


def test_labels_of_a_single_sequence(tmp_path):
    np.savez(tmp_path / "one.npz", frames=FLOATS[0], labels=np.arange(12))
    with pytest.raises(ConfigError, match=r"labels of shape \[12\] do not match 1 sequence\(s\) of 12 frames; give "
                                          r"\[1, 12\] \(one per frame\) or \[1\] \(one per sequence\)"):
        read_frames_file(tmp_path / "one.npz")
    np.savez(tmp_path / "one.npz", frames=FLOATS[0], labels=np.arange(12)[None])
    assert read_frames_file(tmp_path / "one.npz").labels.shape == (1, 12)


def _not_an_archive(path):
    path.write_bytes(b"not a zip file at all")


def _an_npy_named_npz(path):
    with open(path, "wb") as f:
        np.save(f, FLOATS)


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"labels": np.zeros(2, int)}, r"has no 'frames' array \(it has labels\); save with numpy.savez"),
        ({"frames": FLOATS, "label": np.zeros(2, int)}, r"unknown array 'label' \(the archive has frames, label\)"),
        ({"frames": FLOATS.astype(np.int16)}, r"'frames' dtype is int16; give float values"),
        ({"frames": np.full((2, 12, 8), np.inf, np.float32)}, r"value inf at index \[0, 0, 0\] is not finite"),
        ({"frames": FLOATS, "labels": np.zeros((2, 12), np.float32)}, r"labels have dtype float32, not integers"),
        ({"frames": FLOATS, "labels": np.zeros(2, bool)}, r"labels have dtype bool, not integers"),
        ({"frames": FLOATS, "labels": np.zeros((2, 11), int)},
         r"labels of shape \[2, 11\] do not match 2 sequence\(s\) of 12 frames; give \[2, 12\] \(one per frame\) or \[2\]"),
        ({"frames": FLOATS, "labels": np.zeros(3, int)}, r"labels of shape \[3\] do not match 2 sequence\(s\) of 12"),
        ({"frames": FLOATS, "labels": np.array([[0] * 12, [0, 1, 2, -1] + [0] * 8])},
         r"label -1 at index \[1, 3\] is negative \(1 of 24\); use class ids counted from 0 \(0, 1, 2 and so on\)"),
        (_not_an_archive, r"cannot be read as .npz \(.*\); save with numpy.savez\(path, frames="),
        (_an_npy_named_npz, r"is one .npy array, not an .npz archive; name it \*.npy"),
    ],
)
def test_a_bad_npz_is_one_line(tmp_path, arrays, message):
    path = tmp_path / "bad.npz"
    if callable(arrays):
        arrays(path)
    else:
        np.savez(path, **arrays)
    with pytest.raises(ConfigError, match=message) as info:
        read_frames_file(path)
    text = str(info.value)
    assert text.startswith(f"--frames {path}: ") and "\n" not in text


@pytest.mark.parametrize(
    "frames, message",
    [
        (np.zeros((2, 12, 5), np.float32), r"shape \[2, 12, 5\] is not \[frames, 8\] or \[sequences, frames, 8\]"),
        (np.zeros((1, 2, 12, 8), np.float32), r"shape \[1, 2, 12, 8\] is not"),
        (np.zeros((0, 12, 8), np.float32), r"shape \[0, 12, 8\] is not"),
    ],
)
def test_npz_frames_of_the_wrong_shape_are_refused_at_start_up(tmp_path, frames, message):
    path = tmp_path / "shape.npz"
    np.savez(path, frames=frames)
    with pytest.raises(HarnessError, match=message) as info:
        check_frames(path, [load_spec(SPECS / "hooks_auto.py")], [3])
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_an_npz_named_npy_is_one_line(tmp_path):
    path = tmp_path / "frames.npy"
    with open(path, "wb") as f:
        np.savez(f, frames=FLOATS)
    with pytest.raises(ConfigError, match=r"is an .npz archive, not an .npy array; name it \*.npz") as info:
        read_frames_file(path)
    assert "\n" not in str(info.value)
