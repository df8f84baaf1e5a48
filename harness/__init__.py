"""Hardware-in-the-loop test harness for streaming ESP-DL models.

One module per stage of the flow: ``quantize`` (calibrate, export per window),
``reference`` (offline quantized run), ``frames`` (input frames), ``streaming``
(host streaming-equivalence), ``compare`` (verdicts) and ``session`` (report).
"""
