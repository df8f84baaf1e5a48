"""``python -m harness.espdl``: the command line of ``harness.espdl.reader``."""

import sys

from harness.espdl.reader import main

sys.exit(main())
