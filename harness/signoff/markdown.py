"""``report.md``: the sign-off report a person reads, from ``session.json``'s data.

Sections, in the order a sign-off asks its questions: what exactly was tested (provenance); how much accuracy
quantization costs (float vs ESP-PPQ, task figures); whether the device computes what the quantized model
computes (both verdicts per case, where a failing one first differs); whether it keeps up in real time; and what
the static lint says might differ on other inputs.
"""

from __future__ import annotations

import math


def _lsb(value, bound=None) -> str:
    if value is None:
        return "-"
    return f"{value}" if bound is None else f"{value} (≤ {bound})"


def _where(d: dict | None) -> str:
    if not d:
        return "-"
    module = f"module {d['module']}, " if d.get("module") is not None else ""
    return f"{module}sequence {d['sequence']}, frame {d['frame']}, channel {d['channel']}"


def _db(value) -> str:
    """SNR in dB; session.json writes an exact match's infinite SNR as "inf"."""
    if value is None:
        return "-"
    if isinstance(value, str) or math.isinf(value):
        return "exact" if str(value) in ("inf", "Infinity") or value == math.inf else str(value)
    return f"{value:.1f}"


def _num(value, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _cos(value) -> str:
    """A cosine similarity; one that rounds to 1 at five decimals is shown by its distance from 1 instead."""
    if value is None or isinstance(value, str):
        return "-" if value is None else value
    if math.isnan(value) or 1 - value >= 5e-6:
        return f"{value:.5f}"
    return "1" if value >= 1 else f"1 - {1 - value:.1e}"


def _figure(value) -> str:
    """A task figure: a count as an integer, a rate with three decimals."""
    return str(int(value)) if float(value).is_integer() and abs(value) > 1 else f"{value:.3f}"


def _cell(text) -> str:
    return str(text).replace("|", "\\|")


def provenance_lines(data: dict) -> list[str]:
    p = data.get("provenance") or {}
    harness = p.get("harness") or {}
    commit = harness.get("commit")
    source = f"{harness.get('version') or 'not installed'}" + (
        f", commit {commit[:12]}{' (dirty)' if harness.get('dirty') else ''}" if commit else "")
    tools = ", ".join(f"{k} {v}" for k, v in (p.get("tools") or {}).items() if v)
    lines = [
        "## Provenance",
        "",
        f"- harness: {source}; Python {p.get('python', '?')} on {p.get('platform', '?')}",
        f"- tools: {tools}",
        f"- command: `{' '.join(p.get('command') or [])}` (in {p.get('cwd', '?')})",
        f"- run {data['run']['id']}: {p.get('started', data['run'].get('started'))} → {p.get('ended', '?')}; "
        f"session.json schema {data['schema']}",
    ]
    for d in p.get("devices") or []:
        what = "virtual board (host emulator, no chip)" if d.get("kind") == "virtual" else f"board on {d.get('port')}"
        banner = f"; boot banner `{d['banner']}`" if d.get("banner") else ""
        lines.append(f"- device: {what}, target {d.get('target', '?')}; runner build {d.get('build_id', '?')}; "
                     f"ESP-DL {d.get('esp_dl_version', '?')}; ESP-IDF {d.get('idf_version', '?')}{banner}")
    for m in data.get("models") or []:
        calibration = m.get("calibration_source") or {}
        frames = m.get("frames_source") or {}
        cal = (f"random (seed {calibration.get('seed')}, {calibration.get('sequences')} sequences)"
               if calibration.get("kind") == "random" else
               f"calibration_data sha256 {str(calibration.get('sha256', ''))[:16]} {calibration.get('shape', '')}"
               if calibration else "not recorded")
        source = frames.get("source", "?")
        fr = (f"{source} (seed {frames.get('seed')})" if frames.get("seed") is not None else
              f"{source}" + (f" sha256 {frames['file_sha256'][:16]}" if frames.get("file_sha256") else ""))
        setting = "; ESP-PPQ setting changed by quant_setting: " + ", ".join(
            f"`{k}` = `{v}`" for k, v in m["quant_setting"].items()) if m.get("quant_setting") else ""
        lines.append(f"- {m['target']} **{m['model']}**: cache entry `{m.get('cache_entry', '?')}`; calibration {cal}; "
                     f"frames {fr}{setting}")
    lines.append("- every case's `.espdl` files are listed with their sha256 in session.json (`espdl_sha256`)")
    return lines


def accuracy_lines(data: dict, plots: dict) -> list[str]:
    rows = [c for c in data["cases"] if c.get("accuracy")]
    if not rows:
        return []
    lines = ["## Accuracy: float model → quantized (ESP-PPQ) → device", "",
             "SNR in dB (signal = the float model), on the frames the cases stream. *Isolated*: the sub-model fed the "
             "float model's input to it (its own error); *end to end*: the quantized chain.", "",
             "| target | model | end-to-end SNR dB | cosine | worst sub-model (isolated SNR dB) | task figures |",
             "|---|---|---|---|---|---|"]
    device_task = {}
    for c in data["cases"]:
        if c.get("task") and c.get("test") == "test_streamed_matches_offline":
            device_task.setdefault((c["target"], c["model"]), []).append((c.get("window"), c["task"]))
    for c in rows:
        a = c["accuracy"]
        worst = a["per_module"][a["worst_module"]]
        task = dict(a.get("task") or {})
        for window, figures in device_task.get((c["target"], c["model"]), []):
            task.update({f"{k} (W{window})": v for k, v in figures.items()})
        figures = ", ".join(f"{k} {_figure(v)}" for k, v in task.items()) or (
            "no labels (pass an .npz with labels to --frames)" if not a.get("labels") else "-")
        if a.get("task_error"):
            figures = f"**task figures failed**: {a['task_error']}"
        lines.append(f"| {c['target']} | {c['model']} | {_db(a['end_to_end']['snr_db'])} | "
                     f"{_cos(a['end_to_end']['cosine'])} | {a['worst_module']} ({_db(worst['isolated']['snr_db'])}) | "
                     f"{_cell(figures)} |")
    described = sorted({(c["target"], c["model"], tuple(c["accuracy"]["labels"])) for c in rows
                        if c["accuracy"].get("labels")})
    if described:
        lines += ["", "Labels (from the `--frames` .npz): " + "; ".join(
            f"{t} {m} `{list(shape)}` " + ("one per sequence, against the decision after its last frame"
                                           if len(shape) == 1 else "one per frame, against each frame's decision "
                                           "(a per-window head: the label of the window's last frame)")
            for t, m, shape in described) + ". Without a `metric` in the spec: top-1 = argmax over the last "
            "sub-model's channels; agreement = the same decision as the float model's."]
    for c in rows:
        a = c["accuracy"]
        lines += ["", f"### {c['target']} {c['model']}", "",
                  "| sub-model | isolated SNR dB | isolated cosine | cumulative SNR dB | cumulative cosine |",
                  "|---|---|---|---|---|"]
        for m in a["per_module"]:
            lines.append(f"| {m['module']} | {_db(m['isolated']['snr_db'])} | {_cos(m['isolated']['cosine'])} | "
                         f"{_db(m['cumulative']['snr_db'])} | {_cos(m['cumulative']['cosine'])} |")
        layers = (a.get("layers") or {}).get("rows") or []
        if layers:
            lines += ["", f"Per operator of sub-model {a['worst_module']}: ESP-PPQ's graphwise and layerwise error "
                          "analysis (SNR dB accumulated to the operator's output, and of the operator alone, which "
                          "includes quantizing its inputs), and the worst channel of its output quantized on its own "
                          "grid (a per-tensor scale an outlier channel takes over shows here, at the layer producing it):",
                      "", "| operator | type | accumulated SNR dB | own SNR dB | output: worst channel SNR dB (channel) |",
                      "|---|---|---|---|---|"]
            lines += [f"| {_cell(r['operator'])} | {r['type']} | {_db(r['accumulated_snr_db'])} | {_db(r['own_snr_db'])} | "
                      f"{_db(r.get('output_worst_channel_snr_db'))} ({r.get('output_worst_channel', '-')}) |"
                      for r in layers]
            measured = [r for r in layers if isinstance(r.get("output_worst_channel_snr_db"), (int, float))]
            if measured:
                low = min(measured, key=lambda r: r["output_worst_channel_snr_db"])
                lines += ["", f"Lowest: the output of **{_cell(low['operator'])}**, channel {low['output_worst_channel']} "
                              f"({_db(low['output_worst_channel_snr_db'])} dB)."]
        for png in plots.get(f"{c['target']}-{c['model']}", []):
            if png.endswith("-scatter.png"):
                lines += ["", f"![float vs quantized]({png})"]
    return lines


def device_lines(data: dict, plots: dict) -> list[str]:
    cases = data["cases"]
    lines = [
        "## Device: streaming exactness and arithmetic fidelity", "",
        "Two questions per streamed case: *streaming exactness* (what the device streams equals what the same device "
        "computes on the offline export of the same quantized graph, bit for bit) and *arithmetic fidelity* (the "
        "device's offline result equals ESP-PPQ's simulation within ESP-DL's contract: int8 exact, int16 the measured "
        "bound).", "",
        "| case | test | outcome | streaming max LSB (tol.) | streaming mismatches | fidelity max LSB (bound) | "
        "first streaming divergence | first diverging layer | message |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        streaming = _lsb(c.get("streaming_max_abs_lsb"), c.get("streaming_tolerance_lsb"))
        mismatches = "-" if c.get("streaming_mismatches") is None else f"{c['streaming_mismatches']}/{c.get('total', '?')}"
        fidelity = "not judged" if c.get("fidelity_verdict") == "not judged" else _lsb(
            c.get("fidelity_max_abs_lsb"), c.get("fidelity_bound_lsb"))
        layer = c.get("first_diverging_layer")
        layer = "-" if not layer else _cell(f"{layer['question']}: {layer['node'] or 'module input'} ({layer['op_type']}), "
                                           f"max {layer['max_diff']:g}" if layer.get("tensor") else layer["line"])
        message = _cell(c.get("message") or "")[:160]
        lines.append(
            f"| {c.get('id', c['nodeid'])} | {c.get('test', '')} | {c['outcome']} | {streaming} | {mismatches} | "
            f"{fidelity} | {_where(c.get('streaming_first_divergence'))} | {layer} | {message} |"
        )
    for c in cases:
        if (c.get("first_diverging_layer") or {}).get("line"):
            lines += ["", f"- **{c['id']}** {c['test']}: {c['first_diverging_layer']['line']}"]
        for png in plots.get(c.get("id"), []):
            if png.endswith("-error.png"):
                lines += ["", f"![{c['id']} error map]({png})"]
    return lines


def realtime_lines(data: dict, plots: dict) -> list[str]:
    rows = [c for c in data["cases"] if (c.get("realtime") or {}).get("round-robin")]
    if not rows:
        return []
    lines = ["## Real time", "",
             "Per module run times (one run = one module on one window, output batching off), the worst frame step "
             "of the round-robin schedule (one module per frame step) and the real-time factor RTF = worst step / "
             "frame period (`CONFIG['frame_period_ms']`; above 1 the device falls behind). Rows marked *host* come "
             "from the virtual board: host microseconds of the emulator, not chip time (it counts no cycles).", "",
             "| case | module | clock | p50 µs | p99 µs | max µs | p50/p99/max cycles | model bytes | worst step µs | RTF | "
             "load | free internal / PSRAM bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        rt = c["realtime"]["round-robin"]
        clock = "host" if rt["host_time"] else "chip"
        free = c.get("device_free_bytes") or {}
        for m in rt["modules"]:
            cycles = "not counted" if rt["host_time"] else "/".join(_num(m["cycles"][q], 0) for q in ("p50", "p99", "max"))
            first = m["module"] == 0
            lines.append(
                f"| {c['id']} | {m['module']} | {clock} | {_num(m['us']['p50'])} | {_num(m['us']['p99'])} | "
                f"{_num(m['us']['max'])} | {cycles} | {m.get('model_bytes') or '-'} | "
                f"{_num(rt['worst_step_us']) if first else ''} | "
                f"{(_num(rt['rtf'], 3) if rt['rtf'] is not None else 'no frame_period_ms') if first else ''} | "
                f"{_num(rt['load'], 3) if first and rt['load'] is not None else ''} | "
                f"{(str(free.get('internal', '-')) + ' / ' + str(free.get('psram', '-')) + (' (emulated)' if rt['host_time'] else '')) if first else ''} |")
    for png in plots.get("latency", []):
        lines += ["", f"![run times per module]({png})"]
    return lines


def lint_lines(data: dict) -> list[str]:
    """Findings next to the cases they may explain; the rest as possible on other inputs."""
    explained, why, possible = set(), set(), set()
    for c in data["cases"]:
        differs = any((c.get(k) or 0) > 0 for k in ("streaming_max_abs_lsb", "fidelity_max_abs_lsb", "max_abs_lsb"))
        for f in c.get("lint") or []:
            if differs:
                explained.add(f"- {c.get('id')} ({c.get('test')}): {f}")
                why.add((c["target"], c["model"], f))
            possible.add((c["target"], c["model"], f))
    possible -= why
    lines = []
    if explained:
        lines += ["", "## Findings that may explain a measured difference", ""] + sorted(explained)
    if possible:
        lines += ["", "## Possible on other inputs (static worst case; no case here differs because of them)", ""]
        lines += [f"- {t} **{m}** {f}" for t, m, f in sorted(possible)]
    return lines


def markdown(data: dict, plots: dict | None = None, plots_note: str | None = None) -> str:
    """The sign-off report."""
    plots = plots or {}
    cases = data["cases"]
    passed = sum(c["outcome"] == "passed" for c in cases)
    counts = ", ".join(f"{n} {k}" for k, n in data["summary"].items()) or "no cases"
    lines = [
        f"# Streaming sign-off report ({'virtual board, no chip' if data['dut'] == 'virtual' else data['dut']})",
        "",
        f"DUT: **{data['dut']}** ({data.get('dut_reason', '')}) · targets: {', '.join(data['targets'])} · "
        f"calibrations this run: {data['calibrations']} · exports this run: {data['exports']} · run {data['run']['id'][:12]}",
        "",
        f"**{passed}/{len(cases)} cases pass** (pytest: {counts}).",
        "",
        *provenance_lines(data),
    ]
    for part in (accuracy_lines(data, plots), device_lines(data, plots), realtime_lines(data, plots)):
        if part:
            lines += [""] + part
    if plots_note:
        lines += ["", plots_note]
    if data["other_tests"]:
        lines += ["", "Other tests in this run: " + ", ".join(f"{n} {k}" for k, n in data["other_tests"].items()) + "."]
    reasons = sorted({(c["model"], c["target"], c["fidelity_reason"]) for c in cases if c.get("fidelity_reason")})
    if reasons:
        lines += ["", "## Fidelity bounds", ""] + [f"- **{m}** on {t}: {r}" for m, t, r in reasons]
    unjudged = sorted({(c["model"], c["target"], c["window"], c["not_judged"]) for c in cases if c.get("not_judged")})
    if unjudged:
        lines += ["", "## Reported, not judged", ""] + [f"- **{m}** on {t} W{w}: {n}" for m, t, w, n in unjudged]
    tolerances = sorted({(c["model"], c["tolerance_reason"]) for c in cases if c.get("tolerance_reason")})
    if tolerances:
        lines += ["", "## Streaming tolerances", ""] + [f"- **{m}**: {r}" for m, r in tolerances]
    warnings = sorted({(c["model"], c["target"], w) for c in cases for w in c.get("warnings") or []})
    if warnings:
        lines += ["", "## Warnings", ""] + [f"- {t} **{m}**: {w}" for m, t, w in warnings]
    lines += lint_lines(data)
    return "\n".join(lines) + "\n"
