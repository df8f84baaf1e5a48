#!/usr/bin/env bash
# A user's repository, end to end: a fresh venv, `pip install` of this checkout (not editable), and a directory that
# holds nothing but a model spec. CI runs this; so can you, from anywhere.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
checkout=$(cd "$here/../../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

python3 -m venv "$work/venv"
. "$work/venv/bin/activate"
pip install -q torch==2.13.0      # the CPU build first: an unconstrained torch resolves to a multi-GB CUDA build
# install from a copy of the working tree (tracked and new files, not ignored ones): the build leaves the checkout alone
mkdir "$work/src"
git -C "$checkout" ls-files -z --cached --others --exclude-standard | (cd "$checkout" && xargs -0 tar -cf - --ignore-failed-read) | tar -xf - -C "$work/src"
pip install -q "$work/src"

mkdir "$work/kws" && cp "$here/kws_tcn.py" "$work/kws/"
cd "$work/kws"
pytest --help > help.txt
for expected in "--hil-cache-dir=DIR" "Default: 1,3,6" "--hil-dut={auto,virtual,board}, --dut={auto,virtual,board}"; do
  grep -qF -- "$expected" help.txt || { echo "pytest --help lacks: $expected" >&2; exit 1; }
done
pytest --target esp32p4 --model-spec kws_tcn.py --artifacts-dir out 2>&1 | tee run.txt
if grep -E "DeprecationWarning|PytestExperimentalApiWarning" run.txt; then
  echo "the plugin's warning filters did not reach a repository without an ini file" >&2; exit 1
fi
if grep -F "Traceback" run.txt; then
  echo "the run printed a traceback (a helper process of pytest-embedded or the harness failed)" >&2; exit 1
fi
python3 - <<'PY'
import json
session = json.load(open("out/session.json"))
assert session["dut"] == "virtual", session["dut"]
assert {c["model"] for c in session["cases"]} == {"kws_tcn"}, "the spec's model only"
assert session["summary"].get("passed", 0) >= 10 and set(session["summary"]) <= {"passed"}, session["summary"]
print(f"user repository: {session['summary']['passed']} cases passed on the installed plugin")
PY
