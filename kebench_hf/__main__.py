"""``python -m kebench_hf ...`` is the ``kebench`` command (what a launcher of new processes starts)."""

import sys

from kebench_hf.cli import main

sys.exit(main())
