"""Hardware-in-the-loop test harness for streaming ESP-DL models.

One module per stage of the flow: ``quantize`` (calibrate once, export per
window), ``reference`` (offline quantized run), ``frames`` (input frames),
``dut`` with ``virtual_board``/``firmware`` (stream to the device under test),
``compare`` and ``session`` (verdicts and the sign-off report); ``streaming``
is the host-side streaming check, ``engine`` the chip's integer arithmetic.
"""
