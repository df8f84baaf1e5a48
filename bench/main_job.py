"""The main job cold, then warm: warm seconds as a fraction of cold (goal: <= 15 %).

The main job is ``pytest --target esp32p4`` from the repository root. Cold
runs it on an empty cache (every model quantized and exported), warm runs it
again on the cache cold filled, each with fresh artifacts, both in temporary
directories. Warm runs three times and its median counts: a run of a few
seconds moves by a tenth with whatever else the machine does, a cold run of
half a minute much less. Each run's session.json must show that cold
calibrated and warm did not, else the timing would not mean what it says.

    python bench/main_job.py [--target esp32p4] [-- extra pytest arguments]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _setup import ROOT

GOAL = 0.15
WARM_RUNS = 3


def run_job(target: str, cache: Path, artifacts: Path, extra: list[str]) -> tuple[float, dict]:
    """Seconds of one main-job run, and its session.json; exits with pytest's output when the job fails."""
    command = [sys.executable, "-m", "pytest", "--target", target, "-q", "-p", "no:cacheprovider",
               f"--hil-cache-dir={cache}", f"--artifacts-dir={artifacts}", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-2000:]}")
    return seconds, json.loads((artifacts / "session.json").read_text())


def describe(session: dict) -> str:
    passed = session.get("summary", {}).get("passed")
    return f"{passed} passed, {session['calibrations']} calibrations, {session['exports']} exports"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="esp32p4")
    parser.add_argument("extra", nargs="*", help="more pytest arguments (after --)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="main-job-") as tmp:
        cache = Path(tmp) / "cache"
        cold, cold_session = run_job(args.target, cache, Path(tmp) / "cold", args.extra)
        warms = [run_job(args.target, cache, Path(tmp) / f"warm{k}", args.extra) for k in range(WARM_RUNS)]
    for _, warm_session in warms:
        if cold_session["calibrations"] == 0 or warm_session["calibrations"] or warm_session["exports"]:
            sys.exit(f"not a cold and a warm run: cold {describe(cold_session)}; warm {describe(warm_session)}")
    seconds = sorted(w for w, _ in warms)
    warm = seconds[len(seconds) // 2]
    ratio = warm / cold
    verdict = "meets" if ratio <= GOAL else "MISSES"
    print(f"cold: {cold:6.1f} s ({describe(cold_session)})")
    print(f"warm: {warm:6.1f} s, median of {', '.join(f'{w:.1f}' for w in seconds)} ({describe(warms[0][1])})")
    print(f"warm/cold: {ratio:6.1%} ({verdict} the {GOAL:.0%} goal)")


if __name__ == "__main__":
    main()
