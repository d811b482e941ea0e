"""`{{name}}` placeholders, substituted on parsed values, never on YAML text (the rules of
proto/src/placeholder.rs; proto/tests/conformance/placeholders.json holds both to them)."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from .errors import ConfigError

#: The placeholders besides `{{params.NAME}}`.
BUILT_IN = ("start", "end", "run_id", "job", "attempt")

_UNKNOWN_HINT = "use one of {{start}}, {{end}}, {{run_id}}, {{job}}, {{attempt}} or {{params.NAME}}"


def _unclosed(text: str) -> ConfigError:
    return ConfigError(f"`{{{{` without a closing `}}}}` in `{text[:80]}`")


def _unknown(name: str) -> ConfigError:
    return ConfigError(f"unknown placeholder `{{{{{name}}}}}`: {_UNKNOWN_HINT}")


def _missing(param: str) -> ConfigError:
    return ConfigError(
        f"placeholder `{{{{params.{param}}}}}` has no value: declare it under `params:` "
        f"or pass --param {param}=VALUE"
    )


def names(text: str) -> list[str]:
    """The placeholder names used in `text`, in order."""
    found: list[str] = []
    rest = text
    while (start := rest.find("{{")) >= 0:
        after = rest[start + 2 :]
        close = after.find("}}")
        if close < 0:
            raise _unclosed(text)
        found.append(after[:close].strip())
        rest = after[close + 2 :]
    return found


def check(text: str, params: Mapping[str, str] | None) -> None:
    """Checks that every placeholder of `text` is known (and, with `params`, has a value)."""
    for name in names(text):
        if name.startswith("params."):
            if params is not None and name[len("params.") :] not in params:
                raise _missing(name[len("params.") :])
        elif name not in BUILT_IN:
            raise _unknown(name)


def substitute(text: str, lookup: Callable[[str], str | None]) -> str:
    """Replaces every placeholder of `text` with `lookup(name)`; values are not looked at again."""
    out: list[str] = []
    rest = text
    while (start := rest.find("{{")) >= 0:
        out.append(rest[:start])
        after = rest[start + 2 :]
        close = after.find("}}")
        if close < 0:
            raise _unclosed(text)
        name = after[:close].strip()
        value = lookup(name)
        if value is None:
            if name.startswith("params."):
                raise _missing(name[len("params.") :])
            raise _unknown(name)
        out.append(value)
        rest = after[close + 2 :]
    out.append(rest)
    return "".join(out)
