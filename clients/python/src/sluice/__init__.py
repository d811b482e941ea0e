"""Sluice's Python SDK: write jobs as Python classes, run them locally or on Python workers,
and submit and follow runs. docs/python.md is the guide; docs/protocol.md the wire format."""

from ._wire import PROTOCOL_VERSIONS, SCHEMA_VERSION, Window
from .children import Children
from .client import AsyncClient, Client, DeadLetterEntry, LogEntry, RunStatus
from .context import Context, current_context
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
from .job import Job, job

__version__ = "0.1.0"

__all__ = [
    "PROTOCOL_VERSIONS",
    "SCHEMA_VERSION",
    "AsyncClient",
    "Children",
    "Client",
    "ConfigError",
    "Context",
    "DeadLetterEntry",
    "Job",
    "LogEntry",
    "NoAnswer",
    "NotFound",
    "PermanentError",
    "Refused",
    "Rejected",
    "RunStatus",
    "SluiceError",
    "Window",
    "WireError",
    "__version__",
    "current_context",
    "job",
]
