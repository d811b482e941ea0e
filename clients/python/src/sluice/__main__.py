"""`python -m sluice` is `sluice-py`."""

import sys

from .cli import main

sys.exit(main())
