"""``python -m harness.emulator``: the command line of ``harness.emulator.check``."""

import sys

from harness.emulator.check import main

sys.exit(main())
