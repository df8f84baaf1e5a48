"""The .espdl file: reading it (``python -m harness.espdl FILE``) and linting what the chip would run."""
