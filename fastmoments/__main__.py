"""``python -m fastmoments demo`` / ``bench``."""

import sys

from .tools.cli import main

sys.exit(main())
