"""CI runs exactly the README's commands."""

import subprocess

from tests.conftest import ROOT


def test_ci_runs_the_readme_commands():
    printed = subprocess.run([str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True, check=True)
    assert printed.stdout.splitlines() == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt",
        "pytest --target esp32p4",
        "pytest tests test_cases",
    ]
    readme = (ROOT / "README.md").read_text()
    for line in printed.stdout.splitlines():
        assert f"```sh\n{line}\n```" in readme
