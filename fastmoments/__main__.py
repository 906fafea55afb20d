"""``python -m fastmoments demo`` / ``bench``."""

import sys

from .cli import main

sys.exit(main())
