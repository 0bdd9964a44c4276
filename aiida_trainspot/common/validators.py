"""Port validators that several processes share (AiiDA's ``validator(value, ctx)`` signature).

Each returns None for a valid value (or an absent one) and otherwise a message that starts
with the port's name in backquotes, as every validator of the package does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

Validator = Callable[[Any, Any], 'str | None']


def one_of(port: str, choices: Sequence[str]) -> Validator:
    """A validator of a ``Str`` port: its value is one of ``choices``."""

    def validator(value: Any, _ctx: Any = None) -> str | None:
        if value is not None and value.value not in choices:
            return f'`{port}`: {value.value!r} is not one of {list(choices)}'
        return None

    validator.__doc__ = f'``{port}`` is one of {list(choices)}.'
    return validator


def at_least(port: str, minimum: int) -> Validator:
    """A validator of an ``Int`` port: its value is ``minimum`` or more."""

    def validator(value: Any, _ctx: Any = None) -> str | None:
        if value is not None and value.value < minimum:
            return f'`{port}`: must be at least {minimum}, got {value.value}'
        return None

    validator.__doc__ = f'``{port}`` is at least {minimum}.'
    return validator
