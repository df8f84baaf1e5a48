"""Streaming-table entries when sub-models share tensor names.

ONNX names restart per sub-model: in ``tests/specs/collide_auto.py`` '/Relu_output_0' is the input of sub-model 0's
causal conv and of sub-model 1's Slice of the last 2 frames. ``streaming_table(config)`` has no sub-model argument,
so an entry reaches every sub-model that has its tensor unless it names the op it is for. The refusal of the head's
Slice must give an entry that works when copied, an entry that would reach both is refused as ambiguous in one
line, and a miswired harness export names the table entry at fault, not options for people exporting by hand.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from harness.errors import ConfigError, QuantizationError, StreamingError
from harness.model.frames import generate_frames
from harness.model.spec import load_spec
from harness.ppq.streaming import offline_on_host, stream_on_host
from harness.targets import get_target
from harness.verdict.compare import streaming_verdict
from harness.verdict.per_window import expected_outputs, judged_outputs, prefix, verdict_rows

from tests.conftest import run_pytest

SPECS = Path(__file__).parent / "specs"


@pytest.fixture(scope="module")
def collide():
    return load_spec(SPECS / "collide_auto.py")


def _with_table(spec, name: str, *entries):
    """``spec`` as another model whose ``streaming_table(config)`` returns ``entries`` (argument tuples)."""
    from esp_ppq.api import insert_streaming_cache_on_var

    table = [insert_streaming_cache_on_var(*e) for e in entries]
    return dataclasses.replace(spec.with_functions(streaming_table=lambda config: table), name=name)


def test_the_hint_gives_an_entry_for_the_one_sub_model_that_needs_it(quantizer, collide):
    qm = quantizer.model(collide, get_target("esp32p4"))
    with pytest.raises(StreamingError) as info:
        quantizer.streaming_exports(qm, 2)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("module 1 of 'collide_auto' for window 2: ")
    assert "add insert_streaming_cache_on_var('/Relu_output_0', 2, '/Slice') to the spec's streaming_table()" in message
    assert "keeps the entry to sub-model 1: sub-model 0 also has a tensor '/Relu_output_0'" in message


def test_following_the_hint_streams_exactly(quantizer, collide):
    """The call the hint names, pasted into ``streaming_table(config)``: every window exports and streams bit for
    bit on the host (sub-model 0 keeps the exporter's own cache for its conv)."""
    bare = quantizer.model(collide, get_target("esp32p4"))
    with pytest.raises(StreamingError) as info:
        quantizer.streaming_exports(bare, 2)
    call = re.search(r"add insert_streaming_cache_on_var\((.*?)\) to the spec's", str(info.value)).group(1)
    args = eval(f"({call},)")  # noqa: S307 - the hint's own literal arguments
    qm = quantizer.model(_with_table(collide, "collide_hinted", args), get_target("esp32p4"))
    frames = generate_frames(qm)
    t = frames.sequence_length
    for w in (1, 2, 4):
        exports = quantizer.streaming_exports(qm, w)
        rows = verdict_rows(qm, w, t)
        offline = expected_outputs(qm, w, t, offline_on_host(qm, frames),
                                   lambda length: offline_on_host(qm, prefix(frames, length)))
        streamed = judged_outputs(qm, w, t, stream_on_host(qm, frames, w, exports))
        verdict = streaming_verdict(offline, streamed, w, 0, rows=rows)
        assert verdict.passed, f"W={w}: {verdict.summary()}"


def test_an_entry_reaching_sub_models_that_read_its_tensor_differently_is_refused_as_ambiguous(quantizer, collide):
    qm = quantizer.model(_with_table(collide, "collide_bare_entry", ("/Relu_output_0", 2)), get_target("esp32p4"))
    with pytest.raises(ConfigError) as info:
        quantizer.streaming_exports(qm, 2)
    message = str(info.value)
    assert "\n" not in message
    assert "insert_streaming_cache_on_var('/Relu_output_0', 2) is ambiguous" in message
    assert "tensor '/Relu_output_0' is in sub-models 0 and 1 of 'collide_bare_entry'" in message
    assert "sub-model 0: Conv '/dw/Conv'; sub-model 1: Slice '/Slice'" in message
    assert message.endswith("e.g. insert_streaming_cache_on_var('/Relu_output_0', 2, '/Slice') for sub-model 1 only.")


def test_an_entry_without_op_is_kept_where_every_sub_model_reads_its_tensor_alike(quantizer, collide):
    """Repeated blocks share names and readers: one entry serves them all, as before."""
    from esp_ppq.api import insert_streaming_cache_on_var

    from harness.ppq.quantize import _check_table

    qm = quantizer.model(collide, get_target("esp32p4"))
    _check_table(qm, [insert_streaming_cache_on_var("output", 1)])  # both sub-models' graph output, read by none


def test_an_entry_naming_an_op_that_does_not_touch_its_tensor_is_refused(quantizer, collide):
    qm = quantizer.model(_with_table(collide, "collide_wrong_op", ("/Relu_output_0", 2, "/Flatten")),
                         get_target("esp32p4"))
    with pytest.raises(ConfigError, match=r"names op '/Flatten', which reads or writes tensor '/Relu_output_0' in no "
                                          r"sub-model of 'collide_wrong_op'; name one of the ops at that tensor: "
                                          r"/Relu, /Slice, /dw/Conv\.$") as info:
        quantizer.streaming_exports(qm, 2)
    assert "\n" not in str(info.value)


def test_a_miswired_harness_export_names_the_table_entry_not_hand_export_options(quantizer, collide):
    """An entry giving the conv's input a cache of 2 frames where it reads 3: the lint's fix is the entry."""
    qm = quantizer.model(_with_table(collide, "collide_short_conv", ("/Relu_output_0", 2, "/dw/Conv"),
                                     ("/Relu_output_0", 2, "/Slice")), get_target("esp32p4"))
    with pytest.raises(QuantizationError) as info:
        quantizer.streaming_exports(qm, 2)
    message = str(info.value)
    assert "\n" not in message
    assert "Conv '/dw/Conv' sees 3 frames but its StreamingCache" in message and "keeps a window of 2" in message
    assert "the spec's streaming_table entry for '/Relu_output_0' (window 2) made this cache" in message
    assert "export yourself" not in message and "streaming_custom_passes" not in message


def test_an_ambiguous_entry_fails_each_case_with_one_line(tmp_path):
    """As a user runs it: every case of the model reports the refusal in one line, no source listing."""
    spec = tmp_path / "collide_table.py"
    spec.write_text((SPECS / "collide_auto.py").read_text().replace('NAME = "collide_auto"', 'NAME = "collide_table"')
                    + "\n\ndef streaming_table(config):\n    from esp_ppq.api import insert_streaming_cache_on_var\n\n"
                      "    return [insert_streaming_cache_on_var('/Relu_output_0', config['head_frames'])]\n")
    result = run_pytest("--target", "esp32p4", f"--model-spec={spec}", "--models=collide_table", "--window-sizes=2",
                        "--hil-dut=virtual", f"--hil-cache-dir={tmp_path / 'cache'}",
                        f"--artifacts-dir={tmp_path / 'artifacts'}", "-k", "streaming")
    out = result.stdout
    refusals = [line for line in out.splitlines() if line.startswith("ConfigError: ") and "is ambiguous" in line]
    errors = re.findall(r"^_+ ERROR at setup of (\S+)", out, flags=re.M)
    assert result.returncode != 0 and errors and len(refusals) == len(errors), out[-3000:]
    assert "def _check_table" not in out and "raise ConfigError(" not in out, out[-3000:]
