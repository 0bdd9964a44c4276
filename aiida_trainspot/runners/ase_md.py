"""``trainspot-ase-md CONFIG``: molecular dynamics with a trained potential from starting frames.

The executable of the ``ase`` exploration engine
(:class:`~aiida_trainspot.exploration.ase.calculation.AseMdCalculation`, ``trainspot.ase.md``).
``CONFIG`` is a JSON file whose paths are all relative to the working directory::

    {
      "frames": "frames.h5",
      "model": {"engine": "mace", "path": "model/x.model", "extensions": null,
                "dtype": "float64"},
      "device": "cpu", "seed": 0, "run_id_prefix": "ase-0123abcd",
      "protocol": {"temperatures": [...], "pressures": [...], "steps": ..., ...},
      "trajectory": "trajectory.h5", "summary": "summary.json"
    }

The protocol is :class:`~aiida_trainspot.exploration.md.MdProtocol`'s; with per-run ``seeds``
and ``run_ids`` in it (as the exploration stage gives them) a run's frames and id do not depend
on the job that runs it, and ``seed`` and ``run_id_prefix`` are unused.

The model is loaded once (:func:`aiida_trainspot.training.loader.load_calculator`); every frame
of ``frames`` (a shard file, see :mod:`aiida_trainspot.data.store`) starts one trajectory
(:func:`aiida_trainspot.exploration.md.explore`). The sampled frames, with their metadata
columns and no labels, are written as one shard to ``trajectory``; the per-run summaries to
``summary`` last, so a complete summary means a complete job. Files are written under a temporary
name and renamed, so a killed job leaves no truncated output. One JSON line per run, then a
one-line report, go to stdout.

Imports no AiiDA. Exit status: 0 when the outputs were written, however many runs aborted; 2 on
wrong usage; 3 when the model cannot be loaded, 4 when an input cannot be read (a line starting
with ``MODEL LOAD FAILED`` or ``INPUT UNREADABLE`` on stderr says why).
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aiida_trainspot.common.runner import (
    EXIT_INPUT_FAILED,
    EXIT_MODEL_LOAD_FAILED,
    RunnerError,
    config_main,
    one_line,
    write_atomically,
)
from aiida_trainspot.data.convert import atoms_from_columns
from aiida_trainspot.data.store import read_shard, write_shard
from aiida_trainspot.exploration.md import (
    ENGINE,
    UNITS,
    MdProtocol,
    RunResult,
    explore,
)
from aiida_trainspot.training.loader import load_calculator

# with the exit statuses of a failed run (see the docstring), part of the runner's interface
__all__ = ('EXIT_INPUT_FAILED', 'EXIT_MODEL_LOAD_FAILED', 'main', 'run')

PROG = 'trainspot-ase-md'
#: The keys the configuration must give.
CONFIG_KEYS = ('model', 'frames')
DESCRIPTION = 'Run ASE molecular dynamics with a trained potential (see the docstring).'


def _progress(result: RunResult) -> None:
    entry = result.summary()
    keys = ('run_id', 'ensemble', 'n_sampled', 'steps_done', 'aborted', 'abort_rule', 'skipped')
    print(json.dumps({key: entry[key] for key in keys}), flush=True)


def _same_execution_every_call() -> contextlib.AbstractContextManager:
    """TorchScript without its profiling optimiser while the runs go.

    The profiling executor re-optimises a scripted model (metatomic models, PET) after its first
    calls, which changes forces in the last bits: a run's frames would then depend on how many
    runs came before it in the job, i.e. on how the exploration grouped runs into jobs. Without
    it, every call computes the same way and a run gives the same frames in any job (eager
    models such as MACE's are unaffected; on CPU the tiny PET ran no slower).
    """
    import torch

    return torch.jit.optimized_execution(False)


def run(config: dict[str, Any]) -> dict[str, Any]:
    """Run every trajectory of ``config``; write the outputs; return the report."""
    try:
        frames_columns = read_shard(config['frames'])
        frames = atoms_from_columns(frames_columns)
        protocol = MdProtocol.from_dict(config['protocol'], len(frames))
        model = config['model']
        seed = int(config.get('seed', 0))
        device = config.get('device', 'cpu')
        prefix = str(config.get('run_id_prefix') or ENGINE)
    except Exception as exc:
        raise RunnerError.input_failed(one_line(exc)) from exc
    start = time.perf_counter()
    try:
        calculator = load_calculator(
            model['engine'],
            model['path'],
            device=device,
            dtype=model.get('dtype', 'float64'),
            extensions_dir=model.get('extensions'),
        )
    except Exception as exc:
        raise RunnerError.model_load_failed(one_line(exc)) from exc
    load_seconds = time.perf_counter() - start
    with _same_execution_every_call():
        trajectory, runs = explore(
            frames, calculator, protocol, seed=seed, run_id_prefix=prefix, progress=_progress
        )
    seconds = time.perf_counter() - start - load_seconds
    summary = {
        'engine': ENGINE,
        'model_engine': model['engine'],
        'device': device,
        'seed': seed,
        'protocol': protocol.to_dict(),
        'units': dict(UNITS),
        'n_runs': len(runs),
        'n_sampled': int(trajectory.n_frames),
        'n_aborted': sum(1 for run in runs if run['aborted']),
        'n_skipped': sum(1 for run in runs if run['skipped']),
        'n_steps': sum(int(run['steps_done']) for run in runs),
        'wall_time_s': round(seconds, 3),
        'runs': runs,
    }
    write_atomically(
        Path(config.get('trajectory', 'trajectory.h5')),
        lambda path: write_shard(trajectory, str(path)),
    )
    write_atomically(
        Path(config.get('summary', 'summary.json')),
        lambda path: path.write_text(json.dumps(summary, indent=1, sort_keys=True)),
    )
    steps_per_second = summary['n_steps'] / seconds if seconds > 0 else None
    return {
        'load_seconds': round(load_seconds, 3),
        'seconds': round(seconds, 3),
        'n_runs': summary['n_runs'],
        'n_sampled': summary['n_sampled'],
        'n_aborted': summary['n_aborted'],
        'steps_per_second': round(steps_per_second, 3) if steps_per_second else None,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """Run the MD; return the exit status (console scripts ``sys.exit`` it)."""
    return config_main(argv, run, prog=PROG, description=DESCRIPTION, required=CONFIG_KEYS)


if __name__ == '__main__':
    sys.exit(main())
