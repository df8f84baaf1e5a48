"""The run's record: ``session.json`` for machines and ``report.md`` for sign-off.

Built from pytest's own reports, so it accounts for every case pytest ran,
whatever happened to it: a case that errors in setup, is skipped or fails
before it measured anything is there with its outcome and message, and the
counts equal pytest's summary. Under pytest-xdist the controller receives
every worker's reports (measurements ride on them), and the workers' stage
counters arrive through xdist's ``workeroutput``; nothing is read back from
files an earlier run may have left.

``session.json`` = ``{"schema", "run", "dut", "dut_reason", "targets", "calibrations",
"exports", "summary", "other_tests", "cases": [...]}``; each case has its
node id, target, model, window, ``outcome`` (pytest's word), ``verdict``,
``message`` and, where the case measured them, the numbers its verdicts came
from (streaming exactness and arithmetic fidelity, see ``harness.verdict.compare``).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = 2
VERDICT = {"passed": "pass", "failed": "fail", "error": "error", "skipped": "skip", "xfailed": "xfail",
           "xpassed": "xpass"}
_SEVERITY = ("error", "failed")


def one_line(report) -> str:
    """The first line that says why a report did not pass (pytest's crash message or skip reason)."""
    longrepr = report.longrepr
    if longrepr is None:
        return ""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:  # skip: (file, line, reason)
        return str(longrepr[2]).removeprefix("Skipped: ")
    crash = getattr(longrepr, "reprcrash", None)
    text = crash.message if crash is not None else str(longrepr)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else ""


@dataclass
class SessionReport:
    """Every HIL case of one pytest run, from pytest's reports."""

    dut: str
    targets: list[str]
    dut_reason: str = ""  # why this DUT (a board found, --dut virtual, auto's fallback)
    run: dict = field(default_factory=dict)
    cases: dict[str, dict] = field(default_factory=dict)  # node id -> case, in the order reports arrived
    summary: dict[str, int] = field(default_factory=dict)  # pytest's categories over HIL cases
    other_tests: dict[str, int] = field(default_factory=dict)  # ... and over every other test of the run
    calibrations: int = 0
    exports: int = 0

    def __post_init__(self) -> None:
        if not self.run:
            self.run = {
                "id": uuid.uuid4().hex,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": sys.argv,
                "cwd": str(Path.cwd()),
            }

    def add_report(self, report, category: str) -> None:
        """One phase report (setup, call or teardown) of a test; ``category`` is pytest's summary word."""
        case = getattr(report, "espdl_hil", None)
        if case is None:
            if category:
                self.other_tests[category] = self.other_tests.get(category, 0) + 1
            return
        if category:
            self.summary[category] = self.summary.get(category, 0) + 1
        entry = self.cases.setdefault(report.nodeid, {"nodeid": report.nodeid, "categories": []})
        entry.update({k: v for k, v in case.items() if v is not None or k not in entry})
        if category:
            entry["categories"].append(category)
            message = one_line(report)
            if message and category != "passed":
                entry.setdefault("message", f"{report.when}: {message}")
        entry["duration_s"] = round(entry.get("duration_s", 0.0) + report.duration, 3)

    def data(self) -> dict:
        cases = []
        for entry in self.cases.values():
            categories = entry["categories"]
            outcome = next((c for c in _SEVERITY if c in categories), categories[-1] if categories else "not run")
            fields = {k: v for k, v in entry.items() if k != "categories"}
            cases.append({**fields, "outcome": outcome, "verdict": VERDICT.get(outcome, outcome),
                          "message": entry.get("message", "")})
        return {
            "schema": SCHEMA,
            "run": self.run,
            "dut": self.dut,
            "dut_reason": self.dut_reason,
            "targets": self.targets,
            "calibrations": self.calibrations,
            "exports": self.exports,
            "summary": dict(sorted(self.summary.items())),
            "other_tests": dict(sorted(self.other_tests.items())),
            "cases": cases,
        }

    def write(self, directory: Path) -> Path:
        """``session.json`` and ``report.md`` in ``directory``."""
        directory.mkdir(parents=True, exist_ok=True)
        data = self.data()
        path = directory / "session.json"
        path.write_text(json.dumps(data, indent=2, default=str))
        (directory / "report.md").write_text(markdown(data))
        return path


def _lsb(value, bound=None) -> str:
    if value is None:
        return "-"
    return f"{value}" if bound is None else f"{value} (≤ {bound})"


def _where(d: dict | None) -> str:
    if not d:
        return "-"
    module = f"module {d['module']}, " if d.get("module") is not None else ""
    return f"{module}sequence {d['sequence']}, frame {d['frame']}, channel {d['channel']}"


def markdown(data: dict) -> str:
    """The sign-off report: every case with its outcome and both verdicts' figures."""
    cases = data["cases"]
    passed = sum(c["outcome"] == "passed" for c in cases)
    counts = ", ".join(f"{n} {k}" for k, n in data["summary"].items()) or "no cases"
    lines = [
        f"# Streaming sign-off report ({'virtual board, no chip' if data['dut'] == 'virtual' else data['dut']})",
        "",
        f"DUT: **{data['dut']}** ({data.get('dut_reason', '')}) · targets: {', '.join(data['targets'])} · "
        f"calibrations this run: {data['calibrations']} · exports this run: {data['exports']} · run {data['run']['id'][:12]}",
        "",
        f"**{passed}/{len(cases)} cases pass** (pytest: {counts}).",
        "",
        "Two questions per streamed case: *streaming exactness* (what the device streams equals what the same device "
        "computes on the offline export of the same quantized graph, bit for bit) and *arithmetic fidelity* (the "
        "device's offline result equals ESP-PPQ's simulation within ESP-DL's contract: int8 exact, int16 the measured "
        "bound).",
        "",
        "| case | test | outcome | streaming max LSB (tol.) | streaming mismatches | fidelity max LSB (bound) | "
        "first streaming divergence | message |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        streaming = _lsb(c.get("streaming_max_abs_lsb"), c.get("streaming_tolerance_lsb"))
        mismatches = "-" if c.get("streaming_mismatches") is None else f"{c['streaming_mismatches']}/{c.get('total', '?')}"
        fidelity = "not judged" if c.get("fidelity_verdict") == "not judged" else _lsb(
            c.get("fidelity_max_abs_lsb"), c.get("fidelity_bound_lsb"))
        message = (c.get("message") or "").replace("|", "\\|")[:160]
        lines.append(
            f"| {c.get('id', c['nodeid'])} | {c.get('test', '')} | {c['outcome']} | {streaming} | {mismatches} | "
            f"{fidelity} | {_where(c.get('streaming_first_divergence'))} | {message} |"
        )
    if data["other_tests"]:
        lines += ["", "Other tests in this run: " + ", ".join(f"{n} {k}" for k, n in data["other_tests"].items()) + "."]
    reasons = sorted({(c["model"], c["target"], c["fidelity_reason"]) for c in cases if c.get("fidelity_reason")})
    if reasons:
        lines += ["", "## Fidelity bounds", ""] + [f"- **{m}** on {t}: {r}" for m, t, r in reasons]
    unjudged = sorted({(c["model"], c["target"], c["window"], c["not_judged"]) for c in cases if c.get("not_judged")})
    if unjudged:
        lines += ["", "## Reported, not judged", ""] + [f"- **{m}** on {t} W{w}: {n}" for m, t, w, n in unjudged]
    tolerances = sorted({(c["model"], c["tolerance_reason"]) for c in cases if c.get("tolerance_reason")})
    if tolerances:
        lines += ["", "## Streaming tolerances", ""] + [f"- **{m}**: {r}" for m, r in tolerances]
    warnings = sorted({(c["model"], c["target"], w) for c in cases for w in c.get("warnings") or []})
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {t} **{m}**: {w}" for m, t, w in warnings]
    lint = sorted({(c["target"], c["model"], f) for c in cases for f in c.get("lint") or []})
    if lint:
        lines += ["", "## Where the chip computes something else than ESP-PPQ", ""]
        lines += [f"- {t} **{m}** {f}" for t, m, f in lint]
    return "\n".join(lines) + "\n"
