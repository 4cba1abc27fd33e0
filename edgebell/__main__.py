"""``python -m edgebell``: the same as the ``edgebell`` command."""

import sys

from edgebell.cli import main

sys.exit(main())
