"""A whole run as a user starts it: case ids, target filtering, session.json, warm cache."""

from __future__ import annotations

import json

from tests.conftest import ROOT, run_pytest, schema_errors

TINY = [f"--model-spec={ROOT}/tests/specs/tiny_explicit.py", f"--model-spec={ROOT}/tests/specs/tiny_auto.py",
        "--models=tiny_explicit,tiny_auto"]


def collected(*args: str) -> list[str]:
    proc = run_pytest("--collect-only", "-q", *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.split("::")[-1] for line in proc.stdout.splitlines() if "::" in line]


def test_target_option_selects_the_cases(tmp_path):
    both = collected(f"--artifacts-dir={tmp_path}")
    p4 = collected(f"--artifacts-dir={tmp_path}", "--target=esp32p4")
    main = [c for c in p4 if c.startswith("test_streamed_matches_offline[")]
    assert len(main) == 4 * 3  # model families (tcn_seed, tcn_auto, tcn_auto16, tutorial_tcn) x default window sizes
    assert "test_streamed_matches_offline[esp32p4-tcn_auto16-W6]" in p4
    assert len(both) == 2 * len(p4)
    assert "test_streamed_matches_offline[esp32p4-tcn_seed-W3]" in p4
    assert "test_host_streaming_matches_offline[esp32p4-tcn_seed-W3]" in p4
    assert "test_streamed_matches_offline[esp32p4-tutorial_tcn-W3]" in p4
    assert all("[esp32p4-" in case for case in p4)
    assert {c.split("[")[1].split("-")[0] for c in both} == {"esp32p4", "esp32s3"}


def test_cold_run_calibrates_each_submodule_once_and_warm_run_never(tmp_path):
    args = ["test_cases", "-q", f"--hil-cache-dir={tmp_path}/cache", f"--artifacts-dir={tmp_path}/a",
            "--target=esp32p4", "--window-sizes=1,3", *TINY]
    cold = run_pytest(*args)
    assert cold.returncode == 0, cold.stdout + cold.stderr
    assert "Traceback" not in cold.stdout + cold.stderr  # kept devices close before pytest-embedded's queue manager
    session = json.loads((tmp_path / "a" / "session.json").read_text())
    assert (session["dut"], session["targets"]) == ("virtual", ["esp32p4"])
    assert session["calibrations"] == 2 * 3  # (model family) x (sub-module), one target
    # per (model, sub-module): the self-test file, one streaming file per window, the offline file run on the
    # device for one sequence and for the sequences joined back to back
    assert session["exports"] == 2 * 3 * (1 + 2 + 2)
    ids = {f"esp32p4-{m}-W{w}" for m in ("tiny_explicit", "tiny_auto") for w in (1, 3)}
    for test in ("test_host_streaming_matches_offline", "test_streamed_matches_offline"):
        cases = {c["id"]: c for c in session["cases"] if c["test"] == test}
        assert set(cases) == ids
        assert all(
            (c["verdict"], c["mismatches"], c["max_abs_lsb"], c["exponent_match"], c["streaming_mismatches"],
             c["streaming_max_abs_lsb"]) == ("pass", 0, 0, True, 0, 0)
            for c in cases.values()
        )
    device = [c for c in session["cases"] if c["test"] == "test_streamed_matches_offline"]
    assert all((c["fidelity_max_abs_lsb"], c["fidelity_bound_lsb"]) == (0, 0) for c in device)
    assert all(c["fidelity_reason"].startswith("int8") for c in device)
    assert session["summary"] == {"passed": len(session["cases"])}
    assert (tmp_path / "a" / "esp32p4-tiny_auto" / "frames.json").is_file()
    assert f"**{len(session['cases'])}/{len(session['cases'])} cases pass** (pytest: {len(session['cases'])} passed)" in (
        tmp_path / "a" / "report.md").read_text()

    warm = run_pytest(*args)
    assert warm.returncode == 0, warm.stdout + warm.stderr
    assert "Traceback" not in warm.stdout + warm.stderr
    session = json.loads((tmp_path / "a" / "session.json").read_text())
    assert (session["calibrations"], session["exports"]) == (0, 0)
    assert {c["id"] for c in session["cases"] if c["window"]} == ids


def test_parallel_workers_share_one_calibration_and_one_report(tmp_path):
    args = ["test_cases", "-q", "-n", "2", f"--hil-cache-dir={tmp_path}/cache", f"--artifacts-dir={tmp_path}/a",
            "--target=esp32p4", "--window-sizes=1,3", f"--model-spec={ROOT}/tests/specs/tiny_auto.py", "--models=tiny_auto"]
    proc = run_pytest(*args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    session = json.loads((tmp_path / "a" / "session.json").read_text())
    assert session["calibrations"] == 3  # the second worker waited for the first one's calibration
    assert {(c["test"], c["id"]) for c in session["cases"] if c["test"] == "test_streamed_matches_offline"} == {
        ("test_streamed_matches_offline", f"esp32p4-tiny_auto-W{w}") for w in (1, 3)}
    assert session["summary"] == {"passed": len(session["cases"])} and len(session["cases"]) == 12
    assert not schema_errors(session), schema_errors(session)[:5]
    [accuracy] = [c["accuracy"] for c in session["cases"] if c["test"] == "test_quantization_accuracy"]
    assert accuracy["end_to_end"]["snr_db"] > 10 and session["provenance"]["devices"]  # figures ride on xdist's reports
    assert not list((tmp_path / "a").glob(".session-*.json"))  # nothing goes through files
