"""Where the repository's golden vectors and conformance tables are."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
GOLDEN = REPO / "proto" / "tests" / "golden"
CONFORMANCE = REPO / "proto" / "tests" / "conformance"
