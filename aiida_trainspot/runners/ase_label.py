"""``trainspot-ase-label FRAMES CALCULATOR LABELS``: label frames with an ASE calculator.

The executable of the ``ase`` labelling engine (``trainspot.ase.label``). Reads the
frames (a shard file, see :mod:`aiida_trainspot.data.store`) and the calculator spec
(JSON: ``{"name": ..., "kwargs": {...}, "parameter_file": RELATIVE PATH or null}``),
labels every frame (:func:`aiida_trainspot.labelling.ase.core.label_columns`) and
writes the labels as a shard: ``energy``, ``forces``, ``stress`` with their presence
masks and ``error`` ('' where labelled). Paths are taken relative to the working
directory.

Exit status: 0 when the labels file was written, whatever number of frames failed;
3 when the calculator cannot be built, 4 when the inputs cannot be read (a line
starting with ``CALCULATOR SETUP FAILED`` / ``INPUT UNREADABLE`` on stderr says why);
2 on wrong usage.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiida_trainspot.common.runner import (
    EXIT_INPUT_FAILED,
    INPUT_FAILED,
    RunnerError,
    run_main,
    write_atomically,
)
from aiida_trainspot.data.store import read_shard, write_shard
from aiida_trainspot.labelling.ase.core import (
    EXIT_SETUP_FAILED,
    SETUP_FAILED,
    failure_reason,
    label_columns,
    make_calculator,
    summarise,
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog='trainspot-ase-label',
        description='Label the frames of a shard file with an ASE calculator.',
    )
    parser.add_argument('frames', help='input frames (shard file, HDF5)')
    parser.add_argument('calculator', help='calculator spec (JSON)')
    parser.add_argument('labels', help='output labels (shard file, HDF5)')
    return parser


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Label the frames; write the labels (atomically); return the summary."""
    try:
        spec = json.loads(Path(args.calculator).read_text())
        parameter_file = spec.pop('parameter_file', None)
        calculator = make_calculator(spec, parameter_file)
    except Exception as exc:
        raise RunnerError(SETUP_FAILED, EXIT_SETUP_FAILED, failure_reason(exc)) from exc
    try:
        frames = read_shard(args.frames)
    except Exception as exc:
        detail = f'{args.frames}: {failure_reason(exc)}'
        raise RunnerError(INPUT_FAILED, EXIT_INPUT_FAILED, detail) from exc
    start = time.perf_counter()
    labels = label_columns(frames, calculator)
    seconds = time.perf_counter() - start
    write_atomically(Path(args.labels), lambda path: write_shard(labels, str(path)))
    summary = summarise(labels, seconds)
    summary['calculator'] = spec.get('name')
    return summary


def main(argv: Sequence[str] | None = None) -> int:
    """Run the labelling; return the exit status (console scripts ``sys.exit`` it)."""
    return run_main(_parser(), run, argv, show_traceback=False)


if __name__ == '__main__':
    sys.exit(main())
