"""A device that dies costs only its own case: the case names the cause, the next case gets a fresh device."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import ROOT

KILLED = "test_streamed_matches_offline[esp32p4-tiny_auto-W1]"


def test_killing_the_virtual_board_fails_that_case_only(tmp_path):
    env = {**os.environ, "HIL_KILL_CASE": KILLED}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.plugins.kill_board", "-q",
         "test_cases/test_device_streaming.py", f"--hil-cache-dir={tmp_path}/cache", f"--artifacts-dir={tmp_path}/a",
         f"--model-spec={ROOT}/tests/specs/tiny_auto.py", "--models=tiny_auto", "--target=esp32p4",
         "--window-sizes=1,3", "--dut=virtual"],
        cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
    )
    cases = json.loads((tmp_path / "a" / "session.json").read_text())["cases"]
    failed = [c for c in cases if c["outcome"] != "passed"]
    assert [c["nodeid"].split("::")[-1] for c in failed] == [KILLED], proc.stdout[-3000:]
    message = failed[0]["message"]
    assert "virtual esp32p4 board died: virtual board process was killed by SIGKILL" in message, message
    assert "cable" not in message
    after = [c for c in cases if cases.index(c) > cases.index(failed[0])]
    assert len(after) == 7 and all(c["outcome"] == "passed" for c in after)  # every later case, on a fresh board
    assert "1 failed, 7 passed" in proc.stdout

    # the device is opened and reset for the first case and after the failed one; passing cases hand it on, and
    # a case whose models the device still holds uploads none of them
    devices = [c for c in cases if "device_fresh" in c]
    assert [c["device_fresh"] for c in devices] == [True, True] + [False] * (len(devices) - 2)
    assert devices[1]["models_uploaded"] > 0  # the fresh board after the failure gets the models again
    assert any(c["models_kept"] > 0 and c["models_uploaded"] == 0 for c in devices[2:])
    assert sum(c["models_kept"] for c in devices) > sum(c["models_uploaded"] for c in devices[2:])
