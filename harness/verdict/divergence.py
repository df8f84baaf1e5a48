"""Which layer of a failing module first differs: the device's intermediate tensors, captured with PROBE.

A streamed case that fails names a module and a window (``compare.py``); this module names the layer. Two
questions, the same two as the case's verdicts:

* **streaming exactness** (``first_diverging_layer``): the device runs the streaming exports and captures module
  k's tensors of window n (``DeviceLink.probe``, docs/protocol.md section 7.8), then runs the offline exports on
  the same sequence as one window and captures the same names; every tensor both graphs have whose time axis can
  be cut to window n's frames is compared, in the streaming graph's node order, and the first that differs is the
  answer. Layers before it computed the same integers in both runs.
* **arithmetic fidelity** (``first_unfaithful_layer``): the device's offline tensors of module k against
  ESP-PPQ's simulation of the same variables, fed the device's own input of module k (so a difference upstream
  does not travel in), each quantized with the variable's exponent and the target's rounding, compared in node
  order.

ESP-PPQ is imported only by ``first_unfaithful_layer`` (and there lazily).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable

import numpy as np

from harness.tensors import QTensor

PROBED_DTYPES = ("int8", "int16", "float32")  # what PROBE captures (docs/protocol.md 0x0A)
FLOAT_TOLERANCE = 2e-5  # dl::Model::test()'s epsilon for float32 tensors (harness/emulator/check.py)


@dataclass(frozen=True)
class Layer:
    """One tensor of a module's graph, in node order: a graph input (``node`` "", ``op_type`` "input") or the
    output of node ``node``."""

    tensor: str
    node: str
    op_type: str


@dataclass(frozen=True)
class LayerDifference:
    """The first layer whose tensor differs between two runs of module ``module``.

    ``max_diff`` is in LSB of the reference's exponent (float32 tensors: the absolute difference); ``differing``
    of ``size`` compared elements differ by more than ``tolerance``. ``compared`` lists the tensors before it,
    which matched; ``skipped`` the common tensors that could not be compared, with why."""

    module: int
    window: int
    node: str
    op_type: str
    tensor: str
    max_diff: float
    differing: int
    size: int
    tolerance: float
    exponents: tuple[int, int]  # (reference, device); equal unless the exponents differ
    what: str  # "streamed vs offline" or "device vs ESP-PPQ"
    compared: tuple[str, ...] = ()
    skipped: tuple[tuple[str, str], ...] = ()
    float_values: bool = False  # a float32 tensor: max_diff is absolute, not in LSB

    def line(self) -> str:
        where = (f"node '{self.node}' ({self.op_type}), tensor '{self.tensor}'" if self.node
                 else f"its graph input '{self.tensor}' (upstream of every layer)")
        exp = "" if self.exponents[0] == self.exponents[1] else (
            f", exponent {self.exponents[1]} instead of {self.exponents[0]}")
        unit = "" if self.float_values else " LSB"
        before = len(self.compared)
        return (f"module {self.module}, window {self.window}: {self.what} first differ at {where}: {self.differing} "
                f"of {self.size} values beyond ±{self.tolerance:g}, max |diff| {self.max_diff:g}{unit}{exp} ({before} "
                f"tensor{'' if before == 1 else 's'} before it match)")


# --------------------------------------------------------------------------- the graphs

def layers(model) -> list[Layer]:
    """Every tensor of an ``EspdlModel`` in execution order: its graph inputs, then each node's outputs."""
    out = [Layer(i.name, "", "input") for i in model.inputs]
    seen = {layer.tensor for layer in out}
    for node in model.nodes:
        for name in node.outputs:
            if name and name not in seen:
                out.append(Layer(name, node.name, node.op_type))
                seen.add(name)
    return out


def _dtype(model, name: str) -> str:
    info = model.tensor_info(name)
    return info.dtype if info is not None else ""


def common_layers(streaming_model, offline_model) -> list[Layer]:
    """The tensors both graphs compute under the same name (int8, int16 or float32 in both: what PROBE captures),
    in the streaming graph's order. The streaming graph's own tensors (StreamingCache windows, cache inputs and
    outputs) have no offline twin and are left out."""
    offline = {layer.tensor for layer in layers(offline_model)}
    return [layer for layer in layers(streaming_model) if layer.tensor in offline
            and _dtype(streaming_model, layer.tensor) in PROBED_DTYPES
            and _dtype(offline_model, layer.tensor) in PROBED_DTYPES]


# --------------------------------------------------------------------------- cutting the offline run to a window

def window_frames(streamed_shape: tuple[int, ...], offline_shape: tuple[int, ...], window: int, index: int,
                  sequence_length: int) -> tuple[int, int, int, int] | str:
    """Where window ``index`` (of ``window`` input frames) lies in a tensor: ``(axis, start, stop, skip)`` to
    compare ``offline[..., start:stop, ...]`` (along ``axis``) with ``streamed[..., skip:, ...]``; or why it
    cannot be cut (a str).

    The time axis is the one axis whose size differs between the two runs. A tensor with F frames per input
    frame (F = offline frames / sequence length: 1, or 1/2 after a stride of 2) ends window ``index`` at frame
    (index + 1) x window x F; a streamed tensor holds the frames before that end (a StreamingCache window also
    some before the window, which before frame 0 are the cache's zeros and are not compared)."""
    if len(streamed_shape) != len(offline_shape):
        return f"rank {len(streamed_shape)} streamed, {len(offline_shape)} offline"
    axes = [a for a, (s, o) in enumerate(zip(streamed_shape, offline_shape)) if s != o]
    if not axes:
        if window == sequence_length:  # the streamed window is the whole sequence
            axis = 1 if len(streamed_shape) > 1 else 0
            return axis, 0, streamed_shape[axis] if streamed_shape else 0, 0
        return "no time axis (the same shape in both runs: a per-window head or a reduction over time)"
    if len(axes) > 1:
        return f"shapes {list(streamed_shape)} streamed and {list(offline_shape)} offline differ on several axes"
    axis = axes[0]
    end = Fraction((index + 1) * window * offline_shape[axis], sequence_length)
    if end.denominator != 1:
        return f"window {index} does not end on a frame of its time axis ({offline_shape[axis]} frames offline)"
    stop = int(end)
    start = stop - streamed_shape[axis]
    if stop > offline_shape[axis] or stop <= 0:
        return f"window {index} lies beyond the offline run's {offline_shape[axis]} frames"
    return axis, max(start, 0), stop, max(-start, 0)


def _cut(a: np.ndarray, axis: int, start: int, stop: int) -> np.ndarray:
    index = [slice(None)] * a.ndim
    index[axis] = slice(start, stop)
    return a[tuple(index)]


def compare(reference: QTensor, device: QTensor, tolerance: float) -> tuple[float, int, int]:
    """(max |diff|, elements beyond ``tolerance``, elements) of two tensors of the same shape: integers in LSB of
    the reference's exponent (the device's rescaled to it if its exponent differs), float32 tensors absolute."""
    ref, dev = np.asarray(reference.data), np.asarray(device.data)
    if ref.dtype.kind == "f" or dev.dtype.kind == "f":
        r = ref.astype(np.float64) * (2.0 ** reference.exponent if ref.dtype.kind != "f" else 1.0)
        d = dev.astype(np.float64) * (2.0 ** device.exponent if dev.dtype.kind != "f" else 1.0)
    else:
        r = ref.astype(np.float64)
        d = dev.astype(np.float64) * 2.0 ** (device.exponent - reference.exponent)
    diff = np.abs(r - d)
    exp_differs = ref.dtype.kind != "f" and dev.dtype.kind != "f" and device.exponent != reference.exponent
    beyond = int(np.count_nonzero(diff > tolerance)) if diff.size else 0
    if exp_differs and diff.size:
        beyond = max(beyond, 1)  # another exponent is a difference even where the values agree
    return (float(diff.max()) if diff.size else 0.0), beyond, int(diff.size)


def _tolerance(tolerance_lsb: float | None, tensor: QTensor) -> float:
    if np.asarray(tensor.data).dtype.kind == "f":
        return FLOAT_TOLERANCE if tolerance_lsb is None else tolerance_lsb
    if tolerance_lsb is not None:
        return tolerance_lsb
    return 0.0


def first_difference(order: list[Layer], reference: dict[str, QTensor], device: dict[str, QTensor],
                     align: Callable[[str, QTensor, QTensor], tuple[QTensor, QTensor] | str], *, module: int,
                     window: int, what: str, tolerance_lsb: float | None = None,
                     tolerance_of: Callable[[QTensor], float] | None = None) -> LayerDifference | None:
    """The first layer of ``order`` whose aligned tensors differ beyond the tolerance, or None.

    ``align(name, reference, device)`` returns the two tensors over the same elements, or why they cannot be
    compared (the layer is then skipped and listed)."""
    compared: list[str] = []
    skipped: list[tuple[str, str]] = []
    for layer in order:
        if layer.tensor not in reference or layer.tensor not in device:
            continue
        aligned = align(layer.tensor, reference[layer.tensor], device[layer.tensor])
        if isinstance(aligned, str):
            skipped.append((layer.tensor, aligned))
            continue
        ref, dev = aligned
        tolerance = tolerance_of(dev) if tolerance_of is not None else _tolerance(tolerance_lsb, dev)
        max_diff, beyond, size = compare(ref, dev, tolerance)
        if beyond:
            return LayerDifference(module, window, layer.node, layer.op_type, layer.tensor, max_diff, beyond, size,
                                   tolerance, (ref.exponent, dev.exponent), what, tuple(compared), tuple(skipped),
                                   np.asarray(dev.data).dtype.kind == "f")
        compared.append(layer.tensor)
    return None


# --------------------------------------------------------------------------- probing a device

def probe_run(link, exports: list, frames, window: int, module: int, run_index: int, names: list[str],
              sequence: int = 0, schedule: str = "round-robin") -> dict[str, QTensor]:
    """Configure ``exports`` (windows of ``window`` frames), RESET, arm PROBE(module, run_index, names), stream
    sequence ``sequence`` of ``frames``, and return the captured tensors."""
    from harness.device.dut import configure_pipeline

    configure_pipeline(link, exports, frames, window, schedule, all_modules=False)
    link.reset()
    values = frames.values[sequence]
    needed = (run_index + 1) * window  # the probed run needs this many frames; the rest would only cost time
    return link.probe(module, run_index, names, lambda: link.stream(values[:max(needed, window)], lambda out: None))


def _espdl(path):
    from harness.espdl.reader import load_espdl

    return load_espdl(path)


def first_diverging_layer(link, streaming_exports: list, offline_exports: list, frames, window: int, module: int,
                          window_index: int, sequence: int = 0,
                          schedule: str = "round-robin") -> LayerDifference | None:
    """The first layer of module ``module`` whose tensor of window ``window_index`` (the streamed run, windows of
    ``window`` frames) differs from the same frames of the device's offline run of sequence ``sequence``, or None.

    ``streaming_exports`` / ``offline_exports`` are ``Quantizer.streaming_exports(qm, window)`` /
    ``Quantizer.offline_exports(qm, sequence_length)``; ``frames`` the case's ``Frames``. Exact comparison
    (streaming exactness is bit for bit)."""
    t = frames.values.shape[1]
    if (window_index + 1) * window > t:
        from harness.errors import ConfigError

        raise ConfigError(f"window {window_index} of {window} frames lies beyond the sequence of {t} frames",
                          f"pick a window below {t // window}")
    streamed_model = _espdl(streaming_exports[module].path)
    offline_model = _espdl(offline_exports[module].path)
    order = common_layers(streamed_model, offline_model)
    names = [layer.tensor for layer in order]
    if not names:
        return None
    streamed = probe_run(link, streaming_exports, frames, window, module, window_index, names, sequence, schedule)
    offline = probe_run(link, offline_exports, frames, t, module, 0, names, sequence, schedule)

    def align(name: str, reference: QTensor, device: QTensor):
        cut = window_frames(device.data.shape, reference.data.shape, window, window_index, t)
        if isinstance(cut, str):
            return cut
        axis, start, stop, skip = cut
        ref = _cut(reference.data, axis, start, stop)
        dev = _cut(device.data, axis, skip, device.data.shape[axis])
        if ref.shape != dev.shape:
            return f"window {window_index} covers {list(dev.shape)} streamed, {list(ref.shape)} offline"
        return QTensor(ref, reference.exponent), QTensor(dev, device.exponent)

    return first_difference(order, offline, streamed, align, module=module, window=window_index,
                            what="streamed vs offline", tolerance_lsb=0)


# --------------------------------------------------------------------------- fidelity: device vs ESP-PPQ

def _permutations(rank: int) -> list[tuple[int, ...]]:
    """Candidate layouts from ESP-PPQ's graph to ESP-DL's, likeliest first: channels last (NCW -> NWC,
    NCHW -> NHWC), unchanged, then every other permutation."""
    channels_last = (0, *range(2, rank), 1) if rank >= 3 else tuple(range(rank))
    rest = [p for p in itertools.permutations(range(rank)) if p not in (channels_last, tuple(range(rank)))]
    return [channels_last, tuple(range(rank)), *rest]


def chip_layout(value: np.ndarray, chip_shape: tuple[int, ...], hint: np.ndarray | None = None) -> np.ndarray | None:
    """``value`` (ESP-PPQ's layout) transposed into the on-chip shape ``chip_shape``; where several permutations
    give that shape, the one under which ``value`` equals ``hint`` (e.g. the device's own tensor), else the
    likeliest. None when no permutation fits (a reshape between the layouts)."""
    fits = [p for p in _permutations(value.ndim) if tuple(value.shape[i] for i in p) == tuple(chip_shape)]
    if not fits:
        return value.reshape(chip_shape) if value.size == int(np.prod(chip_shape)) and value.ndim != len(
            chip_shape) else None
    if len(fits) > 1 and hint is not None:
        for perm in fits:
            if np.array_equal(np.transpose(value, perm), hint):
                return np.transpose(value, perm)
    return np.transpose(value, fits[0])


def first_unfaithful_layer(link, qm, offline_exports: list, frames, module: int, sequence: int = 0,
                           tolerance_lsb: float | None = None) -> LayerDifference | None:
    """The first layer of module ``module`` where the device's offline run (sequence ``sequence`` as one window)
    differs from ESP-PPQ's simulation of the same variable, or None.

    ESP-PPQ's graph (``qm.modules[module].offline_graph``) runs on the device's own input of the module, on the CPU;
    each variable is quantized with its exponent and the target's rounding and put into the on-chip layout.
    Tolerance: ``tolerance_lsb``, or ESP-DL's contract per tensor (int8 0, int16 1 LSB, float32 2e-5)."""
    from harness.ppq.env import DEVICE, import_ppq
    from harness.ppq.quantize import var_exponent
    from harness.ppq.reference import one_thread

    import_ppq()
    import torch
    from esp_ppq.executor import TorchExecutor

    t = frames.values.shape[1]
    model = _espdl(offline_exports[module].path)
    graph = qm.modules[module].offline_graph
    parameters = {name for name, var in graph.variables.items() if var.is_parameter}
    order = [layer for layer in layers(model) if layer.tensor in graph.variables and layer.tensor not in parameters
             and _dtype(model, layer.tensor) in PROBED_DTYPES]
    inputs = [layer.tensor for layer in order if not layer.node]
    if not order or not inputs:
        return None
    device = probe_run(link, offline_exports, frames, t, module, 0, [layer.tensor for layer in order], sequence)

    feeds = {}
    reference: dict[str, QTensor] = {}
    for name in inputs:  # the device's input of the module, in ESP-PPQ's layout and scale
        chip = device[name]
        shape = tuple(int(d) for d in graph.variables[name].shape)
        perm = next((p for p in _permutations(len(shape)) if tuple(shape[i] for i in p) == chip.data.shape), None)
        values = chip.data.astype(np.float32) * np.float32(2.0 ** chip.exponent)
        values = np.transpose(values, np.argsort(perm)) if perm is not None else values.reshape(shape)
        feeds[name] = torch.from_numpy(np.ascontiguousarray(values))
        reference[name] = chip  # fed as the device read it: equal by construction
    names = [layer.tensor for layer in order if layer.node]
    executor = TorchExecutor(graph, device=DEVICE)
    with one_thread():
        simulated = executor.forward(feeds, output_names=names)
    for name, value in zip(names, simulated):
        chip = device.get(name)
        if value is None or chip is None:
            continue
        v = value.detach().cpu().numpy()
        if chip.data.dtype.kind == "f":
            ppq = chip_layout(v.astype(np.float32), chip.data.shape, chip.data)
            if ppq is not None:
                reference[name] = QTensor(ppq, 0)
            continue
        bits = chip.data.dtype.itemsize * 8
        try:
            exponent = var_exponent(graph, name)
        except Exception:  # noqa: BLE001 - a variable ESP-PPQ does not quantize: the device's exponent
            exponent = chip.exponent
        q = qm.target.quantize(v, exponent, bits)
        ppq = chip_layout(q, chip.data.shape, chip.data)
        if ppq is not None:
            reference[name] = QTensor(ppq, exponent)

    def align(name: str, ref: QTensor, dev: QTensor):
        if ref.data.shape != dev.data.shape:
            return f"shape {list(dev.data.shape)} on the device, {list(ref.data.shape)} from ESP-PPQ"
        return ref, dev

    def contract(dev: QTensor) -> float:
        if tolerance_lsb is not None:
            return tolerance_lsb
        kind = np.asarray(dev.data).dtype
        return FLOAT_TOLERANCE if kind.kind == "f" else (1.0 if kind.itemsize == 2 else 0.0)

    return first_difference(order, reference, device, align, module=module, window=0, what="device vs ESP-PPQ",
                            tolerance_of=contract)


# --------------------------------------------------------------------------- for a failing case

def locate(link, qm, streaming_exports: list, offline_exports: list, frames, window: int, streaming, arithmetic) -> dict | None:
    """The first diverging layer of a failing case's verdicts (``streaming`` first, then ``arithmetic``), for the
    report: ``{"question", "node", "op_type", "tensor", "max_diff", "differing", "size", "line"}``; None when both
    passed. Locating is a diagnosis, not a verdict: a device or model it cannot probe gives ``{"line": why}``."""
    from harness.errors import HarnessError
    from harness.device.protocol import ProtocolError

    failing = [v for v in (streaming, arithmetic) if v is not None and not v.passed]
    if not failing:
        return None
    verdict = failing[0]
    where = verdict.comparisons[verdict.module].first_divergence or {}
    try:
        if verdict is streaming:
            found = first_diverging_layer(link, streaming_exports, offline_exports, frames, window, verdict.module,
                                          where.get("window", 0), where.get("sequence", 0))
        else:
            found = first_unfaithful_layer(link, qm, offline_exports, frames, verdict.module, where.get("sequence", 0))
    except (HarnessError, ProtocolError) as exc:
        return {"question": verdict.name, "line": f"not located: {exc}"}
    if found is None:
        return {"question": verdict.name, "line": f"not located: every tensor of module {verdict.module} both runs "
                                                  "have matched (the difference is in a tensor only one of them has)"}
    return {"question": verdict.name, "node": found.node, "op_type": found.op_type, "tensor": found.tensor,
            "max_diff": found.max_diff, "differing": found.differing, "size": found.size, "line": found.line()}
