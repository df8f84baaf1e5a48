"""Hardware-in-the-loop test harness for streaming ESP-DL models, by layer.

``model`` (specs and frames) -> ``ppq`` (ESP-PPQ: quantize, export, simulate)
-> ``espdl`` (the file: reader and lint) -> ``emulator`` (ESP-DL's arithmetic,
the virtual board) and ``device`` (protocol, host link, boards) ->
``verdict`` (the two questions) -> ``plugin`` (pytest wiring and the report).
``errors``, ``tensors``, ``targets``, ``resources`` and ``compat`` are shared
by all layers; ``compat`` is the one place that touches upstream internals.
"""
