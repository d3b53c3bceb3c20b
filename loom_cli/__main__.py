"""``python -m loom_cli``: the same as the ``loom`` command."""

import sys

from .main import main

sys.exit(main())
