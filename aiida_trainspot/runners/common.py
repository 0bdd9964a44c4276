"""Pieces every runner shares (no AiiDA import: runners run on compute nodes).

A runner reports a fatal problem as one stderr line ``PREFIX: detail`` and a
non-zero exit status, which the CalcJob's parser maps to a named exit code;
outputs are written atomically so a killed job never leaves a half file behind.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

MODEL_LOAD_FAILED = 'MODEL LOAD FAILED'
INPUT_FAILED = 'INPUT UNREADABLE'
EXIT_MODEL_LOAD_FAILED = 3
EXIT_INPUT_FAILED = 4


class RunnerError(Exception):
    """A fatal problem: ``prefix`` starts the stderr line, ``status`` is the exit status."""

    def __init__(self, prefix: str, status: int, detail: str):
        super().__init__(detail)
        self.prefix = prefix
        self.status = status
        self.detail = detail


def one_line(exc: BaseException) -> str:
    """The exception's class and the first line of its message."""
    lines = str(exc).strip().splitlines()
    return f'{type(exc).__name__}: {lines[0] if lines else ""}'.rstrip(': ')


def write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    """Write via ``write(partial)`` then rename, so ``target`` is complete or absent."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f'.{target.name}.partial')
    write(partial)
    os.replace(partial, target)
