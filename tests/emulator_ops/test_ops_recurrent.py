"""GRU and LSTM: ESP-DL's integer gates (int16 pre-activations, its sigmoid and tanh tables) on the harness's own
exports.

ESP-PPQ 1.3.12 alone cannot quantize a torch-exported GRU or LSTM (``IndexError`` in its alignment pass); the harness's
pipeline repairs that (``harness.ppq.export_repairs.rnn_alignment``), so these files come from it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from op_exports import BITS, TARGETS, exact_or_within_one, export_with_harness_quantizer, from_torch
from harness.emulator.common import dl_scale
from harness.emulator.ops.recurrent import GateTable


class Rnn(torch.nn.Module):
    def __init__(self, kind: str, bidirectional: bool):
        super().__init__()
        torch.manual_seed(3)
        self.rnn = getattr(torch.nn, kind)(8, 20, bidirectional=bidirectional)

    def forward(self, x):
        y, _ = self.rnn(x)
        return y


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("bidirectional", [False, True], ids=["forward", "bidirectional"])
@pytest.mark.parametrize("kind", ["GRU", "LSTM"])
def test_recurrent_layers_match_esp_ppq(tmp_path_factory, kind, target, bits, bidirectional):
    name = f"{kind.lower()}{'_bi' if bidirectional else ''}"
    path = export_with_harness_quantizer(from_torch(Rnn(kind, bidirectional), [6, 1, 8], name), target, bits,
                                         tmp_path_factory.getbasetemp() / "ops")
    model, _ = exact_or_within_one(path, target, bits, {kind})
    node = next(n for n in model.nodes if n.op_type == kind)
    assert node.attributes.get("direction", "forward") == ("bidirectional" if bidirectional else "forward")


def test_gate_tables_are_symmetric_and_clamped_like_esp_dls():
    sigmoid, tanh = GateTable(-8, 6.3, False), GateTable(-8, 3.5, True)
    # int(6.3 * 256) + 1 = 1613 and int(3.5 * 256) + 1 = 897: SigmoidLUT/TanhLUT's bounds at exponent -8
    assert (sigmoid.lo, sigmoid.hi) == (-1613, 1613) and (tanh.lo, tanh.hi) == (-897, 897)
    index = np.array([0, 256, -256, 5000, -5000])
    x = index * float(dl_scale(-8))
    assert np.allclose(sigmoid.get(index)[:3], 1 / (1 + np.exp(-x[:3])), atol=1e-6)
    assert sigmoid.get(index)[3] == sigmoid.table[-1] and sigmoid.get(index)[4] == np.float32(1) - sigmoid.table[-1]
    assert np.allclose(tanh.get(index)[:3], np.tanh(x[:3]), atol=1e-6)
    assert tanh.get(index)[4] == -tanh.table[-1]


def test_without_the_alignment_repair_esp_ppq_cannot_quantize_a_gru(tmp_path, monkeypatch):
    """The repair is what makes these files possible: without it ESP-PPQ 1.3.12 stops on the missing initial_h."""
    import harness.ppq.quantize as quantize
    from harness.errors import QuantizationError

    monkeypatch.setattr(quantize, "rnn_alignment", lambda alignment: alignment)
    with pytest.raises(QuantizationError, match="IndexError"):
        export_with_harness_quantizer(from_torch(Rnn("GRU", False), [6, 1, 8], "gru_unrepaired"), "esp32p4", 8, tmp_path)
