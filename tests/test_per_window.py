"""Per-window outputs and manual streaming tables: a classifier head streams as a case.

``tests/specs/head_table_auto.py`` ends in a head that reads the last 4 frames
(Slice + Flatten + Linear) and names the cache it needs in ``streaming_table``.
Each window's streamed output must equal the offline export run on the prefix
that ends with that window, on the same virtual board (streaming exactness),
and that offline run must be within the contract of ESP-PPQ's simulation of the
same prefix (fidelity); a missing or too short table entry fails at export with
the entry to add.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from harness.verdict.compare import fidelity_verdict, streaming_verdict
from harness.device.dut import stream_pipeline
from harness.errors import ConfigError, QuantizationError, StreamingError
from harness.ppq.fidelity import fidelity_bound
from harness.model.frames import generate_frames
from harness.verdict.per_window import expected_outputs, judged_outputs, judged_windows, prefix, verdict_rows
from harness.plugin.boards import open_virtual_board
from harness.ppq.reference import offline_reference
from harness.model.spec import load_spec
from harness.ppq.streaming import offline_on_host, stream_on_host
from harness.targets import get_target

SPECS = Path(__file__).parent / "specs"


@pytest.fixture(scope="module")
def head_spec():
    return load_spec(SPECS / "head_table_auto.py")


def test_the_head_is_found_per_window_with_its_span(quantizer, head_spec):
    qm = quantizer.model(head_spec, get_target("esp32p4"))
    assert [m.output.per_window for m in qm.modules] == [False, True]
    assert qm.output.shape == (6,) and qm.output.span == 4 and qm.output.flat
    assert judged_windows(qm, 1, 16) == list(range(3, 16)) and judged_windows(qm, 8, 16) == [0, 1]


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
def test_a_head_with_a_streaming_table_streams_exactly(quantizer, boards, head_spec, target):
    qm = quantizer.model(head_spec, get_target(target))
    frames = generate_frames(qm)
    t = frames.sequence_length
    bound = fidelity_bound(qm, frames)
    with open_virtual_board(boards(target)) as link:
        def device(length):
            return stream_pipeline(link, quantizer.offline_exports(qm, length), prefix(frames, length), length).outputs

        for w in (1, 4):
            rows = verdict_rows(qm, w, t)
            offline = expected_outputs(qm, w, t, device(t), device)
            simulated = expected_outputs(qm, w, t, offline_reference(qm, frames),
                                         lambda length: offline_reference(qm, prefix(frames, length)))
            fidelity = fidelity_verdict(simulated, offline, bound.per_module, bound.reason, w, rows)
            assert fidelity.passed, fidelity.summary()
            exports = quantizer.streaming_exports(qm, w)
            assert exports[-1].layouts["output"] == "FLAT" and exports[-1].per_window
            streamed = judged_outputs(qm, w, t, stream_pipeline(link, exports, frames, w).outputs)
            assert streamed[-1].data.shape == (2, len(rows), 6)
            verdict = streaming_verdict(offline, streamed, w, 0, rows=rows)
            assert verdict.passed, f"W={w}: {verdict.summary()}"
            host_offline = expected_outputs(qm, w, t, offline_on_host(qm, frames),
                                            lambda length: offline_on_host(qm, prefix(frames, length)))
            host = streaming_verdict(host_offline, judged_outputs(qm, w, t, stream_on_host(qm, frames, w, exports)),
                                     w, 0, rows=rows)
            assert host.passed, f"host, W={w}: {host.summary()}"


def test_a_checked_table_is_kept_with_the_model_and_read_back(quantizer, head_spec, monkeypatch):
    from harness.model.spec import ModelSpec
    from harness.ppq.quantize import Quantizer

    qm = quantizer.model(head_spec, get_target("esp32p4"))
    first = quantizer.streaming_exports(qm, 4)
    kept = qm.directory / "tables" / "W4.json"
    assert json.loads(kept.read_text()) == head_spec.table_for(4)

    calls = []
    table_for = ModelSpec.table_for
    monkeypatch.setattr(ModelSpec, "table_for", lambda spec, w: calls.append(w) or table_for(spec, w))
    warm = Quantizer(quantizer.cache_dir)  # a new run on the same cache
    again = warm.streaming_exports(warm.model(head_spec, get_target("esp32p4")), 4)
    assert calls == [] and [e.sha256 for e in again] == [e.sha256 for e in first] and warm.exports == 0

    kept.write_text('[{"/mix/Conv_output_0": 4}]')  # damaged: not an entry; the spec is asked again
    Quantizer(quantizer.cache_dir).streaming_exports(qm, 4)
    assert calls == [4] and json.loads(kept.read_text()) == head_spec.table_for(4)


def test_a_missing_table_entry_names_the_entry_to_add(quantizer, head_spec):
    bare = dataclasses.replace(head_spec.with_functions(streaming_table=None), name="head_no_table")
    qm = quantizer.model(bare, get_target("esp32p4"))
    with pytest.raises(StreamingError) as info:
        quantizer.streaming_exports(qm, 4)
    message = str(info.value)
    assert "\n" not in message
    assert "Slice" in message and "insert_streaming_cache_on_var('/mix/Conv_output_0', 4)" in message


def test_a_table_window_too_short_for_the_head_is_refused(quantizer, head_spec):
    from esp_ppq.api import insert_streaming_cache_on_var

    short = dataclasses.replace(head_spec.with_functions(streaming_table=lambda config: [
        insert_streaming_cache_on_var("/mix/Conv_output_0", 2)]), name="head_short_table")
    qm = quantizer.model(short, get_target("esp32p4"))
    quantizer.streaming_exports(qm, 4)  # 1 cached frame + a window of 4 covers the last 4 frames
    with pytest.raises(QuantizationError) as info:
        quantizer.streaming_exports(qm, 1)
    assert "keeps the last 4 frames" in str(info.value) and "insert_streaming_cache_on_var(..., 4)" in str(info.value)


def test_a_table_naming_an_unknown_tensor_is_refused_with_close_names(quantizer, head_spec):
    from esp_ppq.api import insert_streaming_cache_on_var

    typo = dataclasses.replace(head_spec.with_functions(streaming_table=lambda config: [
        insert_streaming_cache_on_var("/mixx/Conv_output_0", 4)]), name="head_typo_table")
    qm = quantizer.model(typo, get_target("esp32p4"))
    with pytest.raises(ConfigError, match=r"'/mixx/Conv_output_0'.*close: /mix/Conv_output_0"):
        quantizer.streaming_exports(qm, 4)


def test_bad_streaming_tables_are_refused_at_load(tmp_path):
    source = (SPECS / "head_table_auto.py").read_text()
    garbage = tmp_path / "garbage.py"
    garbage.write_text(source.replace('return [insert_streaming_cache_on_var("/mix/Conv_output_0", config["head_frames"])]',
                                      'return ["/mix/Conv_output_0"]'))
    with pytest.raises(ConfigError, match="streaming_table\\(\\) returned"):
        load_spec(garbage).table_for(4)
    explicit = tmp_path / "explicit.py"
    explicit.write_text(source.replace('STREAMING = "auto"', 'STREAMING = "explicit"'))
    with pytest.raises(ConfigError, match="only auto-streaming models use one"):
        load_spec(explicit)



def test_a_table_given_as_one_merged_dict_is_split_per_tensor(head_spec):
    """``{**entry_a, **entry_b}`` (ESP-PPQ's StreamingTable accepts it) means the same as ``[entry_a, entry_b]``:
    each sub-model gets the entries of its own tensors, not none because one tensor belongs elsewhere."""
    from esp_ppq.api import insert_streaming_cache_on_var

    a, b = insert_streaming_cache_on_var("/mix/Conv_output_0", 4), insert_streaming_cache_on_var("/conv/Conv_output_0", 2)
    merged = head_spec.with_functions(streaming_table=lambda config: {**a, **b})
    assert merged.table_for(4) == [a, b]

def test_a_per_window_sub_model_before_the_last_is_refused(quantizer, tmp_path):
    source = (SPECS / "head_table_auto.py").read_text()
    swapped = tmp_path / "head_first.py"
    swapped.write_text(source.replace('NAME = "head_table_auto"', 'NAME = "head_first"').replace(
        'return [Features(config["channels"], w), Head(w, config["classes"], config["head_frames"])]',
        'return [Head(config["channels"], w, config["head_frames"]), Features(w, w)]'))
    with pytest.raises(ConfigError, match="sub-model 0 of 'head_first' returns one output per call"):
        quantizer.model(load_spec(swapped), get_target("esp32p4"))
