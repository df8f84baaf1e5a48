"""The two verdicts: streaming exactness and arithmetic fidelity, per frame or per window."""
