"""The Python worker's jobs in sluice-loadtest's W1-py: a no-op, as W1's `noop` on the Rust worker."""

from datetime import datetime
from typing import Any

import sluice


@sluice.job(name="py-noop")
def noop(start: datetime, end: datetime, config: Any) -> None:
    return None
