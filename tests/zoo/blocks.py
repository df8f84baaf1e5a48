"""Shared building blocks of the zoo specs: causal convs with BatchNorm, residual blocks, heads.

Every temporal block has ``forward(x)`` (offline, zero left padding of
``dilation * (kernel - 1)`` frames, right padding 0) and, for explicit-cache
models, ``streaming_forward(x, cache) -> (y, new_cache)`` where the cache holds
exactly the frames ``forward``'s zero padding stands for (zeros at the start),
so streamed == offline. ``cache_shape`` is ``(channels, frames)`` or ``None``.

BatchNorm layers get non-default statistics and affine parameters (drawn from
torch's RNG, which the harness seeds with ``CONFIG["seed"]`` before
``build_submodels``), so folding them into the conv is really exercised.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ACTIVATIONS = {
    "relu": nn.ReLU,
    "relu6": nn.ReLU6,
    "hardswish": nn.Hardswish,
    "sigmoid": nn.Sigmoid,
    "tanh": nn.Tanh,
}


def activation(name: str) -> nn.Module:
    return ACTIVATIONS[name]()


def randomize_bn(bn: nn.BatchNorm1d) -> nn.BatchNorm1d:
    """A BatchNorm that looks trained: non-zero mean, non-unit variance, non-trivial affine."""
    with torch.no_grad():
        bn.running_mean.uniform_(-0.4, 0.4)
        bn.running_var.uniform_(0.4, 1.8)
        bn.weight.uniform_(0.6, 1.4)
        bn.bias.uniform_(-0.25, 0.25)
    return bn.eval()


def bn(channels: int) -> nn.BatchNorm1d:
    return randomize_bn(nn.BatchNorm1d(channels))


class CausalConvBN(nn.Module):
    """act(bn(conv(pad(x)))): one causal (depthwise or dense) dilated conv, BN before the activation.

    The cache is the block's own input: the last ``dilation * (kernel - 1)`` frames.
    """

    def __init__(self, cin: int, cout: int, kernel: int, dilation: int = 1, depthwise: bool = False,
                 act: str = "relu"):
        super().__init__()
        self.context = dilation * (kernel - 1)
        self.conv = nn.Conv1d(cin, cout, kernel, dilation=dilation, groups=cin if depthwise else 1)
        self.bn = bn(cout)
        self.act = activation(act)
        self.cache_shape = (cin, self.context)

    def _body(self, padded: Tensor) -> Tensor:
        return self.act(self.bn(self.conv(padded)))

    def forward(self, x: Tensor) -> Tensor:
        return self._body(F.pad(x, (self.context, 0)))

    def streaming_forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        padded = torch.cat([cache, x], dim=2)
        return self._body(padded), padded[:, :, -self.context:]


class ResidualDW(nn.Module):
    """y = act(bn(pw(dw(pad(x))))) + x: a residual block whose causal depthwise conv reads the block input.

    Used as a whole sub-model, the sub-model input feeds both the temporal conv and the residual Add.
    """

    def __init__(self, channels: int, kernel: int, dilation: int = 1, act: str = "relu"):
        super().__init__()
        self.context = dilation * (kernel - 1)
        self.dw = nn.Conv1d(channels, channels, kernel, dilation=dilation, groups=channels)
        self.pw = nn.Conv1d(channels, channels, 1)
        self.bn = bn(channels)
        self.act = activation(act)
        self.cache_shape = (channels, self.context)

    def _body(self, padded: Tensor) -> Tensor:
        return self.act(self.bn(self.pw(self.dw(padded))))

    def forward(self, x: Tensor) -> Tensor:
        return self._body(F.pad(x, (self.context, 0))) + x

    def streaming_forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        padded = torch.cat([cache, x], dim=2)
        return self._body(padded) + x, padded[:, :, -self.context:]


class Pointwise(nn.Module):
    """act(bn(1x1 conv)): per-frame mixing, no temporal context, no cache."""

    cache_shape = None

    def __init__(self, cin: int, cout: int, act: str | None = "relu", batchnorm: bool = True):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv1d(cin, cout, 1)]
        if batchnorm:
            layers.append(bn(cout))
        if act:
            layers.append(activation(act))
        self.body = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def streaming_forward(self, x: Tensor, cache: None = None) -> tuple[Tensor, None]:
        return self.forward(x), None


class ClassifierHead(nn.Module):
    """Per-frame classifier: 1x1 conv to ``classes`` logits (softmax-free), optionally a Sigmoid (multi-label)."""

    cache_shape = None

    def __init__(self, cin: int, classes: int, sigmoid: bool = False):
        super().__init__()
        self.logits = nn.Conv1d(cin, classes, 1)
        self.sigmoid = sigmoid

    def forward(self, x: Tensor) -> Tensor:
        y = self.logits(x)
        return torch.sigmoid(y) if self.sigmoid else y

    def streaming_forward(self, x: Tensor, cache: None = None) -> tuple[Tensor, None]:
        return self.forward(x), None


class Chain(nn.Module):
    """Stateless layers followed by at most one stateful block (its cache is the chain's cache)."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        stateful = [m for m in layers if getattr(m, "cache_shape", None) is not None]
        assert len(stateful) <= 1, "one cache per sub-model: split stateful blocks into sub-models"
        self.cache_shape = stateful[0].cache_shape if stateful else None

    def forward(self, x: Tensor) -> Tensor:
        for m in self.layers:
            x = m(x)
        return x

    def streaming_forward(self, x: Tensor, cache):
        new_cache = None
        for m in self.layers:
            if getattr(m, "cache_shape", None) is not None:
                x, new_cache = m.streaming_forward(x, cache)
            else:
                x = m(x)
        return x, new_cache
