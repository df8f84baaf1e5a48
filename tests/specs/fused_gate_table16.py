"""``fused_gate_auto16`` with its channel slices marked in a streaming table: the entries the harness's refusal of
that model named, one by one (each gate's channel Slice needs no past frames)."""

from tests.specs.fused_gate_auto16 import CONFIG, build_submodels  # noqa: F401  (the same model)

NAME = "fused_gate_table16"
STREAMING = "auto"


def streaming_table(config):
    from esp_ppq.api import insert_streaming_cache_on_var

    # sub-model 0 holds blocks /1 and /2, sub-model 1 blocks /0 and /1 (ONNX names restart per sub-model)
    return [insert_streaming_cache_on_var(f"/{i}/filter_gate/Conv_output_0", 1, f"/{i}/Slice_1") for i in (0, 1, 2)]
