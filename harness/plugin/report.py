"""The run's record: ``session.json`` for machines and ``report.md`` for sign-off.

Built from pytest's own reports, so it accounts for every case pytest ran,
whatever happened to it: a case that errors in setup, is skipped or fails
before it measured anything is there with its outcome and message, and the
counts equal pytest's summary. Under pytest-xdist the controller receives
every worker's reports (measurements ride on them), and the workers' stage
counters arrive through xdist's ``workeroutput``; nothing is read back from
files an earlier run may have left.

``session.json`` = ``{"schema", "run", "provenance", "dut", "dut_reason", "targets", "calibrations",
"exports", "summary", "other_tests", "models": [...], "cases": [...]}``; each case has its
node id, target, model, window, ``outcome`` (pytest's word), ``verdict``,
``message`` and, where the case measured them, the numbers its verdicts came
from (streaming exactness and arithmetic fidelity, see ``harness.verdict.compare``),
its accuracy, task and real-time figures, and its provenance (``espdl_sha256``,
``frames_source``, ``calibration_source``, ``device_info``). ``report.md`` and the
plots are rendered from the same data (``harness.signoff``).
"""

from __future__ import annotations

import json
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

SCHEMA = 3
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

    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        from harness.signoff.provenance import run_provenance

        if not self.run:
            self.run = {
                "id": uuid.uuid4().hex,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "command": sys.argv,
                "cwd": str(Path.cwd()),
            }
        if not self.provenance:
            self.provenance = run_provenance()

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
        from harness.signoff.provenance import now

        devices = {}
        for case in cases:
            info = case.get("device_info")
            if info:
                devices[(info.get("name"), info.get("build_id"))] = info
        models = {}
        for case in cases:
            if case.get("cache_entry"):
                entry = models.setdefault((case["target"], case["model"]), {"target": case["target"], "model": case["model"]})
                for key in ("cache_entry", "calibration_source", "frames_source", "quant_setting"):
                    if case.get(key) is not None:
                        entry[key] = case[key]
        return {
            "schema": SCHEMA,
            "run": self.run,
            "provenance": {**self.provenance, "ended": now(), "dut": self.dut, "devices": list(devices.values())},
            "dut": self.dut,
            "dut_reason": self.dut_reason,
            "targets": self.targets,
            "calibrations": self.calibrations,
            "exports": self.exports,
            "summary": dict(sorted(self.summary.items())),
            "other_tests": dict(sorted(self.other_tests.items())),
            "models": list(models.values()),
            "cases": cases,
        }

    def write(self, directory: Path, cache: Path | None = None, plotter=None) -> Path:
        """``session.json``, ``report.md`` and its plots in ``directory`` (plots a warm run repeats: from ``cache``;
        ``plotter``: a ``harness.signoff.plots.Plotter`` started earlier)."""
        directory.mkdir(parents=True, exist_ok=True)
        data = self.data()
        path = directory / "session.json"
        path.write_text(json.dumps(data, indent=2, default=str, allow_nan=False))  # strict JSON (schema: docs/)
        from harness.signoff import plots as plotting
        from harness.signoff.markdown import markdown

        note = plotting.available()
        drawn = {}
        if note is None:
            try:
                drawn = plotter.draw(path, directory, cache) if plotter else plotting.draw(data, directory, cache)
            except Exception as exc:  # noqa: BLE001 - a plot must not cost the report
                note = f"Plots failed: {type(exc).__name__}: {exc}"
        (directory / "report.md").write_text(markdown(data, drawn, note))
        return path


