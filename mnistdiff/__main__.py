"""``python -m mnistdiff``: see :mod:`mnistdiff.cli`."""

import sys

from .cli import main

sys.exit(main())
