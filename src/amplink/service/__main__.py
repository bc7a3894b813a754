"""``python -m amplink.service``: run the supervisor (see :mod:`.supervisor`)."""

import sys

from .supervisor import main

sys.exit(main())
