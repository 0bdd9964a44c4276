"""What every runner shares (no AiiDA import: runners run on compute nodes).

A runner is a console script of the package that a script-running job
(:class:`~aiida_trainspot.common.runner_job.RunnerCalculation`) runs in its folder. It reports a
fatal problem as one stderr line ``PREFIX: detail`` and a non-zero exit status, which the job's
parser (:class:`~aiida_trainspot.common.runner_job.RunnerParser`) maps to a named exit code: the
prefixes and statuses are here, where both sides import them. Outputs are written atomically so
a killed job never leaves a half file behind. :func:`run_main` is every runner's ``main``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

#: stderr prefix (and exit status) of a runner whose model or calculator cannot be set up.
MODEL_LOAD_FAILED = 'MODEL LOAD FAILED'
EXIT_MODEL_LOAD_FAILED = 3
#: stderr prefix (and exit status) of a runner that cannot read an input file.
INPUT_FAILED = 'INPUT UNREADABLE'
EXIT_INPUT_FAILED = 4


class RunnerError(Exception):
    """A fatal problem: ``prefix`` starts the stderr line, ``status`` is the exit status."""

    def __init__(self, prefix: str, status: int, detail: str):
        super().__init__(detail)
        self.prefix = prefix
        self.status = status
        self.detail = detail

    @classmethod
    def input_failed(cls, detail: str) -> RunnerError:
        """An input cannot be read (``INPUT UNREADABLE``, status 4)."""
        return cls(INPUT_FAILED, EXIT_INPUT_FAILED, detail)

    @classmethod
    def model_load_failed(cls, detail: str) -> RunnerError:
        """A model cannot be loaded (``MODEL LOAD FAILED``, status 3)."""
        return cls(MODEL_LOAD_FAILED, EXIT_MODEL_LOAD_FAILED, detail)


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


def config_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The command line of a runner that takes one JSON configuration file."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument('config', help='configuration (JSON)')
    return parser


def read_config(path: str, required: Sequence[str]) -> dict[str, Any]:
    """The JSON configuration at ``path``; :class:`RunnerError` unless it gives every key."""
    try:
        config = json.loads(Path(path).read_text())
        if not isinstance(config, dict) or not all(config.get(key) for key in required):
            raise ValueError(f'the config names no {" or no ".join(required)}')
    except Exception as exc:
        raise RunnerError.input_failed(f'{path}: {one_line(exc)}') from exc
    return config


def run_main(
    parser: argparse.ArgumentParser,
    run: Callable[[argparse.Namespace], dict[str, Any]],
    argv: Sequence[str] | None = None,
    *,
    show_traceback: bool = True,
) -> int:
    """A runner's ``main``: ``run`` the parsed arguments; return the exit status.

    The report ``run`` returns is printed as one JSON line on stdout (status 0). A
    :class:`RunnerError` prints (after the traceback of its cause, with ``show_traceback``) the
    line ``PREFIX: detail`` on stderr and returns its status. Console scripts ``sys.exit`` it.
    """
    args = parser.parse_args(argv)
    try:
        report = run(args)
    except RunnerError as failure:
        if show_traceback:
            traceback.print_exception(failure.__cause__ or failure, file=sys.stderr)
        print(f'{failure.prefix}: {failure.detail}', file=sys.stderr, flush=True)
        return failure.status
    print(json.dumps(report), flush=True)
    return 0


def config_main(
    argv: Sequence[str] | None,
    run: Callable[[dict[str, Any]], dict[str, Any]],
    *,
    prog: str,
    description: str,
    required: Sequence[str],
) -> int:
    """The ``main`` of a runner of one JSON configuration: :func:`run_main` of ``run(config)``.

    The configuration must give every key of ``required`` (else ``INPUT UNREADABLE``).
    """
    parser = config_parser(prog, description)
    return run_main(parser, lambda args: run(read_config(args.config, required)), argv)
