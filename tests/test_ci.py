"""CI runs exactly the README's commands."""

import subprocess

from tests.conftest import ROOT


def test_ci_runs_the_readme_commands():
    printed = subprocess.run([str(ROOT / ".ci" / "run"), "--print"], capture_output=True, text=True, check=True)
    assert printed.stdout.splitlines() == [
        "python3 -m venv .venv && . .venv/bin/activate && pip install -r requirements.txt -e .",
        "pytest --target esp32p4",
        "pytest tests test_cases",
        "docs/examples/user-repo/check.sh",
    ]
    readme = (ROOT / "README.md").read_text()
    for line in printed.stdout.splitlines():
        assert f"```sh\n{line}\n```" in readme


def test_the_user_repository_example_is_the_readme_spec():
    """The spec CI installs the package for is the one the README shows, character for character."""
    readme = (ROOT / "README.md").read_text()
    assert (ROOT / "docs" / "examples" / "user-repo" / "kws_tcn.py").read_text() in readme


def test_every_harness_package_is_in_the_distribution():
    """pyproject lists its packages one by one: a new sub-package missing there installs as an ImportError."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "harness").rglob("__init__.py")
             if "shipped" not in p.parts}
    assert found <= listed, f"missing from pyproject.toml packages: {sorted(found - listed)}"
