"""The SDK's errors. Each says whether trying again may help (`retryable`)."""

from __future__ import annotations


class SluiceError(Exception):
    """Base of every error the SDK raises."""

    #: Whether the same call may succeed later (a coordinator not up yet, a lost connection).
    retryable: bool = False


class WireError(SluiceError):
    """A message that is not what the protocol says (names the field)."""


class ConfigError(SluiceError):
    """Bad input from the user: a window, a zone, a job reference, an option."""


class PermanentError(SluiceError):
    """Raised by a job for a failure that must not be retried: the job dead-letters at once."""


class Rejected(SluiceError):
    """The coordinator refused a submission; `reason` says why."""

    def __init__(self, run_id: str, reason: str) -> None:
        super().__init__(f"run {run_id} was rejected: {reason}")
        self.run_id = run_id
        self.reason = reason


class Refused(SluiceError):
    """The coordinator refused a control request (`kind`: not_found, conflict or invalid)."""

    def __init__(self, action: str, kind: str, reason: str) -> None:
        super().__init__(f"{action} refused ({kind}): {reason}")
        self.action = action
        self.kind = kind
        self.reason = reason

    @property
    def exit_code(self) -> int:
        """The CLI's exit code for this refusal: 1 for a conflict, 2 otherwise."""
        return 1 if self.kind == "conflict" else 2


class NotFound(SluiceError):
    """A run, job or dead letter that does not exist."""


class NoAnswer(SluiceError):
    """No coordinator answered in time (none running, or busy): try again."""

    retryable = True
