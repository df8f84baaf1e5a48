"""The ESP-PPQ layer: quantize once, export per window (with repairs), simulate offline and streamed."""
