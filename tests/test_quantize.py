"""Stage 1: one calibration per sub-model, exponents locked, exports checked, ESP-PPQ errors surfaced."""

from __future__ import annotations


import pytest

from harness.errors import QuantizationError
from harness.espdl.reader import load_espdl
from harness.ppq.quantize import Quantizer, locked_exponents, var_exponent
from harness.model.spec import load_spec
from harness.targets import get_target
from tests.conftest import SPECS


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
def test_one_calibration_per_submodule_and_none_when_warm(tmp_path, target):
    spec = load_spec(SPECS / "tiny_explicit.py")
    cold = Quantizer(tmp_path)
    qm = cold.model(spec, get_target(target))
    assert cold.calibrations == len(qm.modules) == 3  # the streaming graphs were not calibrated
    cold.streaming_exports(qm, 3)
    assert cold.exports == 3 + 3  # offline (with test values) + one streaming file per module
    warm = Quantizer(tmp_path)
    warm.streaming_exports(warm.model(spec, get_target(target)), 3)
    assert (warm.calibrations, warm.exports) == (0, 0)


def test_cache_key_changes_with_the_config(tmp_path, quantizer):
    spec = load_spec(SPECS / "tiny_explicit.py")
    first = quantizer.model(spec, get_target("esp32p4"))
    spec.config = {**spec.config, "seed": 99}
    other = Quantizer(quantizer.cache_dir).model(spec, get_target("esp32p4"))
    assert other.key != first.key and other.directory != first.directory


@pytest.mark.parametrize("target", ["esp32p4", "esp32s3"])
def test_streaming_graph_is_locked_to_offline_exponents(tiny, target):
    qm = tiny("tiny_explicit", target)
    for m in qm.modules:
        if m.streaming_graph is None:
            assert m.cache_shape is None
            continue
        pairs = locked_exponents(m.offline_graph, m.streaming_graph)
        assert {"input", "output", "cache", "cache_out"} <= set(pairs)
        assert all(offline == streaming for offline, streaming in pairs.values()), pairs
        assert m.unlocked == []
    # module k+1 takes module k's output without requantization
    for prev, nxt in zip(qm.modules, qm.modules[1:]):
        assert prev.out_exponent == nxt.in_exponent
    assert qm.tolerance_lsb == 0


def test_unlockable_tensor_is_reported_and_its_residual_becomes_the_tolerance(tiny):
    from harness.verdict.compare import compare
    from harness.model.frames import generate_frames
    from harness.ppq.reference import offline_reference
    from harness.ppq.streaming import stream_on_host

    qm = tiny("unlockable")
    assert qm.modules[0].unlocked == ["/Mul_output_0", "/Tanh_output_0"]
    frames = generate_frames(qm, seed=qm.spec.seed + 1000, sequences=qm.spec.calibration_sequences)
    reference = offline_reference(qm, frames)[-1]
    residual = max(compare(reference, stream_on_host(qm, frames, w)[-1], w).max_abs_lsb for w in (1, 2, 3, 4, 6, 12))
    assert residual > 0
    assert qm.tolerance_lsb == residual
    assert qm.tolerance_reason.startswith("streaming tensors /Mul_output_0, /Tanh_output_0 have no offline counterpart")


@pytest.mark.parametrize("name, window", [("tiny_explicit", 2), ("tiny_auto", 3), ("tiny_auto", 12)])
def test_exported_file_matches_its_graph(tiny, quantizer, name, window):
    qm = tiny(name)
    for export, m in zip(quantizer.streaming_exports(qm, window), qm.modules):
        model = load_espdl(export.path)
        graph = m.streaming_graph if m.streaming_graph is not None else m.offline_graph
        expected_inputs = ["input", "cache"] if m.streaming_graph is not None else ["input"]
        assert sorted(i.name for i in model.inputs) == sorted(expected_inputs)  # file order follows hashing
        assert model.input("input").shape == (1, window, m.in_channels)
        for info in [*model.inputs, *model.outputs]:
            assert info.exponents == (var_exponent(graph, info.name),)
        assert (export.in_exponent, export.out_exponent) == (m.in_exponent, m.out_exponent)
        caches = [n for n in model.nodes if n.op_type == "StreamingCache"]
        if name == "tiny_auto" and m.cache_shape is None and m.index != 1:
            assert [n.attributes["window_size"] for n in caches] == [5]
        if name == "tiny_explicit":
            assert caches == []


def test_offline_export_embeds_test_values_for_every_tensor(tiny):
    m = tiny("tiny_explicit").modules[0]
    model = load_espdl(m.offline_espdl)
    assert "input" in model.test_inputs
    assert {"output", "/expand/expand.1/Mul_output_0"} <= set(model.test_outputs)
    assert model.test_outputs["output"].exponents == (m.out_exponent,)


def test_ppq_error_line_fails_the_export_and_leaves_no_global_state(tmp_path):
    from esp_ppq.parser.espdl.espdl_streaming import StreamingTable

    quantizer = Quantizer(tmp_path)
    qm = quantizer.model(load_spec(SPECS / "time_mean_auto.py"), get_target("esp32p4"))
    with pytest.raises(QuantizationError, match=r"ESP-PPQ reported an error .*operates along the frame axis") as info:
        quantizer.streaming_exports(qm, 3)
    assert "\n" not in str(info.value) and ".export.log" in str(info.value)
    assert StreamingTable().get_table() == {}
    # the next export in the same process is unaffected
    good = quantizer.model(load_spec(SPECS / "tiny_auto.py"), get_target("esp32p4"))
    assert len(quantizer.streaming_exports(good, 3)) == 3


def test_window_that_does_not_divide_is_refused(tiny, quantizer):
    with pytest.raises(Exception, match="window size 5 does not divide the sequence length 12"):
        quantizer.streaming_exports(tiny("tiny_auto"), 5)


def test_a_tensor_read_by_a_temporal_op_and_others_gets_one_cache_per_temporal_reader(tiny, quantizer):
    qm = tiny("residual_input_auto")
    first, second = (load_espdl(e.path) for e in quantizer.streaming_exports(qm, 3))
    caches = [n for n in first.nodes if n.op_type == "StreamingCache"]
    assert [(c.inputs, c.attributes["window_size"]) for c in caches] == [(("input",), 5)]
    add = next(n for n in first.nodes if n.op_type == "Add")
    assert "input" in add.inputs  # the residual reads the window itself, not the cache
    readers = {n.name: n.inputs[0] for n in second.nodes if n.op_type == "Conv" and n.inputs[0] != "input"}
    windows = sorted(n.attributes["window_size"] for n in second.nodes if n.op_type == "StreamingCache")
    assert windows == [3, 5] and len({readers[k] for k in readers if "dw" in k or "second" in k}) == 2


def test_without_the_repair_the_exported_wiring_is_refused_in_one_line(tmp_path, monkeypatch):
    import harness.ppq.quantize

    monkeypatch.setattr(harness.ppq.quantize, "per_consumer_caches", lambda graph: None)  # ESP-PPQ's own wiring
    quantizer = Quantizer(tmp_path)
    qm = quantizer.model(load_spec(SPECS / "residual_input_auto.py"), get_target("esp32p4"))
    with pytest.raises(QuantizationError, match=r"Add '/Add' reads StreamingCache '\S+' \(the window plus 4 cached "
                                                r"frames\) but has no time context") as info:
        quantizer.streaming_exports(qm, 3)
    assert "\n" not in str(info.value) and "per_consumer_caches" in str(info.value)


def test_a_damaged_cache_entry_is_rebuilt_not_reported_as_a_bad_model(tmp_path):
    spec, target = load_spec(SPECS / "tiny_auto.py"), get_target("esp32p4")
    first = Quantizer(tmp_path)
    qm = first.model(spec, target)
    export = first.streaming_exports(qm, 3)[0].path
    good_export = export.read_bytes()
    offline = qm.modules[0].offline_espdl
    offline.write_bytes(offline.read_bytes()[:100])  # a truncated file, e.g. a full disk or a killed run

    again = Quantizer(tmp_path)
    qm = again.model(spec, target)
    assert again.calibrations == 3  # every sub-module calibrated again
    load_espdl(qm.modules[0].offline_espdl)  # and readable

    export = again.streaming_exports(qm, 3)[0].path
    export.write_bytes(export.read_bytes()[:-16])
    third = Quantizer(tmp_path)
    qm = third.model(spec, target)
    assert third.calibrations == 0
    rebuilt = third.streaming_exports(qm, 3)
    assert third.exports == 3 and rebuilt[0].path.read_bytes() == good_export


def test_a_causal_pad_shared_by_two_convs_is_folded_and_they_share_one_cache(tiny, quantizer):
    qm = tiny("gated_auto")
    for export in quantizer.streaming_exports(qm, 3):
        model = load_espdl(export.path)
        assert not [n for n in model.nodes if n.op_type == "Pad"]
        [cache] = [n for n in model.nodes if n.op_type == "StreamingCache"]
        readers = [n.name for n in model.nodes if cache.outputs[0] in n.inputs]
        assert sorted(readers) == ["/filter/Conv", "/gate/Conv"]
