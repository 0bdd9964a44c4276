"""Port validators that several processes share (AiiDA's ``validator(value, ctx)`` signature).

Each returns None for a valid value (or an absent one) and otherwise a message that starts
with the port's name in backquotes, as every validator of the package does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .seeds import SEED_LIMIT

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


def validate_seed(value: Any, _ctx: Any = None) -> str | None:
    """``seed`` is an integer in [0, 2**31) (:data:`~aiida_trainspot.common.seeds.SEED_LIMIT`).

    One range for every seed port, so that a seed a work chain accepts is one that each of its
    stages, and every engine they run, accepts as well.
    """
    if value is not None and not 0 <= value.value < SEED_LIMIT:
        limit = f'2**{SEED_LIMIT.bit_length() - 1}'
        return f'`seed`: must be an integer in [0, {limit}), got {value.value}'
    return None
