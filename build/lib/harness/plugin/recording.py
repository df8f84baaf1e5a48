"""What each case measured, carried on pytest's own reports into ``session.json``."""

from __future__ import annotations

import pytest

from harness.plugin.state import session_of


def comparison_fields(c) -> dict:
    """session.json figures of one comparison (the fields every measured case has)."""
    return {
        "max_abs_lsb": c.max_abs_lsb, "mismatches": c.mismatches, "exponent_match": c.exponent_match,
        "differing": c.differing, "total": c.total, "tolerance_lsb": c.tolerance_lsb, "snr_db": c.snr_db,
        "first_divergence": c.first_divergence,
    }


CASE = pytest.StashKey[dict]()  # what a case measured


PHASES = pytest.StashKey[dict]()  # its setup/call/teardown reports


def failed(item: pytest.Item) -> bool:
    return any(r.failed for r in item.stash.get(PHASES, {}).values())


def identity(item: pytest.Item) -> dict | None:
    """Which HIL case an item is (None for the harness's own tests)."""
    params = getattr(item, "callspec", None) and item.callspec.params
    case = (params or {}).get("hil_case") or (params or {}).get("hil_model")
    if case is None:
        return None
    identity = {"id": case.id, "test": item.originalname, "target": case.target.name, "model": case.spec.name,
                "window": getattr(case, "window", None)}
    frames = session_of(item.config).frames_if_made(case.spec.name, case.target.name)
    if frames is not None:  # what the case streamed (or would have)
        identity.update(input_saturation=frames.saturation, warnings=[w for w in [frames.saturation_warning()] if w])
    return identity


def plain(data: dict) -> dict:
    """Only JSON types (numpy scalars and arrays converted): what xdist can ship and session.json can hold."""
    import json

    def convert(value):
        if hasattr(value, "tolist"):
            return value.tolist()
        raise TypeError(f"cannot record {type(value).__name__} in session.json")

    return json.loads(json.dumps(data, default=convert))


class Recorder:
    """The controller's side of the report: pytest's reports in, ``session.json`` entries out.

    Registered only in the process that writes the report (not in pytest-xdist workers), so it sees each
    report once: its own, or the ones xdist relays from the workers.
    """

    def __init__(self, config: pytest.Config):
        self.config = config

    @property
    def report(self):
        return session_of(self.config).report

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        category = self.config.hook.pytest_report_teststatus(report=report, config=self.config)[0]
        self.report.add_report(report, category)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        if report.failed:  # pytest counts a collection error as an error of the run
            self.report.other_tests["error"] = self.report.other_tests.get("error", 0) + 1

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        """pytest-xdist: a worker's stage counters (calibrations, exports) arrive with its shutdown."""
        counts = getattr(node, "workeroutput", {}).get("espdl_hil")
        if counts:
            self.report.calibrations += counts["calibrations"]
            self.report.exports += counts["exports"]
