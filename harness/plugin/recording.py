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


def junit_properties(fields: dict) -> list[tuple[str, object]]:
    """A case's headline figures as JUnit ``<property>`` pairs (``record_property``): both verdicts' LSB figures,
    SNR, and the round-robin run's p99 latency and real-time factor."""
    keys = ("streaming_verdict", "streaming_max_abs_lsb", "streaming_mismatches", "fidelity_verdict",
            "fidelity_max_abs_lsb", "fidelity_bound_lsb", "max_abs_lsb", "mismatches", "snr_db")
    pairs = [(k, fields[k]) for k in keys if fields.get(k) is not None]
    realtime = (fields.get("realtime") or {}).get("round-robin")
    if realtime:
        p99 = [m["us"]["p99"] for m in realtime["modules"] if m["us"]["p99"] is not None]
        unit = "host_us" if realtime["host_time"] else "us"
        if p99:
            pairs.append((f"latency_p99_{unit}", round(max(p99), 1)))
        if realtime["worst_step_us"] is not None:
            pairs.append((f"worst_step_{unit}", round(realtime["worst_step_us"], 1)))
        if realtime["rtf"] is not None:
            pairs.append(("rtf_host" if realtime["host_time"] else "rtf", round(realtime["rtf"], 4)))
    accuracy = fields.get("accuracy") or {}
    for key in ("snr_db", "cosine"):
        if (accuracy.get("end_to_end") or {}).get(key) is not None:
            pairs.append((f"quantization_{key}", round(accuracy["end_to_end"][key], 4)))
    for key, value in {**(accuracy.get("task") or {}), **(fields.get("task") or {})}.items():
        if isinstance(value, (int, float)):
            pairs.append((f"task_{key}", round(float(value), 4)))
    return pairs


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
    """Only JSON types (numpy scalars and arrays converted): what xdist can ship and session.json can hold.

    A non-finite float (an exact match's SNR is infinite) becomes the string "inf", "-inf" or "nan": strict JSON has
    no such numbers (docs/session.schema.json).
    """
    import json
    import math

    def convert(value):
        if hasattr(value, "tolist"):
            return finite(value.tolist())
        raise TypeError(f"cannot record {type(value).__name__} in session.json")

    def finite(value):
        if isinstance(value, float) and not math.isfinite(value):
            return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
        if isinstance(value, dict):
            return {k: finite(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(v) for v in value]
        return value

    return json.loads(json.dumps(finite(data), default=convert, allow_nan=False))


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
        hil = session_of(self.config)
        case = getattr(report, "espdl_hil", None)
        if report.when == "call" and case is not None and hil.plotter is not None:  # its plot is drawn meanwhile
            hil.plotter.latency(hil.settings.artifacts_dir, case)

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
