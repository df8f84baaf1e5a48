"""pytest plugins the harness's own tests load into a run (``-p tests.plugins.<name>``) to provoke faults."""
