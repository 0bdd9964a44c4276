"""Nested settings: merging them, and naming an unknown key with the nearest known one.

Every stage and the top work chain check their settings dictionaries with these, so that a
typo anywhere gets the same kind of message (``did you mean ...?``) and never a default.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


def recursive_merge(base: Mapping[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    """``update`` merged into a copy of ``base``, recursing into mappings (update wins)."""
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = recursive_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def nearest_key(key: str, known: Iterable[str]) -> str | None:
    """The known key closest to ``key`` (a typo), or None when none is close."""
    matches = difflib.get_close_matches(str(key), sorted(str(k) for k in known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def unknown_keys(where: str, unknown: Iterable[str], known: Iterable[str]) -> str:
    """``where: unknown keys [...]; did you mean 'b' for 'a'?``, else the known keys."""
    unknown, known = sorted(unknown), sorted(known)
    hints = []
    for key in unknown:
        match = nearest_key(key, known)
        if match is not None:
            hints.append(f'did you mean {match!r} for {key!r}?')
    if len(hints) < len(unknown):
        hints.append(f'known: {known}')
    return f'{where}: unknown keys {unknown}; ' + '; '.join(hints)


__all__ = ('nearest_key', 'recursive_merge', 'unknown_keys')
