"""Sluice's Python SDK: write jobs as Python classes, run them locally or on Python workers,
and submit and follow runs. docs/python.md is the guide; docs/protocol.md the wire format."""

from ._wire import PROTOCOL_VERSIONS, SCHEMA_VERSION
from .errors import (
    ConfigError,
    NoAnswer,
    NotFound,
    PermanentError,
    Refused,
    Rejected,
    SluiceError,
    WireError,
)

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSIONS",
    "SCHEMA_VERSION",
    "ConfigError",
    "NoAnswer",
    "NotFound",
    "PermanentError",
    "Refused",
    "Rejected",
    "SluiceError",
    "WireError",
    "__version__",
]
