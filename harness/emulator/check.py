"""``dl::Model::test()`` on the host: run an ``.espdl``'s embedded test inputs with the chip's arithmetic.

A file whose embedded test values the chip would reject fails on the board
after a flash; this check finds it in CI. It asks two questions of every
embedded test output (dtype, shape and exponent equal; int8 exact, int16
within 1 LSB):

* **end to end**, as ``Model::test()`` on the chip: the engine runs the
  whole model from the test inputs. Its first mismatch is where the chip's
  self-test would stop; a mismatch is traced to the earliest upstream lint
  finding that explains it.
* **per operator**: each op runs on ESP-PPQ's own values of its inputs, so a
  difference stays where it arises. This is the self-test verdict: an op's
  mismatch is excused only by a finding computed from the file alone (the
  lint, without running the engine) *about that op*. What the engine observed
  while running (esp32s3 accumulator saturation) is reported, never an excuse.

CLI: ``python -m harness.emulator check MODEL.espdl --target TARGET [--name NAME]``
(exit 0: all match end to end, 1: a mismatch, 2: unreadable model / unknown op / unknown target).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field

import numpy as np

from harness.emulator.engine import Engine, EngineError
from harness.errors import HarnessError
from harness.espdl.reader import EspdlModel, load_espdl
from harness.espdl.lint import DISAGREEMENT_KINDS, Finding, lint_model
from harness.targets import Target, get_target

MATCH, MISMATCH, ABSENT, INPUT = "match", "MISMATCH", "absent", "input"
_TOLERANCE = {"int8": 0, "int16": 1}  # Model::test(): eps 2e-5 (int8), 1 + 1e-5 (int16)
FLOAT_TOLERANCE = 2e-5  # Model::test()'s epsilon for every type but int16, so for float32 outputs (Softmax)
# Static findings that may excuse their own op's mismatch: the chip computes something else there.
EXCUSING_KINDS = DISAGREEMENT_KINDS | {"s3-accumulator"}


@dataclass
class Difference:
    """One computed tensor against its embedded test value."""

    verdict: str  # MATCH or MISMATCH
    max_diff: int | float = 0  # LSB; a float32 tensor's absolute difference
    differing: int = 0
    size: int = 0
    reason: str = ""  # what differs (dtype, shape or exponent) when not the values


@dataclass
class TensorResult:
    """One embedded test output: end to end (``verdict`` ...) and computed by its op alone (``op``)."""

    name: str
    verdict: str  # match, MISMATCH, absent (not in the exported graph), input (a graph input: never checked)
    max_diff: int | float = 0  # LSB; a float32 tensor's absolute difference
    differing: int = 0
    size: int = 0
    reason: str = ""
    finding: Finding | None = None  # the upstream chip/ESP-PPQ disagreement that explains an end-to-end mismatch
    op: Difference | None = None  # the producing op run on ESP-PPQ's values of its inputs
    excuse: Finding | None = None  # a static finding about the producing op itself

    @property
    def unexplained(self) -> bool:
        """The op itself computes something else than its test value, and no static finding about it says why."""
        return self.op is not None and self.op.verdict == MISMATCH and self.excuse is None

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
        if self.op is not None and self.op.verdict == MISMATCH:
            text += f"; its op alone on ESP-PPQ's inputs: max |diff| {self.op.max_diff}"
            text += f", excused by its own lint finding ({self.excuse.kind})" if self.excuse else ", UNEXPLAINED"
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
        """``Model::test()`` on the chip passes: every tensor matches end to end."""
        return all(r.verdict == MATCH for r in self.compared)

    @property
    def unexplained(self) -> list[TensorResult]:
        """Tensors whose own op disagrees with ESP-PPQ where no static finding about that op says why."""
        return [r for r in self.compared if r.unexplained]

    @property
    def summary(self) -> str:
        ops = sum(r.op is not None and r.op.verdict == MATCH for r in self.compared)
        return (f"{self.matching}/{len(self.compared)} tensors match end to end, {ops}/{len(self.compared)} per "
                f"operator, {len(self.unexplained)} unexplained")

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
        out += [f"  engine: {node} saturated its 20-bit accumulator in {n} outputs on the test input (reported; "
                f"explains nothing by itself)" for node, n in self.saturated.items()]
        if self.first_divergence:
            out.append(f"first diverging tensor (topological order): {self.first_divergence}")
        out.append(f"{self.matching}/{len(self.compared)} tensors match")
        if self.unexplained:
            out.append(f"per operator: {', '.join(r.name for r in self.unexplained)} differ with no finding about their op")
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
    """Feed the embedded test inputs; compare every embedded test output end to end and per operator."""
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
    saturated = dict(engine.saturated)
    inputs = {i.name for i in model.inputs}
    given = {}  # ESP-PPQ's values, where they can stand in for the tensor the engine computed
    for n, t in model.test_outputs.items():
        data = np.asarray(t.data)
        if (n in values and n not in inputs and data.dtype == values[n].dtype and data.shape == values[n].shape
                and tuple(t.exponents[:1]) == (engine.exponent(n),)):
            given[n] = data
    alone = engine.run_each({i.name: values[i.name] for i in engine.inputs}, given)
    findings = lint_model(model, target)  # from the file alone
    own = _own_findings(model, findings, set(given) | inputs)
    producer = {out: node.name for node in model.nodes for out in node.outputs}
    order = {name: k for k, node in enumerate(model.nodes) for name in node.outputs}
    results = []
    for tname, expected in model.test_outputs.items():
        if tname in inputs:
            results.append(TensorResult(tname, INPUT))
        elif tname not in engine.produced:
            results.append(TensorResult(tname, ABSENT))
        else:
            end = _compare(values[tname], expected, engine.exponent(tname))
            op = _compare(alone[tname], expected, engine.exponent(tname))
            results.append(TensorResult(tname, end.verdict, end.max_diff, end.differing, end.size, end.reason,
                                        op=op, excuse=own.get(producer[tname])))
    results.sort(key=lambda r: (r.verdict not in (MATCH, MISMATCH), order.get(r.name, -1), r.name))
    report = CheckReport(model.name, target.name, results, findings, saturated)
    _attribute(report, model)
    return report


def _own_findings(model: EspdlModel, findings: list[Finding], checked: set[str]) -> dict[str, Finding]:
    """Node -> the static finding about that node, or about an op between it and its checked inputs.

    Per operator, a node is fed ESP-PPQ's value of every input that has one. An input without one (e.g. a
    Transpose the exporter inserted) is computed from checked values upstream by ops that are part of what is
    being checked here, so a finding about one of those ops is a finding about this node's result too.
    """
    about = {f.node: f for f in reversed(findings) if f.kind in EXCUSING_KINDS}  # the first finding per node
    producer = {out: node for node in model.nodes for out in node.outputs}
    own: dict[str, Finding] = {}
    for node in model.nodes:
        finding = about.get(node.name)
        stack, seen = list(node.inputs), set()
        while finding is None and stack:
            name = stack.pop()
            if name in checked or name in seen or name not in producer:
                continue
            seen.add(name)
            upstream = producer[name]
            finding = about.get(upstream.name)
            stack += list(upstream.inputs)
        if finding is not None:
            own[node.name] = finding
    return own


def _compare(got: np.ndarray, expected, exponent: int) -> Difference:
    want = np.asarray(expected.data)
    size = int(want.size)
    if str(got.dtype) != str(want.dtype):
        return Difference(MISMATCH, 0, size, size, f"dtype {got.dtype}, test value {want.dtype}")
    if tuple(got.shape) != tuple(want.shape):
        return Difference(MISMATCH, 0, size, size, f"shape {list(got.shape)}, test value {list(want.shape)}")
    if tuple(expected.exponents[:1]) != (exponent,):
        return Difference(MISMATCH, 0, size, size, f"exponent {exponent}, test value {list(expected.exponents)}")
    if want.dtype.kind == "f":  # Model::test(): |a - b| <= 2e-5, NaN equals NaN only
        both_nan = np.isnan(got) & np.isnan(want)
        diff = np.where(both_nan, 0.0, np.abs(got.astype(np.float64) - want.astype(np.float64)))
        diff = np.where(np.isnan(diff), np.inf, diff)
        differing = int(np.count_nonzero(diff > FLOAT_TOLERANCE))
        max_diff = float(diff.max()) if diff.size else 0.0
        return Difference(MATCH if differing == 0 else MISMATCH, max_diff, differing, size)
    diff = np.abs(got.astype(np.int64) - want.astype(np.int64))
    tol = _TOLERANCE.get(str(want.dtype), 0)
    differing = int(np.count_nonzero(diff > tol))
    max_diff = int(diff.max()) if diff.size else 0
    return Difference(MATCH if differing == 0 else MISMATCH, max_diff, differing, size)


def _attribute(report: CheckReport, model: EspdlModel) -> None:
    """First divergence, and the upstream static finding (earliest in topological order) behind each mismatch."""
    reach = _downstream(model)
    ranked = {node.name: k for k, node in enumerate(model.nodes)}
    causes = sorted((f for f in report.findings if f.kind in EXCUSING_KINDS and f.node in reach),
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
