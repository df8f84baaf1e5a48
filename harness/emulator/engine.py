"""Bit-exact host emulator of ESP-DL's integer arithmetic, per target.

The virtual board replaces a real ESP32-P4/S3 in CI, so it must compute what
the chip computes, not what ESP-PPQ simulates: esp32p4 rounds half to even with
per-channel weight exponents and 32-bit accumulators; esp32s3 rounds half up,
uses per-tensor weights and 20-bit saturating int8 conv accumulators (bias
first, then filter order). Add/Sub/Concat copy raw integers without aligning
exponents, AveragePool divides by the full kernel area, int16 activations run
ESP-DL's float32 code. Everything constant (unpacked weights, shifts, lookup
tables) is prepared once at load; shapes come from the actual inputs.
"""

from __future__ import annotations

import numpy as np

from harness.emulator.common import INT_TYPES, QUANT_BITS, EngineError, Plan
from harness.emulator.ops import BUILDERS, FAMILIES
from harness.espdl.reader import EspdlModel, Node, TensorInfo
from harness.targets import Target, get_target

__all__ = ["Engine", "EngineError", "SUPPORTED_OPS"]

SUPPORTED_OPS = sorted(BUILDERS)
# the modules that decide what the engine computes: digests of cached or reported results name them all
SOURCES = ("harness.emulator.engine", "harness.emulator.common", "harness.emulator.ops",
           *(f"harness.emulator.ops.{family}" for family in FAMILIES))


class Engine:
    """One ``.espdl`` model, ready to run with ``target``'s integer semantics.

    ``saturated`` maps node name -> number of outputs whose accumulation saturated (esp32s3's 20-bit
    int8 lanes) in the last ``run``; ESP-PPQ does not simulate this.
    """

    def __init__(self, model: EspdlModel, target: str | Target):
        self.model = model
        self.target = get_target(target) if isinstance(target, str) else target
        self.rounding = self.target.rounding
        self.inputs: list[TensorInfo] = list(model.inputs)
        self.outputs: list[TensorInfo] = list(model.outputs)
        self.saturated: dict[str, int] = {}
        self._plans: list[Plan] = []
        self._input_names = {i.name for i in self.inputs}
        unknown = [n for n in model.nodes if n.op_type not in BUILDERS]
        if unknown:
            n = unknown[0]
            raise EngineError(
                f"model {model.name!r}: node {n.name!r} has op type {n.op_type!r}, which the engine does not emulate",
                f"remove or replace that op (the engine runs {', '.join(SUPPORTED_OPS)})",
            )
        for node in model.nodes:
            self._plans.append(BUILDERS[node.op_type](self, node))
        self.produced = {o for p in self._plans for o in p.outputs}
        missing = [o.name for o in self.outputs if o.name not in self.produced and o.name not in self._input_names]
        if missing:
            raise EngineError(f"model {model.name!r}: no node produces output {missing[0]!r}",
                              "re-export the model with esp-ppq")

    # ------------------------------------------------------------ public API
    def exponent(self, name: str) -> int:
        """Exponent of a graph input, output or activation (``value = q * 2**exponent``)."""
        info = self.model.tensor_info(name)
        if info is None or not info.exponents:
            raise EngineError(f"model {self.model.name!r} has no tensor {name!r} with an exponent",
                              "use a name from the model's inputs, outputs or value_info")
        return int(info.exponents[0])

    def reset(self) -> None:
        """Zero every StreamingCache, like ``dl::Model::reset()`` (a fresh engine starts zeroed)."""
        for plan in self._plans:
            if plan.reset is not None:
                plan.reset()

    def run(self, feeds: dict[str, np.ndarray], keep: bool = False) -> dict[str, np.ndarray]:
        """Run once. Inputs/outputs are integers in the file's on-chip layout, batch dim included.

        Returns the graph outputs, or with ``keep=True`` every tensor (graph inputs included).
        """
        env = self._check_feeds(feeds)
        sat: dict[str, int] = {}
        for plan in self._plans:
            try:
                args = [env[name] for name in plan.inputs]
            except KeyError as exc:
                raise EngineError(f"node {plan.node.name!r} reads {exc.args[0]!r}, which nothing produced",
                                  "re-export the model with esp-ppq (nodes must be in topological order)") from None
            try:
                results = plan.fn(*args)
            except EngineError:
                raise
            except (ValueError, IndexError, TypeError, KeyError, ArithmeticError) as exc:
                shapes = ", ".join(str(list(a.shape)) for a in args)
                raise EngineError(
                    f"node {plan.node.name!r} ({plan.node.op_type}) cannot run on inputs of shape {shapes}: {exc}",
                    "feed shapes the model was exported for",
                ) from None
            for name, value in zip(plan.outputs, results):
                env[name] = value
            if plan.saturations is not None:
                count = plan.saturations()
                if count:
                    sat[plan.node.name] = count
        self.saturated = sat
        if keep:
            return env
        return {o.name: env[o.name] for o in self.outputs}

    def run_each(self, feeds: dict[str, np.ndarray], given: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Every node run on ``given`` values of its inputs where there are some, not on its producers' results.

        ``given`` maps tensor names to values (e.g. ESP-PPQ's embedded test values); an input without one takes
        what this same pass computed for it (from given values upstream), graph inputs take ``feeds``. Returns
        every node's outputs by name: each op's arithmetic checked on its own, so a difference in one op does
        not travel into the next.
        """
        env = {**self._check_feeds(feeds)}
        out: dict[str, np.ndarray] = {}
        for plan in self._plans:
            try:
                results = plan.fn(*[given[n] if n in given else env[n] for n in plan.inputs])
            except (ValueError, IndexError, TypeError, KeyError, ArithmeticError) as exc:
                raise EngineError(f"node {plan.node.name!r} ({plan.node.op_type}) cannot run on its test values: {exc}",
                                  "re-export the model with esp-ppq") from None
            out.update(zip(plan.outputs, results))
            env.update(zip(plan.outputs, results))
        self.reset()
        return out

    # ------------------------------------------------------------ helpers
    def _check_feeds(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [i.name for i in self.inputs]
        if not isinstance(feeds, dict):
            raise EngineError(f"feeds must be a dict of input name -> array, got {type(feeds).__name__}",
                              f"pass {{{', '.join(repr(n) for n in names)}: array}}")
        extra = sorted(set(feeds) - set(names))
        missing = [n for n in names if n not in feeds]
        if extra or missing:
            parts = ([f"missing {', '.join(missing)}"] if missing else []) + (
                [f"unknown {', '.join(extra)}"] if extra else [])
            raise EngineError(f"model {self.model.name!r} feeds: {'; '.join(parts)}",
                              f"feed exactly the inputs {', '.join(names)}")
        env: dict[str, np.ndarray] = {}
        for info in self.inputs:
            value = feeds[info.name]
            if not isinstance(value, np.ndarray):
                value = np.asarray(value)
            if value.dtype != np.dtype(info.dtype):
                raise EngineError(
                    f"input {info.name!r} of model {self.model.name!r} is {value.dtype}, the model takes {info.dtype}",
                    f"quantize it to {info.dtype} with exponent {list(info.exponents)} first",
                )
            declared = list(info.shape)
            if value.ndim != len(declared) or (declared and declared[0] > 0 and value.shape[0] != declared[0]):
                raise EngineError(
                    f"input {info.name!r} of model {self.model.name!r} has shape {list(value.shape)}, "
                    f"the model takes {declared} (on-chip layout, batch first)",
                    "feed an array of the model's rank and batch size in its on-chip layout",
                )
            env[info.name] = value
        return env

    # ------------------------------------------------------------ for the operator builders (harness.emulator.ops)
    def tensor_info(self, name: str, node: Node) -> TensorInfo:
        info = self.model.tensor_info(name)
        if info is None or not info.exponents:
            raise EngineError(f"node {node.name!r}: tensor {name!r} has no exponent in the file",
                              "re-export the model with esp-ppq")
        return info

    def tensor_exponent(self, name: str, node: Node) -> int:
        return int(self.tensor_info(name, node).exponents[0])

    def out_type(self, node: Node, k: int = 0, allow_float: bool = False):
        """(numpy dtype, lo, hi) of output ``k``; float32 (DequantizeLinear only) gives (float32, None, None)."""
        info = self.model.tensor_info(node.outputs[k])
        dtype = info.dtype if info is not None else {"S8": "int8", "S16": "int16"}.get(
            node.attributes.get("quant_type", ""), "")
        if dtype == "float32" and allow_float:
            return np.float32, None, None
        if dtype not in INT_TYPES:
            raise EngineError(f"node {node.name!r}: output {node.outputs[k]!r} has type {dtype or 'unknown'}",
                              "the engine runs int8/int16 models (re-export with esp-ppq w8a8 or w16a16)")
        return INT_TYPES[dtype]

    def bits(self, node: Node) -> int:
        qt = node.attributes.get("quant_type", "")
        if qt in QUANT_BITS:
            return QUANT_BITS[qt]
        if qt:
            raise EngineError(f"node {node.name!r} ({node.op_type}) has quant_type {qt}",
                              "the engine runs S8/S16 ops only (export w8a8 or w16a16)")
        return 8 if self.out_type(node)[0] == np.int8 else 16

    def const(self, name: str):
        return self.model.initializers.get(name)

    def input_const(self, node: Node, index: int):
        """Input ``index`` of ``node`` when it is a constant (initializer) tensor; None when it is absent or an
        activation."""
        name = node.inputs[index] if len(node.inputs) > index else ""
        return self.const(name) if name else None

    def operands(self, node: Node) -> tuple[list[str], list]:
        """Activation inputs and constant inputs (None where an input is an activation)."""
        acts, consts = [], []
        for name in node.inputs:
            t = self.const(name) if name else None
            consts.append(t)
            if name and t is None:
                acts.append(name)
        return acts, consts

    def lut(self, node: Node):
        name = node.attributes.get("lut")
        if not name:
            return None
        table = self.const(name)
        if table is None:
            raise EngineError(f"node {node.name!r} names lookup table {name!r}, which the file does not contain",
                              "re-export the model with esp-ppq")
        return table
