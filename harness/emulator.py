"""``dl::Model::test()`` on the host: run an ``.espdl``'s embedded test inputs with the chip's arithmetic.

A file whose embedded test values the chip would reject fails on the board
after a flash; this check finds it in CI. Like ``Model::test()`` it compares
every embedded test output the graph produces (dtype, shape and exponent
equal; int8 exact, int16 within 1 LSB) but it reports all of them, names the
first diverging tensor, and explains a mismatch by a linted chip/ESP-PPQ
disagreement upstream (raw Add of unaligned exponents, S3 accumulator
saturation, ...).

CLI: ``python -m harness.emulator check MODEL.espdl --target TARGET [--name NAME]``
(exit 0: all match, 1: mismatch, 2: unreadable model / unknown op / unknown target).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from harness.engine import Engine, EngineError
from harness.errors import HarnessError
from harness.espdl import EspdlModel, load_espdl
from harness.lint import DISAGREEMENT_KINDS, Finding, lint_model
from harness.targets import Target, get_target

MATCH, MISMATCH, ABSENT, INPUT = "match", "MISMATCH", "absent", "input"
_TOLERANCE = {"int8": 0, "int16": 1}  # Model::test(): eps 2e-5 (int8), 1 + 1e-5 (int16)


@dataclass
class TensorResult:
    """One embedded test output compared with what the engine computed."""

    name: str
    verdict: str  # match, MISMATCH, absent (not in the exported graph), input (a graph input: never checked)
    max_diff: int = 0
    differing: int = 0
    size: int = 0
    reason: str = ""  # for mismatches: what differs (dtype, shape, exponent or values)
    finding: Finding | None = None  # the upstream chip/ESP-PPQ disagreement that explains a mismatch

    def line(self) -> str:
        if self.verdict == ABSENT:
            return (f"{self.name}: not compared (not in the exported graph: fused or removed by the exporter; "
                    f"dl::Model::test() on the chip stops at this name)")
        if self.verdict == INPUT:
            return f"{self.name}: not compared (a graph input: Model::test() checks module outputs only)"
        text = f"{self.name}: {self.verdict}, max |diff| {self.max_diff}, {self.differing} of {self.size} differ"
        if self.reason:
            text += f" ({self.reason})"
        if self.finding is not None:
            text += f"; differs because of linted node {self.finding.node}: {self.finding}"
        return text


@dataclass
class CheckReport:
    """The host ``Model::test()`` of one model on one target."""

    model: str
    target: str
    results: list[TensorResult]
    findings: list[Finding]
    saturated: dict[str, int]
    first_divergence: str | None = None
    attributed: dict[str, Finding] = field(default_factory=dict)

    @property
    def compared(self) -> list[TensorResult]:
        return [r for r in self.results if r.verdict in (MATCH, MISMATCH)]

    @property
    def matching(self) -> int:
        return sum(r.verdict == MATCH for r in self.results)

    @property
    def passed(self) -> bool:
        return all(r.verdict == MATCH for r in self.compared)

    @property
    def summary(self) -> str:
        return f"{self.matching}/{len(self.compared)} tensors match"

    def result(self, name: str) -> TensorResult:
        for r in self.results:
            if r.name == name:
                return r
        raise KeyError(name)

    def lines(self) -> list[str]:
        """The CLI report: one line per test output, the lint findings, the first divergence, the summary."""
        out = [f"model {self.model} on {self.target}"]
        out += [f"  {r.line()}" for r in self.results]
        out += [f"  lint {f.node}: {f}" for f in self.findings]
        if self.first_divergence:
            out.append(f"first diverging tensor (topological order): {self.first_divergence}")
        out.append(self.summary)
        return out


def _downstream(model: EspdlModel) -> dict[str, set[str]]:
    """Node name -> every tensor that node's outputs reach (its own outputs included)."""
    consumers: dict[str, list] = {}
    for node in model.nodes:
        for name in node.inputs:
            consumers.setdefault(name, []).append(node)
    reach: dict[str, set[str]] = {}
    for node in reversed(model.nodes):
        tensors = set(node.outputs)
        for out in node.outputs:
            for consumer in consumers.get(out, []):
                tensors |= reach.get(consumer.name, set())
        reach[node.name] = tensors
    return reach


def check(model_or_path: EspdlModel | str | os.PathLike, target: str | Target, name: str | None = None) -> CheckReport:
    """Feed the embedded test inputs, run with ``keep=True`` and compare every embedded test output."""
    model = model_or_path if isinstance(model_or_path, EspdlModel) else load_espdl(model_or_path, name)
    target = target if isinstance(target, Target) else get_target(target)
    if not model.test_outputs or not model.test_inputs:
        raise EngineError(
            f"model {model.name!r} has no embedded test values",
            "export it with esp-ppq's export_test_values=True (and test_output_names for intermediate tensors)",
        )
    engine = Engine(model, target)
    missing = [i.name for i in engine.inputs if i.name not in model.test_inputs]
    if missing:
        raise EngineError(f"model {model.name!r} has no test input for {', '.join(missing)}",
                          "export it with esp-ppq's export_test_values=True")
    values = engine.run({i.name: np.array(model.test_inputs[i.name].data) for i in engine.inputs}, keep=True)
    findings = lint_model(model, target)
    findings += [
        Finding(node, "s3-saturation",
                f"{node}: the 20-bit int8 accumulator saturated in {count} outputs on the test input; ESP-PPQ does "
                f"not simulate it")
        for node, count in engine.saturated.items()
    ]
    order = {name: k for k, node in enumerate(model.nodes) for name in node.outputs}
    inputs = {i.name for i in model.inputs}
    results = []
    for tname, expected in model.test_outputs.items():
        if tname in inputs:
            results.append(TensorResult(tname, INPUT))
        elif tname not in engine.produced:
            results.append(TensorResult(tname, ABSENT))
        else:
            results.append(_compare(tname, values[tname], expected, engine.exponent(tname)))
    results.sort(key=lambda r: (r.verdict not in (MATCH, MISMATCH), order.get(r.name, -1), r.name))
    report = CheckReport(model.name, target.name, results, findings, dict(engine.saturated))
    _attribute(report, model)
    return report


def _compare(name: str, got: np.ndarray, expected, exponent: int) -> TensorResult:
    want = np.asarray(expected.data)
    size = int(want.size)
    if str(got.dtype) != str(want.dtype):
        return TensorResult(name, MISMATCH, 0, size, size, f"dtype {got.dtype}, test value {want.dtype}")
    if tuple(got.shape) != tuple(want.shape):
        return TensorResult(name, MISMATCH, 0, size, size, f"shape {list(got.shape)}, test value {list(want.shape)}")
    if tuple(expected.exponents[:1]) != (exponent,):
        return TensorResult(name, MISMATCH, 0, size, size,
                            f"exponent {exponent}, test value {list(expected.exponents)}")
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    tol = _TOLERANCE.get(str(want.dtype), 0)
    differing = int(np.count_nonzero(diff > tol))
    max_diff = int(diff.max()) if diff.size else 0
    return TensorResult(name, MATCH if differing == 0 else MISMATCH, max_diff, differing, size)


def _attribute(report: CheckReport, model: EspdlModel) -> None:
    """First divergence, and the upstream disagreement (earliest in topological order) behind each mismatch."""
    reach = _downstream(model)
    ranked = {node.name: k for k, node in enumerate(model.nodes)}
    causes = sorted((f for f in report.findings if f.kind in DISAGREEMENT_KINDS and f.node in reach),
                    key=lambda f: ranked[f.node])
    for r in report.results:
        if r.verdict != MISMATCH:
            continue
        if report.first_divergence is None:
            report.first_divergence = r.name
        for f in causes:
            if r.name in reach[f.node]:
                r.finding = f
                report.attributed[r.name] = f
                break


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.emulator",
                                     description="Host emulation of ESP-DL on an .espdl model.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("check", help="run the embedded test inputs and compare every embedded test output")
    p.add_argument("model", help=".espdl file or PDLx pack")
    p.add_argument("--target", required=True, help="esp32p4 or esp32s3")
    p.add_argument("--name", help="model to pick from a pack")
    args = parser.parse_args(argv)
    try:
        report = check(args.model, args.target, args.name)
    except HarnessError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0 if report.passed else 1


if __name__ == "__main__":
    sys.exit(main())
