"""Jobs as Python code: a `Job` subclass with `perform(self, start, end, config[, ctx])`, or a
function decorated `@job`. A module's jobs are found by `registry_of(module)`, under their
`name=` or their `__name__`."""

from __future__ import annotations

import importlib
import inspect
import json
import types
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, overload

from .context import CALL_KEY, OUTPUT_MAX_BYTES, Context, _enter, _leave
from .errors import ConfigError, PermanentError

_ATTRIBUTE = "__sluice_job__"
_NAME = __import__("re").compile(r"^[A-Za-z0-9_-]{1,64}$")


class Job:
    """Subclass it and write `perform`; the worker makes one instance per worker process and
    calls `perform` for each attempt (so connections made in `__init__` are reused).

        class Ingest(sluice.Job, name="ingest"):
            def perform(self, start, end, config, ctx):
                ...
    """

    job_name: ClassVar[str]
    #: `perform(self, start, end, config)` or `perform(self, start, end, config, ctx)`: either
    #: signature type-checks in a subclass.
    perform: Callable[..., Any]

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.job_name = _checked_name(name or cls.__name__, cls.__qualname__)
        if not callable(getattr(cls, "perform", None)):
            raise ConfigError(f"job class {cls.__qualname__} has no perform(self, start, end, config) method")


F = TypeVar("F", bound=Callable[..., Any])


@overload
def job(function: F) -> F: ...
@overload
def job(*, name: str) -> Callable[[F], F]: ...
def job(function: Any = None, *, name: str | None = None) -> Any:
    """Marks a function as a job: `@sluice.job` or `@sluice.job(name="load")`. A workflow job
    calls it as `f(start, end, config[, ctx])`; a fan-out child as `f(item)`."""

    def mark(inner: F) -> F:
        setattr(inner, _ATTRIBUTE, _checked_name(name or inner.__name__, inner.__qualname__))
        return inner

    return mark(function) if function is not None else mark


def _checked_name(name: str, what: str) -> str:
    if not _NAME.match(name):
        raise ConfigError(f"job name `{name[:80]}` of {what} is not [A-Za-z0-9_-], 1 to 64 characters")
    return name


def job_name_of(target: Any) -> str:
    """The name a job class or `@job` function is registered under."""
    if isinstance(target, type) and issubclass(target, Job):
        return target.job_name
    name = getattr(target, _ATTRIBUTE, None)
    if not isinstance(name, str):
        raise ConfigError(
            f"{getattr(target, '__qualname__', target)!r} is not a sluice.Job nor a @sluice.job function"
        )
    return name


class Runnable:
    """One registered job, ready to run attempts."""

    def __init__(self, target: Any) -> None:
        self.name = job_name_of(target)
        self.target = target
        self._instance: Job | None = None
        if isinstance(target, type):
            self._call: Callable[..., Any] = lambda *args: self.instance().perform(*args)
            signature = inspect.signature(getattr(target, "perform"))  # noqa: B009 (a Job subclass)
            self._wants_ctx = _wants_ctx(signature, skip=1)
        else:
            self._call = target
            self._wants_ctx = _wants_ctx(inspect.signature(target), skip=0)

    def instance(self) -> Job:
        if self._instance is None:
            made = self.target()
            assert isinstance(made, Job)
            self._instance = made
        return self._instance

    def run(self, ctx: Context) -> Any:
        """Runs one attempt in this thread with `ctx` as the current context; returns the
        output (checked to be JSON of at most 64 KiB)."""
        token = _enter(ctx)
        try:
            config = ctx.config
            if isinstance(config, dict) and CALL_KEY in config and not isinstance(self.target, type):
                call = config[CALL_KEY]
                output = self._call(*call.get("args", []), **call.get("kwargs", {}))
            elif self._wants_ctx:
                output = self._call(ctx.start, ctx.end, config, ctx)
            else:
                output = self._call(ctx.start, ctx.end, config)
        finally:
            _leave(token)
        check_output(output)
        return output


def _wants_ctx(signature: inspect.Signature, skip: int) -> bool:
    parameters = list(signature.parameters.values())[skip:]
    if any(parameter.kind is parameter.VAR_POSITIONAL for parameter in parameters):
        return True
    return len(parameters) >= 4 or any(parameter.name == "ctx" for parameter in parameters)


def check_output(output: Any) -> None:
    """A job's output must be a JSON value of at most 64 KiB (a `PermanentError` otherwise:
    another attempt would return the same)."""
    if output is None:
        return
    try:
        size = len(json.dumps(output, separators=(",", ":")).encode())
    except (TypeError, ValueError) as error:
        raise PermanentError(f"the output is not a JSON value: {error}") from None
    if size > OUTPUT_MAX_BYTES:
        raise PermanentError(f"the output is {size} bytes of JSON; the limit is {OUTPUT_MAX_BYTES}")


def registry_of(module: types.ModuleType) -> dict[str, Runnable]:
    """The jobs a module defines (classes and functions defined in it, not imported), by name."""
    found: dict[str, Runnable] = {}
    for value in vars(module).values():
        is_job_class = isinstance(value, type) and issubclass(value, Job) and value is not Job
        if not (is_job_class or hasattr(value, _ATTRIBUTE)):
            continue
        if getattr(value, "__module__", None) != module.__name__:
            continue
        runnable = Runnable(value)
        if runnable.name in found and found[runnable.name].target is not value:
            raise ConfigError(f"two jobs of {module.__name__} are named `{runnable.name}`")
        found[runnable.name] = runnable
    return found


def import_module(name: str) -> types.ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as error:
        raise ConfigError(f"cannot import module `{name}`: {error}") from None


def resolve(reference: str) -> Runnable:
    """`package.module:Name` (a class or function, or a registered job name) to a runnable job."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"`{reference}` is not MODULE:JOB (e.g. myteam.jobs:Ingest)")
    module = import_module(module_name)
    target = getattr(module, attribute, None)
    if target is not None:
        return Runnable(target)
    registry = registry_of(module)
    if attribute in registry:
        return registry[attribute]
    known = ", ".join(sorted(registry)) or "none"
    raise ConfigError(f"module `{module_name}` has no job `{attribute}` (its jobs: {known})")
