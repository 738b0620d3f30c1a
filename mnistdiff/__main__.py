"""``python -m mnistdiff``: see :mod:`mnistdiff.cli`."""

import sys

from mnistdiff.cli import main

sys.exit(main())
