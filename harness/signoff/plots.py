"""Plots next to ``report.md`` (PNG, matplotlib): where a failing case differs, what quantization does to a
model's outputs, how a module's run times spread.

Each reads what the run saved in the artifacts directory (``cases/<test>[<id>]/*.npy``). Without matplotlib
there are no plots, and the report says so in one line.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def available() -> str | None:
    """None when plots can be drawn, else the line the report prints instead."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return "Plots skipped: matplotlib is not installed (pip install matplotlib)."
    return None


class Plotter:
    """matplotlib in a process of its own, started while the cases run.

    Importing matplotlib and loading its fonts takes about a second; in the run's own process (even in a thread)
    it would come after the last case or slow the cases down, while a process uses the core the cases leave idle
    as they wait on their devices. ``latency`` hands it a finished case's run times to draw at once; ``draw`` hands
    it the written ``session.json`` and waits for the plots not drawn yet. If the process is gone or fails, the
    plots are drawn here instead.
    """

    def __init__(self):
        import subprocess
        import sys

        from harness.resources import PACKAGE

        self.process = subprocess.Popen([sys.executable, "-m", "harness.signoff.plots"], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                        cwd=PACKAGE.parent)

    def _send(self, job: dict) -> bool:
        import json

        try:
            self.process.stdin.write(json.dumps(job) + "\n")
            self.process.stdin.flush()
            return True
        except (OSError, ValueError):
            return False

    def latency(self, directory: Path, case: dict) -> None:
        """A case with round-robin run times has finished: its model's latency figure can be drawn now."""
        if (case.get("realtime") or {}).get("round-robin"):
            self._send({"latency": {"directory": str(directory), "case": case}})

    def draw(self, session: Path, directory: Path, cache: Path | None) -> dict[str, list[str]]:
        import json

        try:
            if self._send({"session": str(session), "directory": str(directory), "cache": str(cache) if cache else None}):
                self.process.stdin.close()
                answer = json.loads(self.process.stdout.readline())
                if isinstance(answer, dict) and all(isinstance(v, list) for v in answer.values()):
                    return answer
        except (OSError, ValueError, Exception):  # noqa: BLE001 - the process is only a speed-up
            pass
        finally:
            self.close()
        return draw(json.loads(session.read_text()), directory, cache)

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def _serve() -> None:
    """The plotting process: prepare matplotlib, draw each finished case's latency figure as it comes, then the
    report's plots from ``session.json``; print what it made and exit at once (nothing to tear down)."""
    import json
    import os
    import sys

    plt = _figure()
    fig, ax = plt.subplots(figsize=(1, 1))
    ax.set_title("warm-up")
    fig.canvas.draw()  # the first text drawn loads the font
    plt.close(fig)
    smallest: dict[tuple, int] = {}  # (target, model) -> the smallest window drawn: the one the report shows
    for line in sys.stdin:
        job = json.loads(line)
        if "latency" in job:
            case = job["latency"]["case"]
            key, window = (case.get("target"), case.get("model")), case.get("window") or 0
            if key in smallest and smallest[key] <= window:
                continue
            smallest[key] = window
            try:
                _latency_of(Path(job["latency"]["directory"]), case)
            except Exception:  # noqa: BLE001 - the final job draws it again, or says why not
                pass
            continue
        made = draw(json.loads(Path(job["session"]).read_text()), Path(job["directory"]),
                    Path(job["cache"]) if job["cache"] else None)
        print(json.dumps(made), flush=True)
        os._exit(0)


def _figure():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def error_map(expected: np.ndarray, got: np.ndarray, title: str, path: Path) -> Path:
    """|got - expected| in LSB over frame x channel, for the sequence that differs most."""
    plt = _figure()
    diff = np.abs(got.astype(np.int64) - expected.astype(np.int64))
    diff = diff.reshape(diff.shape[0], diff.shape[1], -1) if diff.ndim >= 3 else diff[None]
    worst = int(np.argmax(diff.reshape(diff.shape[0], -1).max(axis=1)))
    fig, ax = plt.subplots(figsize=(8, 4))
    image = ax.imshow(diff[worst].T, aspect="auto", origin="lower", interpolation="nearest", cmap="magma")
    ax.set_xlabel("frame (or window)")
    ax.set_ylabel("channel")
    ax.set_title(f"{title}: |device - expected| (LSB), sequence {worst}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def scatter(float_out: np.ndarray, quantized: np.ndarray, title: str, path: Path, limit: int = 20000) -> Path:
    """Quantized against float outputs of the last sub-model, with the identity line."""
    plt = _figure()
    x, y = np.asarray(float_out, np.float64).ravel(), np.asarray(quantized, np.float64).ravel()
    if x.size > limit:  # an even subsample keeps the picture and the file small
        pick = np.linspace(0, x.size - 1, limit).astype(np.int64)
        x, y = x[pick], y[pick]
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.scatter(x, y, s=2, alpha=0.4)
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    ax.plot([lo, hi], [lo, hi], color="black", linewidth=0.8)
    ax.set_xlabel("float model")
    ax.set_ylabel("quantized (ESP-PPQ)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def latency_histogram(title: str, per_module: list[np.ndarray], host_time: bool, path: Path) -> Path:
    """Run times per module of one model (one run = one module on one window), one outline per module."""
    plt = _figure()
    fig, ax = plt.subplots(figsize=(5.5, 3))
    for k, runs in enumerate(per_module):
        if len(runs):
            counts, edges = np.histogram(runs, bins=30)
            ax.stairs(counts, edges, label=f"module {k}")  # outlines: modules overlap legibly
    ax.set_title(title, fontsize=9)
    ax.set_xlabel("host µs per run (virtual board, not chip time)" if host_time else "µs per run", fontsize=8)
    ax.set_ylabel("runs", fontsize=8)
    ax.legend(fontsize=7)
    fig.subplots_adjust(left=0.1, right=0.97, top=0.9, bottom=0.16)  # fixed margins: tight_layout costs more
    fig.savefig(path, dpi=72)
    plt.close(fig)
    return path


_DRAWN: dict[Path, str] = {}  # plots drawn by this process: path -> the digest of their inputs


def _digest(key_parts: list) -> str:
    import hashlib

    h = hashlib.sha256(Path(__file__).read_bytes())
    for part in key_parts:
        h.update(part if isinstance(part, bytes) else str(part).encode())
    return h.hexdigest()[:32]


def _latency_of(directory: Path, case: dict) -> Path | None:
    """``case``'s model latency figure (its round-robin runs, saved as ``runs_us_m<k>.npy``), drawn once per
    input in this process; None when the arrays are not on disk."""
    realtime = case["realtime"]["round-robin"]
    folder = directory / "cases" / f"{case.get('test')}[{case.get('id')}]"
    runs = [folder / f"runs_us_m{k}.npy" for k in range(len(realtime["modules"]))]
    if not runs or not all(p.is_file() for p in runs):
        return None
    arrays = [np.load(p) for p in runs]
    title = f"{case['target']} {case['model']} W{case.get('window')} round-robin"
    host = bool(realtime["host_time"])
    out = directory / "plots"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{case['target']}-{case['model']}-latency.png"
    digest = _digest([*(a.tobytes() for a in arrays), title, host])
    if _DRAWN.get(path) != digest or not path.is_file():
        latency_histogram(title, arrays, host, path)
        _DRAWN[path] = digest
    return path


def _kept(cache: Path | None, key_parts: list, path: Path, draw) -> Path:
    """``draw(path)``, or a copy of the same plot drawn before (kept in ``cache`` by the sha256 of its inputs)."""
    import shutil

    if cache is None:
        return draw(path)
    kept = cache / f"{_digest(key_parts)}.png"
    if kept.is_file():
        shutil.copyfile(kept, path)
        return path
    draw(path)
    try:
        cache.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, kept)
    except OSError:
        pass
    return path


def draw(data: dict, directory: Path, cache: Path | None = None) -> dict[str, list[str]]:
    """Every plot the run's ``session.json`` data and saved arrays allow, under ``directory/plots``.

    Returns ``{"<case id>" | "<target>-<model>" | "latency": [relative png paths]}``; a plot that cannot be drawn from what is
    on disk (arrays missing) is left out. Plots whose inputs a warm run reproduces exactly (float vs quantized)
    are copied from ``cache`` when drawn before.
    """
    out = directory / "plots"
    out.mkdir(parents=True, exist_ok=True)
    made: dict[str, list[str]] = {}

    def saved(case: dict) -> Path:
        return directory / "cases" / f"{case.get('test')}[{case.get('id')}]"

    timing_cases: dict[tuple, dict] = {}
    for case in data["cases"]:
        folder = saved(case)
        name = f"{case.get('test')}-{case.get('id')}"
        if case.get("outcome") == "failed":
            streamed, offline, simulated = (folder / f"{n}.npy" for n in ("streamed", "device_offline", "simulated"))
            pairs = []
            if case.get("streaming_verdict") == "fail" and streamed.is_file() and offline.is_file():
                pairs.append(("streaming", offline, streamed))
            if case.get("fidelity_verdict") == "fail" and simulated.is_file() and offline.is_file():
                pairs.append(("fidelity", simulated, offline))
            for what, expected, got in pairs:
                e, g = np.load(expected), np.load(got)
                if e.shape == g.shape:
                    path = error_map(e, g, f"{case.get('id')} {what}", out / f"{name}-{what}-error.png")
                    made.setdefault(case["id"], []).append(str(path.relative_to(directory)))
        if case.get("accuracy") and (folder / "float.npy").is_file() and (folder / "quantized.npy").is_file():
            f, q = np.load(folder / "float.npy"), np.load(folder / "quantized.npy")
            title = f"{case['target']} {case['model']}: last sub-model"
            path = _kept(cache, [f.tobytes(), q.tobytes(), f.shape, q.shape, title], out / f"{name}-scatter.png",
                         lambda p, f=f, q=q, title=title: scatter(f, q, title, p))
            made.setdefault(f"{case['target']}-{case['model']}", []).append(str(path.relative_to(directory)))
        realtime = (case.get("realtime") or {}).get("round-robin")
        if realtime:  # per model: its smallest window's runs
            key = (case["target"], case["model"])
            if key not in timing_cases or case.get("window", 0) < timing_cases[key].get("window", 0):
                timing_cases[key] = case
    for _, case in sorted(timing_cases.items()):  # per model, drawn already if a plotter process saw the case
        path = _latency_of(directory, case)
        if path is not None:
            made.setdefault("latency", []).append(str(path.relative_to(directory)))
    return made


if __name__ == "__main__":
    _serve()
