"""The run's record: ``session.json`` for machines and ``report.md`` for sign-off.

``session.json`` = ``{"dut", "targets", "calibrations", "exports", "cases": [...]}``;
each case carries its id, target, model, window, verdict and the numbers the
verdict came from (max |diff| in LSB, mismatches, exponent match, where the
streams first diverged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from harness.compare import Comparison


@dataclass
class SessionReport:
    """Cases recorded during one pytest session."""

    dut: str
    targets: list[str]
    cases: list[dict] = field(default_factory=list)

    def add_case(self, case_id: str, test: str, target: str, model: str, window: int, result: Comparison, **extra) -> None:
        self.cases.append(
            {
                "id": case_id,
                "test": test,
                "target": target,
                "model": model,
                "window": window,
                "verdict": result.verdict,
                "max_abs_lsb": result.max_abs_lsb,
                "mismatches": result.mismatches,
                "exponent_match": result.exponent_match,
                "differing": result.differing,
                "total": result.total,
                "tolerance_lsb": result.tolerance_lsb,
                "snr_db": result.snr_db,
                "first_divergence": result.first_divergence,
                **extra,
            }
        )

    def data(self, calibrations: int, exports: int) -> dict:
        return {"dut": self.dut, "targets": self.targets, "calibrations": calibrations, "exports": exports,
                "cases": self.cases}

    def write(self, directory: Path, calibrations: int, exports: int, worker: str | None = None) -> Path:
        """session.json and report.md; a pytest-xdist worker writes its part for the controller to merge."""
        directory.mkdir(parents=True, exist_ok=True)
        data = self.data(calibrations, exports)
        if worker is not None:
            path = directory / f".session-{worker}.json"
            path.write_text(json.dumps(data))
            return path
        for part in sorted(directory.glob(".session-*.json")):  # the workers' parts of this run
            piece = json.loads(part.read_text())
            data["calibrations"] += piece["calibrations"]
            data["exports"] += piece["exports"]
            data["cases"] += piece["cases"]
            part.unlink()
        data["cases"].sort(key=lambda c: (c["test"], c["id"]))
        path = directory / "session.json"
        path.write_text(json.dumps(data, indent=2))
        (directory / "report.md").write_text(self._markdown(data))
        return path

    @staticmethod
    def _markdown(data: dict) -> str:
        failed = [c for c in data["cases"] if c["verdict"] != "pass"]
        lines = [
            "# Streaming sign-off report",
            "",
            f"DUT: **{data['dut']}** · targets: {', '.join(data['targets'])} · "
            f"calibrations this run: {data['calibrations']} · exports this run: {data['exports']}",
            "",
            f"**{len(data['cases']) - len(failed)}/{len(data['cases'])} cases pass.**",
            "",
            "| case | test | verdict | max abs LSB | mismatches | exponents | tolerance | first divergence |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for c in data["cases"]:
            d = c["first_divergence"]
            where = f"window {d['window']}, channel {d['channel']}" if d else "-"
            lines.append(
                f"| {c['id']} | {c['test']} | {c['verdict']} | {c['max_abs_lsb']} | {c['mismatches']}/{c['total']} | "
                f"{'equal' if c['exponent_match'] else 'DIFFER'} | ±{c['tolerance_lsb']} | {where} |"
            )
        reasons = {(c["model"], c.get("tolerance_reason")) for c in data["cases"] if c.get("tolerance_reason")}
        if reasons:
            lines += ["", "## Tolerances", ""] + [f"- **{m}**: {r}" for m, r in sorted(reasons)]
        lint = {(c["target"], c["model"], f) for c in data["cases"] for f in c.get("lint") or []}
        if lint:
            lines += ["", "## Where the chip computes something else than ESP-PPQ", ""]
            lines += [f"- {t} **{m}** {f}" for t, m, f in sorted(lint)]
        return "\n".join(lines) + "\n"
