"""``python -m amplink.cli``: the ``amplink`` command."""

import sys

from . import main

sys.exit(main())
